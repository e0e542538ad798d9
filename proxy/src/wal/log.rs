//! The WAL writer: appends records to segment files, rotates them, fsyncs in groups, and removes
//! segments that PostgreSQL has made redundant.
//!
//! A segment is written through a shared memory map, so an append is a copy into the page
//! cache and no system call: the pages belong to the kernel and survive a killed proxy exactly
//! as a write() would. The file grows ahead of the appends in [`CHUNK`]s reserved with
//! `posix_fallocate`, so a full disk is an error on the append that needs the space, never a
//! fault on a mapped page. Zeros after the last record are the unwritten reserve: recovery
//! reads them as the end of the log, and a closed or rotated segment is trimmed to its records.

use super::record;
use super::{segment_name, segment_paths, WalError};
use memmap2::{MmapMut, MmapOptions};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

/// How an append becomes durable before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// write() only: survives a killed proxy, not a machine crash (the fsync task still runs).
    Write,
    /// The acknowledgement waits for a group fsync covering the record.
    Fsync,
}

/// How far ahead of the appends a segment file is reserved on disk.
const CHUNK: u64 = 64 << 10;

struct Segment {
    first_lsn: u64,
    path: PathBuf,
}

struct Writer {
    dir: PathBuf,
    file: Arc<File>,
    /// The current segment's mapping: `map.len()` bytes, of which `reserved` exist in the file.
    map: MmapMut,
    reserved: u64,
    segments: VecDeque<Segment>,
    /// Bytes of records in the current segment.
    seg_len: u64,
    next_lsn: u64,
    segment_size: u64,
    scratch: Vec<u8>,
    bytes: u64,
    /// Files that were rotated away but may still hold data not yet fsynced.
    unsynced_old: Vec<Arc<File>>,
}

/// An open write-ahead log. Cheap to share behind an `Arc`.
pub struct Wal {
    writer: Mutex<Writer>,
    /// Highest lsn written (read by the fsync task; nothing waits for it to change).
    written: AtomicU64,
    /// Highest lsn known to be on stable storage.
    synced: watch::Sender<u64>,
    sync_wanted: Notify,
    /// Held through a whole `sync`: one that took the rotated-away files must finish fsyncing
    /// them before another publishes an lsn they hold as durable.
    syncing: Mutex<()>,
    /// Set for good once an fsync failed: after that the kernel may have dropped the pages, so
    /// nothing written since can be called durable (PostgreSQL PANICs in the same situation).
    sync_failed: Mutex<Option<String>>,
    /// fsyncs of the log's segment files.
    fsyncs: AtomicU64,
}

impl Wal {
    /// Opens the log in `dir` for appending after `next_lsn` (from recovery). Appends go to
    /// the last segment, or a new one.
    pub fn open(dir: &Path, next_lsn: u64, segment_size: u64) -> Result<Self, WalError> {
        let mut segments: VecDeque<Segment> = segment_paths(dir)?
            .into_iter()
            .map(|(first_lsn, path)| Segment { first_lsn, path })
            .collect();
        let (file, seg_len) = match segments.back() {
            Some(s) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&s.path)
                    .map_err(|e| WalError::io(&s.path, e))?;
                // Recovery trimmed the segment to its records.
                let len = f.metadata().map_err(|e| WalError::io(&s.path, e))?.len();
                (f, len)
            }
            None => {
                let path = dir.join(segment_name(next_lsn));
                let f = create_segment(&path)?;
                segments.push_back(Segment {
                    first_lsn: next_lsn,
                    path,
                });
                (f, 0)
            }
        };
        let done = next_lsn.saturating_sub(1);
        let path = segments.back().map(|s| s.path.clone()).unwrap_or_default();
        let map = map_segment(&file, &path, segment_size.max(seg_len))?;
        Ok(Self {
            writer: Mutex::new(Writer {
                dir: dir.to_path_buf(),
                file: Arc::new(file),
                map,
                reserved: seg_len,
                segments,
                seg_len,
                next_lsn,
                segment_size,
                scratch: Vec::with_capacity(4096),
                bytes: 0,
                unsynced_old: Vec::new(),
            }),
            written: AtomicU64::new(done),
            synced: watch::channel(done).0,
            sync_wanted: Notify::new(),
            syncing: Mutex::new(()),
            sync_failed: Mutex::new(None),
            fsyncs: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave a half-written record behind (writes
        // are positioned and the length only advances after success), so poisoning is moot.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record to the current segment (a copy into its mapping) and returns its
    /// lsn. On failure (no room on disk, a record too large) nothing is appended.
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<u64, WalError> {
        // Recovery refuses longer records as corrupt: such a write is not acknowledged.
        if payload.len() > record::MAX_PAYLOAD {
            return Err(WalError::TooLarge(payload.len()));
        }
        debug_assert_ne!(kind, record::KIND_SKIP, "the skip kind is the WAL's own");
        let w = self.lock();
        let next = w.next_lsn + 1;
        self.put(w, kind, payload, next)
    }

    /// Moves the numbering on so that the next record gets `lsn` at least, with a skip record
    /// recovery follows, fsynced before it returns (blocking). For a WAL that ends below a
    /// batch PostgreSQL has committed (a machine crash lost its unsynced tail after that batch
    /// shipped): new records must be numbered above it, or their batches would be taken for
    /// replays and skipped; and the skip must be on disk before any of them, or a crash that
    /// kept a later record but lost the skip would leave a gap recovery refuses. Returns
    /// whether the numbering moved.
    pub fn advance_to(&self, lsn: u64) -> Result<bool, WalError> {
        let w = self.lock();
        if lsn <= w.next_lsn {
            return Ok(false);
        }
        self.put(w, record::KIND_SKIP, &lsn.to_le_bytes(), lsn)?;
        self.sync()?;
        Ok(true)
    }

    /// Writes one record at the writer's next lsn (a copy into the segment's mapping), then
    /// numbers the following record `next`. On failure nothing is written.
    fn put(
        &self,
        mut w: MutexGuard<'_, Writer>,
        kind: u8,
        payload: &[u8],
        next: u64,
    ) -> Result<u64, WalError> {
        let lsn = w.next_lsn;
        let mut scratch = std::mem::take(&mut w.scratch);
        scratch.clear();
        record::encode(&mut scratch, kind, lsn, payload);
        let n = scratch.len() as u64;
        let room = w.make_room(n);
        if room.is_ok() {
            let at = w.seg_len as usize;
            w.map[at..at + scratch.len()].copy_from_slice(&scratch);
        }
        w.scratch = scratch;
        room?;
        w.seg_len += n;
        w.bytes += n;
        w.next_lsn = next;
        drop(w);
        // Two appends may publish out of order once the lock is released: the mark only rises
        // (a lower store after a higher one would hide a record from the fsync task).
        self.written.fetch_max(lsn, Ordering::Release);
        Ok(lsn)
    }

    /// Waits until `lsn` is on stable storage (a group fsync covers it), or fails if an fsync
    /// failed, before or while waiting: after a failed fsync the kernel may have dropped pages
    /// it then reports clean, so no record is called durable again.
    pub async fn wait_synced(&self, lsn: u64) -> Result<(), WalError> {
        let mut rx = self.synced.subscribe();
        if *rx.borrow() < lsn && self.failure().is_none() {
            self.sync_wanted.notify_one();
            let _ = rx.wait_for(|s| *s >= lsn || self.failure().is_some()).await;
        }
        match self.failure() {
            Some(reason) => Err(WalError::SyncFailed(reason)),
            None => Ok(()),
        }
    }

    /// Why the WAL can no longer promise durability (an fsync failed), if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.sync_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// fsyncs everything written so far; returns the lsn now durable. Fails without syncing
    /// once an fsync has failed (a later fsync that succeeds says nothing of the pages the
    /// failed one lost).
    pub fn sync(&self) -> Result<u64, WalError> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = self.failure() {
            return Err(WalError::SyncFailed(reason));
        }
        let (file, old, upto, path) = {
            let mut w = self.lock();
            let upto = w.next_lsn.saturating_sub(1);
            let path = w.current_path();
            (
                w.file.clone(),
                std::mem::take(&mut w.unsynced_old),
                upto,
                path,
            )
        };
        // A failed fsync is recorded for good, whoever called (the fsync task, a skip): a later
        // one that succeeds says nothing of the pages it lost.
        let failed = |e: std::io::Error| {
            let error = WalError::io(&path, e);
            self.fail(error.to_string());
            error
        };
        for f in old {
            f.sync_data().map_err(failed)?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        if upto > *self.synced.borrow() {
            file.sync_data().map_err(failed)?;
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            // Only ever raised (the syncs are serialized, but a stale `upto` must not win).
            self.synced.send_if_modified(|s| {
                let raise = upto > *s;
                if raise {
                    *s = upto;
                }
                raise
            });
        }
        Ok(upto)
    }

    /// Runs group fsync: every `interval`, or at once when an appender waits, fsync if needed.
    pub async fn run_fsync(self: Arc<Self>, interval: std::time::Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = self.sync_wanted.notified() => {}
            }
            if self.written.load(Ordering::Acquire) <= *self.synced.borrow() {
                continue;
            }
            let me = self.clone();
            let failed = match tokio::task::spawn_blocking(move || me.sync()).await {
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            tracing::error!(error = %failed, "WAL fsync failed: acknowledgements that wait for fsync fail from now on");
            self.fail(failed);
            return;
        }
    }

    /// Records that an fsync failed, for good, and wakes the waiters so they see it.
    fn fail(&self, reason: String) {
        self.sync_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(reason);
        self.synced.send_modify(|_| {});
    }

    /// Makes the WAL behave as after a failed fsync (tests cannot make the disk fail one).
    #[cfg(test)]
    pub(super) fn fail_for_test(&self, reason: &str) {
        self.fail(reason.to_string());
    }

    /// Removes every segment whose records are all below `lsn` (they are committed upstream),
    /// durably (the directory is fsynced). Returns how many segments were removed. Blocking;
    /// the files are removed outside the writer's lock, so appends go on meanwhile. Callers
    /// must not run two at once (one task does).
    pub fn remove_below(&self, lsn: u64) -> Result<usize, WalError> {
        let (dir, old): (PathBuf, Vec<PathBuf>) = {
            let w = self.lock();
            let n = w
                .segments
                .iter()
                .skip(1)
                .take_while(|next| next.first_lsn <= lsn)
                .count();
            let old = w.segments.iter().take(n).map(|s| s.path.clone()).collect();
            (w.dir.clone(), old)
        };
        let mut removed = 0;
        let mut result = Ok(());
        for path in &old {
            match std::fs::remove_file(path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed += 1,
                Err(e) => {
                    // Kept, and tried again next time (recovery reads it either way).
                    result = Err(WalError::io(path, e));
                    break;
                }
            }
        }
        if removed > 0 {
            // Only rotation changes the list meanwhile, and it appends at the back.
            self.lock().segments.drain(..removed);
            sync_dir(&dir)?;
        }
        result.map(|()| removed)
    }

    /// Bytes appended since open, and bytes currently on disk in segments.
    pub fn stats(&self) -> WalStats {
        let w = self.lock();
        WalStats {
            appended_bytes: w.bytes,
            segments: w.segments.len(),
            next_lsn: w.next_lsn,
            synced_lsn: *self.synced.borrow(),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
        }
    }
}

/// Figures for status reports and metrics.
#[derive(Debug, Clone, Copy)]
pub struct WalStats {
    /// Bytes appended since the log was opened.
    pub appended_bytes: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// The lsn the next record gets.
    pub next_lsn: u64,
    /// The highest lsn on stable storage.
    pub synced_lsn: u64,
    /// fsyncs of segment files since the log was opened.
    pub fsyncs: u64,
}

impl Writer {
    fn current_path(&self) -> PathBuf {
        self.segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    /// Makes `n` more bytes writable at `seg_len`: a new segment when the mapping is full (or
    /// a larger mapping for a record bigger than a segment), then disk space reserved ahead.
    fn make_room(&mut self, n: u64) -> Result<(), WalError> {
        let end = self.seg_len + n;
        if end > self.map.len() as u64 {
            if self.seg_len == 0 {
                self.map = map_segment(&self.file, &self.current_path(), end)?;
            } else {
                self.rotate(n)?;
            }
        }
        let end = self.seg_len + n;
        if end > self.reserved {
            let upto = end
                .div_ceil(CHUNK)
                .saturating_mul(CHUNK)
                .min(self.map.len() as u64)
                .max(end);
            reserve(&self.file, self.reserved, upto - self.reserved)
                .map_err(|e| WalError::io(&self.current_path(), e))?;
            self.reserved = upto;
        }
        Ok(())
    }

    /// Starts a new segment that can take a record of `n` bytes; the old one is trimmed to its
    /// records and kept for the next group fsync.
    fn rotate(&mut self, n: u64) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(self.next_lsn));
        let file = create_segment(&path)?;
        let map = match map_segment(&file, &path, self.segment_size.max(n)) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let old_map = std::mem::replace(&mut self.map, map);
        drop(old_map);
        let old = std::mem::replace(&mut self.file, Arc::new(file));
        Self::trim(&old, self.seg_len.next_multiple_of(512));
        self.unsynced_old.push(old);
        self.segments.push_back(Segment {
            first_lsn: self.next_lsn,
            path,
        });
        self.seg_len = 0;
        self.reserved = 0;
        Ok(())
    }

    /// Cuts `file` (the current segment's, or the one just rotated away) to `len`: its records,
    /// and for a rotated segment the zeros up to the next 512-byte sector (recovery trims
    /// those; a crash that loses the last page of a rotated segment then always leaves a whole
    /// zero sector, the shape recovery knows it by after a reboot). A failure leaves more
    /// zeros, which recovery reads as the end of the segment too.
    fn trim(file: &File, len: u64) {
        if let Err(e) = file.set_len(len) {
            tracing::warn!(error = %e, "could not trim a WAL segment to its records");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The mapping goes after this; nothing touches the cut-off pages meanwhile.
        Self::trim(&self.file, self.seg_len);
    }
}

/// Maps `len` bytes of `file` (shared: the pages are the file's page cache).
fn map_segment(file: &File, path: &Path, len: u64) -> Result<MmapMut, WalError> {
    let len = usize::try_from(len).map_err(|_| {
        WalError::io(
            path,
            std::io::Error::other("WAL segment larger than the address space"),
        )
    })?;
    // SAFETY: the file is this process's own WAL segment in a directory it holds locked; no
    // other process writes it, and the file is never cut below what is mapped and used.
    unsafe { MmapOptions::new().len(len).map_mut(file) }.map_err(|e| WalError::io(path, e))
}

/// Reserves `len` bytes of disk for `file` from `offset` (and extends the file over them).
fn reserve(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::other("WAL offset out of range"));
    };
    // SAFETY: a plain system call on an open descriptor.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), offset, len) } {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

fn create_segment(path: &Path) -> Result<File, WalError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(f)
}

/// fsyncs a directory, so that files created or removed in it stay so after a crash.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| WalError::io(dir, e))
}
