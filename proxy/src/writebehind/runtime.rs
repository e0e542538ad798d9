//! The per-database write-behind runtime: catalog, the queue of acknowledged changes, the
//! flusher that ships them, the read barrier, and privilege checks for the session's user.

use super::catalog::Catalog;
use super::encode::{copy_row, Change, ColumnChange};
use crate::config::Config;
use crate::ship::{
    Barrier, BarrierError, BatchSource, EncodedBatch, FlushSettings, Flusher, InboxShipper,
};
use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, OnceCell};
use tracing::{info, warn};

/// Acknowledged changes not yet shipped, in acknowledgement order.
pub struct Queue {
    proxy_id: String,
    pending: Mutex<Vec<Change>>,
    acked: AtomicU64,
}

impl Queue {
    /// Appends changes; counts them as acknowledged once they are in the queue.
    pub fn push(&self, changes: Vec<Change>) {
        let n = changes.len() as u64;
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.extend(changes);
        self.acked.fetch_add(n, Ordering::SeqCst);
    }

    /// Changes waiting to be shipped.
    pub fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing waits to be shipped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BatchSource for Queue {
    fn take_batch(&self, seq: i64, max_rows: usize) -> Option<EncodedBatch> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_empty() {
            return None;
        }
        let n = p.len().min(max_rows);
        let folded = fold(p.drain(..n));
        let mut rows = Vec::with_capacity(folded.len() * 64);
        let mut relids: Vec<u32> = Vec::new();
        for c in &folded {
            copy_row(&mut rows, &self.proxy_id, seq, c);
            if !relids.contains(&c.relid()) {
                relids.push(c.relid());
            }
        }
        Some(EncodedBatch {
            rows: rows.into(),
            changes: folded.len(),
            relids,
        })
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }
}

/// Coalesces a batch per key before it ships: an UPDATE directly following another UPDATE of
/// the same key merges into it (a later value wins; integer increments add up). Every other
/// change stays where it is, so each key's changes keep their order.
pub fn fold(changes: impl Iterator<Item = Change>) -> Vec<Change> {
    let mut out: Vec<Change> = Vec::new();
    let mut last: HashMap<(u32, Vec<String>), usize> = HashMap::new();
    for c in changes {
        let slot = match &c {
            Change::Update { relid, key, .. } => Some((*relid, key.clone())),
            Change::Insert {
                relid,
                key: Some(key),
                ..
            }
            | Change::Delete { relid, key } => {
                last.remove(&(*relid, key.clone()));
                None
            }
            Change::Insert { .. } => None,
        };
        if let (Some(k), Change::Update { columns: next, .. }) = (&slot, &c) {
            if let Some(&i) = last.get(k) {
                if let Some(Change::Update { columns: prev, .. }) = out.get_mut(i) {
                    if let Some(merged) = merge(prev, next) {
                        *prev = merged;
                        continue;
                    }
                }
            }
        }
        out.push(c);
        if let Some(k) = slot {
            last.insert(k, out.len() - 1);
        }
    }
    out
}

fn merge(
    prev: &[(String, ColumnChange)],
    next: &[(String, ColumnChange)],
) -> Option<Vec<(String, ColumnChange)>> {
    let mut out = prev.to_vec();
    for (col, change) in next {
        match (out.iter_mut().find(|(c, _)| c == col), change) {
            (None, ch) => out.push((col.clone(), ch.clone())),
            (Some((_, slot)), ColumnChange::Set(v)) => *slot = ColumnChange::Set(v.clone()),
            (Some((_, ColumnChange::Add(a))), ColumnChange::Add(b)) => {
                let sum = a.parse::<i64>().ok()?.checked_add(b.parse::<i64>().ok()?)?;
                *a = sum.to_string();
            }
            // A set followed by an increment: keep them apart (the worker folds exactly).
            (Some(_), ColumnChange::Add(_)) => return None,
        }
    }
    Some(out)
}

/// One database's runtime.
pub struct DbRuntime {
    pub catalog: watch::Receiver<Arc<Catalog>>,
    pub queue: Arc<Queue>,
    pub barrier: Barrier,
    own: tokio_postgres::Client,
    privileges: DashMap<(String, u32, &'static str), bool>,
    user_schemas: DashMap<String, bool>,
}

impl DbRuntime {
    /// Whether `user` holds `privilege` (INSERT, UPDATE, DELETE) on the whole table.
    pub async fn allowed(&self, user: &str, relid: u32, privilege: &'static str) -> bool {
        let k = (user.to_string(), relid, privilege);
        if let Some(v) = self.privileges.get(&k) {
            return *v;
        }
        let ok = self
            .own
            .query_one(
                "SELECT has_table_privilege($1::text::name, $2::int8::oid, $3)",
                &[&user, &(relid as i64), &privilege],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false);
        self.privileges.insert(k, ok);
        ok
    }

    /// Whether a schema named like `user` exists ("$user" in the default search_path would
    /// then shadow `public` for unqualified names).
    pub async fn user_schema_exists(&self, user: &str) -> bool {
        if let Some(v) = self.user_schemas.get(user) {
            return *v;
        }
        let exists = self
            .own
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&user],
            )
            .await
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(true);
        self.user_schemas.insert(user.to_string(), exists);
        exists
    }

    /// The read barrier over every write-behind table of the database.
    pub async fn barrier_all(&self, timeout: std::time::Duration) -> Result<(), BarrierError> {
        let relids: Vec<u32> = self
            .catalog
            .borrow()
            .tables
            .iter()
            .map(|t| t.relid)
            .collect();
        self.barrier.wait(&relids, timeout).await
    }
}

/// The write-behind runtimes of every database, created on first use.
pub struct WriteBehind {
    config: Config,
    proxy_id: String,
    dbs: DashMap<String, Arc<OnceCell<Option<Arc<DbRuntime>>>>>,
    stop: watch::Sender<bool>,
    /// Flusher tasks: they ship everything and end when `stop` flips.
    flushers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Catalog and notification tasks: aborted at the end.
    others: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl WriteBehind {
    /// A registry for this proxy; runtimes start when a session of a database first needs one.
    pub fn new(config: Config) -> Self {
        let proxy_id = config
            .proxy_id
            .clone()
            .unwrap_or_else(|| format!("proxy-{:016x}", rand::random::<u64>()));
        Self {
            config,
            proxy_id,
            dbs: DashMap::new(),
            stop: watch::channel(false).0,
            flushers: Mutex::new(Vec::new()),
            others: Mutex::new(Vec::new()),
        }
    }

    /// The runtime of `database`, or `None` if the extension is not usable there.
    pub async fn db(&self, database: &str) -> Option<Arc<DbRuntime>> {
        let cell = self.dbs.entry(database.to_string()).or_default().clone();
        cell.get_or_init(|| self.start(database)).await.clone()
    }

    async fn start(&self, database: &str) -> Option<Arc<DbRuntime>> {
        let pg = self
            .config
            .upstream
            .pg_config(database, self.config.connect_timeout);
        let (own, conn) = match pg.connect(tokio_postgres::NoTls).await {
            Ok(c) => c,
            Err(error) => {
                warn!(%error, database, "write-behind off for this database: cannot connect");
                return None;
            }
        };
        let (cat_tx, cat_rx) = watch::channel(Arc::new(Catalog::default()));
        // The connection task: delivers registry notifications by reloading the catalog.
        let (note_tx, mut note_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut conn = conn;
        self.others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                use futures::StreamExt;
                while let Some(Ok(m)) = messages.next().await {
                    if let tokio_postgres::AsyncMessage::Notification(_) = m {
                        let _ = note_tx.send(());
                    }
                }
            }));
        let catalog = match Catalog::load(&own).await {
            Ok(c) => c,
            Err(error) => {
                info!(%error, database, "write-behind off for this database (extension missing?)");
                return None;
            }
        };
        if let Err(error) = own.batch_execute("LISTEN writebehind_registry").await {
            warn!(%error, database, "write-behind off: cannot LISTEN for registry changes");
            return None;
        }
        let _ = cat_tx.send(Arc::new(catalog));
        let queue = Arc::new(Queue {
            proxy_id: self.proxy_id.clone(),
            pending: Mutex::new(Vec::new()),
            acked: AtomicU64::new(0),
        });
        let mut shipper = InboxShipper::new(pg.clone(), self.proxy_id.clone());
        let first = match shipper.committed_seq().await {
            Ok(s) => s + 1,
            Err(error) => {
                warn!(%error, database, "write-behind off: cannot read the proxy's progress");
                return None;
            }
        };
        let settings = FlushSettings {
            flush_interval: self.config.flush_interval,
            max_batch_rows: self.config.max_batch_rows,
            retry_initial: std::time::Duration::from_millis(50),
            retry_max: std::time::Duration::from_secs(5),
        };
        let (flusher, task) = Flusher::spawn(
            queue.clone(),
            shipper,
            settings,
            first,
            self.stop.subscribe(),
        );
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
            queue,
            barrier,
            own,
            privileges: DashMap::new(),
            user_schemas: DashMap::new(),
        });
        // Reload the catalog on every registry NOTIFY.
        let weak = Arc::downgrade(&rt);
        self.others
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tokio::spawn(async move {
                while note_rx.recv().await.is_some() {
                    let Some(rt) = weak.upgrade() else { return };
                    match Catalog::load(&rt.own).await {
                        Ok(c) => {
                            let _ = cat_tx.send(Arc::new(c));
                            rt.privileges.clear();
                        }
                        Err(error) => warn!(%error, "reloading the write-behind catalog failed"),
                    }
                }
            }));
        info!(database, proxy_id = %self.proxy_id, tables = rt.catalog.borrow().tables.len(), "write-behind on");
        Some(rt)
    }

    /// After the sessions ended: tells the flushers to ship everything left, waits for them,
    /// and stops the catalog tasks.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let flushers: Vec<_> =
            std::mem::take(&mut *self.flushers.lock().unwrap_or_else(|e| e.into_inner()));
        for t in flushers {
            let _ = t.await;
        }
        for t in std::mem::take(&mut *self.others.lock().unwrap_or_else(|e| e.into_inner())) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(id: &str, k: &str) -> Change {
        Change::Update {
            relid: 1,
            key: vec![id.into()],
            columns: vec![("n".into(), ColumnChange::Add(k.into()))],
        }
    }

    #[test]
    fn increments_fold_per_key_and_order_is_kept() {
        let del = Change::Delete {
            relid: 1,
            key: vec!["a".into()],
        };
        let out = fold(
            vec![
                inc("a", "1"),
                inc("b", "2"),
                inc("a", "3"),
                del.clone(),
                inc("a", "1"),
                inc("a", "-4"),
            ]
            .into_iter(),
        );
        assert_eq!(out, vec![inc("a", "4"), inc("b", "2"), del, inc("a", "-3")]);
        // A set then an increment stays two changes.
        let set = Change::Update {
            relid: 1,
            key: vec!["c".into()],
            columns: vec![("n".into(), ColumnChange::Set(Some("7".into())))],
        };
        assert_eq!(
            fold(vec![set.clone(), inc("c", "1")].into_iter()),
            vec![set, inc("c", "1")]
        );
    }
}
