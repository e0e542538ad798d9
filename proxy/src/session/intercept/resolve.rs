//! Which relation a table name denotes in this session: asked of the session's own connection
//! (`to_regclass`, so search_path, `$user`, per-role and per-database defaults and schema
//! privileges count exactly as for the session's own statements), then cached until something
//! may resolve it differently.
//!
//! The cache holds one answer per name as written. An answer is good for the catalog it was
//! given under (a reload follows DDL, which may create a table that shadows another); a
//! statement that may change name resolution (SET search_path, the session's own DDL) forgets
//! every answer and raises the session's resolution epoch, so statements prepared earlier are
//! resolved again before their next write is acknowledged, as PostgreSQL re-plans them.

use crate::session::wire::{answer_text, error_reply, NotAsked, Wire};
use crate::writebehind::recognize::TableName;
use bytes::Bytes;
use foldhash::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;

/// One session's answers.
#[derive(Default)]
pub struct Resolver {
    /// Per name: the catalog ticket the answer was given under, and the relation (`None`:
    /// no relation, or the session may not use its schema).
    answers: Mutex<HashMap<TableName, (u64, Option<u32>)>>,
    /// Raised whenever the answers are forgotten.
    epoch: u64,
    /// The session was asked since [`Resolver::take_asked`] was last called (the question
    /// replaced its unnamed prepared statement).
    asked: AtomicBool,
    /// Whether `pg_catalog` comes first in the session's search path, so that a type name
    /// written without a schema is the built-in type: [`UNKNOWN`], [`YES`] or [`NO`].
    builtin_types: AtomicU8,
}

const UNKNOWN: u8 = 0;
const YES: u8 = 1;
const NO: u8 = 2;

/// Where `pg_catalog` stands in the session's effective search path (with the implicit
/// schemas: a temporary schema that exists comes before it). Every name qualified, as in
/// [`regclass_query`].
const CATALOG_POSITION: &str =
    "SELECT pg_catalog.array_position(pg_catalog.current_schemas(true), \
     'pg_catalog'::pg_catalog.name)";

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
        *self.builtin_types.get_mut() = UNKNOWN;
        self.epoch += 1;
    }

    /// Whether the session was asked since the last call.
    pub fn take_asked(&self) -> bool {
        self.asked.swap(false, Ordering::AcqRel)
    }

    /// The relation `name` denotes now, under the catalog numbered `ticket`: an answer given
    /// under this catalog, or asked of the session through `wire`. `None` (not acknowledged)
    /// when there is neither: without a wire, or inside a transaction block. Only when the
    /// session's connection is gone (PostgreSQL restarted while it was idle; nothing can
    /// have changed its resolution since) is an answer given under an earlier catalog used.
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
        let wire = wire?;
        match wire.ask(&regclass_query(name), b"I").await {
            Ok(replies) => {
                self.asked.store(true, Ordering::Release);
                let answer = answer(&replies);
                if let Answer::Known(relid) = answer {
                    self.lock().insert(name.clone(), (ticket, relid));
                }
                answer.relid()
            }
            Err(NotAsked::Lost) => known.and_then(|(_, relid)| relid),
            Err(NotAsked::Busy) => None,
        }
    }

    /// Whether a type name written without a schema (`'5'::int4`) denotes the built-in type in
    /// this session: `pg_catalog` is searched first (asked of the session through `wire`
    /// once per resolution epoch). False when it cannot be asked: the write passes through.
    pub async fn builtin_types_first<W: Wire>(&self, wire: Option<&mut W>) -> bool {
        match self.builtin_types.load(Ordering::Acquire) {
            YES => return true,
            NO => return false,
            _ => {}
        }
        let Some(wire) = wire else {
            return false;
        };
        let Ok(replies) = wire.ask(CATALOG_POSITION, b"I").await else {
            return false;
        };
        self.asked.store(true, Ordering::Release);
        if error_reply(&replies).is_some() {
            return false;
        }
        let first = answer_text(&replies) == Some("1");
        self.builtin_types
            .store(if first { YES } else { NO }, Ordering::Release);
        first
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TableName, (u64, Option<u32>)>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `SELECT pg_catalog.to_regclass(…)` for `name` written as quoted identifiers (folded
/// already), in an escape string literal so that it reads the same whatever
/// `standard_conforming_strings` says; the function and the types are qualified, so the
/// session's search_path cannot put another `to_regclass` in their place.
pub fn regclass_query(name: &TableName) -> String {
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let qualified = match &name.schema {
        Some(schema) => format!("{}.{}", ident(schema), ident(&name.name)),
        None => ident(&name.name),
    };
    let literal = qualified.replace('\\', "\\\\").replace('\'', "''");
    format!("SELECT pg_catalog.to_regclass(E'{literal}')::pg_catalog.oid::pg_catalog.int8")
}

/// What the session said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The relation (`None`: there is none, or the role may not use its schema): good until
    /// resolution may change.
    Known(Option<u32>),
    /// Any other error (a cancel, a timeout): not an answer, not kept.
    Failed,
}

impl Answer {
    /// The relation, if the answer names one.
    pub fn relid(self) -> Option<u32> {
        match self {
            Answer::Known(relid) => relid,
            Answer::Failed => None,
        }
    }
}

/// Reads the replies to [`regclass_query`].
pub fn answer(replies: &[Bytes]) -> Answer {
    if let Some(error) = replies.iter().find(|m| m.first() == Some(&b'E')) {
        // 42501: no USAGE on the schema, which only a GRANT (DDL: a catalog reload) changes.
        return if error_code(error) == Some(b"42501".as_slice()) {
            Answer::Known(None)
        } else {
            Answer::Failed
        };
    }
    Answer::Known(first_oid(replies))
}

/// The SQLSTATE of an ErrorResponse.
fn error_code(msg: &[u8]) -> Option<&[u8]> {
    let mut fields = msg.get(5..)?;
    while let Some((&ty, rest)) = fields.split_first() {
        if ty == 0 {
            return None;
        }
        let end = rest.iter().position(|&b| b == 0)?;
        if ty == b'C' {
            return Some(&rest[..end]);
        }
        fields = rest.get(end + 1..)?;
    }
    None
}

/// The first column of the first DataRow in `replies` as an oid; `None` for NULL or anything
/// unexpected.
fn first_oid(replies: &[Bytes]) -> Option<u32> {
    answer_text(replies)?.parse::<u32>().ok()
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
            "SELECT pg_catalog.to_regclass(E'\"counters\"')::pg_catalog.oid::pg_catalog.int8"
        );
        assert_eq!(
            regclass_query(&name(Some("App"), "we\"ird'\\")),
            "SELECT pg_catalog.to_regclass(E'\"App\".\"we\"\"ird''\\\\\"')::pg_catalog.oid::pg_catalog.int8"
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

    fn error(code: &str) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u8(b'S');
        body.put_slice(b"ERROR\0");
        body.put_u8(b'C');
        body.put_slice(code.as_bytes());
        body.put_u8(0);
        body.put_u8(0);
        let mut m = BytesMut::new();
        m.put_u8(b'E');
        m.put_u32(body.len() as u32 + 4);
        m.put_slice(&body);
        m.freeze()
    }

    #[test]
    fn answers_are_read_from_the_first_row() {
        let t = Bytes::from_static(b"T\0\0\0\x06\0\0");
        assert_eq!(
            answer(&[t.clone(), data_row(Some("16384"))]),
            Answer::Known(Some(16384))
        );
        assert_eq!(answer(&[t.clone(), data_row(None)]), Answer::Known(None));
        assert_eq!(answer(&[t, data_row(Some("x"))]), Answer::Known(None));
        assert_eq!(answer(&[error("42501")]), Answer::Known(None));
        assert_eq!(answer(&[error("57014")]), Answer::Failed);
        assert_eq!(
            answer(&[Bytes::from_static(b"E\0\0\0\x04")]),
            Answer::Failed
        );
    }
}
