//! WAL record framing: length, CRC-32 checksum, kind, log sequence number, payload.
//!
//! On disk: `len: u32 LE` (of everything after the checksum) · `crc: u32 LE` (CRC-32 of
//! everything after it) · `kind: u8` · `lsn: u64 LE` · `payload`.

/// Bytes before the checksummed part: length and checksum.
pub const PREFIX: usize = 8;
/// Checksummed header bytes: kind and lsn.
pub const HEADER: usize = 9;
/// The largest payload a record may carry; a longer length field is corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// The kind of the WAL's own skip record, never returned by recovery: its payload (`u64` LE)
/// is the lsn the next record gets ([`super::Wal::advance_to`]).
pub const KIND_SKIP: u8 = 0xFF;

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// What the payload is (the caller's own code).
    pub kind: u8,
    /// The record's log sequence number: 1, 2, 3, … without gaps but where a skip record
    /// moved the numbering on.
    pub lsn: u64,
    /// The caller's bytes.
    pub payload: Vec<u8>,
}

/// Appends the framed record to `out`.
pub fn encode(out: &mut Vec<u8>, kind: u8, lsn: u64, payload: &[u8]) {
    let body_len = (HEADER + payload.len()) as u32;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&lsn.to_le_bytes());
    hasher.update(payload);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&hasher.finalize().to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
}

/// What is at some offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid record and the bytes it takes.
    Record(Record, usize),
    /// The bytes end before the record does (a torn write at the tail).
    Incomplete,
    /// A record whose checksum or length is wrong; `len` is the length it claims (0 if absurd).
    Corrupt {
        /// The claimed total size, when it is plausible.
        len: usize,
    },
}

/// Decodes the record at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < PREFIX {
        return Decoded::Incomplete;
    }
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(HEADER..=HEADER + MAX_PAYLOAD).contains(&body_len) {
        return Decoded::Corrupt { len: 0 };
    }
    let total = PREFIX + body_len;
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[PREFIX..total];
    if crc32fast::hash(body) != crc {
        return Decoded::Corrupt { len: total };
    }
    let kind = body[0];
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&body[1..HEADER]);
    Decoded::Record(
        Record {
            kind,
            lsn: u64::from_le_bytes(lsn_bytes),
            payload: body[HEADER..].to_vec(),
        },
        total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut buf = Vec::new();
        encode(&mut buf, 3, 42, b"hello");
        let Decoded::Record(r, n) = decode(&buf) else {
            panic!("not decoded")
        };
        assert_eq!(
            (r.kind, r.lsn, r.payload.as_slice(), n),
            (3, 42, &b"hello"[..], buf.len())
        );
        assert_eq!(decode(&buf[..buf.len() - 1]), Decoded::Incomplete);
        assert_eq!(decode(&buf[..3]), Decoded::Incomplete);
        let mut flipped = buf.clone();
        flipped[PREFIX + 4] ^= 0x40;
        assert_eq!(decode(&flipped), Decoded::Corrupt { len: buf.len() });
        let mut absurd = buf.clone();
        absurd[3] = 0xff;
        assert_eq!(decode(&absurd), Decoded::Corrupt { len: 0 });
    }
}
