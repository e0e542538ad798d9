//! Backend messages the proxy sends itself, encoded with pgwire's message codecs.

use super::put;
use bytes::BufMut;
use bytes::BytesMut;
use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};

/// Severity of an error the proxy raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement fails; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// ErrorResponse with severity, SQLSTATE and message (and an optional hint).
pub fn error(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    let mut fields = vec![
        (b'S', sev.to_string()),
        (b'V', sev.to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(h) = hint {
        fields.push((b'H', h.to_string()));
    }
    put(buf, &ErrorResponse::new(fields));
}

/// NoticeResponse (severity NOTICE, SQLSTATE 00000) with a message.
pub fn notice(buf: &mut BytesMut, message: &str) {
    let fields = vec![
        (b'S', "NOTICE".to_string()),
        (b'V', "NOTICE".to_string()),
        (b'C', "00000".to_string()),
        (b'M', message.to_string()),
    ];
    put(buf, &NoticeResponse::new(fields));
}

/// ReadyForQuery with the transaction status PostgreSQL last reported (`I`, `T` or `E`),
/// written as it came.
pub fn ready_in(buf: &mut BytesMut, status: u8) {
    buf.extend_from_slice(&[b'Z', 0, 0, 0, 5, status]);
}

/// ReadyForQuery (idle).
pub fn ready(buf: &mut BytesMut) {
    put(buf, &ReadyForQuery::new(TransactionStatus::Idle));
}

/// CommandComplete with a tag.
pub fn complete(buf: &mut BytesMut, tag: &str) {
    // By hand: pgwire's CommandComplete owns its tag, a copy per acknowledged write.
    buf.reserve(tag.len() + 6);
    buf.put_u8(b'C');
    buf.put_i32(tag.len() as i32 + 5);
    buf.put_slice(tag.as_bytes());
    buf.put_u8(0);
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    put(buf, &Authentication::Ok);
}

/// ParameterStatus.
pub fn parameter(buf: &mut BytesMut, name: &str, value: &str) {
    put(
        buf,
        &ParameterStatus::new(name.to_string(), value.to_string()),
    );
}

/// BackendKeyData with a 4-byte secret (protocol 3.0).
pub fn key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    put(buf, &BackendKeyData::new(pid, SecretKey::I32(secret)));
}

/// The type of a column of a result set the proxy makes (its values are sent as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Text,
    Int8,
}

impl Type {
    /// PostgreSQL's oid and length of the type.
    fn oid_len(self) -> (u32, i16) {
        match self {
            Type::Text => (25, -1),
            Type::Int8 => (20, 8),
        }
    }
}

/// A result set in text format: RowDescription, one DataRow per row (NULL for `None`),
/// CommandComplete. Values of an `Int8` column must be integers written in decimal.
pub fn rows(buf: &mut BytesMut, columns: &[(&str, Type)], data: &[Vec<Option<String>>]) {
    let fields = columns
        .iter()
        .map(|(name, ty)| {
            let (oid, len) = ty.oid_len();
            FieldDescription::new(name.to_string(), 0, 0, oid, len, -1, 0)
        })
        .collect();
    put(buf, &RowDescription::new(fields));
    for row in data {
        let mut body = BytesMut::new();
        for v in row {
            match v {
                Some(s) => {
                    body.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    body.extend_from_slice(s.as_bytes());
                }
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        put(buf, &DataRow::new(body, row.len() as i16));
    }
    complete(buf, &format!("SHOW {}", data.len()));
}

/// ParseComplete.
pub fn parse_complete(buf: &mut BytesMut) {
    buf.extend_from_slice(b"1\0\0\0\x04");
}

/// BindComplete.
pub fn bind_complete(buf: &mut BytesMut) {
    buf.extend_from_slice(b"2\0\0\0\x04");
}

/// CloseComplete.
pub fn close_complete(buf: &mut BytesMut) {
    buf.extend_from_slice(b"3\0\0\0\x04");
}

/// NoData (the statement returns no rows).
pub fn no_data(buf: &mut BytesMut) {
    buf.extend_from_slice(b"n\0\0\0\x04");
}

/// ParameterDescription with the parameters' type oids.
pub fn parameter_description(buf: &mut BytesMut, oids: &[u32]) {
    buf.extend_from_slice(b"t");
    buf.extend_from_slice(&((6 + 4 * oids.len()) as u32).to_be_bytes());
    buf.extend_from_slice(&(oids.len() as u16).to_be_bytes());
    for o in oids {
        buf.extend_from_slice(&o.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::messages::response::CommandComplete;

    #[test]
    fn command_complete_is_encoded_as_pgwire_does() {
        for tag in ["UPDATE 1", "INSERT 0 12", ""] {
            let mut ours = BytesMut::new();
            complete(&mut ours, tag);
            let mut theirs = BytesMut::new();
            put(&mut theirs, &CommandComplete::new(tag.to_string()));
            assert_eq!(ours, theirs, "{tag}");
        }
    }
}
