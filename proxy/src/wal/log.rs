//! The WAL writer: appends records to segment files, rotates them, fsyncs in groups, and removes
//! segments that PostgreSQL has made redundant.

use super::record;
use super::{segment_name, segment_paths, WalError};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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

struct Segment {
    first_lsn: u64,
    path: PathBuf,
}

struct Writer {
    dir: PathBuf,
    file: Arc<File>,
    segments: VecDeque<Segment>,
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
    /// Highest lsn written (visible to the fsync task).
    written: watch::Sender<u64>,
    /// Highest lsn known to be on stable storage.
    synced: watch::Sender<u64>,
    sync_wanted: Notify,
    /// Set for good once an fsync failed: after that the kernel may have dropped the pages, so
    /// nothing written since can be called durable (PostgreSQL PANICs in the same situation).
    sync_failed: Mutex<Option<String>>,
    /// fsyncs of the log's segment files.
    fsyncs: std::sync::atomic::AtomicU64,
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
                    .write(true)
                    .open(&s.path)
                    .map_err(|e| WalError::io(&s.path, e))?;
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
        Ok(Self {
            writer: Mutex::new(Writer {
                dir: dir.to_path_buf(),
                file: Arc::new(file),
                segments,
                seg_len,
                next_lsn,
                segment_size,
                scratch: Vec::with_capacity(4096),
                bytes: 0,
                unsynced_old: Vec::new(),
            }),
            written: watch::channel(done).0,
            synced: watch::channel(done).0,
            sync_wanted: Notify::new(),
            sync_failed: Mutex::new(None),
            fsyncs: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave a half-written record behind (writes
        // are positioned and the length only advances after success), so poisoning is moot.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one record with a write() to the current segment and returns its lsn.
    /// On failure nothing is appended (a partial write is overwritten by the next append).
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<u64, WalError> {
        let mut w = self.lock();
        if w.seg_len > 0 && w.seg_len + payload.len() as u64 > w.segment_size {
            w.rotate()?;
        }
        let lsn = w.next_lsn;
        let mut scratch = std::mem::take(&mut w.scratch);
        scratch.clear();
        record::encode(&mut scratch, kind, lsn, payload);
        let result = w.file.write_all_at(&scratch, w.seg_len);
        let n = scratch.len() as u64;
        w.scratch = scratch;
        if let Err(e) = result {
            let path = w
                .segments
                .back()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            return Err(WalError::io(&path, e));
        }
        w.seg_len += n;
        w.bytes += n;
        w.next_lsn += 1;
        drop(w);
        self.written.send_replace(lsn);
        Ok(lsn)
    }

    /// Waits until `lsn` is on stable storage (a group fsync covers it), or fails if an fsync
    /// failed.
    pub async fn wait_synced(&self, lsn: u64) -> Result<(), WalError> {
        let mut rx = self.synced.subscribe();
        if *rx.borrow() < lsn {
            self.sync_wanted.notify_one();
            let _ = rx.wait_for(|s| *s >= lsn || self.failure().is_some()).await;
        }
        match self.failure() {
            Some(reason) if *rx.borrow() < lsn => Err(WalError::SyncFailed(reason)),
            _ => Ok(()),
        }
    }

    /// Why the WAL can no longer promise durability (an fsync failed), if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.sync_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// fsyncs everything written so far; returns the lsn now durable.
    pub fn sync(&self) -> Result<u64, WalError> {
        let (file, old, upto, path) = {
            let mut w = self.lock();
            let upto = w.next_lsn.saturating_sub(1);
            let path = w
                .segments
                .back()
                .map(|s| s.path.clone())
                .unwrap_or_default();
            (
                w.file.clone(),
                std::mem::take(&mut w.unsynced_old),
                upto,
                path,
            )
        };
        for f in old {
            f.sync_data().map_err(|e| WalError::io(&path, e))?;
            self.fsyncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if upto > *self.synced.borrow() {
            file.sync_data().map_err(|e| WalError::io(&path, e))?;
            self.fsyncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.synced.send_replace(upto);
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
            if *self.written.borrow() <= *self.synced.borrow() {
                continue;
            }
            let me = self.clone();
            let failed = match tokio::task::spawn_blocking(move || me.sync()).await {
                Ok(Ok(_)) => continue,
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            tracing::error!(error = %failed, "WAL fsync failed: acknowledgements that wait for fsync fail from now on");
            *self.sync_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(failed);
            // Wake the waiters so they see the failure.
            self.synced.send_modify(|_| {});
        }
    }

    /// Removes every segment whose records are all below `lsn` (they are committed upstream).
    /// Returns how many segments were removed.
    pub fn remove_below(&self, lsn: u64) -> Result<usize, WalError> {
        let mut w = self.lock();
        let mut removed = 0;
        while w.segments.len() > 1 && w.segments.get(1).is_some_and(|next| next.first_lsn <= lsn) {
            if let Some(seg) = w.segments.pop_front() {
                std::fs::remove_file(&seg.path).map_err(|e| WalError::io(&seg.path, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Bytes appended since open, and bytes currently on disk in segments.
    pub fn stats(&self) -> WalStats {
        let w = self.lock();
        WalStats {
            appended_bytes: w.bytes,
            segments: w.segments.len(),
            next_lsn: w.next_lsn,
            synced_lsn: *self.synced.borrow(),
            fsyncs: self.fsyncs.load(std::sync::atomic::Ordering::Relaxed),
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
    fn rotate(&mut self) -> Result<(), WalError> {
        let path = self.dir.join(segment_name(self.next_lsn));
        let file = create_segment(&path)?;
        let old = std::mem::replace(&mut self.file, Arc::new(file));
        self.unsynced_old.push(old);
        self.segments.push_back(Segment {
            first_lsn: self.next_lsn,
            path,
        });
        self.seg_len = 0;
        Ok(())
    }
}

fn create_segment(path: &Path) -> Result<File, WalError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| WalError::io(path, e))?;
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io(parent, e))?;
    }
    Ok(f)
}
