//! The per-database write-behind runtime: catalog, the queue of acknowledged changes, the
//! flusher that ships them, the read barrier, and privilege checks for the session's user.
//! `databases.rs` starts one per database and owns their tasks.

use super::catalog::Catalog;
use super::encode::Change;
use super::privileges::{Answer, Privilege, Privileges};
use super::queue::{Queue, QueueError};
use super::report::Applied;
use crate::config::Overflow;
use crate::live_config::LiveConfig;
use crate::session::own_tls::OwnTls;
use crate::ship::{Barrier, BarrierError};
use crate::wal::WalError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What became of a write offered to the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Journaled (per the durability mode) and queued: acknowledge it.
    Acked,
    /// The pending bound is reached and `overflow = sync`: send the statement to PostgreSQL.
    /// The changes come back, unqueued, for a caller that cannot pass through any more.
    PassThrough(Vec<Change>),
}

/// Why a write was refused; nothing of it was queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The pending bound is reached (`overflow = error`, or `block` past `overflow_timeout`).
    #[error("write-behind queue is full ({rows} rows, {bytes} bytes pending; max_pending_rows = {max_rows}, max_pending_bytes = {max_bytes})")]
    Overflow {
        rows: usize,
        bytes: usize,
        max_rows: usize,
        max_bytes: usize,
    },
    /// The WAL record could not be written (or fsynced).
    #[error("could not write the write-behind WAL: {0}")]
    Wal(#[from] WalError),
    /// The client cancelled the statement while it waited for room (`overflow = block`).
    #[error("canceling statement due to user request")]
    Cancelled,
    /// The session's `statement_timeout` passed while it waited for room.
    #[error("canceling statement due to statement timeout")]
    StatementTimeout,
}

impl From<QueueError> for EnqueueError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Wal(w) => EnqueueError::Wal(w),
        }
    }
}

/// One database's runtime.
pub struct DbRuntime {
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub(super) catalog_tx: watch::Sender<Arc<Catalog>>,
    /// Numbers catalog loads in the order they start ([`Catalog::ticket`]).
    pub(super) loads: std::sync::atomic::AtomicU64,
    pub queue: Arc<Queue>,
    pub barrier: Barrier,
    /// The runtime's own connection (catalog, privileges, registry notifications); replaced
    /// when it breaks.
    pub(super) own: Mutex<Arc<tokio_postgres::Client>>,
    /// PostgreSQL's answers on who may write which table, with their generation.
    pub privileges: Privileges,
    /// The running configuration (pending bound and overflow policy are reloadable).
    pub(super) live: Arc<LiveConfig>,
    /// Acknowledgements wait for the group fsync (durability `fsync`).
    pub(super) fsync: bool,
    /// Writes that met the pending bound (refused, waited, or sent through).
    pub overflows: std::sync::atomic::AtomicU64,
    /// Asks the catalog reloader for a reload.
    pub(super) notes: tokio::sync::mpsc::UnboundedSender<Reload>,
    /// The worker's per-table counters, as the last report returned them.
    pub(super) applied: Mutex<HashMap<u32, Applied>>,
    /// Tables a catalog reload dropped (disabled, dropped) while changes acknowledged for them
    /// may still be pending: see [`super::retired`].
    pub(super) retired: super::retired::Retired,
}

/// The pending bound and what happens at it.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_rows: usize,
    max_bytes: usize,
    overflow: Overflow,
    overflow_timeout: Duration,
    fsync: bool,
}

impl Limits {
    /// Whether `rows` and `bytes` pending reach the bound.
    fn full(&self, (rows, bytes): (usize, usize)) -> bool {
        rows >= self.max_rows || bytes >= self.max_bytes
    }
}

/// Why the catalog is reloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reload {
    /// A `writebehind_registry` notification (enable, alter, disable, DDL, drop).
    Registry,
    /// Other DDL (`schema`): views, functions, triggers or keys may have changed.
    Schema,
    /// A GRANT or REVOKE (`privileges`): who may write what may have changed.
    Privileges,
    /// The own connection was re-established after it broke.
    Reconnected,
}

/// Opens a runtime's own connection: its task forwards registry notifications to `notes`
/// and ends when the connection does.
pub(super) async fn open_own(
    pg: &tokio_postgres::Config,
    notes: tokio::sync::mpsc::UnboundedSender<Reload>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, mut conn) = pg.connect(OwnTls::new()).await?;
    let task = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        use futures::StreamExt;
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let why = match n.payload() {
                    "schema" => Reload::Schema,
                    "privileges" => Reload::Privileges,
                    _ => Reload::Registry,
                };
                let _ = notes.send(why);
            }
        }
    });
    // The catalog's query is large enough for the planner to JIT-compile it, which costs
    // hundreds of milliseconds per load (the catalog would lag DDL that long); none of the
    // own connection's queries runs long enough to gain from it.
    client
        .batch_execute("SET jit = off; LISTEN writebehind_registry")
        .await?;
    Ok((client, task))
}

impl DbRuntime {
    pub(super) fn own(&self) -> Arc<tokio_postgres::Client> {
        self.own.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the runtime's own connection to PostgreSQL is up.
    pub fn reachable(&self) -> bool {
        !self.own().is_closed()
    }

    /// The pending bound: rows and bytes.
    pub fn bounds(&self) -> (usize, usize) {
        let l = self.limits();
        (l.max_rows, l.max_bytes)
    }

    /// Offers one statement's changes: waits for room per the overflow policy, journals them
    /// (and waits for the group fsync in `fsync` mode), and queues them.
    pub async fn enqueue(&self, changes: Vec<Change>) -> Result<Enqueued, EnqueueError> {
        self.enqueue_unless(changes, std::future::pending()).await
    }

    /// [`enqueue`](Self::enqueue) when it needs no wait: the queue has room and the WAL is not
    /// fsynced per write. Otherwise the changes come back, for the waiting path.
    pub fn enqueue_now(
        &self,
        changes: Vec<Change>,
    ) -> Result<Result<Enqueued, EnqueueError>, Vec<Change>> {
        let l = self.limits();
        if l.fsync || l.full(self.queue.pending()) {
            return Err(changes);
        }
        let pushed = self.push(changes);
        Ok(pushed.map(|_| Enqueued::Acked).map_err(EnqueueError::from))
    }

    /// As [`enqueue`](Self::enqueue), refused with the error `interrupted` gives if it
    /// completes while the write waits for room (before anything is queued).
    pub async fn enqueue_unless(
        &self,
        changes: Vec<Change>,
        interrupted: impl std::future::Future<Output = EnqueueError>,
    ) -> Result<Enqueued, EnqueueError> {
        let overflow = self.limits().overflow;
        self.enqueue_with(changes, overflow, interrupted).await
    }

    /// Whether a write offered now would wait for room (`overflow = block`, at the bound).
    pub fn would_block(&self) -> bool {
        let l = self.limits();
        l.overflow == Overflow::Block && l.full(self.queue.pending())
    }

    /// As [`enqueue`](Self::enqueue), waiting for room (as `overflow = block`) whatever the
    /// policy: for changes the client was already answered for, which cannot pass through.
    pub async fn enqueue_waiting(&self, changes: Vec<Change>) -> Result<(), EnqueueError> {
        self.enqueue_with(changes, Overflow::Block, std::future::pending())
            .await
            .map(|_| ())
    }

    async fn enqueue_with(
        &self,
        changes: Vec<Change>,
        overflow: Overflow,
        interrupted: impl std::future::Future<Output = EnqueueError>,
    ) -> Result<Enqueued, EnqueueError> {
        let l = self.limits();
        let deadline = tokio::time::Instant::now() + l.overflow_timeout;
        let mut interrupted = std::pin::pin!(interrupted);
        loop {
            let freed = self.queue.space_notified();
            let (rows, bytes) = self.queue.pending();
            if !l.full((rows, bytes)) {
                break;
            }
            self.overflows
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let full = EnqueueError::Overflow {
                rows,
                bytes,
                max_rows: l.max_rows,
                max_bytes: l.max_bytes,
            };
            match overflow {
                Overflow::Sync => return Ok(Enqueued::PassThrough(changes)),
                Overflow::Error => return Err(full),
                Overflow::Block => {
                    self.barrier.flusher().wake();
                    tokio::select! {
                        r = tokio::time::timeout_at(deadline, freed) => if r.is_err() {
                            return Err(full);
                        },
                        e = &mut interrupted => return Err(e),
                    }
                }
            }
        }
        let lsn = self.push(changes)?;
        if l.fsync {
            if let Some(wal) = self.queue.wal() {
                wal.wait_synced(lsn).await?;
            }
        }
        Ok(Enqueued::Acked)
    }

    /// Whether `user` holds `privilege` on the whole table (see `privileges.rs`).
    pub async fn allowed(&self, user: &str, relid: u32, privilege: Privilege) -> Option<Answer> {
        self.privileges
            .allowed(|| self.own(), user, relid, privilege)
            .await
    }

    /// The pending bound and overflow policy in force now.
    fn limits(&self) -> Limits {
        let c = self.live.get();
        Limits {
            max_rows: c.max_pending_rows,
            max_bytes: c.max_pending_bytes,
            overflow: c.overflow,
            overflow_timeout: c.overflow_timeout,
            fsync: self.fsync,
        }
    }

    /// The worker's per-table counters as of the last report (about a second old).
    pub fn applied(&self) -> HashMap<u32, Applied> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reloads the catalog and forgets cached privileges (admin `RELOAD`).
    pub fn reload(&self) {
        let _ = self.notes.send(Reload::Registry);
    }

    /// Keeps the worker's counters a report returned.
    pub(super) fn set_applied(&self, applied: HashMap<u32, Applied>) {
        *self.applied.lock().unwrap_or_else(|e| e.into_inner()) = applied;
    }

    /// Loads the catalog now and publishes it, unless a load that started later was
    /// published first. Returns once a catalog loaded after the call is current.
    pub async fn reload_catalog(&self) -> Result<(), tokio_postgres::Error> {
        let ticket = self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let loaded = Arc::new(Catalog::load(&self.own(), ticket).await?);
        self.catalog_tx.send_if_modified(|current| {
            let newer = loaded.ticket > current.ticket;
            if newer {
                self.retired.reloaded(current, &loaded);
                *current = loaded;
            }
            newer
        });
        Ok(())
    }

    /// Queues `changes`; a table among them the current catalog no longer has is kept
    /// retired (see [`super::retired`]) before the write is acknowledged.
    fn push(&self, changes: Vec<Change>) -> Result<u64, super::queue::QueueError> {
        let relids = super::retired::tables_of(&changes);
        let pushed = self.queue.push(changes);
        self.retired.queued(&self.catalog.borrow(), &relids);
        pushed
    }

    /// Whether some table no longer registered may have changes pending: every statement
    /// that passes through waits for them.
    pub fn has_retired(&self) -> bool {
        self.retired.any()
    }

    /// The barrier over the write-behind tables `relids` (tables no longer registered are
    /// not waited for, nor, for a statement that only reads (`writes` false), tables enabled
    /// with `read_barrier => false`). Nothing to wait for costs nothing: no shipping, no I/O.
    pub async fn barrier(
        &self,
        relids: &std::collections::BTreeSet<u32>,
        writes: bool,
        timeout: std::time::Duration,
    ) -> Result<(), BarrierError> {
        let mut relids: Vec<u32> = self
            .catalog
            .borrow()
            .tables
            .iter()
            .filter(|t| (writes || t.read_barrier) && relids.contains(&t.relid))
            .map(|t| t.relid)
            .collect();
        self.wait_with_retired(&mut relids, timeout).await
    }

    /// Waits for `relids` and the retired tables (nothing to wait for costs nothing).
    async fn wait_with_retired(
        &self,
        relids: &mut Vec<u32>,
        timeout: std::time::Duration,
    ) -> Result<(), BarrierError> {
        let retired = self.retired.snapshot();
        if let Some(s) = &retired {
            for r in &s.relids {
                if !relids.contains(r) {
                    relids.push(*r);
                }
            }
        }
        if relids.is_empty() {
            return Ok(());
        }
        self.barrier.wait(relids, timeout).await?;
        if let Some(s) = &retired {
            self.retired.waited(s);
        }
        Ok(())
    }

    /// Whether the database's apply worker waits for a lock the backend `pid` holds (directly:
    /// `pg_blocking_pids`). False when it cannot be asked.
    pub async fn worker_blocked_by(&self, pid: i32) -> bool {
        const BLOCKED: &str = "SELECT EXISTS (
                SELECT 1 FROM pg_catalog.pg_stat_activity a
                 WHERE a.backend_type = 'pg_writebehind apply worker'
                   AND a.datname = pg_catalog.current_database()
                   AND $1::int4 = ANY (pg_catalog.pg_blocking_pids(a.pid)))";
        match self.own().query_one(BLOCKED, &[&pid]).await {
            Ok(row) => row.try_get(0).unwrap_or(false),
            Err(error) => {
                tracing::debug!(%error, "could not ask whether the worker waits for a session");
                false
            }
        }
    }

    /// Whether some write-behind table of the database was enabled with `read_barrier =>
    /// false`.
    pub fn some_without_read_barrier(&self) -> bool {
        self.catalog.borrow().tables.iter().any(|t| !t.read_barrier)
    }

    /// The barrier over every write-behind table of the database (for a statement that only
    /// reads, `writes` false, those enabled with `read_barrier => false` excepted).
    pub async fn barrier_all(
        &self,
        writes: bool,
        timeout: std::time::Duration,
    ) -> Result<(), BarrierError> {
        let mut relids: Vec<u32> = self
            .catalog
            .borrow()
            .tables
            .iter()
            .filter(|t| writes || t.read_barrier)
            .map(|t| t.relid)
            .collect();
        self.wait_with_retired(&mut relids, timeout).await
    }
}
