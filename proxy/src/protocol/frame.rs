//! Frame tracking over a byte stream: finds message boundaries (type byte + length) as bytes
//! pass through, without copying or decoding bodies, and checks each header.

/// A problem with a message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length is larger than allowed.
    TooLarge { len: usize },
    /// A length below 4 or a type byte the protocol does not have.
    Invalid { ty: u8 },
}

/// Frontend message types a client may send after startup.
pub fn is_frontend_type(ty: u8) -> bool {
    matches!(
        ty,
        b'B' | b'C'
            | b'd'
            | b'c'
            | b'f'
            | b'D'
            | b'E'
            | b'H'
            | b'F'
            | b'P'
            | b'p'
            | b'Q'
            | b'S'
            | b'X'
    )
}

/// Tracks where messages start in a stream that arrives in arbitrary chunks.
#[derive(Debug)]
pub struct FrameTracker {
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current message still to come.
    remaining: usize,
    max_len: usize,
    frontend: bool,
}

impl FrameTracker {
    /// A tracker for a stream from a client (`frontend`) or a server, with a size limit.
    pub fn new(frontend: bool, max_len: usize) -> Self {
        Self {
            header: [0; 5],
            have: 0,
            remaining: 0,
            max_len,
            frontend,
        }
    }

    /// Whether the stream is between messages (no partial header or body pending).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Feeds a chunk; calls `on_header(type, len, body_at)` for every header completed in it,
    /// `body_at` being the index in `chunk` where that message's body starts.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_header: impl FnMut(u8, usize, usize),
    ) -> Result<(), FrameError> {
        let total = chunk.len();
        let mut chunk = chunk;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len());
                self.remaining -= n;
                chunk = &chunk[n..];
                continue;
            }
            let need = 5 - self.have;
            let n = need.min(chunk.len());
            self.header[self.have..self.have + n].copy_from_slice(&chunk[..n]);
            self.have += n;
            chunk = &chunk[n..];
            if self.have < 5 {
                break;
            }
            let ty = self.header[0];
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            if len < 4 || (self.frontend && !is_frontend_type(ty)) {
                return Err(FrameError::Invalid { ty });
            }
            if len > self.max_len {
                return Err(FrameError::TooLarge { len });
            }
            on_header(ty, len, total - chunk.len());
            self.have = 0;
            self.remaining = len - 4;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::framed as msg;

    #[test]
    fn finds_headers_across_any_split() {
        let mut stream = msg(b'Q', b"select 1\0");
        stream.extend(msg(b'S', b""));
        stream.extend(msg(b'X', b""));
        for split in 0..stream.len() {
            let mut t = FrameTracker::new(true, 1 << 20);
            let mut seen = Vec::new();
            t.feed(&stream[..split], |ty, _, _| seen.push(ty))
                .expect("valid");
            t.feed(&stream[split..], |ty, _, _| seen.push(ty))
                .expect("valid");
            assert_eq!(seen, vec![b'Q', b'S', b'X'], "split at {split}");
            assert!(t.at_boundary());
        }
    }

    #[test]
    fn rejects_garbage_and_oversized() {
        let mut t = FrameTracker::new(true, 100);
        assert_eq!(
            t.feed(b"\x01\x00\x00\x00\x05", |_, _, _| {}),
            Err(FrameError::Invalid { ty: 1 })
        );
        let mut t = FrameTracker::new(true, 100);
        assert_eq!(
            t.feed(&msg(b'Q', &[b'a'; 200]), |_, _, _| {}),
            Err(FrameError::TooLarge { len: 204 })
        );
        let mut t = FrameTracker::new(true, 100);
        assert_eq!(
            t.feed(b"Q\x00\x00\x00\x02", |_, _, _| {}),
            Err(FrameError::Invalid { ty: b'Q' })
        );
    }
}
