//! The first packet of a connection (no type byte): SSL/GSS negotiation, cancel requests,
//! and the StartupMessage with its parameters.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Protocol codes of the special startup packets.
pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
/// The largest startup packet accepted (PostgreSQL uses 10000).
pub const MAX_STARTUP_LEN: usize = 10_000;

/// A decoded startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest with the key the client was given.
    Cancel { pid: i32, secret: i32 },
    /// StartupMessage: the raw bytes (to forward as they are) and the parameters.
    Startup {
        raw: Vec<u8>,
        params: Vec<(String, String)>,
    },
}

/// Why the startup packet was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("connection closed during startup")]
    Closed,
    #[error("invalid startup packet: {0}")]
    Invalid(String),
    /// A protocol version other than 3.x (what PostgreSQL 15 says, 0A000).
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol { major: i32, minor: i32 },
    #[error("I/O error during startup: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one startup packet.
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, StartupError> {
    let len = match r.read_i32().await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(StartupError::Closed)
        }
        Err(e) => return Err(e.into()),
    };
    if !(8..=MAX_STARTUP_LEN as i32).contains(&len) {
        return Err(StartupError::Invalid(format!("length {len}")));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => StartupError::Closed,
        _ => StartupError::Io(e),
    })?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    match code {
        SSL_REQUEST => Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST if body.len() == 12 => Ok(StartupPacket::Cancel {
            pid: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            secret: i32::from_be_bytes([body[8], body[9], body[10], body[11]]),
        }),
        c if c >> 16 == 3 => {
            let params = parse_params(&body[4..])?;
            let mut raw = Vec::with_capacity(len as usize);
            raw.extend_from_slice(&len.to_be_bytes());
            raw.extend_from_slice(&body);
            Ok(StartupPacket::Startup { raw, params })
        }
        c => Err(StartupError::UnsupportedProtocol {
            major: c >> 16,
            minor: c & 0xffff,
        }),
    }
}

fn parse_params(mut b: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut out = Vec::new();
    let next = |b: &mut &[u8]| -> Result<String, StartupError> {
        let end = b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| StartupError::Invalid("unterminated parameter".into()))?;
        let s = String::from_utf8_lossy(&b[..end]).into_owned();
        *b = &b[end + 1..];
        Ok(s)
    };
    loop {
        let k = next(&mut b)?;
        if k.is_empty() {
            return Ok(out);
        }
        let v = next(&mut b)?;
        out.push((k, v));
    }
}

/// Builds a CancelRequest packet.
pub fn cancel_packet(pid: i32, secret: i32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[..4].copy_from_slice(&16i32.to_be_bytes());
    p[4..8].copy_from_slice(&CANCEL_REQUEST.to_be_bytes());
    p[8..12].copy_from_slice(&pid.to_be_bytes());
    p[12..].copy_from_slice(&secret.to_be_bytes());
    p
}

/// An AuthenticationSASL message (`R`, code 10) without `SCRAM-SHA-256-PLUS`, or `None` for
/// any other message. Channel binding ties SCRAM to the TLS session it runs in, and the
/// client's TLS session (if any) ends at the proxy, not at PostgreSQL: offered to the client,
/// it makes every SCRAM login fail when the proxy reaches PostgreSQL over TLS.
pub fn without_channel_binding(msg: &[u8]) -> Option<Vec<u8>> {
    if msg.first() != Some(&b'R') || msg.get(5..9) != Some(&10i32.to_be_bytes()[..]) {
        return None;
    }
    let names = msg.get(9..)?;
    let kept: Vec<&[u8]> = names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && *n != b"SCRAM-SHA-256-PLUS")
        .collect();
    if kept.is_empty() {
        return None; // Nothing else offered: PostgreSQL's own message, and its own failure.
    }
    let mut body: Vec<u8> = 10i32.to_be_bytes().to_vec();
    for n in kept {
        body.extend_from_slice(n);
        body.push(0);
    }
    body.push(0);
    let mut out = vec![b'R'];
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod channel_binding_tests {
    use super::without_channel_binding;

    fn sasl(names: &[&str]) -> Vec<u8> {
        let mut body = 10i32.to_be_bytes().to_vec();
        for n in names {
            body.extend_from_slice(n.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = vec![b'R'];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn scram_plus_is_not_offered_to_clients() {
        let offered = sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(
            without_channel_binding(&offered),
            Some(sasl(&["SCRAM-SHA-256"]))
        );
        assert_eq!(
            without_channel_binding(&sasl(&["SCRAM-SHA-256"])),
            Some(sasl(&["SCRAM-SHA-256"]))
        );
        // AuthenticationOk and other messages are left alone.
        assert_eq!(without_channel_binding(b"R\0\0\0\x08\0\0\0\0"), None);
        assert_eq!(without_channel_binding(b"Z\0\0\0\x05I"), None);
    }
}
