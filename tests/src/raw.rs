//! A raw protocol-3 client for tests that must send or read what drivers do not: a session
//! opened with a StartupMessage (trust authentication), messages built and read by hand.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A message: type byte, length, body.
pub fn message(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// `parts`, each ended by a zero byte.
pub fn cstr(parts: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p.as_bytes());
        b.push(0);
    }
    b
}

/// A simple-protocol Query.
pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', &cstr(&[sql]))
}

/// Connects to `port` as `user` on `database` (trust authentication) and reads up to the first
/// ReadyForQuery; reads time out after 10 s.
pub fn session(port: u16, user: &str, database: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut body = 196608i32.to_be_bytes().to_vec();
    body.extend(cstr(&["user", user, "database", database, ""]));
    s.write_all(&((body.len() + 4) as u32).to_be_bytes())?;
    s.write_all(&body)?;
    read_to_ready(&mut s)?;
    Ok(s)
}

/// One message: its type and body.
pub fn read_message(s: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    s.read_exact(&mut body)?;
    Ok((head[0], body))
}

/// The messages up to and including the next ReadyForQuery.
pub fn read_to_ready(s: &mut TcpStream) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    loop {
        let (ty, body) = read_message(s)?;
        out.push((ty, body));
        if ty == b'Z' {
            return Ok(out);
        }
    }
}

/// The columns of a RowDescription body: name and type oid.
pub fn columns(body: &[u8]) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut at = 2;
    while at < body.len() {
        let Some(end) = body[at..].iter().position(|&b| b == 0) else {
            break;
        };
        let name = String::from_utf8_lossy(&body[at..at + end]).into_owned();
        // Table oid (4), column number (2), then the type oid (4), size, modifier, format.
        let oid_at = at + end + 1 + 6;
        let Some(oid) = body.get(oid_at..oid_at + 4) else {
            break;
        };
        out.push((name, u32::from_be_bytes([oid[0], oid[1], oid[2], oid[3]])));
        at = oid_at + 4 + 2 + 4 + 2;
    }
    out
}
