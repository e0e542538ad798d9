//! The proxy's local write-ahead log: acknowledged-but-unshipped writes survive a proxy crash.
//!
//! Layout: [`dir`] (lock file, persisted proxy id, boot id), [`record`] (framing and checksums),
//! [`log`] (appending, rotation, group fsync, removal), [`recovery`] (reading back at start-up).

pub mod dir;
pub mod log;
pub mod record;
pub mod recovery;

pub use dir::WalDir;
pub use log::{SyncMode, Wal, WalStats};
pub use record::Record;
pub use recovery::{recover, Lost, Recovered};

use std::path::{Path, PathBuf};

/// Everything that can go wrong with the WAL.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O error on a file of the WAL (ENOSPC included).
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An fsync of the WAL failed earlier; durability can no longer be promised.
    #[error("WAL fsync failed: {0}")]
    SyncFailed(String),
    /// A record larger than recovery reads back ([`record::MAX_PAYLOAD`]).
    #[error("a write's WAL record would be {0} bytes, more than the {max} the WAL holds", max = record::MAX_PAYLOAD)]
    TooLarge(usize),
    /// Another proxy holds the directory's lock.
    #[error("WAL directory {0} is locked by another writebehind-proxy")]
    Locked(PathBuf),
    /// The configured proxy id is not the one the directory belongs to.
    #[error("WAL directory belongs to proxy id {stored:?}, but {configured:?} is configured")]
    ProxyIdMismatch {
        /// The id stored in the directory.
        stored: String,
        /// The id in the configuration.
        configured: String,
    },
    /// A damaged record that is not a torn tail: start-up stops rather than skip data.
    #[error("WAL is corrupt in {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damaged record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

impl WalError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the error is a write too large for a WAL record (clients get SQLSTATE 54000).
    pub fn is_too_large(&self) -> bool {
        matches!(self, WalError::TooLarge(_))
    }

    /// Whether the error means the disk is full (clients get SQLSTATE 53100).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

const SEGMENT_SUFFIX: &str = ".wal";

/// The file name of the segment whose first record has `first_lsn`.
fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// The segment files of `dir`, sorted by their first lsn.
fn segment_paths(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| WalError::io(dir, e))? {
        let entry = entry.map_err(|e| WalError::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else {
            continue;
        };
        if let Ok(first) = stem.parse::<u64>() {
            out.push((first, entry.path()));
        }
    }
    out.sort_by_key(|(first, _)| *first);
    Ok(out)
}

#[cfg(test)]
mod tests;
