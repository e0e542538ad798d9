//! The per-database flusher: drains pending changes into batches, ships them in order, retries.
//!
//! One flusher task runs per upstream database. It sleeps until the oldest pending change of
//! some table has waited that table's flush interval (its deadline; the intervals come from
//! the [`FlushSchedule`], i.e. `writebehind.tables.flush_interval`, never shorter than the
//! proxy-wide `flush_interval`), then takes batches from its
//! [`BatchSource`] (the coalescer) up to the last pending change of every table that is due,
//! and ships each with [`InboxShipper`]. Batches are prefixes of the queue, so changes of other
//! tables queued before that point ship with them: a table may ship earlier than its interval,
//! never later. A barrier, a full queue or shutdown wakes it to ship everything acknowledged
//! so far, whatever the deadlines. A batch that fails
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
use tokio::time::Instant;
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
    /// `None` when nothing is pending. The batch holds no more than the changes acknowledged
    /// up to the count `through` ([`acked`](Self::acked)), except to finish a statement: at
    /// least the oldest pending statement.
    fn take_batch(&self, max_rows: usize, through: u64) -> Option<EncodedBatch>;
    /// Called once the batch is committed in the inbox (its changes are safe upstream).
    fn committed(&self, _batch: &EncodedBatch) {}
    /// How many writes were acknowledged so far (monotonic). A write is counted only after it
    /// is in the source, so every write counted before a `take_batch` loop began is drained by
    /// the time that loop sees `None`.
    fn acked(&self) -> u64;
    /// Every table with pending changes (not taken yet). A source that tells nothing is
    /// shipped whole every proxy-wide `flush_interval`.
    fn pending_tables(&self) -> Vec<PendingTable> {
        Vec::new()
    }
    /// Signalled when a table with nothing pending gets a change, so that the flusher can
    /// move its deadline earlier.
    fn arrivals(&self) -> Option<&Notify> {
        None
    }
}

/// A table with pending changes, as the flusher's deadlines see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingTable {
    /// The table (pg_class oid).
    pub relid: u32,
    /// When its oldest pending change was queued.
    pub oldest: Instant,
    /// The acknowledged-writes count ([`BatchSource::acked`]) of its last pending change.
    pub last_ack: u64,
}

/// Each table's flush interval, for the flusher's deadlines (the database's catalog).
pub trait FlushSchedule: Send + Sync + 'static {
    /// How long a change of table `relid` may wait before it ships; `None` when the table is
    /// not registered (any more): the proxy-wide `flush_interval` applies.
    fn flush_interval(&self, relid: u32) -> Option<Duration>;
    /// Completes when the intervals may have changed (a catalog reload); never, if they
    /// cannot.
    fn changed(&mut self) -> futures::future::BoxFuture<'_, ()>;
}

/// The schedule with no per-table intervals: every change waits the proxy-wide
/// `flush_interval` at most.
pub struct Uniform;

impl FlushSchedule for Uniform {
    fn flush_interval(&self, _relid: u32) -> Option<Duration> {
        None
    }

    fn changed(&mut self) -> futures::future::BoxFuture<'_, ()> {
        Box::pin(futures::future::pending())
    }
}

/// What the deadlines ask of the flusher at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The earliest deadline: over the tables with pending changes, the time the table's
    /// oldest pending change was queued plus the table's interval. `None` when nothing is
    /// pending.
    pub next: Option<Instant>,
    /// Ship up to this acknowledged-writes count now: the last pending change of every table
    /// whose deadline has come (`None` when none has).
    pub due_through: Option<u64>,
}

/// The deadlines of the `pending` tables, each with its interval from `interval_for`.
pub fn plan(
    pending: &[PendingTable],
    now: Instant,
    interval_for: impl Fn(u32) -> Duration,
) -> Plan {
    let mut out = Plan {
        next: None,
        due_through: None,
    };
    for t in pending {
        let deadline = t.oldest + interval_for(t.relid);
        out.next = Some(out.next.map_or(deadline, |n| n.min(deadline)));
        if deadline <= now {
            out.due_through = Some(out.due_through.map_or(t.last_ack, |d| d.max(t.last_ack)));
        }
    }
    out
}

/// Settings of one flusher.
#[derive(Debug, Clone)]
pub struct FlushSettings {
    /// The proxy-wide `flush_interval`: the shortest a change waits unless a barrier asks
    /// for it (a table's own interval counts when it is longer), the wait of changes whose
    /// table has no interval in the schedule (disabled meanwhile, or no schedule), and the
    /// longest the flusher sleeps when nothing is pending.
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
    /// Starts the flusher task with the proxy-wide interval for every table ([`Uniform`]).
    /// `committed_seq` is the last batch sequence number the inbox has
    /// (`writebehind.committed_seq()`). The task ends when `shutdown` flips to true, after
    /// shipping everything still pending.
    pub fn spawn(
        source: Arc<dyn BatchSource>,
        shipper: InboxShipper,
        settings: FlushSettings,
        committed_seq: i64,
        shutdown: watch::Receiver<bool>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        Self::spawn_scheduled(
            source,
            shipper,
            settings,
            Box::new(Uniform),
            committed_seq,
            shutdown,
        )
    }

    /// As [`spawn`](Self::spawn), with each table's interval from `schedule`.
    pub fn spawn_scheduled(
        source: Arc<dyn BatchSource>,
        shipper: InboxShipper,
        settings: FlushSettings,
        schedule: Box<dyn FlushSchedule>,
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
            schedule,
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

    /// Asks the flusher to ship now, whatever the deadlines.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Pauses shipping (`true`) or resumes it. While paused nothing ships, not even for a
    /// barrier; shutting down resumes.
    pub fn set_paused(&self, paused: bool) {
        self.paused.send_replace(paused);
    }

    /// Changes the proxy-wide flush interval and the batch size (admin `RELOAD`).
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
    schedule: Box<dyn FlushSchedule>,
    wake: Arc<Notify>,
    progress: watch::Sender<ShipProgress>,
    shutdown: watch::Receiver<bool>,
    paused: watch::Receiver<bool>,
    tune: watch::Receiver<(Duration, usize)>,
    latency: Arc<Histogram>,
}

impl FlushTask {
    async fn run(mut self) {
        let source = self.source.clone();
        // The first round ships what start-up replay queued.
        let mut ship_now = true;
        loop {
            let stopping = *self.shutdown.borrow();
            let paused = *self.paused.borrow();
            if stopping && paused {
                info!("shutting down: shipping resumes");
            }
            if stopping || (!paused && ship_now) {
                self.ship_through(self.source.acked()).await;
            } else if !paused {
                if let Some(through) = self.plan().due_through {
                    self.ship_through(through).await;
                }
            }
            if stopping {
                info!(
                    proxy_id = self.shipper.proxy_id(),
                    "flusher drained, stopping"
                );
                return;
            }
            ship_now = false;
            // Sleep until the earliest deadline (past already if changes became due while
            // shipping); with nothing pending, or while paused, for the proxy-wide interval
            // at most. Every wake-up plans again.
            let until = match self.plan().next {
                Some(next) if !paused => next,
                _ => Instant::now() + self.settings.flush_interval,
            };
            let arrived = async {
                match source.arrivals() {
                    Some(n) => n.notified().await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = self.wake.notified() => ship_now = true,
                _ = self.shutdown.changed() => {}
                _ = self.paused.changed() => {}
                _ = arrived => {}
                _ = self.schedule.changed() => {}
                _ = self.tune.changed() => {
                    let (interval, rows) = *self.tune.borrow();
                    self.settings.flush_interval = interval;
                    self.settings.max_batch_rows = rows;
                }
            }
        }
    }

    /// The deadlines now (see [`plan`]). A table waits its own interval or the proxy-wide
    /// one, whichever is longer (the proxy-wide one alone when the schedule has none for
    /// it). A source that tells no tables is shipped whole at each interval.
    fn plan(&self) -> Plan {
        let now = Instant::now();
        let fallback = self.settings.flush_interval;
        let pending = self.source.pending_tables();
        if pending.is_empty() && self.source.arrivals().is_none() {
            let target = self.source.acked();
            let waiting = self.progress.borrow().shipped_through < target;
            return Plan {
                next: None,
                due_through: waiting.then_some(target),
            };
        }
        plan(&pending, now, |relid| {
            self.schedule
                .flush_interval(relid)
                .map_or(fallback, |own| own.max(fallback))
        })
    }

    /// Ships the changes acknowledged up to the count `through` (everything acknowledged
    /// before the call, when woken; the due tables' changes, at a deadline), in batches, then
    /// publishes `shipped_through`. What arrives meanwhile waits for its own deadline, so
    /// that under a steady load batches span a whole flush interval (and coalesce that much).
    async fn ship_through(&mut self, through: u64) {
        if self.progress.borrow().shipped_through >= through {
            return;
        }
        while let Some(batch) = self
            .source
            .take_batch(self.settings.max_batch_rows, through)
        {
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
                // Batches are prefixes: everything acknowledged up to its last change is in.
                p.shipped_through = p.shipped_through.max(batch.acked_through);
            });
            if batch.acked_through >= through {
                break;
            }
        }
        self.progress.send_if_modified(|p| {
            let advanced = p.shipped_through < through;
            p.shipped_through = p.shipped_through.max(through);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn table(relid: u32, oldest: Instant, last_ack: u64) -> PendingTable {
        PendingTable {
            relid,
            oldest,
            last_ack,
        }
    }

    #[test]
    fn the_deadline_is_the_earliest_oldest_change_plus_its_tables_interval() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let interval = |relid: u32| match relid {
            1 => ms(3000),
            2 => ms(100),
            _ => ms(500),
        };
        let none = Plan {
            next: None,
            due_through: None,
        };
        assert_eq!(plan(&[], t0, interval), none);
        // One table: its oldest change plus its interval; due from then on, through its
        // last pending change.
        let slow = [table(1, t0, 7)];
        assert_eq!(
            plan(&slow, t0 + ms(2999), interval).next,
            Some(t0 + ms(3000))
        );
        assert_eq!(plan(&slow, t0 + ms(2999), interval).due_through, None);
        assert_eq!(plan(&slow, t0 + ms(3000), interval).due_through, Some(7));
        // A slow table queued first does not hold back a fast one queued later; the fast
        // one's round goes up to its own last change (the slow changes before it go along).
        let both = [table(1, t0, 9), table(2, t0 + ms(50), 5)];
        let p = plan(&both, t0 + ms(150), interval);
        assert_eq!((p.next, p.due_through), (Some(t0 + ms(150)), Some(5)));
        // Both due: up to the later of their last changes.
        assert_eq!(plan(&both, t0 + ms(3000), interval).due_through, Some(9));
        // A fast table queued late does not make the deadline earlier than its own.
        let late = [table(2, t0 + ms(2950), 5), table(1, t0, 4)];
        assert_eq!(plan(&late, t0, interval).next, Some(t0 + ms(3000)));
        // A table without an interval of its own (9 here) gets the fallback.
        let gone = [table(9, t0 + ms(10), 3), table(1, t0, 4)];
        assert_eq!(plan(&gone, t0, interval).next, Some(t0 + ms(510)));
    }
}
