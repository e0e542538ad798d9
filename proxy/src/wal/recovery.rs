//! Reading the WAL back at start-up: every valid record in order, a torn tail cut, the
//! writer's unwritten reserve (zeros) trimmed, a machine crash's lost pages cut after a reboot,
//! corruption refused.

use super::record::{decode, Decoded, Record, KIND_SKIP};
use super::{segment_paths, WalError};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// The granularity at which a crash loses writes: a disk sector (pages are whole sectors).
const SECTOR: usize = 512;

/// What start-up found in the WAL directory.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every valid record, in lsn order.
    pub records: Vec<Record>,
    /// The lsn the next appended record gets.
    pub next_lsn: u64,
    /// Where a torn or corrupt tail was cut: the segment, the offset, and the bytes removed.
    pub cut_tail: Option<(PathBuf, u64, u64)>,
    /// Where a machine crash's damage ended the log (only when one was possible).
    pub lost: Option<Lost>,
}

/// The end a machine crash gave the log: pages above the last group fsync that never reached
/// the disk, with valid records after them that did.
#[derive(Debug)]
pub struct Lost {
    /// The segment and offset the log now ends at.
    pub segment: PathBuf,
    /// Byte offset in `segment`.
    pub offset: u64,
    /// What was found there.
    pub reason: String,
    /// Later segments, renamed to `<name>.lost-<unix seconds>` (kept for inspection).
    pub set_aside: Vec<PathBuf>,
}

/// Reads every segment in `dir`. A damaged record at the very end of the last segment (a write
/// torn by a crash) is cut off and reported; damage anywhere else is an error, because skipping
/// it would silently drop acknowledged writes. Except after a machine crash
/// (`crash_possible`: the machine rebooted since the WAL was last opened): pages written after
/// the last group fsync may then be lost in any order, leaving zeros (a hole) or a segment
/// that ends early, with valid log after it. Damage of that shape ends the log there; the
/// segments after it are set aside. It lies above the last fsync, so only writes `wal` mode
/// may lose in a machine crash are lost, and none that `fsync` mode acknowledged.
pub fn recover(dir: &Path, crash_possible: bool) -> Result<Recovered, WalError> {
    let segments = segment_paths(dir)?;
    let mut out = Recovered {
        next_lsn: segments.first().map_or(1, |(first, _)| *first),
        ..Recovered::default()
    };
    let last = segments.len().saturating_sub(1);
    // Whether the segment before ended in a sector or more of zeros, and where its records end.
    let mut zero_end = false;
    let mut records_end = 0usize;
    'segments: for (i, (first_lsn, path)) in segments.iter().enumerate() {
        if *first_lsn != out.next_lsn {
            if crash_possible && zero_end && *first_lsn > out.next_lsn {
                // The segment before ended early, in zeros: its last pages were lost.
                // It becomes the last segment, which the writer appends to: cut its zeros.
                let prev_path = &segments[i - 1].1;
                trim(prev_path, records_end as u64)?;
                out.lost = Some(Lost {
                    segment: prev_path.clone(),
                    offset: records_end as u64,
                    reason: format!(
                        "segment {} starts at lsn {first_lsn}, expected {}",
                        path.display(),
                        out.next_lsn
                    ),
                    set_aside: set_aside(dir, &segments[i..])?,
                });
                break;
            }
            return Err(WalError::Corrupt {
                segment: path.clone(),
                offset: 0,
                reason: format!(
                    "segment starts at lsn {first_lsn}, expected {}",
                    out.next_lsn
                ),
            });
        }
        zero_end = false;
        let data = std::fs::read(path).map_err(|e| WalError::io(path, e))?;
        records_end = data.len();
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
                Decoded::Incomplete => ("incomplete record", None),
                Decoded::Corrupt { len: 0 } => ("checksum or length mismatch", None),
                Decoded::Corrupt { len } => ("checksum or length mismatch", Some(len)),
            };
            // Where the damaged record ends by its own length field, if that is plausible.
            let (damage, declared) = damage;
            if data[off..].iter().all(|&b| b == 0) {
                // Disk reserved ahead of the appends and never written (the writer maps its
                // segments), or the padding of a rotated segment: the segment ends here. A
                // whole sector or more of them in a segment that was rotated away is also what
                // a crash that lost its last pages leaves; they stay (only the last segment is
                // appended to, and is cut), so a later start after a reboot still sees them.
                // A whole zero sector: from the one `off` is in if that is all zeros, else the next.
                let sector = off / SECTOR * SECTOR;
                let start = if data[sector..off].iter().all(|&b| b == 0) {
                    sector
                } else {
                    sector + SECTOR
                };
                zero_end = start + SECTOR <= data.len();
                if i == last {
                    trim(path, off as u64)?;
                }
                records_end = off;
                break;
            }
            let follows = next_valid_record(&data, off, out.next_lsn);
            if i == last && follows.is_none() {
                let cut = (data.len() - off) as u64;
                trim(path, off as u64)?;
                tracing::warn!(segment = %path.display(), offset = off, bytes = cut, reason = damage, "cut a torn WAL tail");
                out.cut_tail = Some((path.clone(), off as u64, cut));
                break;
            }
            let end = follows.unwrap_or(data.len());
            let declared_end = declared.map_or(end, |len| (off + len).min(end));
            if crash_possible && lost_page_shaped(&data, off, declared_end, end) {
                // What is cut stays readable beside the log, with the later segments.
                let copy = lost_name(path);
                write_synced(&copy, &data)?;
                trim(path, off as u64)?;
                let mut aside = vec![copy];
                aside.extend(set_aside(dir, &segments[i + 1..])?);
                sync_dir(dir)?;
                out.lost = Some(Lost {
                    segment: path.clone(),
                    offset: off as u64,
                    reason: format!("{damage}, with zeros where a lost page was"),
                    set_aside: aside,
                });
                break 'segments;
            }
            return Err(WalError::Corrupt {
                segment: path.clone(),
                offset: off as u64,
                reason: format!("{damage} followed by more log"),
            });
        }
    }
    if let Some(lost) = &out.lost {
        tracing::warn!(
            segment = %lost.segment.display(),
            offset = lost.offset,
            reason = %lost.reason,
            set_aside = ?lost.set_aside,
            next_lsn = out.next_lsn,
            "the machine rebooted since the WAL was last opened, and pages written after its last fsync were lost: the WAL ends there (in durability wal, writes of the last wal_fsync_interval before the crash may be lost; fsync acknowledged none of them)"
        );
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

/// Where the first valid record with an lsn at or after `lsn` starts after `from`.
fn next_valid_record(data: &[u8], from: usize, lsn: u64) -> Option<usize> {
    (from + 1..data.len())
        .find(|&o| matches!(decode(&data[o..]), Decoded::Record(r, _) if r.lsn >= lsn))
}

/// Whether the damage at `from` has the shape of a page the crash lost: a whole sector of zeros
/// reaching into the damaged span (up to `end`, the next valid record) that begins before the
/// damaged record's own end (`declared_end`, by its length field; `end` if the length field is gone).
/// A flipped bit leaves no such zeros; the zeros a segment may have after its last record
/// (its reserve) begin after that record's end. The sector may begin before `from`: the
/// record before it can end in zeros of its own, intact although its page was lost.
fn lost_page_shaped(data: &[u8], from: usize, declared_end: usize, end: usize) -> bool {
    let first = from / SECTOR * SECTOR;
    (first..declared_end)
        .step_by(SECTOR)
        .any(|b| b + SECTOR <= end && data[b..b + SECTOR].iter().all(|&x| x == 0))
}

/// The name a segment gets when it is set aside: `<name>.lost-<unix seconds>`.
fn lost_name(path: &Path) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".lost-{secs}"));
    PathBuf::from(name)
}

/// Writes `bytes` to a new file at `path` and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let mut f = std::fs::File::create(path).map_err(|e| WalError::io(path, e))?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| WalError::io(path, e))?;
    f.sync_all().map_err(|e| WalError::io(path, e))
}

/// Renames `segments` to `<name>.lost-<unix seconds>`, durably, so that the log ends before
/// them; they stay for inspection.
fn set_aside(dir: &Path, segments: &[(u64, PathBuf)]) -> Result<Vec<PathBuf>, WalError> {
    let mut out = Vec::new();
    for (_, path) in segments {
        let to = lost_name(path);
        std::fs::rename(path, &to).map_err(|e| WalError::io(path, e))?;
        out.push(to);
    }
    if !out.is_empty() {
        sync_dir(dir)?;
    }
    Ok(out)
}

/// fsyncs `dir`, so that the files created and renamed in it stay so.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}
