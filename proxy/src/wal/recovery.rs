//! Reading the WAL back at start-up: every valid record in order, a torn tail cut, the
//! writer's unwritten reserve (zeros) trimmed, corruption refused.

use super::record::{decode, Decoded, Record, KIND_SKIP};
use super::{segment_paths, WalError};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// What start-up found in the WAL directory.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every valid record, in lsn order.
    pub records: Vec<Record>,
    /// The lsn the next appended record gets.
    pub next_lsn: u64,
    /// Where a torn or corrupt tail was cut: the segment, the offset, and the bytes removed.
    pub cut_tail: Option<(PathBuf, u64, u64)>,
}

/// Reads every segment in `dir`. A damaged record at the very end of the last segment (a write
/// torn by a crash) is cut off and reported; damage anywhere else is an error, because skipping
/// it would silently drop acknowledged writes.
pub fn recover(dir: &Path) -> Result<Recovered, WalError> {
    let segments = segment_paths(dir)?;
    let mut out = Recovered {
        next_lsn: segments.first().map_or(1, |(first, _)| *first),
        ..Recovered::default()
    };
    let last = segments.len().saturating_sub(1);
    for (i, (first_lsn, path)) in segments.iter().enumerate() {
        if *first_lsn != out.next_lsn {
            return Err(WalError::Corrupt {
                segment: path.clone(),
                offset: 0,
                reason: format!(
                    "segment starts at lsn {first_lsn}, expected {}",
                    out.next_lsn
                ),
            });
        }
        let data = std::fs::read(path).map_err(|e| WalError::io(path, e))?;
        let mut off = 0usize;
        while off < data.len() {
            let damage = match decode(&data[off..]) {
                Decoded::Record(r, n) => {
                    if r.lsn != out.next_lsn {
                        return Err(WalError::Corrupt {
                            segment: path.clone(),
                            offset: off as u64,
                            reason: format!("lsn {} where {} was expected", r.lsn, out.next_lsn),
                        });
                    }
                    off += n;
                    if r.kind == KIND_SKIP {
                        // The writer moved its numbering on (Wal::advance_to).
                        let to = <[u8; 8]>::try_from(r.payload.as_slice())
                            .map(u64::from_le_bytes)
                            .ok()
                            .filter(|to| *to > r.lsn);
                        let Some(to) = to else {
                            return Err(WalError::Corrupt {
                                segment: path.clone(),
                                offset: (off - n) as u64,
                                reason: format!("skip record {} without a later lsn", r.lsn),
                            });
                        };
                        out.next_lsn = to;
                        continue;
                    }
                    // A skip to the very end of the numbering leaves no lsn for a record.
                    let Some(next) = out.next_lsn.checked_add(1) else {
                        return Err(WalError::Corrupt {
                            segment: path.clone(),
                            offset: (off - n) as u64,
                            reason: format!("record {} past the last lsn", r.lsn),
                        });
                    };
                    out.next_lsn = next;
                    out.records.push(r);
                    continue;
                }
                Decoded::Incomplete => "incomplete record",
                Decoded::Corrupt { .. } => "checksum or length mismatch",
            };
            if data[off..].iter().all(|&b| b == 0) {
                // Disk reserved ahead of the appends and never written (the writer maps its
                // segments): the segment ends here.
                trim(path, off as u64)?;
                break;
            }
            let at_tail = i == last && !valid_record_follows(&data, off, out.next_lsn);
            if !at_tail {
                return Err(WalError::Corrupt {
                    segment: path.clone(),
                    offset: off as u64,
                    reason: format!("{damage} followed by more log"),
                });
            }
            let cut = (data.len() - off) as u64;
            trim(path, off as u64)?;
            tracing::warn!(segment = %path.display(), offset = off, bytes = cut, reason = damage, "cut a torn WAL tail");
            out.cut_tail = Some((path.clone(), off as u64, cut));
            break;
        }
    }
    Ok(out)
}

/// Cuts the segment at `path` to `len` bytes, durably.
fn trim(path: &Path, len: u64) -> Result<(), WalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    f.set_len(len).map_err(|e| WalError::io(path, e))?;
    f.sync_all().map_err(|e| WalError::io(path, e))
}

/// Whether a valid record with an lsn at or after `lsn` starts anywhere after `from`.
fn valid_record_follows(data: &[u8], from: usize, lsn: u64) -> bool {
    (from + 1..data.len())
        .any(|o| matches!(decode(&data[o..]), Decoded::Record(r, _) if r.lsn >= lsn))
}
