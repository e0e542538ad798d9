//! The read barrier: ship a database's pending changes and wait until the worker applied them.
//!
//! A statement that may read a write-behind table first calls [`Barrier::wait`] with the tables
//! it touches. The fast path — nothing acknowledged since the last shipment, and every batch
//! touching those tables already known to be applied — costs two atomic-ish reads and no I/O.

use super::flusher::{BatchSource, Flusher, ShipProgress};
use super::inbox::{InboxShipper, ShipError};
use crate::telemetry::Histogram;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Why a barrier could not be passed.
#[derive(Debug, thiserror::Error)]
pub enum BarrierError {
    /// The pending changes were not shipped and applied within `barrier_timeout`.
    #[error("write-behind barrier timed out after {0:?}: pending changes could not be applied")]
    Timeout(Duration),
    /// Waiting for the apply worker failed (PostgreSQL unreachable, or flush() raised).
    #[error("write-behind barrier failed: {0}")]
    Flush(#[from] ShipError),
}

/// Per-database barrier: one flusher, one connection for `writebehind.flush()`.
pub struct Barrier {
    source: Arc<dyn BatchSource>,
    flusher: Flusher,
    /// Per table: the batch generation known to be applied (1 + the flusher's count of batches
    /// touching it; absent: not even what earlier processes of this proxy id left).
    applied: Mutex<(InboxShipper, HashMap<u32, u64>)>,
    /// How long barriers that had to ship or wait took.
    latency: Histogram,
}

impl Barrier {
    /// A barrier over `flusher`'s database; `flush_conn` is a shipper used only for flush().
    pub fn new(source: Arc<dyn BatchSource>, flusher: Flusher, flush_conn: InboxShipper) -> Self {
        Self {
            source,
            flusher,
            applied: Mutex::new((flush_conn, HashMap::new())),
            latency: Histogram::default(),
        }
    }

    /// How long barriers that did not pass at once took (successful or not).
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// Returns once every write acknowledged before the call to any of `relids` is applied by
    /// the extension, or fails after `timeout`; times the barriers that had to wait.
    pub async fn wait(&self, relids: &[u32], timeout: Duration) -> Result<(), BarrierError> {
        let started = Instant::now();
        let (result, waited) = self.wait_inner(relids, timeout).await;
        if waited {
            self.latency.observe(started.elapsed());
        }
        result
    }

    /// [`wait`](Self::wait), telling whether it had to ship or wait (the slow path).
    async fn wait_inner(
        &self,
        relids: &[u32],
        timeout: Duration,
    ) -> (Result<(), BarrierError>, bool) {
        match self.wait_or_pass(relids, timeout).await {
            Ok(waited) => (Ok(()), waited),
            Err(e) => (Err(e), true),
        }
    }

    /// The barrier: `Ok(false)` when it passed at once.
    async fn wait_or_pass(&self, relids: &[u32], timeout: Duration) -> Result<bool, BarrierError> {
        let deadline = Instant::now() + timeout;
        let target = self.source.acked();
        let mut progress = self.flusher.progress();
        let must_ship = progress.borrow().shipped_through < target;
        if must_ship {
            self.flusher.wake();
            let shipped = tokio::time::timeout_at(
                deadline.into(),
                progress.wait_for(|p| p.shipped_through >= target),
            )
            .await;
            match shipped {
                Ok(Ok(_)) => {}
                // The flusher ended (shutdown); nothing more will ship.
                Ok(Err(_)) | Err(_) => return Err(BarrierError::Timeout(timeout)),
            }
        }
        let snapshot: ShipProgress = progress.borrow().clone();
        let stale: Vec<(u32, u64)> = {
            let guard = self.applied.lock().await;
            relids
                .iter()
                .filter_map(|r| {
                    // Generation 0 stands for the rows an earlier process of this proxy id
                    // committed and the worker may not have applied yet (a restart, a crash):
                    // this process's first barrier on each table flushes them too.
                    let shipped = snapshot.table_generation.get(r).copied().unwrap_or(0) + 1;
                    let applied = guard.1.get(r).copied().unwrap_or(0);
                    (shipped > applied).then_some((*r, shipped))
                })
                .collect()
        };
        if stale.is_empty() {
            return Ok(must_ship);
        }
        let mut guard = self.applied.lock().await;
        for (relid, generation) in stale {
            // Another barrier may have flushed this table while we waited for the lock.
            if guard.1.get(&relid).copied().unwrap_or(0) >= generation {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(BarrierError::Timeout(timeout));
            }
            let flush = guard.0.flush(Some(relid), left);
            match tokio::time::timeout(left, flush).await {
                Ok(Ok(())) => {
                    let entry = guard.1.entry(relid).or_insert(0);
                    *entry = (*entry).max(generation);
                }
                Ok(Err(e)) => return Err(BarrierError::Flush(e)),
                Err(_) => {
                    guard.0.reset();
                    return Err(BarrierError::Timeout(timeout));
                }
            }
        }
        Ok(true)
    }

    /// The flusher behind this barrier.
    pub fn flusher(&self) -> &Flusher {
        &self.flusher
    }
}
