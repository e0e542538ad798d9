//! Start-up of the write-behind path: lock the WAL directory, read the WAL back, and replay
//! every database's acknowledged statements before the first client is accepted.

use crate::config::{Config, Durability};
use crate::wal::{self, Wal, WalDir};
use crate::writebehind::databases::{Replay, WriteBehind};
use crate::writebehind::journal;
use std::io;
use std::sync::Arc;
use tracing::info;

/// The size at which the WAL starts a new segment file.
pub const SEGMENT_SIZE: u64 = 16 << 20;

/// Opens the WAL (durability `wal` and `fsync`), replays it, and returns the write-behind
/// registry. The WAL directory stays locked for the life of the process.
pub async fn start(config: &Config) -> io::Result<Arc<WriteBehind>> {
    if config.durability == Durability::Memory {
        return Ok(WriteBehind::new(config.clone(), None));
    }
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut dir = WalDir::open(&config.wal_dir, config.proxy_id.as_deref())
        .map_err(|e| invalid(e.to_string()))?;
    let recovered =
        wal::recover(dir.path(), dir.crash_possible()).map_err(|e| invalid(e.to_string()))?;
    dir.record_boot().map_err(|e| invalid(e.to_string()))?;
    let next_lsn = recovered.next_lsn;
    let mut per_db: Vec<(String, Replay)> = Vec::new();
    for record in recovered.records {
        if record.kind != journal::KIND_CHANGES {
            return Err(invalid(format!(
                "WAL record {} has unknown kind {}",
                record.lsn, record.kind
            )));
        }
        let (database, changes) = journal::decode(&record.payload)
            .map_err(|e| invalid(format!("WAL record {}: {e}", record.lsn)))?;
        match per_db.iter_mut().find(|(d, _)| *d == database) {
            Some((_, r)) => r.push((record.lsn, changes)),
            None => per_db.push((database, vec![(record.lsn, changes)])),
        }
    }
    let wal = Wal::open(dir.path(), next_lsn, SEGMENT_SIZE).map_err(|e| invalid(e.to_string()))?;
    info!(wal_dir = %dir.path().display(), proxy_id = dir.proxy_id(), next_lsn, databases = per_db.len(), "WAL opened");
    let wb = WriteBehind::new(config.clone(), Some((dir, Arc::new(wal))));
    // Until every database is replayed, no segment holding one of its records may go.
    let oldest = per_db
        .iter()
        .filter_map(|(_, replay)| replay.first().map(|(lsn, _)| *lsn))
        .min();
    if let Some(lsn) = oldest {
        wb.hold_wal_from(lsn);
    }
    for (database, replay) in per_db {
        wb.recover(&database, replay).await.map_err(invalid)?;
    }
    wb.release_wal_hold();
    Ok(wb)
}
