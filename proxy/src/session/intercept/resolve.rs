//! Which relation a table name denotes in this session: asked of the session's own connection
//! (`to_regclass`, so search_path, `$user`, temporary tables, per-role and per-database
//! defaults and schema privileges count exactly as for the session's own statements), then
//! cached until something may resolve it differently.
//!
//! The cache holds one answer per name as written. An answer is good for the catalog it was
//! given under (a reload follows DDL, which may create a table that shadows another); a
//! statement that may change name resolution (SET search_path, temporary tables) forgets
//! every answer and raises the session's resolution epoch, so statements prepared earlier are
//! resolved again before their next write is acknowledged, as PostgreSQL re-plans them.

use crate::session::wire::Wire;
use crate::writebehind::recognize::TableName;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;

/// One session's answers.
#[derive(Default)]
pub struct Resolver {
    /// Per name: the catalog ticket the answer was given under, and the relation (`None`:
    /// no relation, or the session may not use its schema).
    answers: Mutex<HashMap<TableName, (u64, Option<u32>)>>,
    /// Raised whenever the answers are forgotten.
    epoch: u64,
}

impl Resolver {
    /// The session's resolution epoch: statements resolved in an older one are resolved again.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Forgets every answer: name resolution may have changed.
    pub fn forget(&mut self) {
        self.answers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.epoch += 1;
    }

    /// The relation `name` denotes now, under the catalog numbered `ticket`. Asked of the
    /// session through `wire` when there is no answer for this catalog yet; without a wire, or
    /// when the session cannot be asked (inside a transaction block, its connection lost), an
    /// answer given under an earlier catalog is used, if there is one.
    pub async fn resolve<W: Wire>(
        &self,
        name: &TableName,
        ticket: u64,
        wire: Option<&mut W>,
    ) -> Option<u32> {
        let known = self.lock().get(name).copied();
        if let Some((at, relid)) = known {
            if at == ticket {
                return relid;
            }
        }
        let asked = match wire {
            Some(wire) => wire.ask(&regclass_query(name)).await,
            None => None,
        };
        match asked {
            Some(replies) => {
                let relid = first_oid(&replies);
                self.lock().insert(name.clone(), (ticket, relid));
                relid
            }
            None => known.and_then(|(_, relid)| relid),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TableName, (u64, Option<u32>)>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `SELECT to_regclass(…)::oid::int8` for `name` written as quoted identifiers (folded
/// already), in an escape string literal so that it reads the same whatever
/// `standard_conforming_strings` says.
pub fn regclass_query(name: &TableName) -> String {
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let qualified = match &name.schema {
        Some(schema) => format!("{}.{}", ident(schema), ident(&name.name)),
        None => ident(&name.name),
    };
    let literal = qualified.replace('\\', "\\\\").replace('\'', "''");
    format!("SELECT to_regclass(E'{literal}')::oid::int8")
}

/// The first column of the first DataRow in `replies` as an oid; `None` for NULL, an error
/// (e.g. no USAGE on the schema), or anything unexpected.
pub fn first_oid(replies: &[Bytes]) -> Option<u32> {
    if replies.iter().any(|m| m.first() == Some(&b'E')) {
        return None;
    }
    let row = replies.iter().find(|m| m.first() == Some(&b'D'))?;
    // 'D', length (4), column count (2), first column's length (4), its text.
    let len = i32::from_be_bytes(row.get(7..11)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let text = std::str::from_utf8(row.get(11..11 + len)?).ok()?;
    text.parse::<u32>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn name(schema: Option<&str>, name: &str) -> TableName {
        TableName {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        }
    }

    #[test]
    fn names_are_quoted_as_written() {
        assert_eq!(
            regclass_query(&name(None, "counters")),
            "SELECT to_regclass(E'\"counters\"')::oid::int8"
        );
        assert_eq!(
            regclass_query(&name(Some("App"), "we\"ird'\\")),
            "SELECT to_regclass(E'\"App\".\"we\"\"ird''\\\\\"')::oid::int8"
        );
    }

    fn data_row(value: Option<&str>) -> Bytes {
        let mut body = BytesMut::new();
        body.put_i16(1);
        match value {
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v.as_bytes());
            }
            None => body.put_i32(-1),
        }
        let mut m = BytesMut::new();
        m.put_u8(b'D');
        m.put_u32(body.len() as u32 + 4);
        m.put_slice(&body);
        m.freeze()
    }

    #[test]
    fn answers_are_read_from_the_first_row() {
        let t = Bytes::from_static(b"T\0\0\0\x06\0\0");
        assert_eq!(
            first_oid(&[t.clone(), data_row(Some("16384"))]),
            Some(16384)
        );
        assert_eq!(first_oid(&[t.clone(), data_row(None)]), None);
        assert_eq!(first_oid(&[Bytes::from_static(b"E\0\0\0\x04")]), None);
        assert_eq!(first_oid(&[t, data_row(Some("x"))]), None);
        assert_eq!(first_oid(&[]), None);
    }
}
