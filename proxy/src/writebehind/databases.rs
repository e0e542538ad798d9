//! The write-behind runtimes of every database the proxy serves: started on first use or
//! by start-up replay, with their flusher, catalog, report and reconnection tasks; pause,
//! configuration reload, WAL segment removal and the shutdown drain.

use super::catalog::Catalog;
use super::encode::Change;
use super::privileges;
use super::queue::{Journal, Queue};
use super::report::{self, Reporter};
use super::runtime::{open_own, DbRuntime, Reload};
use crate::config::{Config, Durability};
use crate::live_config::LiveConfig;
use crate::ship::{Barrier, FlushSettings, Flusher, InboxShipper};
use crate::stats::Stats;
use crate::wal::{Wal, WalDir};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, OnceCell};
use tokio_postgres::error::SqlState;
use tracing::{error, info, warn};

/// Whether an apply worker serves the database (`writebehind.databases` lists it); the
/// extension's `writebehind.served()`, spelled out so that it works with older installs.
const SERVED_SQL: &str = "SELECT current_database() = ANY (SELECT btrim(d) FROM unnest(string_to_array(current_setting('writebehind.databases', true), ',')) d)";

/// Why a database's runtime could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// PostgreSQL did not answer: worth retrying later.
    #[error("cannot reach PostgreSQL: {0}")]
    Unreachable(String),
    /// The database cannot take write-behind (no extension, or a WAL that does not match it).
    #[error("{0}")]
    Unusable(String),
    /// The database does not exist (any more).
    #[error("{0}")]
    Gone(String),
}

/// Statements read back from the WAL for one database: (lsn, changes), in lsn order.
pub type Replay = Vec<(u64, Vec<Change>)>;

/// The write-behind runtimes of every database, created on first use.
pub struct WriteBehind {
    config: Config,
    proxy_id: String,
    wal: Option<Arc<Wal>>,
    /// The locked WAL directory: the lock lasts as long as this.
    _wal_dir: Option<WalDir>,
    dbs: DashMap<String, Arc<OnceCell<Option<Arc<DbRuntime>>>>>,
    stop: watch::Sender<bool>,
    /// Flusher tasks: they ship everything and end when `stop` flips.
    flushers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Catalog, notification, report, fsync and segment-removal tasks: aborted at the end.
    others: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Shipping paused by the admin console (`PAUSE`/`RESUME`).
    paused: AtomicBool,
    /// The lowest lsn start-up replay still reads (`u64::MAX`: none): segments from it on
    /// are kept.
    wal_hold: std::sync::atomic::AtomicU64,
    /// The running configuration, reloadable keys included (admin `RELOAD`).
    live: Arc<LiveConfig>,
    /// Sessions and counters, shared with the session layer (reported to PostgreSQL).
    stats: Arc<Stats>,
    started_at: SystemTime,
}

impl WriteBehind {
    /// A registry for this proxy; runtimes start when a session of a database first needs one.
    /// With a WAL (durability `wal`/`fsync`) the proxy id is the one stored in its directory;
    /// without, the configured one or a random one.
    pub fn new(config: Config, wal: Option<(WalDir, Arc<Wal>)>) -> Arc<Self> {
        let proxy_id = match &wal {
            Some((dir, _)) => dir.proxy_id().to_string(),
            None => config
                .proxy_id
                .clone()
                .unwrap_or_else(|| format!("proxy-{:016x}", rand::random::<u64>())),
        };
        let (wal_dir, wal) = wal.unzip();
        let live = config.clone();
        let wb = Arc::new(Self {
            config,
            proxy_id,
            wal,
            _wal_dir: wal_dir,
            dbs: DashMap::new(),
            stop: watch::channel(false).0,
            flushers: Mutex::new(Vec::new()),
            others: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            wal_hold: std::sync::atomic::AtomicU64::new(u64::MAX),
            live: Arc::new(LiveConfig::new(live)),
            stats: Arc::new(Stats::default()),
            started_at: SystemTime::now(),
        });
        if let Some(wal) = &wb.wal {
            let fsync = tokio::spawn(wal.clone().run_fsync(wb.config.wal_fsync_interval));
            let janitor = tokio::spawn(Self::remove_old_segments(Arc::downgrade(&wb)));
            wb.tasks().extend([fsync, janitor]);
        }
        wb
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Vec<tokio::task::JoinHandle<()>>> {
        self.others.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps every WAL segment from `lsn` on while start-up replays them: a database being
    /// recovered has no runtime yet to say what it still needs. Call right after
    /// [`new`](Self::new), before anything awaits.
    pub fn hold_wal_from(&self, lsn: u64) {
        self.wal_hold
            .store(lsn, std::sync::atomic::Ordering::Release);
    }

    /// Start-up replay is over: the runtimes say what they still need.
    pub fn release_wal_hold(&self) {
        self.wal_hold
            .store(u64::MAX, std::sync::atomic::Ordering::Release);
    }

    /// This proxy's id in `writebehind.progress`.
    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
    }

    /// The process's session registry and counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The running configuration.
    pub fn live(&self) -> &Arc<LiveConfig> {
        &self.live
    }

    /// Applies the reloadable keys of `new` (admin `RELOAD`): the pending bound and overflow
    /// policy at once, the flush interval and batch size from each flusher's next round.
    pub fn reload_config(&self, new: &Config) {
        let now = self.live.reload(new);
        for rt in self.runtimes() {
            rt.barrier
                .flusher()
                .retune(now.flush_interval, now.max_batch_rows);
        }
        info!("configuration reloaded");
    }

    /// Pauses (`true`) or resumes shipping in every database. While paused, writes are still
    /// acknowledged up to the pending bound and barriers wait (up to `barrier_timeout`).
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
        for rt in self.runtimes() {
            rt.barrier.flusher().set_paused(paused);
        }
        info!(
            paused,
            "shipping {}",
            if paused { "paused" } else { "resumed" }
        );
    }

    /// Whether shipping is paused.
    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The runtime of `database`, or `None` if the extension is not usable there. A database
    /// that could not be reached is tried again by the next session.
    pub async fn db(&self, database: &str) -> Option<Arc<DbRuntime>> {
        let cell = self.dbs.entry(database.to_string()).or_default().clone();
        let started = cell
            .get_or_try_init(|| async {
                match self.start(database, Vec::new()).await {
                    Ok(rt) => Ok(Some(rt)),
                    Err(StartError::Unusable(why)) => {
                        info!(database, reason = %why, "write-behind off for this database");
                        Ok(None)
                    }
                    Err(StartError::Unreachable(why) | StartError::Gone(why)) => {
                        warn!(database, reason = %why, "write-behind not started for this database yet");
                        Err(())
                    }
                }
            })
            .await;
        started.ok().and_then(|rt| rt.clone())
    }

    /// Start-up replay: starts `database`'s runtime with the statements read back from the
    /// WAL (those above the database's committed batch are queued again, the rest skipped).
    /// Retries while PostgreSQL is unreachable; an unusable database is an error, since the
    /// WAL holds acknowledged writes for it.
    pub async fn recover(&self, database: &str, replay: Replay) -> Result<(), String> {
        let cell = self.dbs.entry(database.to_string()).or_default().clone();
        let mut backoff =
            crate::ship::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let attempt = cell
                .get_or_try_init(|| async { self.start(database, replay.clone()).await.map(Some) })
                .await;
            match attempt {
                Ok(_) => return Ok(()),
                Err(StartError::Unusable(why)) => {
                    return Err(format!(
                        "the WAL holds {} acknowledged statements for database \"{database}\", which cannot take them: {why}",
                        replay.len()
                    ))
                }
                // Dropped, and with it whatever it held: the statements it would have taken
                // cannot be applied anywhere, and must not keep the proxy from starting.
                Err(StartError::Gone(why)) if !replay.is_empty() => {
                    tracing::error!(database, statements = replay.len(), reason = %why,
                        "the WAL holds acknowledged statements for a database that no longer exists: they are dropped");
                    self.dbs.remove(database);
                    return Ok(());
                }
                Err(StartError::Gone(why) | StartError::Unreachable(why)) => {
                    let delay = backoff.next_delay();
                    warn!(database, reason = %why, ?delay, "replaying the WAL: PostgreSQL unreachable, retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn start(&self, database: &str, replay: Replay) -> Result<Arc<DbRuntime>, StartError> {
        let pg = self
            .config
            .upstream
            .pg_config(database, self.config.connect_timeout);
        let (cat_tx, cat_rx) = watch::channel(Arc::new(Catalog::default()));
        // Registry notifications (and reconnections) make the catalog reload.
        let (note_tx, mut note_rx) = tokio::sync::mpsc::unbounded_channel::<Reload>();
        // tokio-postgres bounds only the TCP connect: a server that accepts and never answers
        // would hold the login (and the session waiting for this runtime) for ever.
        let timeout = self.config.connect_timeout;
        let (own, own_task) = tokio::time::timeout(timeout, open_own(&pg, note_tx.clone()))
            .await
            .map_err(|_| StartError::Unreachable(format!("no answer to login within {timeout:?}")))?
            .map_err(|e| {
                if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_CATALOG_NAME) {
                    StartError::Gone(e.to_string())
                } else {
                    StartError::Unreachable(e.to_string())
                }
            })?;
        let catalog = Catalog::load(&own, 1)
            .await
            .map_err(|e| StartError::Unusable(format!("extension missing? {e}")))?;
        // What privileges depend on, before any is asked: what the watcher compares with.
        let baseline = privileges::fingerprint(&own).await.ok().flatten();
        // Without an apply worker nothing shipped here would ever apply: acknowledge nothing.
        // Start-up replay ships what the WAL holds all the same (it is applied once a worker
        // serves the database).
        let served = own
            .query_one(SERVED_SQL, &[])
            .await
            .map_err(|e| StartError::Unusable(format!("extension missing? {e}")))?
            .try_get::<_, Option<bool>>(0)
            .map_err(|e| StartError::Unusable(e.to_string()))?
            .unwrap_or(false);
        if !served {
            let why = format!(
                "no apply worker serves database \"{database}\": add it to writebehind.databases in postgresql.conf and restart PostgreSQL"
            );
            if replay.is_empty() {
                return Err(StartError::Unusable(why));
            }
            warn!(database, reason = %why, "replaying acknowledged writes into a database whose changes will wait in the inbox");
        }
        let _ = cat_tx.send(Arc::new(catalog));
        let mut shipper = InboxShipper::new(pg.clone(), self.proxy_id.clone());
        // Claiming waits for a batch the previous process of this proxy id left in flight
        // and fences off any it sent but PostgreSQL has not begun: the committed sequence
        // read here is final, so replaying above it applies nothing twice.
        let committed = claim(&mut shipper).await?;
        let committed_lsn = u64::try_from(committed).unwrap_or(0);
        let journal = match &self.wal {
            Some(wal) => {
                let next = wal.stats().next_lsn;
                if committed_lsn >= next {
                    // The WAL ends below a batch PostgreSQL has committed: a machine crash lost
                    // its unsynced tail after that batch shipped (or the directory was replaced).
                    // What it lost is lost either way; new records are numbered above the
                    // committed batch, or their batches would be taken for replays and skipped.
                    // The skip record is fsynced (a blocking call, once per such start).
                    let w = wal.clone();
                    let moved =
                        tokio::task::spawn_blocking(move || w.advance_to(committed_lsn + 1))
                            .await
                            .map_err(|e| StartError::Unusable(e.to_string()))?
                            .map_err(|e| StartError::Unusable(e.to_string()))?;
                    if moved {
                        warn!(
                            database,
                            committed,
                            wal_end = next.saturating_sub(1),
                            "the WAL ends below a batch PostgreSQL has committed (a machine crash lost its unsynced tail, or the WAL directory was replaced): numbering continues above it"
                        );
                    }
                }
                Some(Journal {
                    wal: wal.clone(),
                    database: database.to_string(),
                })
            }
            None => None,
        };
        let queue = Arc::new(Queue::new(
            self.proxy_id.clone(),
            journal,
            committed_lsn + 1,
        ));
        let (mut replayed, mut skipped) = (0usize, 0usize);
        for (lsn, changes) in replay {
            if lsn > committed_lsn {
                queue.replay(lsn, changes);
                replayed += 1;
            } else {
                skipped += 1;
            }
        }
        if replayed + skipped > 0 {
            info!(
                database,
                replayed,
                skipped,
                committed_seq = committed,
                "replayed the WAL"
            );
        }
        let tuned = self.live.get();
        let settings = FlushSettings {
            flush_interval: tuned.flush_interval,
            max_batch_rows: tuned.max_batch_rows,
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_secs(5),
        };
        // Each table's flush_interval comes from the current catalog (reloaded on NOTIFY).
        let (flusher, task) = Flusher::spawn_scheduled(
            queue.clone(),
            shipper,
            settings,
            Box::new(cat_rx.clone()),
            committed,
            self.stop.subscribe(),
        );
        if self.paused() {
            flusher.set_paused(true);
        }
        self.flushers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        let barrier = Barrier::new(
            queue.clone(),
            flusher,
            InboxShipper::new(pg.clone(), self.proxy_id.clone()),
        );
        let rt = Arc::new(DbRuntime {
            catalog: cat_rx,
            catalog_tx: cat_tx,
            retired: Default::default(),
            loads: std::sync::atomic::AtomicU64::new(1),
            queue,
            barrier,
            own: Mutex::new(Arc::new(own)),
            privileges: Default::default(),
            live: self.live.clone(),
            fsync: self.config.durability == Durability::Fsync,
            overflows: std::sync::atomic::AtomicU64::new(0),
            notes: note_tx.clone(),
            applied: Mutex::new(HashMap::new()),
        });
        // Report to writebehind.report once a second (writebehind.proxies and .status).
        let reporter = Reporter {
            proxy_id: self.proxy_id.clone(),
            address: self.config.listen.clone(),
            durability: format!("{:?}", self.config.durability).to_lowercase(),
            started_at: self.started_at,
            stats: self.stats.clone(),
            wal: self.wal.clone(),
        };
        let reports = report::spawn(Arc::downgrade(&rt), reporter);
        self.tasks().push(reports);
        // Role membership and attributes (and a few ACL changes) send no notification.
        if let Some(baseline) = baseline {
            rt.privileges.observe(baseline);
        }
        let watcher = privileges::watch(Arc::downgrade(&rt));
        self.tasks().push(watcher);
        // Reload the catalog on every registry NOTIFY, and after a reconnection.
        let weak = Arc::downgrade(&rt);
        let reloader = tokio::spawn(async move {
            while let Some(first) = note_rx.recv().await {
                // A burst of notifications (a migration's DDL) makes one reload: it starts
                // after all of them arrived, so it sees what each one announced.
                let mut notes = vec![first];
                while let Ok(more) = note_rx.try_recv() {
                    notes.push(more);
                }
                let Some(rt) = weak.upgrade() else { return };
                // A registry change or a GRANT/REVOKE may change who may write what. A
                // reconnection keeps the answers (the roles watcher sees what changed
                // meanwhile): forgetting them would make every session's next write ask
                // again behind the backlog of an outage.
                if notes
                    .iter()
                    .any(|n| matches!(n, Reload::Registry | Reload::Privileges))
                {
                    rt.privileges.forget();
                }
                if let Err(error) = rt.reload_catalog().await {
                    warn!(%error, "reloading the write-behind catalog failed");
                }
            }
        });
        self.tasks().push(reloader);
        // Keep the own connection: when it breaks (PostgreSQL restarted), open a new one.
        let weak = Arc::downgrade(&rt);
        let db = database.to_string();
        let keeper = tokio::spawn(async move {
            let mut ended = own_task;
            loop {
                let _ = (&mut ended).await;
                let mut backoff =
                    crate::ship::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                loop {
                    if weak.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    match open_own(&pg, note_tx.clone()).await {
                        Ok((client, task)) => {
                            let Some(rt) = weak.upgrade() else { return };
                            *rt.own.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(client);
                            info!(database = %db, "write-behind connection re-established; reloading the catalog");
                            let _ = note_tx.send(Reload::Reconnected);
                            ended = task;
                            break;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "reconnecting the write-behind connection")
                        }
                    }
                }
            }
        });
        self.tasks().push(keeper);
        info!(database, proxy_id = %self.proxy_id, tables = rt.catalog.borrow().tables.len(), "write-behind on");
        Ok(rt)
    }

    /// Every started runtime with its database's name.
    pub fn databases(&self) -> Vec<(String, Arc<DbRuntime>)> {
        self.dbs
            .iter()
            .filter_map(|e| Some((e.key().clone(), e.value().get().cloned().flatten()?)))
            .collect()
    }

    /// The WAL, with durability `wal` and `fsync`.
    pub fn wal(&self) -> Option<&Arc<Wal>> {
        self.wal.as_ref()
    }

    /// Every started runtime.
    pub fn runtimes(&self) -> Vec<Arc<DbRuntime>> {
        self.dbs
            .iter()
            .filter_map(|e| e.value().get().cloned().flatten())
            .collect()
    }

    /// Removes WAL segments below the oldest statement any database still needs, once a
    /// second. The WAL's next lsn is read first, so a statement appended meanwhile is above it.
    async fn remove_old_segments(me: std::sync::Weak<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Some(wb) = me.upgrade() else { return };
            let Some(wal) = &wb.wal else { return };
            let next = wal
                .stats()
                .next_lsn
                .min(wb.wal_hold.load(std::sync::atomic::Ordering::Acquire));
            let keep = wb
                .runtimes()
                .iter()
                .filter_map(|rt| rt.queue.oldest_needed())
                .fold(next, u64::min);
            let wal = wal.clone();
            match tokio::task::spawn_blocking(move || wal.remove_below(keep)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(removed = n, below = keep, "removed WAL segments"),
                Ok(Err(error)) => warn!(%error, "removing WAL segments failed"),
                Err(error) => warn!(%error, "removing WAL segments failed"),
            }
        }
    }

    /// After the sessions ended: tells the flushers to ship everything left, waits for them,
    /// fsyncs the WAL, and stops the other tasks.
    /// With a WAL, shipping is given `shutdown_timeout` (PostgreSQL may be down): what is
    /// left stays in the WAL and ships at the next start. Without one, the proxy waits for as
    /// long as shipping takes, since exiting would lose acknowledged writes.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let flushers: Vec<_> =
            std::mem::take(&mut *self.flushers.lock().unwrap_or_else(|e| e.into_inner()));
        let all = futures::future::join_all(flushers);
        if self.wal.is_some() {
            if tokio::time::timeout(self.live.get().shutdown_timeout, all)
                .await
                .is_err()
            {
                let left: usize = self.runtimes().iter().map(|rt| rt.queue.pending().0).sum();
                warn!(left, "shipping did not finish within shutdown_timeout: the rest stays in the WAL and ships at the next start");
            }
        } else {
            all.await;
        }
        for t in std::mem::take(&mut *self.tasks()) {
            t.abort();
        }
        if let Some(wal) = &self.wal {
            // Blocking (and it may wait for an fsync already under way): off the event loop.
            let wal = wal.clone();
            match tokio::task::spawn_blocking(move || wal.sync()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => error!(%error, "final WAL fsync failed"),
                Err(error) => error!(%error, "final WAL fsync failed"),
            }
        }
    }
}

/// How long start-up waits for a proxy id held by another session: the session of a process
/// killed a moment ago ends as soon as PostgreSQL notices (its socket is closed), and a batch
/// it had in flight commits or rolls back first.
const CLAIM_WAIT: Duration = Duration::from_secs(3);

/// Claims the proxy id in one database (`writebehind.claim`), waiting up to [`CLAIM_WAIT`]
/// while another session holds it. Held for longer, the id belongs to another running proxy:
/// the database stays pass-through here (retried by the next session, or by start-up replay).
async fn claim(shipper: &mut InboxShipper) -> Result<i64, StartError> {
    let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
    loop {
        match shipper.claim().await {
            Ok(committed) => return Ok(committed),
            Err(e)
                if e.sqlstate() == Some(&SqlState::OBJECT_IN_USE)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(StartError::Unreachable(e.to_string())),
        }
    }
}
