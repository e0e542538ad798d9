//! Client → server bytes as the proxy sees them: the startup packet (`read_packet`, driven
//! through tokio's AsyncRead for `&[u8]`), then the message stream through `FrameTracker`
//! (fed whole and in arbitrary chunks: both must find the same headers), and every complete
//! message dispatched as the session would: Query through the simple-protocol write path,
//! Parse into a prepared `Template`, Bind through `Template::bind` (text and binary values).
//!
//! Input: byte 0 seeds the chunking and picks the size limit; the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::OnceLock;
use writebehind_proxy::protocol::frame::{FrameError, FrameTracker};
use writebehind_proxy::protocol::startup::{read_packet, StartupError, StartupPacket};
use writebehind_proxy::writebehind::catalog::Catalog;
use writebehind_proxy::writebehind::template::Template;
use writebehind_proxy::writebehind::{lexer, recognize};

static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static CATALOG: OnceLock<Catalog> = OnceLock::new();

type Headers = Vec<(u8, usize, usize)>;

/// Feeds `stream` in chunks whose sizes come from `seed`; headers with absolute body offsets.
fn track(stream: &[u8], max_len: usize, seed: u8) -> (Headers, Result<(), FrameError>, bool) {
    let mut t = FrameTracker::new(true, max_len);
    let mut headers = Vec::new();
    let mut at = 0;
    let mut x = u32::from(seed) | 1;
    while at < stream.len() {
        // xorshift: chunk sizes 1..=17, or the whole rest when seed is 0
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = if seed == 0 {
            stream.len() - at
        } else {
            (1 + (x % 17) as usize).min(stream.len() - at)
        };
        let chunk = &stream[at..at + n];
        let r = t.feed(chunk, |ty, len, body_at| {
            assert!(body_at <= chunk.len(), "body offset outside the chunk");
            headers.push((ty, len, at + body_at));
        });
        if r.is_err() {
            return (headers, r, false);
        }
        at += n;
    }
    let boundary = t.at_boundary();
    (headers, Ok(()), boundary)
}

/// `protocol::frontend` (the proxy's own Parse/Bind decoder and message assembler): checked
/// with the `frontend` feature, which needs a proxy that has the module.
#[cfg(feature = "frontend")]
mod decoder {
    use bytes::Bytes;
    use writebehind_proxy::protocol::frontend::{self, Assembler, Frontend};

    /// Up to the first framing error (the session stops there), the assembler yields exactly
    /// the messages the tracker delimited, whatever the chunking.
    pub fn check_assembler(
        stream: &[u8],
        headers: &[(u8, usize, usize)],
        ok: bool,
        boundary: bool,
        ctl: u8,
    ) {
        let valid_end = if ok {
            stream.len()
        } else {
            headers.last().map_or(0, |&(_, len, at)| at + len - 4)
        };
        let mut asm = Assembler::default();
        let mut whole: Vec<Bytes> = Vec::new();
        for chunk in stream[..valid_end].chunks(usize::from(ctl % 13) + 1) {
            asm.push(chunk);
            while let Some(m) = asm.next_message() {
                whole.push(m);
            }
        }
        let complete: Vec<&[u8]> = headers
            .iter()
            .filter(|&&(_, len, at)| at + len - 4 <= valid_end)
            .map(|&(_, len, at)| &stream[at - 5..at + len - 4])
            .collect();
        assert_eq!(
            whole.len(),
            complete.len(),
            "assembler and tracker disagree"
        );
        for (a, b) in whole.iter().zip(&complete) {
            assert_eq!(
                &a[..],
                *b,
                "assembler returned other bytes than the tracker framed"
            );
        }
        assert_eq!(asm.is_empty(), boundary || !ok);
    }

    /// The proxy's decoder agrees with the bounds-checked reference reader.
    pub fn check_decode(msg: &[u8], body: &[u8]) {
        match frontend::decode(msg) {
            Ok(Frontend::Parse {
                name,
                sql,
                param_types,
            }) => {
                let (n, q, oids) = writebehind_fuzz::parse_body(body).expect("reference Parse");
                assert_eq!((n, q, &oids), (name.as_bytes(), sql, &param_types));
            }
            Ok(Frontend::Bind {
                statement,
                formats,
                params,
                ..
            }) => {
                let (st, f, p) = writebehind_fuzz::bind_body(body).expect("reference Bind");
                assert_eq!((st, &f, &p), (statement.as_bytes(), &formats, &params));
            }
            Ok(Frontend::Query(q)) => {
                assert!(body.starts_with(q.as_bytes()) && body.get(q.len()) == Some(&0));
            }
            Ok(Frontend::Other(t)) => assert!(!b"QPBDCES".contains(&t)),
            Ok(_) | Err(_) => {}
        }
    }
}

#[cfg(not(feature = "frontend"))]
mod decoder {
    pub fn check_assembler(_: &[u8], _: &[(u8, usize, usize)], _: bool, _: bool, _: u8) {}
    pub fn check_decode(_: &[u8], _: &[u8]) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    });
    let cat = CATALOG.get_or_init(writebehind_fuzz::catalog);

    // The first packet of a connection.
    let mut reader: &[u8] = rest;
    let first = rt.block_on(read_packet(&mut reader));
    let used = rest.len() - reader.len();
    if first.is_ok() {
        // Exactly the declared length was consumed (SSLRequest / GSSENCRequest with a longer
        // declared length are accepted, as PostgreSQL does).
        let declared = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        assert_eq!(used as i32, declared, "startup packet length not honoured");
    }
    let stream = match first {
        Ok(StartupPacket::Startup { raw, params }) => {
            assert_eq!(
                raw,
                &rest[..used],
                "raw startup bytes differ from the input"
            );
            for (k, _) in &params {
                assert!(!k.is_empty());
            }
            reader
        }
        Ok(StartupPacket::Cancel { .. }) => {
            assert_eq!(used, 16);
            reader
        }
        Ok(StartupPacket::Ssl | StartupPacket::GssEnc) => reader,
        Err(
            StartupError::Closed
            | StartupError::Invalid(_)
            | StartupError::UnsupportedProtocol { .. },
        ) => rest,
        Err(StartupError::Io(e)) => panic!("I/O error from an in-memory reader: {e}"),
    };

    // Framing: whole and chunked must agree.
    let max_len = if ctl & 0x80 != 0 { 64 } else { 1 << 20 };
    let (headers, result, boundary) = track(stream, max_len, 0);
    let (h2, r2, b2) = track(stream, max_len, ctl & 0x7f | 1);
    assert_eq!(headers, h2, "chunking changed the headers found");
    assert_eq!(result, r2, "chunking changed the framing result");
    assert_eq!(boundary, b2);
    let mut expect = 0usize;
    for &(ty, len, body_at) in &headers {
        assert_eq!(
            body_at,
            expect + 5,
            "header not where the previous message ended"
        );
        assert!((4..=max_len).contains(&len));
        assert_eq!(stream[expect], ty);
        expect = body_at + len - 4;
    }
    if result.is_ok() {
        assert_eq!(boundary, expect == stream.len());
    }

    decoder::check_assembler(stream, &headers, result.is_ok(), boundary, ctl);

    // Dispatch of every complete message, as the session would.
    let mut prepared: HashMap<&[u8], (Template, u32)> = HashMap::new();
    for &(ty, len, body_at) in &headers {
        let Some(body) = stream.get(body_at..body_at + len - 4) else {
            break; // the last message is incomplete
        };
        let msg = &stream[body_at - 5..body_at + len - 4];
        decoder::check_decode(msg, body);
        match ty {
            b'Q' => {
                let Some((0, text)) = body.split_last() else {
                    continue;
                };
                if let Ok(sql) = std::str::from_utf8(text) {
                    writebehind_fuzz::simple_path(cat, sql, true);
                }
            }
            b'P' => {
                let Some((name, query, oids)) = writebehind_fuzz::parse_body(body) else {
                    continue;
                };
                prepared.remove(name);
                let Ok(tokens) = lexer::lex(query, true) else {
                    continue;
                };
                let stmts = lexer::statements(&tokens);
                let [stmt] = stmts.as_slice() else {
                    continue;
                };
                let Some(w) = recognize::recognize(stmt) else {
                    continue;
                };
                let Some(table) = writebehind_fuzz::resolve(cat, &w) else {
                    continue;
                };
                if let Some(t) = Template::prepare(w, table, &oids) {
                    for (i, &d) in oids.iter().enumerate() {
                        assert!(d == 0 || d == t.param_types()[i], "declared type changed");
                    }
                    prepared.insert(name, (t, table.relid));
                }
            }
            b'B' => {
                let Some((stmt, formats, params)) = writebehind_fuzz::bind_body(body) else {
                    continue;
                };
                let Some((t, relid)) = prepared.get(stmt) else {
                    continue;
                };
                let Some(table) = cat.tables.iter().find(|t| t.relid == *relid) else {
                    continue;
                };
                if let Some(changes) = t.bind(&params, &formats, table) {
                    assert!(!changes.is_empty());
                    assert_eq!(params.len(), t.param_types().len());
                    writebehind_fuzz::check_changes(&changes);
                }
            }
            _ => {}
        }
    }
});
