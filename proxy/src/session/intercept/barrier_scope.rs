//! The scope of the read barrier before messages pass through: what their statements may
//! read of the write-behind tables (`writebehind::scope`), per Query, per prepared statement
//! and per portal, with the catalog reloaded after this session's own schema changes.

use super::{Intercept, Lexed};
use crate::protocol::frontend::{self, Frontend};
use crate::session::wire::Wire;
use crate::writebehind::catalog::Catalog;
use crate::writebehind::lexer;
use crate::writebehind::scope::Scope;
use crate::writebehind::statement_kind;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

impl Intercept {
    /// What the statements of `msgs` (passing through) may read of the write-behind tables.
    /// Notes statements that may change the schema, and reloads the catalog before the first
    /// analysis after one, once it committed.
    pub(super) async fn scope<W: Wire>(
        &mut self,
        msgs: &[Bytes],
        lexed: Lexed<'_>,
        wire: &mut W,
    ) -> Scope {
        // A session that changed search_path, its role, string syntax, or made temporary
        // objects resolves names in ways the catalog does not know.
        if !self.enabled {
            return Scope::All;
        }
        if !self.catalog_current(wire).await {
            return Scope::All;
        }
        let catalog = self.rt.catalog.borrow().clone();
        let mut scope = Scope::default();
        // Set again by a statement below that begins such a transaction.
        let snapshot_pending = std::mem::take(&mut self.snapshot_pending);
        let mut runs_statement = false;
        // Statements parsed by these messages, by name, in order.
        let mut parsed: HashMap<&str, Scope> = HashMap::new();
        for raw in msgs {
            let decoded = frontend::decode(raw);
            // Describe, Close, Sync, Flush, COPY data: nothing is read.
            let reads_nothing = matches!(
                decoded,
                Ok(Frontend::Describe { .. }
                    | Frontend::Close { .. }
                    | Frontend::Sync
                    | Frontend::Other(b'H' | b'd' | b'c' | b'f'))
            );
            runs_statement |= !reads_nothing;
            let part = match decoded {
                Ok(Frontend::Query(sql)) => match &lexed {
                    Lexed::Ok(stmts) => self.analyse(&catalog, stmts),
                    Lexed::Failed => Scope::All,
                    Lexed::No => self.analyse_sql(&catalog, sql),
                },
                Ok(Frontend::Parse { name, sql, .. }) => {
                    let s = self.analyse_sql(&catalog, sql);
                    if let Some(stmt) = self.stmts.get_mut(name) {
                        if stmt.parse == *raw {
                            stmt.scope = Some((catalog.clone(), s.clone()));
                        }
                    }
                    parsed.insert(name, s.clone());
                    s
                }
                Ok(Frontend::Bind {
                    portal, statement, ..
                }) => {
                    let s = match parsed.get(statement) {
                        Some(s) => s.clone(),
                        None => self.stmt_scope(&catalog, statement),
                    };
                    self.portals.insert(portal.to_string(), s.clone());
                    s
                }
                Ok(Frontend::Execute { portal }) => {
                    self.portals.get(portal).cloned().unwrap_or(Scope::All)
                }
                Ok(Frontend::Close { kind: b'P', name }) => {
                    self.portals.remove(name);
                    Scope::default()
                }
                _ if reads_nothing => Scope::default(),
                // FunctionCall, anything else: anything.
                _ => Scope::All,
            };
            scope.add(&part);
        }
        if snapshot_pending {
            if runs_statement {
                // This statement takes the transaction's snapshot: whatever other sessions
                // had acknowledged before it must be in it.
                return Scope::All;
            }
            self.snapshot_pending = true;
        }
        scope
    }

    /// Whether the group `msgs` may write (see [`statement_kind::reads_only`]): then it waits for
    /// tables enabled with `read_barrier => false` too. Unknown statements and portals bound
    /// earlier may write.
    pub(super) fn group_may_write(&self, msgs: &[Bytes]) -> bool {
        let writes = |sql: &str| match lexer::lex(sql, true) {
            Ok(tokens) => !statement_kind::reads_only(&lexer::statements(&tokens)),
            Err(_) => true,
        };
        let mut bound = Vec::new();
        msgs.iter().any(|raw| match frontend::decode(raw) {
            Ok(Frontend::Query(sql)) | Ok(Frontend::Parse { sql, .. }) => writes(sql),
            Ok(Frontend::Bind {
                portal, statement, ..
            }) => {
                bound.push(portal);
                match self.stmts.get(statement).map(|s| frontend::decode(&s.parse)) {
                    Some(Ok(Frontend::Parse { sql, .. })) => writes(sql),
                    // Parsed in this group (its Parse counts), or unknown.
                    _ => !msgs.iter().any(|m| {
                        matches!(frontend::decode(m), Ok(Frontend::Parse { name, .. }) if name == statement)
                    }),
                }
            }
            Ok(Frontend::Execute { portal }) => !bound.contains(&portal),
            Ok(
                Frontend::Describe { .. }
                | Frontend::Close { .. }
                | Frontend::Sync
                | Frontend::Other(b'H' | b'd' | b'c' | b'f'),
            ) => false,
            _ => true,
        })
    }

    /// Whether the catalog is current for this session: after a statement of its own that may
    /// have changed the schema, it is reloaded once that committed (the session is idle
    /// outside a transaction block) and before anything is acknowledged or scoped against it.
    pub(super) async fn catalog_current<W: Wire>(&mut self, wire: &mut W) -> bool {
        if !self.schema_stale {
            return true;
        }
        if self.mid_group || wire.drained().await != b'I' {
            return false; // not committed yet
        }
        if let Err(error) = Box::pin(self.rt.reload_catalog()).await {
            tracing::debug!(%error, "reloading the catalog after a schema change failed");
            return false;
        }
        self.schema_stale = false;
        // A GRANT, REVOKE or change of owner among them: their notification (or the next
        // look at the fingerprint) may come after this session's next write.
        if std::mem::take(&mut self.privileges_stale) {
            self.rt.privileges.forget();
        }
        true
    }

    /// The scope of lexed statements; notes a possible schema change.
    pub(super) fn analyse(&mut self, catalog: &Catalog, stmts: &[&[lexer::Token<'_>]]) -> Scope {
        self.snapshot_pending |= statement_kind::keeps_snapshot(stmts);
        if statement_kind::may_change_schema(stmts) {
            self.schema_stale = true;
            self.privileges_stale |= statement_kind::may_change_privileges(stmts);
            // It may create, rename or drop a relation that a table name of this session
            // denotes: asked again (once it committed), not waiting for the catalog reload.
            self.resolver.forget();
        }
        catalog.names.scope(stmts)
    }

    /// The scope of `sql` (all when it cannot be lexed with certainty).
    pub(super) fn analyse_sql(&mut self, catalog: &Catalog, sql: &str) -> Scope {
        match lexer::lex(sql, true) {
            Ok(tokens) => self.analyse(catalog, &lexer::statements(&tokens)),
            Err(_) => Scope::All,
        }
    }

    /// The scope of the prepared statement `name`, computed once per catalog; all for a
    /// statement the session does not know.
    pub(super) fn stmt_scope(&mut self, catalog: &Arc<Catalog>, name: &str) -> Scope {
        let Some(stmt) = self.stmts.get(name) else {
            return Scope::All;
        };
        if let Some((c, s)) = &stmt.scope {
            if Arc::ptr_eq(c, catalog) {
                return s.clone();
            }
        }
        let parse = stmt.parse.clone();
        let s = match frontend::decode(&parse) {
            Ok(Frontend::Parse { sql, .. }) => self.analyse_sql(catalog, sql),
            _ => Scope::All,
        };
        if let Some(stmt) = self.stmts.get_mut(name) {
            stmt.scope = Some((catalog.clone(), s.clone()));
        }
        s
    }
}
