//! The WAL directory: an exclusive lock so two proxies never share it, the persisted proxy id,
//! and the boot id that tells recovery whether the machine may have crashed since.

use super::WalError;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

const LOCK_FILE: &str = "LOCK";
const PROXY_ID_FILE: &str = "proxy_id";
const BOOT_ID_FILE: &str = "boot_id";
/// The kernel's id of the current boot (Linux): a new one after every reboot.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// An open, locked WAL directory. The lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub struct WalDir {
    path: PathBuf,
    _lock: File,
    proxy_id: String,
    /// The boot id stored at the last start, and the current one (each if known).
    stored_boot: Option<String>,
    current_boot: Option<String>,
}

impl WalDir {
    /// Creates (if needed) and locks `path`; reads the proxy id stored there, or stores
    /// `wanted_id` (or a new random one) on first use. A configured id that differs from the
    /// stored one is refused: the WAL's batches belong to the stored id.
    pub fn open(path: &Path, wanted_id: Option<&str>) -> Result<Self, WalError> {
        std::fs::create_dir_all(path).map_err(|e| WalError::io(path, e))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| WalError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(WalError::Locked(path.to_path_buf()))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(WalError::io(&lock_path, e)),
        }
        let id_path = path.join(PROXY_ID_FILE);
        let proxy_id = match std::fs::read_to_string(&id_path) {
            Ok(stored) => {
                let stored = stored.trim().to_string();
                if let Some(w) = wanted_id {
                    if w != stored {
                        return Err(WalError::ProxyIdMismatch {
                            stored,
                            configured: w.to_string(),
                        });
                    }
                }
                stored
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = wanted_id
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("proxy-{:016x}", rand::random::<u64>()));
                write_durably(&id_path, id.as_bytes())?;
                id
            }
            Err(e) => return Err(WalError::io(&id_path, e)),
        };
        let stored_boot = read_id(&path.join(BOOT_ID_FILE))?;
        let current_boot = read_id(Path::new(KERNEL_BOOT_ID)).unwrap_or(None);
        Ok(Self {
            path: path.to_path_buf(),
            _lock: lock,
            proxy_id,
            stored_boot,
            current_boot,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The proxy id this directory belongs to.
    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
    }

    /// Whether the machine may have crashed since the WAL was last opened: it rebooted (the
    /// boot id stored at the last start is not the kernel's). A killed proxy leaves its writes
    /// in the page cache, so nothing it wrote can be lost without a reboot. Unknown (no id
    /// stored yet, or no kernel id) counts as no.
    pub fn crash_possible(&self) -> bool {
        matches!((&self.stored_boot, &self.current_boot), (Some(s), Some(c)) if s != c)
    }

    /// Stores the kernel's boot id, durably, once recovery is done (a start that dies during
    /// recovery leaves the old one, so the next start still knows a crash was possible).
    pub fn record_boot(&mut self) -> Result<(), WalError> {
        if let Some(current) = &self.current_boot {
            if self.stored_boot.as_ref() != Some(current) {
                write_durably(&self.path.join(BOOT_ID_FILE), current.as_bytes())?;
                self.stored_boot = Some(current.clone());
            }
        }
        Ok(())
    }
}

/// The trimmed contents of a small id file, or `None` if there is none.
fn read_id(path: &Path) -> Result<Option<String>, WalError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(WalError::io(path, e)),
    }
}

/// Writes a small file via a temporary name, fsyncs it and renames it into place.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| WalError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| WalError::io(&tmp, e))?;
    f.sync_all().map_err(|e| WalError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| WalError::io(path, e))?;
    if let Some(parent) = path.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| WalError::io(parent, e))?;
    }
    Ok(())
}
