//! The privileges a recognized write needs, and whether the session's user holds them: the
//! session's own copy of the answers first, then the runtime's (`writebehind::privileges`).

use super::Intercept;
use crate::writebehind::catalog::Table;
use crate::writebehind::privileges::Privilege;
use crate::writebehind::recognize::{OnConflict, Write};

impl Intercept {
    /// Whether the session's user holds `privilege` on `relid` (asked in `generation`): this
    /// session's own copy first, then the runtime's answers, then PostgreSQL.
    pub(super) async fn allowed(&self, generation: u64, relid: u32, privilege: Privilege) -> bool {
        let memo = || self.privileges.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(allowed) = memo().get(generation, relid, privilege) {
            return allowed;
        }
        match self.rt.allowed(&self.user, relid, privilege).await {
            Some(answer) => {
                memo().keep(relid, privilege, answer);
                answer.allowed
            }
            None => false,
        }
    }
}

/// The table privileges PostgreSQL checks for `w`. SELECT is needed for the key columns a
/// WHERE or a conflict target reads and the columns `n = n + k` reads; the proxy asks for it
/// on the whole table (a role with column grants only passes through, and PostgreSQL decides).
/// A plain INSERT into a table whose `on_conflict` policy is `upsert` may update an existing
/// row when the worker applies it: it needs what `ON CONFLICT DO UPDATE` needs.
pub(super) fn needed(w: &Write, table: &Table) -> &'static [Privilege] {
    use Privilege::{Delete, Insert, Select, Update};
    match w {
        Write::Insert {
            on_conflict: Some(OnConflict::Update { .. }),
            ..
        } => &[Insert, Update, Select],
        Write::Insert {
            on_conflict: Some(_),
            ..
        } => &[Insert, Select],
        Write::Insert { .. } if table.upsert && !table.append => &[Insert, Update, Select],
        Write::Insert { .. } => &[Insert],
        Write::Update { .. } => &[Update, Select],
        Write::Delete { .. } => &[Delete, Select],
    }
}
