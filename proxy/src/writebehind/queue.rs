//! The queue of one database's acknowledged-but-uncommitted changes: journaled to the WAL in
//! acknowledgement order, bounded, taken in batches whose sequence number is the lsn of their
//! last change, and coalesced per key as a batch is taken (`coalesce.rs`).
//!
//! Numbering. Every acknowledged statement gets an lsn: its WAL record's (durability `wal` and
//! `fsync`) or a counter starting after the database's committed batch sequence (`memory`).
//! A batch holds whole statements, a prefix of the queue, and is shipped as `batch_seq` = the
//! lsn of its last statement. Because batches ship one at a time in queue order, "batch `s`
//! committed" means "every statement with lsn ≤ `s` committed", which is what start-up replay
//! relies on: it re-queues exactly the WAL records above `writebehind.committed_seq()`.
//!
//! Deadlines. The queue also remembers, per table, when each statement's changes of that
//! table were queued, until they are taken ([`BatchSource::pending_tables`]): the flusher
//! ships once the oldest pending change of some table has waited that table's
//! `flush_interval`, and then takes batches up to that table's last pending change
//! ([`BatchSource::take_batch`]'s `through`). Taking still takes a prefix, so the prefix
//! property above holds; a table's deadline only decides when, and how far.

use super::coalesce::{fold, rows_prefix};
use super::encode::{Change, ColumnChange};
use super::journal;
use super::pack;
use crate::ship::{BatchSource, BatchTable, EncodedBatch, PendingTable};
use crate::wal::{Wal, WalError};
use foldhash::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;
use tokio::time::Instant;

/// One queued change and the lsn of the statement it came from.
struct Entry {
    lsn: u64,
    change: Change,
    bytes: usize,
    /// The acknowledged-writes count once this change was queued.
    ack: u64,
}

#[derive(Default)]
struct Pending {
    entries: VecDeque<Entry>,
    /// Bytes of `entries` (an estimate of their memory).
    bytes: usize,
    /// The batch taken but not yet committed: its first lsn and size.
    inflight: Option<(u64, usize, usize)>,
    /// The next lsn when there is no WAL.
    next_local_lsn: u64,
    /// Per table: what this process acknowledged, coalesced and shipped.
    tables: HashMap<u32, TableCounts>,
    /// Per table with queued (not in-flight) changes: each statement that has changes of
    /// the table, oldest first.
    queued_at: HashMap<u32, VecDeque<Queued>>,
}

/// One statement's changes of one table, as far as deadlines go.
#[derive(Debug, Clone, Copy)]
struct Queued {
    /// The statement's lsn.
    lsn: u64,
    /// When it was queued.
    at: Instant,
    /// The acknowledged-writes count of the statement's last change of the table.
    ack: u64,
}

/// The statement kinds changes are counted by, in [`TableCounts`] index order.
pub const KINDS: [&str; 3] = ["insert", "update", "delete"];

/// What one table's changes did in this process, by statement kind ([`KINDS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Changes acknowledged by this process (changes replayed from the WAL are not).
    pub acked: [u64; 3],
    /// Inbox rows committed.
    pub shipped: [u64; 3],
    /// Changes merged into an earlier one of the same key before shipping.
    pub coalesced: u64,
    /// Changes queued or in flight (acknowledged or replayed, not yet committed).
    pub pending: u64,
}

/// The index of `c`'s statement kind in [`KINDS`].
fn kind(c: &Change) -> usize {
    match c {
        Change::Insert { .. } => 0,
        Change::Update { .. } => 1,
        Change::Delete { .. } => 2,
    }
}

/// Where statements are journaled before they are acknowledged.
pub struct Journal {
    /// The proxy's WAL.
    pub wal: Arc<Wal>,
    /// The database name written into each record.
    pub database: String,
}

/// Why a statement could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Writing the WAL record failed; nothing was queued.
    #[error(transparent)]
    Wal(#[from] WalError),
}

/// Acknowledged changes of one database, in acknowledgement order.
pub struct Queue {
    proxy_id: String,
    journal: Option<Journal>,
    pending: Mutex<Pending>,
    acked: AtomicU64,
    /// Signalled whenever a batch committed and space freed up.
    space: Notify,
    /// Signalled when a table with nothing queued gets a change (a new, maybe earlier,
    /// deadline for the flusher).
    arrived: Notify,
}

impl Queue {
    /// An empty queue. `first_lsn` numbers statements when there is no journal.
    pub fn new(proxy_id: String, journal: Option<Journal>, first_lsn: u64) -> Self {
        Self {
            proxy_id,
            journal,
            pending: Mutex::new(Pending {
                next_local_lsn: first_lsn,
                ..Pending::default()
            }),
            acked: AtomicU64::new(0),
            space: Notify::new(),
            arrived: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The WAL, if statements are journaled.
    pub fn wal(&self) -> Option<&Arc<Wal>> {
        self.journal.as_ref().map(|j| &j.wal)
    }

    /// Journals one statement's changes and queues them. Returns the statement's lsn. On a
    /// WAL error nothing is queued.
    pub fn push(&self, changes: Vec<Change>) -> Result<u64, QueueError> {
        let record = self
            .journal
            .as_ref()
            .map(|j| journal::encode(&j.database, &changes));
        let mut p = self.lock();
        let lsn = match (&self.journal, record) {
            (Some(j), Some(record)) => j.wal.append(journal::KIND_CHANGES, &record)?,
            _ => {
                let lsn = p.next_local_lsn;
                p.next_local_lsn += 1;
                lsn
            }
        };
        self.enqueue_locked(&mut p, lsn, changes, true);
        Ok(lsn)
    }

    /// Queues a statement read back from the WAL at start-up (it is journaled already).
    pub fn replay(&self, lsn: u64, changes: Vec<Change>) {
        let mut p = self.lock();
        self.enqueue_locked(&mut p, lsn, changes, false);
    }

    fn enqueue_locked(&self, p: &mut Pending, lsn: u64, changes: Vec<Change>, fresh: bool) {
        // Counted only once queued (see BatchSource::acked); the lock orders the counts.
        let mut ack = self.acked.load(Ordering::SeqCst);
        let now = Instant::now();
        let mut first_of_table = false;
        for change in changes {
            let bytes = change_size(&change);
            p.bytes += bytes;
            let counts = p.tables.entry(change.relid()).or_default();
            counts.pending += 1;
            if fresh {
                counts.acked[kind(&change)] += 1;
            }
            ack += 1;
            let times = p.queued_at.entry(change.relid()).or_default();
            first_of_table |= times.is_empty();
            match times.back_mut() {
                Some(q) if q.lsn == lsn => q.ack = ack,
                _ => times.push_back(Queued { lsn, at: now, ack }),
            }
            p.entries.push_back(Entry {
                lsn,
                change,
                bytes,
                ack,
            });
        }
        self.acked.store(ack, Ordering::SeqCst);
        if first_of_table {
            self.arrived.notify_one();
        }
    }

    /// Rows and bytes not yet committed upstream (queued and in flight).
    pub fn pending(&self) -> (usize, usize) {
        let p = self.lock();
        let (rows, bytes) = p.inflight.map_or((0, 0), |(_, r, b)| (r, b));
        (p.entries.len() + rows, p.bytes + bytes)
    }

    /// Per table: what this process acknowledged, coalesced, shipped and holds.
    pub fn table_counts(&self) -> std::collections::HashMap<u32, TableCounts> {
        self.lock().tables.iter().map(|(r, c)| (*r, *c)).collect()
    }

    /// Changes waiting to be shipped (in flight not counted).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing waits to be shipped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The lowest lsn whose WAL record is still needed (queued or in flight), if any.
    pub fn oldest_needed(&self) -> Option<u64> {
        let p = self.lock();
        p.inflight
            .map(|(first, _, _)| first)
            .or_else(|| p.entries.front().map(|e| e.lsn))
    }

    /// A future that completes at the next commit; create it before checking the bound so a
    /// commit in between is not missed.
    pub fn space_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.space.notified()
    }
}

impl BatchSource for Queue {
    fn take_batch(&self, max_rows: usize, through: u64) -> Option<EncodedBatch> {
        let mut p = self.lock();
        let first = p.entries.front()?.lsn;
        // Changes acknowledged up to `through` (at least the first statement's first change:
        // the caller asks for a change that is pending).
        let wanted = p.entries.partition_point(|e| e.ack <= through).max(1);
        // About `max_rows` inbox rows once coalesced; whole statements only: extend past
        // max_rows (or `through`) to the end of the last statement.
        let mut n = rows_prefix(p.entries.iter().take(wanted).map(|e| &e.change), max_rows);
        let last = p.entries[n - 1].lsn;
        while n < p.entries.len() && p.entries[n].lsn == last {
            n += 1;
        }
        let mut bytes = 0;
        let mut acked_through = 0;
        let taken: Vec<Change> = p
            .entries
            .drain(..n)
            .map(|e| {
                bytes += e.bytes;
                acked_through = e.ack;
                e.change
            })
            .collect();
        p.bytes -= bytes;
        p.inflight = Some((first, n, bytes));
        // Statements up to `last` are taken: they no longer hold their tables' deadlines.
        p.queued_at.retain(|_, times| {
            while times.front().is_some_and(|q| q.lsn <= last) {
                times.pop_front();
            }
            !times.is_empty()
        });
        drop(p);
        let seq = last as i64;
        let mut tables: Vec<BatchTable> = Vec::new();
        let table = |tables: &mut Vec<BatchTable>, relid: u32| -> usize {
            match tables.iter().position(|t| t.relid == relid) {
                Some(i) => i,
                None => {
                    tables.push(BatchTable {
                        relid,
                        changes: 0,
                        rows: [0; 3],
                    });
                    tables.len() - 1
                }
            }
        };
        for c in &taken {
            let i = table(&mut tables, c.relid());
            tables[i].changes += 1;
        }
        let folded = fold(taken.into_iter());
        let mut rows = Vec::with_capacity(folded.len() * 64);
        pack::encode_batch(&mut rows, &self.proxy_id, seq, &folded);
        for c in &folded {
            let i = table(&mut tables, c.relid());
            tables[i].rows[kind(c)] += 1;
        }
        Some(EncodedBatch {
            seq,
            acked_through,
            rows: rows.into(),
            changes: folded.len(),
            relids: tables.iter().map(|t| t.relid).collect(),
            tables,
        })
    }

    fn committed(&self, batch: &EncodedBatch) {
        let mut p = self.lock();
        p.inflight = None;
        for t in &batch.tables {
            let counts = p.tables.entry(t.relid).or_default();
            let rows: u64 = t.rows.iter().sum();
            counts.pending = counts.pending.saturating_sub(t.changes);
            counts.coalesced += t.changes.saturating_sub(rows);
            for (shipped, n) in counts.shipped.iter_mut().zip(t.rows) {
                *shipped += n;
            }
        }
        drop(p);
        self.space.notify_waiters();
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    fn pending_tables(&self) -> Vec<PendingTable> {
        self.lock()
            .queued_at
            .iter()
            .filter_map(|(&relid, times)| {
                Some(PendingTable {
                    relid,
                    oldest: times.front()?.at,
                    last_ack: times.back()?.ack,
                })
            })
            .collect()
    }

    fn arrivals(&self) -> Option<&Notify> {
        Some(&self.arrived)
    }
}

/// A rough size of a change in memory, for `max_pending_bytes`.
fn change_size(c: &Change) -> usize {
    let strs = |v: &[String]| v.iter().map(|s| s.len() + 24).sum::<usize>();
    64 + match c {
        Change::Insert { key, values, .. } => {
            key.as_deref().map_or(0, strs)
                + values
                    .iter()
                    .map(|(c, v)| c.len() + v.as_ref().map_or(0, String::len) + 48)
                    .sum::<usize>()
        }
        Change::Update { key, columns, .. } => {
            strs(key)
                + columns
                    .iter()
                    .map(|(c, ch)| {
                        c.len()
                            + 48
                            + match ch {
                                ColumnChange::Set(v) => v.as_ref().map_or(0, String::len),
                                ColumnChange::Add(d) => d.len(),
                            }
                    })
                    .sum::<usize>()
        }
        Change::Delete { key, .. } => strs(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::coalesce::tests::inc;

    #[test]
    fn batches_hold_whole_statements_and_are_numbered_by_their_last_lsn() {
        let q = Queue::new("p".into(), None, 10);
        assert_eq!(q.push(vec![inc("a", "1")]).ok(), Some(10));
        assert_eq!(q.push(vec![inc("b", "1"), inc("c", "1")]).ok(), Some(11));
        assert_eq!(q.push(vec![inc("d", "1")]).ok(), Some(12));
        assert_eq!(q.pending().0, 4);
        let b = q.take_batch(2, u64::MAX).expect("a batch");
        // Two rows asked, three taken: statement 11 is not split.
        assert_eq!((b.seq, b.changes), (11, 3));
        assert_eq!(q.oldest_needed(), Some(10));
        assert_eq!(q.pending().0, 4);
        q.committed(&b);
        assert_eq!(q.oldest_needed(), Some(12));
        assert_eq!(q.pending().0, 1);
        let b = q.take_batch(100, u64::MAX).expect("a batch");
        assert_eq!((b.seq, b.changes), (12, 1));
        q.committed(&b);
        assert!(q.take_batch(100, u64::MAX).is_none());
        assert_eq!(q.oldest_needed(), None);
        assert_eq!(q.acked(), 4);
    }

    #[test]
    fn batches_are_capped_in_inbox_rows_after_coalescing() {
        let q = Queue::new("p".into(), None, 1);
        // 1,000 increments of 3 keys coalesce into 3 rows: one batch of 2 rows' worth takes
        // every increment of a and b up to the first change of c.
        for i in 0..1000 {
            let key = ["a", "b", "c"][usize::from(i >= 10) + usize::from(i >= 500)];
            assert!(q.push(vec![inc(key, "1")]).is_ok());
        }
        let b = q.take_batch(2, u64::MAX).expect("a batch");
        assert_eq!((b.tables[0].changes, b.changes), (500, 2));
        q.committed(&b);
        let b = q.take_batch(2, u64::MAX).expect("a batch");
        assert_eq!((b.tables[0].changes, b.changes), (500, 1));
        q.committed(&b);
        // A delete between two increments of one key: three rows, as fold makes them.
        let del = Change::Delete {
            relid: 1,
            key: vec!["a".into()],
        };
        for c in [inc("a", "1"), del, inc("a", "1"), inc("b", "1")] {
            assert!(q.push(vec![c]).is_ok());
        }
        let b = q.take_batch(3, u64::MAX).expect("a batch");
        assert_eq!((b.tables[0].changes, b.changes), (3, 3));
    }

    fn upd(relid: u32, id: &str) -> Change {
        Change::Update {
            relid,
            key: vec![id.into()],
            columns: vec![("n".into(), ColumnChange::Add("1".into()))],
        }
    }

    #[test]
    fn each_table_keeps_the_time_of_its_oldest_queued_change_until_taken() {
        let q = Queue::new("p".into(), None, 1);
        assert!(q.pending_tables().is_empty());
        let before = Instant::now();
        q.push(vec![upd(1, "a")]).ok();
        let t1 = q.pending_tables();
        assert_eq!(t1.len(), 1);
        assert!(t1[0].oldest >= before);
        assert_eq!(t1[0].last_ack, 1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        q.push(vec![upd(2, "a"), upd(1, "b")]).ok();
        q.push(vec![upd(1, "c")]).ok();
        let mut all = q.pending_tables();
        all.sort_by_key(|t| t.relid);
        // Table 1 keeps its first statement's time and ends at the fourth change; table 2
        // has a later time and ends at the second.
        assert_eq!(all[0].relid, 1);
        assert_eq!((all[0].oldest, all[0].last_ack), (t1[0].oldest, 4));
        assert_eq!(all[1].relid, 2);
        assert!(all[1].oldest > t1[0].oldest);
        assert_eq!(all[1].last_ack, 2);
        // Through table 2's last change: the whole second statement, nothing more.
        let b = q.take_batch(100, all[1].last_ack).expect("a batch");
        assert_eq!((b.seq, b.changes, b.acked_through), (2, 3, 3));
        let left = q.pending_tables();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].relid, left[0].last_ack), (1, 4));
        assert!(left[0].oldest >= all[1].oldest);
        // In flight or committed, a change no longer holds a deadline.
        q.committed(&b);
        let b = q.take_batch(100, u64::MAX).expect("a batch");
        assert!(q.pending_tables().is_empty());
        q.committed(&b);
    }

    #[tokio::test]
    async fn a_table_with_nothing_queued_signals_its_first_change() {
        let q = Queue::new("p".into(), None, 1);
        let arrived = q.arrivals().expect("the queue signals arrivals");
        q.push(vec![upd(1, "a")]).ok();
        // The permit is stored: a flusher that was busy sees it on its next wait.
        tokio::time::timeout(std::time::Duration::from_secs(1), arrived.notified())
            .await
            .expect("signalled");
        // A second change of the same table moves no deadline: no signal.
        q.push(vec![upd(1, "b")]).ok();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), arrived.notified())
                .await
                .is_err()
        );
        q.push(vec![upd(2, "a")]).ok();
        tokio::time::timeout(std::time::Duration::from_secs(1), arrived.notified())
            .await
            .expect("signalled");
    }

    #[test]
    fn per_table_counts_follow_changes_from_ack_to_commit() {
        let q = Queue::new("p".into(), None, 1);
        let del = Change::Delete {
            relid: 1,
            key: vec!["z".into()],
        };
        q.push(vec![inc("a", "1"), inc("a", "2"), inc("b", "1")])
            .ok();
        q.push(vec![del]).ok();
        // Replayed changes are pending but were acknowledged by an earlier process.
        q.replay(3, vec![inc("c", "1")]);
        let c = q.table_counts()[&1];
        assert_eq!((c.acked, c.pending, c.shipped), ([0, 3, 1], 5, [0; 3]));
        let b = q.take_batch(100, u64::MAX).expect("a batch");
        assert_eq!(
            b.tables,
            vec![BatchTable {
                relid: 1,
                changes: 5,
                rows: [0, 3, 1]
            }]
        );
        // In flight is still pending.
        assert_eq!(q.table_counts()[&1].pending, 5);
        q.committed(&b);
        let c = q.table_counts()[&1];
        assert_eq!(
            (c.acked, c.pending, c.shipped, c.coalesced),
            ([0, 3, 1], 0, [0, 3, 1], 1)
        );
    }
}
