//! Tables no longer registered whose acknowledged changes barriers must still wait for.
//!
//! A write acknowledged against an older catalog (the session's check raced the reload, or
//! it was answered at a Flush and queued only at the Sync) is shipped and applied all the
//! same. Until it is, every statement passing through waits for it like for any pending
//! write, though nothing names the table as write-behind any more: a session's next write
//! of the key would pass through and be overwritten by it.
//!
//! Each retired table carries the stamp of the last time a change was queued for it (or it
//! was retired). A barrier takes a [`Snapshot`] before it waits: everything queued before
//! the snapshot is applied once the wait returns, so a table not stamped since can be
//! forgotten. Nothing is forgotten by time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::catalog::Catalog;
use super::encode::Change;

/// The retired tables of one database.
#[derive(Default)]
pub struct Retired {
    /// Whether `tables` is non-empty: read by every statement that passes through.
    any: AtomicBool,
    /// The stamp the next change is given.
    clock: AtomicU64,
    /// Each table with its latest stamp.
    tables: Mutex<Vec<(u32, u64)>>,
}

/// The retired tables when a barrier started, and the stamps given by then.
pub struct Snapshot {
    pub relids: Vec<u32>,
    through: u64,
}

impl Retired {
    /// Whether some table no longer registered may have changes pending.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Runs `f` on the list under its lock and republishes whether it is empty.
    fn update<R>(&self, f: impl FnOnce(&mut Vec<(u32, u64)>, u64) -> R) -> R {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let r = f(&mut tables, stamp);
        self.any.store(!tables.is_empty(), Ordering::Release);
        r
    }

    /// After a reload from `old` to `new`: the tables `new` lacks are retired, those
    /// registered again are ordinary write-behind tables once more.
    pub fn reloaded(&self, old: &Catalog, new: &Catalog) {
        self.update(|tables, stamp| {
            tables.retain(|(r, _)| new.table(*r).is_none());
            for t in &old.tables {
                if new.table(t.relid).is_none() && !tables.iter().any(|(r, _)| *r == t.relid) {
                    tracing::debug!(
                        relid = t.relid,
                        "table no longer registered: barriers wait for its pending writes"
                    );
                    tables.push((t.relid, stamp));
                }
            }
        });
    }

    /// Called after `changes` were queued, before they are acknowledged: their tables that
    /// `current` lacks are (again) retired, stamped now.
    pub fn queued(&self, current: &Catalog, changes: &[u32]) {
        if changes.iter().all(|r| current.table(*r).is_some()) {
            return;
        }
        self.update(|tables, stamp| {
            for r in changes.iter().filter(|r| current.table(**r).is_none()) {
                match tables.iter_mut().find(|(t, _)| t == r) {
                    Some(entry) => entry.1 = stamp,
                    None => tables.push((*r, stamp)),
                }
            }
        });
    }

    /// The tables a barrier starting now must wait for (none: nothing to take).
    pub fn snapshot(&self) -> Option<Snapshot> {
        if !self.any() {
            return None;
        }
        self.update(|tables, stamp| {
            (!tables.is_empty()).then(|| Snapshot {
                relids: tables.iter().map(|(r, _)| *r).collect(),
                through: stamp,
            })
        })
    }

    /// After a barrier that waited for `snapshot`'s tables: forgets those with nothing
    /// queued since.
    pub fn waited(&self, snapshot: &Snapshot) {
        self.update(|tables, _| {
            tables.retain(|(r, at)| *at > snapshot.through || !snapshot.relids.contains(r));
        });
    }
}

/// The distinct tables of `changes`, to hand to [`Retired::queued`] once they are queued.
pub fn tables_of(changes: &[Change]) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::with_capacity(1);
    for c in changes {
        let r = c.relid();
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writebehind::catalog::Table;

    fn catalog(relids: &[u32]) -> Catalog {
        let mut c = Catalog::default();
        c.tables = relids
            .iter()
            .map(|r| {
                let mut t = Table::keyed("public", &format!("t{r}"), &["id"], Vec::new());
                t.relid = *r;
                t
            })
            .collect();
        c
    }

    #[test]
    fn a_change_queued_during_a_barrier_keeps_its_table() {
        let r = Retired::default();
        r.reloaded(&catalog(&[1, 2]), &catalog(&[2]));
        let s = r.snapshot().expect("table 1 retired");
        assert_eq!(s.relids, vec![1]);
        // Queued after the snapshot: the barrier did not wait for it.
        r.queued(&catalog(&[2]), &[1]);
        r.waited(&s);
        assert!(r.any());
        let s = r.snapshot().expect("still retired");
        r.waited(&s);
        assert!(!r.any());
        assert!(r.snapshot().is_none());
    }

    #[test]
    fn a_table_retired_during_a_barrier_is_kept_and_registered_again_is_not() {
        let r = Retired::default();
        r.reloaded(&catalog(&[1, 2]), &catalog(&[2]));
        let s = r.snapshot().expect("table 1 retired");
        r.reloaded(&catalog(&[2]), &catalog(&[]));
        r.waited(&s);
        assert_eq!(r.snapshot().map(|s| s.relids), Some(vec![2]));
        r.reloaded(&catalog(&[]), &catalog(&[2]));
        assert!(!r.any());
        // Queued for a registered table: nothing to keep.
        r.queued(&catalog(&[2]), &[2]);
        assert!(!r.any());
    }
}
