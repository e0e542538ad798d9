//! Decoding the frontend messages the write-behind path inspects (Query, Parse, Bind,
//! Describe, Execute, Close), borrowing from the message bytes, and reassembling whole
//! messages from a byte stream.

use super::put;
use bytes::{Bytes, BytesMut};

/// A decoded frontend message; `raw` of the caller keeps the bytes to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    /// `Q`: a simple-protocol query string.
    Query(&'a str),
    /// `P`: a statement name, its text and declared parameter type oids.
    Parse {
        name: &'a str,
        sql: &'a str,
        param_types: Vec<u32>,
    },
    /// `B`: portal, statement, parameter format codes, values (`None` = NULL), and how many
    /// result format codes follow them.
    Bind {
        portal: &'a str,
        statement: &'a str,
        formats: Vec<i16>,
        params: Vec<Option<&'a [u8]>>,
        result_formats: usize,
    },
    /// `D`: `S` (statement) or `P` (portal) and its name.
    Describe { kind: u8, name: &'a str },
    /// `E`: a portal and the row limit.
    Execute { portal: &'a str },
    /// `C`: `S` or `P` and the name.
    Close { kind: u8, name: &'a str },
    /// `S`.
    Sync,
    /// Any other message type.
    Other(u8),
}

/// A message whose body does not match its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed frontend message of type {0:?}")]
pub struct Malformed(pub char);

/// Appends a Query message carrying `sql` (a frontend message of the proxy's own).
pub fn query(buf: &mut BytesMut, sql: &str) {
    use bytes::BufMut;
    buf.put_u8(b'Q');
    buf.put_u32((sql.len() + 5) as u32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
}

/// Appends `SHOW setting` through the extended protocol under the statement and portal `name`
/// (Parse, Bind, Execute every row in text, then both closed; frontend messages of the
/// proxy's own, for a [`sync`] to end).
pub fn show(buf: &mut BytesMut, name: &str, setting: &str) {
    use pgwire::messages::extendedquery::{Bind, Execute, Parse};
    let named = || Some(name.to_string());
    put(buf, &Parse::new(named(), format!("SHOW {setting}"), vec![]));
    put(buf, &Bind::new(named(), named(), vec![], vec![], vec![]));
    put(buf, &Execute::new(named(), 0));
    close(buf, b'P', name);
    close(buf, b'S', name);
}

/// Appends a Parse of `sql` as the statement `name` with the parameter types `types` (a
/// frontend message of the proxy's own).
pub fn parse(buf: &mut BytesMut, name: &str, sql: &str, types: &[u32]) {
    use pgwire::messages::extendedquery::Parse;
    put(
        buf,
        &Parse::new(Some(name.to_string()), sql.to_string(), types.to_vec()),
    );
}

/// Appends a Close of the statement (`kind` `S`) or portal (`P`) `name` (a frontend message of
/// the proxy's own).
pub fn close(buf: &mut BytesMut, kind: u8, name: &str) {
    use pgwire::messages::extendedquery::Close;
    put(buf, &Close::new(kind, Some(name.to_string())));
}

/// Appends a Sync (a frontend message of the proxy's own).
pub fn sync(buf: &mut BytesMut) {
    put(buf, &pgwire::messages::extendedquery::Sync::new());
}

/// Decodes one whole message (type byte, length, body).
pub fn decode(msg: &[u8]) -> Result<Frontend<'_>, Malformed> {
    let ty = *msg.first().ok_or(Malformed('?'))?;
    let bad = Malformed(ty as char);
    let body = msg.get(5..).ok_or(bad)?;
    let mut r = Reader(body);
    let m = match ty {
        b'Q' => Frontend::Query(r.cstr().ok_or(bad)?),
        b'P' => {
            let name = r.cstr().ok_or(bad)?;
            let sql = r.cstr().ok_or(bad)?;
            let n = r.i16().ok_or(bad)?;
            let n = usize::try_from(n).map_err(|_| bad)?;
            let mut param_types = Vec::with_capacity(n.min(r.0.len() / 4));
            for _ in 0..n {
                param_types.push(r.i32().ok_or(bad)? as u32);
            }
            Frontend::Parse {
                name,
                sql,
                param_types,
            }
        }
        b'B' => {
            let portal = r.cstr().ok_or(bad)?;
            let statement = r.cstr().ok_or(bad)?;
            let nf = usize::try_from(r.i16().ok_or(bad)?).map_err(|_| bad)?;
            let mut formats = Vec::with_capacity(nf.min(r.0.len() / 2));
            for _ in 0..nf {
                formats.push(r.i16().ok_or(bad)?);
            }
            let np = usize::try_from(r.i16().ok_or(bad)?).map_err(|_| bad)?;
            let mut params = Vec::with_capacity(np.min(r.0.len() / 4));
            for _ in 0..np {
                let len = r.i32().ok_or(bad)?;
                params.push(match usize::try_from(len) {
                    Ok(len) => Some(r.take(len).ok_or(bad)?),
                    Err(_) if len == -1 => None,
                    Err(_) => return Err(bad),
                });
            }
            // Result format codes follow: only their number matters to the proxy, which
            // answers no rows (PostgreSQL refuses more than one for a statement without).
            let result_formats = usize::try_from(r.i16().ok_or(bad)?).map_err(|_| bad)?;
            for _ in 0..result_formats {
                r.i16().ok_or(bad)?;
            }
            Frontend::Bind {
                portal,
                statement,
                formats,
                params,
                result_formats,
            }
        }
        b'D' | b'C' => {
            let kind = r.take(1).ok_or(bad)?[0];
            if kind != b'S' && kind != b'P' {
                return Err(bad);
            }
            let name = r.cstr().ok_or(bad)?;
            if ty == b'D' {
                Frontend::Describe { kind, name }
            } else {
                Frontend::Close { kind, name }
            }
        }
        b'E' => Frontend::Execute {
            portal: r.cstr().ok_or(bad)?,
        },
        b'S' => Frontend::Sync,
        other => Frontend::Other(other),
    };
    Ok(m)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn cstr(&mut self) -> Option<&'a str> {
        let end = self.0.iter().position(|b| *b == 0)?;
        let s = std::str::from_utf8(&self.0[..end]).ok()?;
        self.0 = &self.0[end + 1..];
        Some(s)
    }

    fn i16(&mut self) -> Option<i16> {
        let b = self.take(2)?;
        Some(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        let b = self.take(4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Reassembles whole messages from chunks of a stream (after startup).
#[derive(Debug, Default)]
pub struct Assembler {
    buf: BytesMut,
}

impl Assembler {
    /// Adds a chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole message, if one has arrived. Lengths were checked by the frame tracker
    /// already; a length below 4 yields the 5 header bytes alone.
    pub fn next_message(&mut self) -> Option<Bytes> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        let total = len.max(4) + 1;
        if self.buf.len() < total {
            return None;
        }
        Some(self.buf.split_to(total).freeze())
    }

    /// Whether no partial message is buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::framed as msg;

    #[test]
    fn a_show_is_well_formed_and_uses_only_its_own_names() {
        let mut buf = BytesMut::new();
        show(&mut buf, "wb.x", "statement_timeout");
        sync(&mut buf);
        let mut at = 0;
        let mut got = Vec::new();
        while at < buf.len() {
            let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
            got.push(decode(&buf[at..at + 1 + len]).expect("well formed"));
            at += 1 + len;
        }
        assert_eq!(at, buf.len());
        assert_eq!(
            got,
            vec![
                Frontend::Parse {
                    name: "wb.x",
                    sql: "SHOW statement_timeout",
                    param_types: vec![]
                },
                Frontend::Bind {
                    portal: "wb.x",
                    statement: "wb.x",
                    formats: vec![],
                    params: vec![],
                    result_formats: 0,
                },
                Frontend::Execute { portal: "wb.x" },
                Frontend::Close {
                    kind: b'P',
                    name: "wb.x"
                },
                Frontend::Close {
                    kind: b'S',
                    name: "wb.x"
                },
                Frontend::Sync,
            ]
        );
    }

    #[test]
    fn extended_messages_decode_and_reassemble() {
        let mut parse = b"s1\0UPDATE t SET n = n + $1 WHERE id = $2\0".to_vec();
        parse.extend_from_slice(&2i16.to_be_bytes());
        parse.extend_from_slice(&20i32.to_be_bytes());
        parse.extend_from_slice(&0i32.to_be_bytes());
        let mut bind = b"\0s1\0".to_vec();
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&1i16.to_be_bytes());
        bind.extend_from_slice(&2i16.to_be_bytes());
        bind.extend_from_slice(&8i32.to_be_bytes());
        bind.extend_from_slice(&5i64.to_be_bytes());
        bind.extend_from_slice(&(-1i32).to_be_bytes());
        bind.extend_from_slice(&0i16.to_be_bytes());
        let mut stream = msg(b'P', &parse);
        stream.extend(msg(b'B', &bind));
        stream.extend(msg(b'E', b"\0\0\0\0\0"));
        stream.extend(msg(b'S', b""));
        for split in 0..stream.len() {
            let mut a = Assembler::default();
            let mut seen = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                a.push(part);
                while let Some(m) = a.next_message() {
                    seen.push(decode(&m).map(|f| format!("{f:?}")));
                }
            }
            assert!(a.is_empty());
            assert_eq!(seen.len(), 4, "split at {split}");
        }
        let p = msg(b'P', &parse);
        assert_eq!(
            decode(&p),
            Ok(Frontend::Parse {
                name: "s1",
                sql: "UPDATE t SET n = n + $1 WHERE id = $2",
                param_types: vec![20, 0],
            })
        );
        let b = msg(b'B', &bind);
        let five = 5i64.to_be_bytes();
        assert_eq!(
            decode(&b),
            Ok(Frontend::Bind {
                portal: "",
                statement: "s1",
                formats: vec![1],
                params: vec![Some(&five[..]), None],
                result_formats: 0,
            })
        );
        // Truncated bodies are errors, never panics.
        for cut in 5..b.len() - 2 {
            let mut t = b[..cut].to_vec();
            t[1..5].copy_from_slice(&((cut - 1) as u32).to_be_bytes());
            assert!(decode(&t).is_err(), "cut at {cut}");
        }
        assert_eq!(decode(&msg(b'D', b"X\0")), Err(Malformed('D')));
    }
}
