//! Coalescing a batch per key before it ships: an UPDATE directly following another UPDATE of
//! the same key merges into it (a later value wins; integer increments add up), and how many
//! changes make a batch of at most so many inbox rows once coalesced.

use super::encode::{Change, ColumnChange};
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::hash::BuildHasher;

/// What a change is to the coalescing of its key.
enum KeyRole<'a> {
    /// An UPDATE of (table, key): may merge into the key's previous UPDATE.
    Update((u32, &'a [String])),
    /// An INSERT or DELETE of (table, key): the key's later UPDATEs start afresh.
    Resets((u32, &'a [String])),
    /// An INSERT into an append table.
    Keyless,
}

fn key_role(c: &Change) -> KeyRole<'_> {
    match c {
        Change::Update { relid, key, .. } => KeyRole::Update((*relid, key)),
        Change::Insert {
            relid,
            key: Some(key),
            ..
        }
        | Change::Delete { relid, key } => KeyRole::Resets((*relid, key)),
        Change::Insert { .. } => KeyRole::Keyless,
    }
}

/// How many of `changes` (at least one) make at most `max_rows` inbox rows once [`fold`]ed:
/// an UPDATE of a key whose previous change in the run was an UPDATE counts as merged. (A SET
/// followed by an increment does not merge, so the batch may come out a little larger.)
pub(super) fn rows_prefix<'a>(changes: impl Iterator<Item = &'a Change>, max_rows: usize) -> usize {
    let mut updating: HashSet<(u32, &[String])> = HashSet::with_capacity(max_rows.min(4096));
    let (mut rows, mut n) = (0usize, 0usize);
    for c in changes {
        let new_row = match key_role(c) {
            KeyRole::Update(k) => updating.insert(k),
            KeyRole::Resets(k) => {
                updating.remove(&k);
                true
            }
            KeyRole::Keyless => true,
        };
        if new_row {
            if rows == max_rows.max(1) {
                break;
            }
            rows += 1;
        }
        n += 1;
    }
    n.max(1)
}

/// Coalesces a batch per key before it ships: an UPDATE directly following another UPDATE of
/// the same key merges into it (a later value wins; integer increments add up). Every other
/// change stays where it is, so each key's changes keep their order.
pub fn fold(changes: impl Iterator<Item = Change>) -> Vec<Change> {
    fold_with(changes, &foldhash::fast::RandomState::default())
}

/// [`fold`] with keys hashed by `hasher` (the tests make every key collide).
fn fold_with(changes: impl Iterator<Item = Change>, hasher: &impl BuildHasher) -> Vec<Change> {
    let (lower, _) = changes.size_hint();
    let mut out: Vec<Change> = Vec::with_capacity(lower);
    // The hash of (table, key) → the index in `out` of that key's last UPDATE since its last
    // INSERT or DELETE. Keys are not cloned: the entry's key is compared before merging, so
    // two keys of one hash only miss a merge (each key's latest UPDATE or reset always
    // overwrites or removes the entry of its hash, so an entry never stands for an older one).
    // foldhash is seeded per process; keys chosen to collide in buckets cost at most a batch's
    // worth of probing, and a full collision only a missed merge.
    let mut last: HashMap<u64, usize> = HashMap::with_capacity(lower.min(4096));
    for c in changes {
        let update = match key_role(&c) {
            KeyRole::Update(k) => Some(hasher.hash_one(k)),
            KeyRole::Resets(k) => {
                last.remove(&hasher.hash_one(k));
                None
            }
            KeyRole::Keyless => None,
        };
        let Some(h) = update else {
            out.push(c);
            continue;
        };
        let merged = match (last.get(&h).and_then(|&i| out.get_mut(i)), c) {
            (
                Some(Change::Update {
                    relid: r0,
                    key: k0,
                    columns: prev,
                }),
                Change::Update {
                    relid,
                    key,
                    columns: next,
                },
            ) if *r0 == relid && *k0 == key && mergeable(prev, &next) => {
                merge(prev, next);
                None
            }
            (_, c) => Some(c),
        };
        if let Some(c) = merged {
            out.push(c);
            last.insert(h, out.len() - 1);
        }
    }
    out
}

/// Whether the column changes `next` of a key may merge into its earlier `prev`: not a set
/// followed by an increment of the same column (the worker folds that exactly), not an
/// increment whose sum leaves bigint. A column named twice in one change is refused too; the
/// proxy never makes one (validation passes such an UPDATE through, 42601 in PostgreSQL).
fn mergeable(prev: &[(String, ColumnChange)], next: &[(String, ColumnChange)]) -> bool {
    next.iter().enumerate().all(|(i, (col, change))| {
        !next[..i].iter().any(|(c, _)| c == col)
            && match (prev.iter().find(|(c, _)| c == col), change) {
                (None, _) | (Some(_), ColumnChange::Set(_)) => true,
                (Some((_, ColumnChange::Add(a))), ColumnChange::Add(b)) => add(a, b).is_some(),
                (Some((_, ColumnChange::Set(_))), ColumnChange::Add(_)) => false,
            }
    })
}

/// Merges `next` into `prev` in place (a later value wins, increments add up); call only when
/// [`mergeable`].
fn merge(prev: &mut Vec<(String, ColumnChange)>, next: Vec<(String, ColumnChange)>) {
    for (col, change) in next {
        match (prev.iter_mut().find(|(c, _)| *c == col), change) {
            (None, ch) => prev.push((col, ch)),
            (Some((_, ColumnChange::Add(a))), ColumnChange::Add(b)) => {
                if let Some(sum) = add(a, &b) {
                    a.clear();
                    // Writing into a String cannot fail.
                    let _ = std::fmt::Write::write_fmt(a, format_args!("{sum}"));
                }
            }
            (Some((_, slot)), ch) => *slot = ch,
        }
    }
}

/// The sum of two integer increments, when both are integers and it fits in bigint.
fn add(a: &str, b: &str) -> Option<i64> {
    a.parse::<i64>().ok()?.checked_add(b.parse::<i64>().ok()?)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::writebehind) fn inc(id: &str, k: &str) -> Change {
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

    #[test]
    fn changes_that_cannot_merge_stay_apart_and_unchanged() {
        let upd = |id: &str, cols: &[(&str, ColumnChange)]| Change::Update {
            relid: 1,
            key: vec![id.into()],
            columns: cols
                .iter()
                .map(|(c, v)| (c.to_string(), v.clone()))
                .collect(),
        };
        let add = |d: &str| ColumnChange::Add(d.into());
        let set = |v: &str| ColumnChange::Set(Some(v.into()));
        // A sum past bigint, a column named twice (never made by validation), another table's
        // same key: two changes each, unchanged.
        let max = i64::MAX.to_string();
        for batch in [
            vec![upd("a", &[("n", add(&max))]), upd("a", &[("n", add("1"))])],
            vec![
                upd("a", &[("n", add("1"))]),
                upd("a", &[("n", add("1")), ("n", add("2"))]),
            ],
        ] {
            assert_eq!(fold(batch.clone().into_iter()), batch);
        }
        let other = Change::Update {
            relid: 2,
            key: vec!["a".into()],
            columns: vec![("n".into(), add("1"))],
        };
        let two = vec![upd("a", &[("n", add("1"))]), other];
        assert_eq!(fold(two.clone().into_iter()), two);
        // Columns merge one by one: a later set wins, increments add up, new columns join.
        let out = fold(
            vec![
                upd("a", &[("n", add("2")), ("s", set("x"))]),
                upd("a", &[("s", set("y")), ("n", add("-5")), ("m", add("1"))]),
            ]
            .into_iter(),
        );
        assert_eq!(
            out,
            vec![upd(
                "a",
                &[("n", add("-3")), ("s", set("y")), ("m", add("1"))]
            )]
        );
    }

    /// Rows by (table, key): column → value (`None` = NULL).
    type Rows = std::collections::BTreeMap<(u32, Vec<String>), Vec<(String, Option<i64>)>>;

    /// Applies changes one after the other, as the worker would without folding.
    fn apply(rows: &mut Rows, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Insert {
                    relid,
                    key: Some(key),
                    values,
                    ..
                } => {
                    let row = values
                        .iter()
                        .map(|(c, v)| (c.clone(), v.as_ref().and_then(|v| v.parse().ok())))
                        .collect();
                    rows.insert((*relid, key.clone()), row);
                }
                Change::Insert { .. } => {}
                Change::Delete { relid, key } => {
                    rows.remove(&(*relid, key.clone()));
                }
                Change::Update {
                    relid,
                    key,
                    columns,
                } => {
                    let Some(row) = rows.get_mut(&(*relid, key.clone())) else {
                        continue; // UPDATE of a missing key: no row
                    };
                    for (col, ch) in columns {
                        let slot = match row.iter_mut().find(|(c, _)| c == col) {
                            Some((_, v)) => v,
                            None => {
                                row.push((col.clone(), None));
                                &mut row.last_mut().expect("just pushed").1
                            }
                        };
                        *slot = match ch {
                            ColumnChange::Set(v) => v.as_ref().and_then(|v| v.parse().ok()),
                            ColumnChange::Add(d) => {
                                slot.zip(d.parse::<i64>().ok()).map(|(a, b)| a + b)
                            }
                        };
                    }
                }
            }
        }
    }

    /// Every key in one bucket: each key's last UPDATE is found only by comparing keys.
    #[derive(Default)]
    struct Collide;
    impl std::hash::Hasher for Collide {
        fn finish(&self) -> u64 {
            7
        }
        fn write(&mut self, _: &[u8]) {}
    }

    #[test]
    fn folding_changes_nothing_a_key_ends_up_with_even_when_every_key_collides() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(20261202);
        let collide = std::hash::BuildHasherDefault::<Collide>::default();
        let random = foldhash::fast::RandomState::default();
        let value = |rng: &mut StdRng| Some(rng.random_range(-5..6i64).to_string());
        let mut merged = 0;
        for _ in 0..2000 {
            let n = rng.random_range(1..40);
            let changes: Vec<Change> = (0..n)
                .map(|_| {
                    let relid = rng.random_range(1..3);
                    let key = vec![["a", "b", "c"][rng.random_range(0..3)].to_string()];
                    match rng.random_range(0..10) {
                        0 => Change::Delete { relid, key },
                        1 => Change::Insert {
                            relid,
                            key: Some(key),
                            values: vec![
                                ("n".into(), value(&mut rng)),
                                ("m".into(), value(&mut rng)),
                            ],
                            op: b'I',
                            conflict_set: None,
                        },
                        _ => {
                            let mut columns = Vec::new();
                            for col in ["n", "m"] {
                                let change = match rng.random_range(0..4) {
                                    0 => ColumnChange::Set(value(&mut rng)),
                                    1 => ColumnChange::Set(None),
                                    2 => ColumnChange::Add(rng.random_range(-5..6i64).to_string()),
                                    _ => continue,
                                };
                                columns.push((col.to_string(), change));
                            }
                            if columns.is_empty() {
                                columns.push(("n".into(), ColumnChange::Add("1".into())));
                            }
                            Change::Update {
                                relid,
                                key,
                                columns,
                            }
                        }
                    }
                })
                .collect();
            let mut expected = Rows::new();
            apply(&mut expected, &changes);
            for folded in [
                fold_with(changes.clone().into_iter(), &collide),
                fold_with(changes.clone().into_iter(), &random),
            ] {
                let mut got = Rows::new();
                apply(&mut got, &folded);
                assert_eq!(got, expected, "{changes:?} folded into {folded:?}");
                merged += changes.len() - folded.len();
            }
        }
        // Folding did merge (the comparison above is not vacuous).
        assert!(merged > 1000, "only {merged} merges");
    }
}
