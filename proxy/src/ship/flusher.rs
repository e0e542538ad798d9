//! The per-database flusher: drains pending changes into batches, ships them in order, retries.
//!
//! One flusher task runs per upstream database. It wakes every `flush_interval`, or at once when
//! a barrier or a full batch asks for it, takes batches from its [`BatchSource`] (the
//! coalescer) and ships each with [`InboxShipper`] until the source is empty. A batch that fails
//! is resent, with the same sequence number and bytes, after a capped exponential backoff, so
//! the inbox receives it exactly once and a key's changes are never reordered. Progress is
//! published on a watch channel that barriers wait on.

use super::backoff::Backoff;
use super::inbox::{Delivery, InboxShipper};
use crate::telemetry::Histogram;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

/// One batch taken from the pending changes, already encoded as inbox COPY rows.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    /// The batch sequence number (`writebehind.begin_batch`); greater than every earlier one.
    pub seq: i64,
    /// The source's acknowledged-writes count (`BatchSource::acked`) its last change had.
    pub acked_through: u64,
    /// COPY text rows (docs/inbox.md), every row carrying this batch's sequence number.
    pub rows: Bytes,
    /// How many inbox rows it holds.
    pub changes: usize,
    /// The tables it touches (pg_class oids).
    pub relids: Vec<u32>,
    /// Per table: acknowledged changes in the batch and the inbox rows they became.
    pub tables: Vec<BatchTable>,
}

/// One table's share of a batch, counted by `writebehind.begin_batch` into
/// `writebehind.ingest_stats` in the batch's own transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTable {
    /// The table (pg_class oid).
    pub relid: u32,
    /// Acknowledged changes of the table the batch holds.
    pub changes: u64,
    /// Inbox rows they were coalesced into, by statement kind (insert, update, delete).
    pub rows: [u64; 3],
}

/// Where a flusher takes its batches from: the coalescer of one database.
pub trait BatchSource: Send + Sync + 'static {
    /// Takes about `max_rows` pending changes as the next batch, numbered by the source, or
    /// `None` when nothing is pending.
    fn take_batch(&self, max_rows: usize) -> Option<EncodedBatch>;
    /// Called once the batch is committed in the inbox (its changes are safe upstream).
    fn committed(&self, _batch: &EncodedBatch) {}
    /// How many writes were acknowledged so far (monotonic). A write is counted only after it
    /// is in the source, so every write counted before a `take_batch` loop began is drained by
    /// the time that loop sees `None`.
    fn acked(&self) -> u64;
}

/// Settings of one flusher.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    /// How often pending changes are shipped when nobody asks sooner.
    pub flush_interval: Duration,
    /// The most inbox rows in one batch.
    pub max_batch_rows: usize,
    /// First retry delay after a failed shipment.
    pub retry_initial: Duration,
    /// Cap of the retry delay.
    pub retry_max: Duration,
}

/// What the flusher has done so far; barriers and status reports read it.
#[derive(Debug, Clone, Default)]
pub struct ShipProgress {
    /// Every write acknowledged up to this count is committed in the inbox.
    pub shipped_through: u64,
    /// The last batch sequence number that committed.
    pub last_seq: i64,
    /// Per table: how many batches touching it committed (a generation counter).
    pub table_generation: HashMap<u32, u64>,
    /// Batches committed by this flusher.
    pub batches: u64,
    /// Inbox rows committed by this flusher.
    pub rows: u64,
    /// Failed shipment attempts since the start.
    pub errors: u64,
    /// The most recent shipment error, cleared by the next success.
    pub last_error: Option<String>,
}

/// Handle to a running flusher task.
#[derive(Clone)]
pub struct Flusher {
    wake: Arc<Notify>,
    progress: watch::Receiver<ShipProgress>,
    paused: Arc<watch::Sender<bool>>,
    tune: Arc<watch::Sender<(Duration, usize)>>,
    latency: Arc<Histogram>,
}

impl Flusher {
    /// Starts the flusher task. `committed_seq` is the last batch sequence number the inbox
    /// has (`writebehind.committed_seq()`). The task ends when `shutdown` flips to true,
    /// after shipping everything still pending.
    pub fn spawn(
        source: Arc<dyn BatchSource>,
        shipper: InboxShipper,
        settings: FlushSettings,
        committed_seq: i64,
        shutdown: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let wake = Arc::new(Notify::new());
        let initial = ShipProgress {
            last_seq: committed_seq,
            ..ShipProgress::default()
        };
        let (tx, rx) = watch::channel(initial);
        let (paused, paused_rx) = watch::channel(false);
        let (tune, tune_rx) = watch::channel((settings.flush_interval, settings.max_batch_rows));
        let latency = Arc::new(Histogram::default());
        let task = FlushTask {
            source,
            shipper,
            settings,
            wake: wake.clone(),
            progress: tx,
            shutdown,
            paused: paused_rx,
            tune: tune_rx,
            latency: latency.clone(),
        };
        let handle = tokio::spawn(task.run());
        let flusher = Self {
            wake,
            progress: rx,
            paused: Arc::new(paused),
            tune: Arc::new(tune),
            latency,
        };
        (flusher, handle)
    }

    /// Asks the flusher to ship now instead of at the next interval.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Pauses shipping (`true`) or resumes it. While paused nothing ships, not even for a
    /// barrier; shutting down resumes.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Changes the flush interval and the batch size (admin `RELOAD`).
    pub fn retune(&self, flush_interval: Duration, max_batch_rows: usize) {
        self.tune.send_replace((flush_interval, max_batch_rows));
    }

    /// Whether shipping is paused.
    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// How long committed batches took to ship (each attempt until the commit).
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }

    /// A receiver of the flusher's progress.
    pub fn progress(&self) -> watch::Receiver<ShipProgress> {
        self.progress.clone()
    }
}

struct FlushTask {
    source: Arc<dyn BatchSource>,
    shipper: InboxShipper,
    settings: FlushSettings,
    wake: Arc<Notify>,
    progress: watch::Sender<ShipProgress>,
    shutdown: watch::Receiver<bool>,
    paused: watch::Receiver<bool>,
    tune: watch::Receiver<(Duration, usize)>,
    latency: Arc<Histogram>,
}

impl FlushTask {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.settings.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = *self.shutdown.borrow();
            if stopping && *self.paused.borrow() {
                info!("shutting down: shipping resumes");
            }
            if stopping || !*self.paused.borrow() {
                self.ship_all().await;
            }
            if stopping {
                info!(
                    proxy_id = self.shipper.proxy_id(),
                    "flusher drained, stopping"
                );
                return;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                _ = self.shutdown.changed() => {}
                _ = self.paused.changed() => {}
                _ = self.tune.changed() => {
                    let (interval, rows) = *self.tune.borrow();
                    self.settings.flush_interval = interval;
                    self.settings.max_batch_rows = rows;
                    tick = tokio::time::interval(interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.reset();
                }
            }
        }
    }

    /// Ships what was acknowledged before the call, in batches, then publishes
    /// `shipped_through`. What arrives meanwhile waits for the next round, so that under a
    /// steady load batches span a whole `flush_interval` (and coalesce that much).
    async fn ship_all(&mut self) {
        let start = self.source.acked();
        if self.progress.borrow().shipped_through >= start {
            return;
        }
        while let Some(batch) = self.source.take_batch(self.settings.max_batch_rows) {
            let seq = batch.seq;
            let started = std::time::Instant::now();
            self.ship_until_delivered(seq, &batch).await;
            self.latency.observe(started.elapsed());
            self.source.committed(&batch);
            self.progress.send_modify(|p| {
                p.last_seq = seq;
                p.batches += 1;
                p.rows += batch.changes as u64;
                p.last_error = None;
                for relid in &batch.relids {
                    *p.table_generation.entry(*relid).or_insert(0) += 1;
                }
            });
            if batch.acked_through >= start {
                break;
            }
        }
        self.progress.send_if_modified(|p| {
            let advanced = p.shipped_through < start;
            p.shipped_through = p.shipped_through.max(start);
            advanced
        });
    }

    /// Resends one batch until it is in the inbox. It never gives up: an acknowledged write
    /// must reach PostgreSQL, and later batches must not overtake it.
    async fn ship_until_delivered(&mut self, seq: i64, batch: &EncodedBatch) {
        let mut backoff = Backoff::new(self.settings.retry_initial, self.settings.retry_max);
        loop {
            match self
                .shipper
                .ship_counted(seq, batch.rows.clone(), &batch.tables)
                .await
            {
                Ok(Delivery::Committed) => {
                    debug!(seq, rows = batch.changes, "batch committed");
                    return;
                }
                Ok(Delivery::AlreadyDelivered) => {
                    info!(seq, "batch had been delivered before; skipped");
                    return;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    warn!(seq, %error, attempt = backoff.attempts(), ?delay, "shipping failed; retrying");
                    let message = error.to_string();
                    self.progress.send_modify(|p| {
                        p.errors += 1;
                        p.last_error = Some(message);
                    });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}
