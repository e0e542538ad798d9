//! ack-everything: a minimal PostgreSQL wire server that acknowledges every statement at once.
//!
//! It is the physical limit of the wire for `bench/writes`: trust authentication, every simple
//! query and every Execute answered with a command tag derived from the statement's first
//! keyword, no storage. Usage: `ack-everything 127.0.0.1:PORT`.

use bytes::{Buf, BufMut, BytesMut};
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:6543".to_string());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("ack-everything listening on {addr}");
    loop {
        let (sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        tokio::spawn(async move {
            if let Err(e) = serve(sock).await {
                eprintln!("ack-everything: connection ended: {e}");
            }
        });
    }
}

/// Appends one backend message: type byte, length, body.
fn msg(out: &mut BytesMut, ty: u8, body: &[u8]) {
    out.put_u8(ty);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// The command tag PostgreSQL would send for a one-row statement starting with this keyword.
fn tag_for(sql: &str) -> Option<String> {
    let word: String = sql
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase();
    Some(match word.as_str() {
        "" => return None,
        "INSERT" => "INSERT 0 1".into(),
        "UPDATE" => "UPDATE 1".into(),
        "DELETE" => "DELETE 1".into(),
        "SELECT" => "SELECT 0".into(),
        "BEGIN" | "START" => "BEGIN".into(),
        "END" | "COMMIT" => "COMMIT".into(),
        other => other.to_string(),
    })
}

fn command_complete(out: &mut BytesMut, sql: &str) {
    match tag_for(sql) {
        Some(tag) => {
            let mut b = Vec::new();
            cstr(&mut b, &tag);
            msg(out, b'C', &b);
        }
        None => msg(out, b'I', &[]),
    }
}

fn param_count(sql: &str) -> i16 {
    let bytes = sql.as_bytes();
    let mut max = 0i16;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let mut j = i + 1;
            let mut n: i16 = 0;
            while j < bytes.len() && bytes[j].is_ascii_digit() {
                n = n
                    .saturating_mul(10)
                    .saturating_add((bytes[j] - b'0') as i16);
                j += 1;
            }
            max = max.max(n);
            i = j;
        } else {
            i += 1;
        }
    }
    max
}

fn read_cstr(buf: &mut &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    *buf = &buf[(end + 1).min(buf.len())..];
    s
}

async fn serve(mut sock: TcpStream) -> std::io::Result<()> {
    // Startup (answering SSL/GSS requests with 'N').
    loop {
        let len = sock.read_i32().await?;
        let code = sock.read_i32().await?;
        let mut rest = vec![0u8; (len - 8).max(0) as usize];
        sock.read_exact(&mut rest).await?;
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            sock.write_all(b"N").await?;
            continue;
        }
        break;
    }
    let mut out = BytesMut::with_capacity(8192);
    msg(&mut out, b'R', &0i32.to_be_bytes());
    for (k, v) in [
        ("server_version", "15.0"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("is_superuser", "on"),
    ] {
        let mut b = Vec::new();
        cstr(&mut b, k);
        cstr(&mut b, v);
        msg(&mut out, b'S', &b);
    }
    let mut key = Vec::new();
    key.extend_from_slice(&1i32.to_be_bytes());
    key.extend_from_slice(&2i32.to_be_bytes());
    msg(&mut out, b'K', &key);
    msg(&mut out, b'Z', b"I");
    sock.write_all(&out).await?;
    out.clear();

    let mut statements: HashMap<String, String> = HashMap::new();
    let mut portals: HashMap<String, String> = HashMap::new();
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    loop {
        while inbuf.len() >= 5 {
            let len = i32::from_be_bytes([inbuf[1], inbuf[2], inbuf[3], inbuf[4]]) as usize;
            if inbuf.len() < len + 1 {
                break;
            }
            let ty = inbuf[0];
            inbuf.advance(5);
            let body = inbuf.split_to(len - 4);
            let mut b: &[u8] = &body;
            match ty {
                b'Q' => {
                    let sql = read_cstr(&mut b);
                    let parts: Vec<&str> =
                        sql.split(';').filter(|s| !s.trim().is_empty()).collect();
                    if parts.is_empty() {
                        msg(&mut out, b'I', &[]);
                    }
                    for p in parts {
                        command_complete(&mut out, p);
                    }
                    msg(&mut out, b'Z', b"I");
                }
                b'P' => {
                    let name = read_cstr(&mut b);
                    let sql = read_cstr(&mut b);
                    statements.insert(name, sql);
                    msg(&mut out, b'1', &[]);
                }
                b'B' => {
                    let portal = read_cstr(&mut b);
                    let stmt = read_cstr(&mut b);
                    let sql = statements.get(&stmt).cloned().unwrap_or_default();
                    portals.insert(portal, sql);
                    msg(&mut out, b'2', &[]);
                }
                b'D' => {
                    let kind = b.first().copied().unwrap_or(b'P');
                    b = &b[1.min(b.len())..];
                    let name = read_cstr(&mut b);
                    if kind == b'S' {
                        let n = statements.get(&name).map(|s| param_count(s)).unwrap_or(0);
                        let mut pd = Vec::new();
                        pd.extend_from_slice(&n.to_be_bytes());
                        for _ in 0..n {
                            pd.extend_from_slice(&25u32.to_be_bytes());
                        }
                        msg(&mut out, b't', &pd);
                    }
                    msg(&mut out, b'n', &[]);
                }
                b'E' => {
                    let portal = read_cstr(&mut b);
                    let sql = portals.get(&portal).cloned().unwrap_or_default();
                    command_complete(&mut out, &sql);
                }
                b'C' => msg(&mut out, b'3', &[]),
                b'S' => msg(&mut out, b'Z', b"I"),
                b'H' => {}
                b'X' => return Ok(()),
                _ => {}
            }
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
        if sock.read_buf(&mut inbuf).await? == 0 {
            return Ok(());
        }
    }
}
