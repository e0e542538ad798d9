//! Acknowledged changes as WAL record payloads: one record per acknowledged statement, holding
//! the database it belongs to and every change of the statement (they replay together or not
//! at all).
//!
//! Layout (all integers little-endian): `version: u8 = 1` · `database: str` · `count: u32` ·
//! `count` changes. A change is `tag: u8` (`I`, `U`, `D`) · `relid: u32` · its fields; a `str`
//! is `len: u32` and UTF-8 bytes, an optional value is a `u8` flag (0 = none) and the value.

use super::encode::{Change, ColumnChange};

/// The WAL record kind of a journal entry.
pub const KIND_CHANGES: u8 = 1;

const VERSION: u8 = 1;

/// Why a payload could not be decoded (only a damaged or foreign WAL produces this).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable WAL change record: {0}")]
pub struct JournalError(&'static str);

/// Encodes `changes` of `database` as one record payload.
pub fn encode(database: &str, changes: &[Change]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + changes.len() * 48);
    out.push(VERSION);
    put_str(&mut out, database);
    put_u32(&mut out, changes.len());
    for c in changes {
        match c {
            Change::Insert {
                relid,
                key,
                values,
                op,
                conflict_set,
            } => {
                out.push(b'I');
                out.extend_from_slice(&relid.to_le_bytes());
                out.push(*op);
                put_opt(&mut out, key.as_ref(), |o, k| put_strs(o, k));
                put_u32(&mut out, values.len());
                for (col, v) in values {
                    put_str(&mut out, col);
                    put_opt(&mut out, v.as_ref(), |o, s| put_str(o, s));
                }
                put_opt(&mut out, conflict_set.as_ref(), |o, k| put_strs(o, k));
            }
            Change::Update {
                relid,
                key,
                columns,
            } => {
                out.push(b'U');
                out.extend_from_slice(&relid.to_le_bytes());
                put_strs(&mut out, key);
                put_u32(&mut out, columns.len());
                for (col, ch) in columns {
                    put_str(&mut out, col);
                    match ch {
                        ColumnChange::Set(v) => {
                            out.push(0);
                            put_opt(&mut out, v.as_ref(), |o, s| put_str(o, s));
                        }
                        ColumnChange::Add(d) => {
                            out.push(1);
                            put_str(&mut out, d);
                        }
                    }
                }
            }
            Change::Delete { relid, key } => {
                out.push(b'D');
                out.extend_from_slice(&relid.to_le_bytes());
                put_strs(&mut out, key);
            }
        }
    }
    out
}

/// Decodes a payload made by [`encode`]: the database and its changes.
pub fn decode(payload: &[u8]) -> Result<(String, Vec<Change>), JournalError> {
    let mut r = Reader(payload);
    if r.u8()? != VERSION {
        return Err(JournalError("unknown version"));
    }
    let database = r.str()?;
    let n = r.count(6)?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        let tag = r.u8()?;
        let relid = r.u32()?;
        changes.push(match tag {
            b'I' => {
                let op = r.u8()?;
                let key = r.opt(|r| r.strs())?;
                let nv = r.count(5)?;
                let mut values = Vec::with_capacity(nv);
                for _ in 0..nv {
                    values.push((r.str()?, r.opt(|r| r.str())?));
                }
                let conflict_set = r.opt(|r| r.strs())?;
                Change::Insert {
                    relid,
                    key,
                    values,
                    op,
                    conflict_set,
                }
            }
            b'U' => {
                let key = r.strs()?;
                let nc = r.count(6)?;
                let mut columns = Vec::with_capacity(nc);
                for _ in 0..nc {
                    let col = r.str()?;
                    let ch = match r.u8()? {
                        0 => ColumnChange::Set(r.opt(|r| r.str())?),
                        1 => ColumnChange::Add(r.str()?),
                        _ => return Err(JournalError("unknown column change")),
                    };
                    columns.push((col, ch));
                }
                Change::Update {
                    relid,
                    key,
                    columns,
                }
            }
            b'D' => Change::Delete {
                relid,
                key: r.strs()?,
            },
            _ => return Err(JournalError("unknown change tag")),
        });
    }
    if !r.0.is_empty() {
        return Err(JournalError("trailing bytes"));
    }
    Ok((database, changes))
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

fn put_strs(out: &mut Vec<u8>, v: &[String]) {
    put_u32(out, v.len());
    for s in v {
        put_str(out, s);
    }
}

fn put_opt<T: ?Sized>(out: &mut Vec<u8>, v: Option<&T>, put: impl FnOnce(&mut Vec<u8>, &T)) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            put(out, v);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], JournalError> {
        if self.0.len() < n {
            return Err(JournalError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, JournalError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, JournalError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A count of items each at least `min_size` bytes long: larger than the rest allows is
    /// damage, so no allocation is ever sized by an unchecked number.
    fn count(&mut self, min_size: usize) -> Result<usize, JournalError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size) > self.0.len() {
            return Err(JournalError("count larger than the record"));
        }
        Ok(n)
    }

    fn str(&mut self) -> Result<String, JournalError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| JournalError("invalid UTF-8"))
    }

    fn strs(&mut self) -> Result<Vec<String>, JournalError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.str()).collect()
    }

    fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, JournalError>,
    ) -> Result<Option<T>, JournalError> {
        match self.u8()? {
            0 => Ok(None),
            1 => f(self).map(Some),
            _ => Err(JournalError("bad option flag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_damage_is_an_error() {
        let changes = vec![
            Change::Insert {
                relid: 16384,
                key: Some(vec!["k\t1".into()]),
                values: vec![("v".into(), Some("é".into())), ("w".into(), None)],
                op: b'X',
                conflict_set: Some(vec!["v".into()]),
            },
            Change::Insert {
                relid: 7,
                key: None,
                values: vec![],
                op: b'I',
                conflict_set: None,
            },
            Change::Update {
                relid: 16384,
                key: vec!["a".into(), "b".into()],
                columns: vec![
                    ("n".into(), ColumnChange::Add("-2.5".into())),
                    ("s".into(), ColumnChange::Set(None)),
                    ("t".into(), ColumnChange::Set(Some(String::new()))),
                ],
            },
            Change::Delete {
                relid: 1,
                key: vec!["x".into()],
            },
        ];
        let bytes = encode("db name", &changes);
        assert_eq!(decode(&bytes), Ok(("db name".to_string(), changes)));
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes decoded"
            );
        }
        let mut huge = bytes.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
    }
}
