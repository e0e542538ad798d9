//! The fast path of a round: when a table's rows in the round all have one shape (INSERTs of
//! one column set, or pure increments of integer or numeric columns), PostgreSQL decodes, folds
//! and applies them in one statement, and the worker never handles a row on its own.
//!
//! It is an optimisation of [`super::apply_table`], never a second semantics: the statement runs
//! in a subtransaction and must account for every row it took; any error, any row of another
//! shape, any row a trigger skipped rolls it back, and the round goes the general way (fold in
//! Rust, isolate failures, dead-letter them). A table whose fast path was declined is not tried
//! again for a few rounds, so a workload that never fits pays for at most one attempt in many.

use super::fold::Conflict;
use super::isolate::in_subtransaction;
use super::packed::{self, Attempt};
use super::table::TableMeta;
use super::uniform_sql::{increment_sql, insert_sql, run_as_owner};
use super::{Outcome, CUT_BEFORE_PACKED};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiResult};
use std::cell::RefCell;
use std::collections::HashMap;

/// Column types whose increments sum exactly (`sum()` of them is a wider integer or numeric).
pub(super) const EXACT_TYPES: [&str; 4] = ["smallint", "integer", "bigint", "numeric"];

/// Rounds a table skips the fast path after it was declined (doubling, up to this).
const MAX_SKIP: u32 = 64;

thread_local! {
    /// Per table and form (packed or not): (rounds still to skip, the next skip length).
    static BACKOFF: RefCell<HashMap<(u32, bool), (u32, u32)>> = RefCell::new(HashMap::new());
}

/// The one shape every row of a round must have.
#[derive(Debug, PartialEq, Eq)]
enum Uniform {
    /// `I` rows (or `X` rows with one `conflict_set`) listing exactly these non-key columns
    /// (key columns may be repeated), with what a conflict on the key does.
    Insert {
        columns: Vec<String>,
        conflict: Conflict,
    },
    /// `U` rows whose every column is `{"add": k}`, on exactly these columns.
    Increment { columns: Vec<String> },
}

/// What the fast path did: the round's outcome and the batches it covered (`seq/proxy_id`).
pub struct Done {
    pub outcome: Outcome,
    pub batches: Vec<String>,
}

/// Applies `relid`'s next round (up to `max_rows` inbox rows) in one statement if it has one
/// uniform shape; `None` when it does not (or failed), with nothing changed; a `Done` of no
/// rows when the queue is empty (the round is over: a batch that commits after this probe
/// belongs to the next one, not to the general path).
pub fn try_apply(
    client: &mut SpiClient<'_>,
    meta: &TableMeta,
    relid: pg_sys::Oid,
    max_rows: i64,
) -> SpiResult<Option<Done>> {
    if !crate::gucs::UNIFORM_APPLY.get() {
        return Ok(None);
    }
    // The JSON and the packed path back off separately: rows of one form that do not fit say
    // nothing about the other's.
    let (shape, cut) = match probe(client, meta, relid, max_rows)? {
        Probe::Empty => {
            return Ok(Some(Done {
                outcome: Outcome::default(),
                batches: Vec::new(),
            }))
        }
        Probe::Json(None) => return Ok(None),
        Probe::Json(Some(_)) if skipping(relid, false) => return Ok(None),
        Probe::Json(Some(found)) => found,
        Probe::Packed if skipping(relid, true) => return Ok(None),
        Probe::Packed => {
            return Ok(match packed::try_apply(client, meta, relid, max_rows)? {
                Attempt::Applied(done) => {
                    settle(relid, true, true);
                    Some(done)
                }
                Attempt::NotEligible => None,
                Attempt::Declined => {
                    settle(relid, true, false);
                    None
                }
            })
        }
    };
    let statements = match &shape {
        Uniform::Insert { columns, conflict } => insert_sql(meta, columns, conflict),
        Uniform::Increment { columns } => increment_sql(meta, columns),
    };
    let columns = match &shape {
        Uniform::Insert { columns, .. } | Uniform::Increment { columns } => columns.clone(),
    };
    let mut all_columns = meta.key_columns.clone();
    all_columns.extend(columns.iter().cloned());
    let increments = matches!(shape, Uniform::Increment { .. });
    // Every row must also have the first row's op (and conflict_set): the data alone does not
    // tell an upsert from an INSERT … ON CONFLICT DO NOTHING.
    let (op, conflict_set) = match &shape {
        Uniform::Increment { .. } => ("U", None),
        Uniform::Insert {
            conflict: Conflict::UpdateSet(cols),
            ..
        } => ("X", Some(cols.clone())),
        Uniform::Insert { .. } => ("I", None),
    };
    let run = in_subtransaction(|| {
        let taken =
            take(client, relid, cut, op, conflict_set).unwrap_or_else(|e| pgrx::error!("{e}"));
        // SAFETY: the arrays are datums of the take's SPI tuple table, which lives until this
        // SPI connection ends (or the subtransaction aborts), so past the statement below.
        let args = unsafe {
            [
                DatumWithOid::new(taken.keys, pg_sys::TEXTARRAYOID),
                DatumWithOid::new(taken.data, pg_sys::TEXTARRAYOID),
                DatumWithOid::from(columns),
                DatumWithOid::from(all_columns),
            ]
        };
        let rows = taken.rows;
        let (accounted, applied, expected) =
            run_as_owner(client, meta.owner, &statements, &args, rows);
        if accounted != rows || applied != expected {
            // Rows of another shape, or rows a BEFORE trigger skipped: the general path
            // decides them. Raising rolls the subtransaction (and the take) back.
            pgrx::error!(
                "uniform apply declined: {accounted} of {rows} rows fit, {applied} of {expected} applied"
            );
        }
        (taken.rows, applied, taken.batches)
    });
    match run {
        Ok((rows, applied, batches)) => {
            settle(relid, false, true);
            let rows = rows as usize;
            let applied = applied as usize;
            let mut applied_by_kind = [0; 3];
            applied_by_kind[usize::from(increments)] = applied;
            Ok(Some(Done {
                outcome: Outcome {
                    rows,
                    applied,
                    applied_by_kind,
                    ..Outcome::default()
                },
                batches,
            }))
        }
        Err((sqlstate, message)) => {
            settle(relid, false, false);
            pgrx::debug1!(
                "pg_writebehind: uniform apply of {relid:?} declined ({sqlstate}): {message}"
            );
            Ok(None)
        }
    }
}

fn skipping(relid: pg_sys::Oid, packed: bool) -> bool {
    BACKOFF.with(
        |b| match b.borrow_mut().get_mut(&(u32::from(relid), packed)) {
            Some((left, _)) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        },
    )
}

fn settle(relid: pg_sys::Oid, packed: bool, fitted: bool) {
    let key = (u32::from(relid), packed);
    BACKOFF.with(|b| {
        let mut b = b.borrow_mut();
        if fitted {
            b.remove(&key);
        } else {
            let next = b.get(&key).map_or(1, |(_, n)| *n);
            b.insert(key, (next, (next * 2).min(MAX_SKIP)));
        }
    });
}

/// What the head of a table's queue looks like.
enum Probe {
    /// Nothing queued.
    Empty,
    /// A row in JSON form: the round's shape (if uniform-able) and its last inbox id.
    Json(Option<(Uniform, i64)>),
    /// A packed row: [`packed`] decides.
    Packed,
}

/// The round's shape, read from its first row, and its last inbox id.
fn probe(
    client: &SpiClient<'_>,
    meta: &TableMeta,
    relid: pg_sys::Oid,
    max_rows: i64,
) -> SpiResult<Probe> {
    let rows = client.select(
        &format!(
            "SELECT i.op::text, i.data, i.conflict_set, ({CUT_BEFORE_PACKED}), i.vals IS NOT NULL
               FROM writebehind.inbox i WHERE i.relid = $1 ORDER BY i.id LIMIT 1"
        ),
        None,
        &[relid.into(), max_rows.into()],
    )?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(Probe::Empty);
    };
    if row.get::<bool>(5)?.unwrap_or(false) {
        return Ok(Probe::Packed);
    }
    let op: Option<String> = row.get(1)?;
    let data: Option<String> = row.get(2)?;
    let conflict_set: Option<Vec<String>> = row.get(3)?;
    let cut: Option<i64> = row.get(4)?;
    let (Some(op), Some(data), Some(cut)) = (op, data, cut) else {
        return Ok(Probe::Json(None));
    };
    Ok(Probe::Json(
        classify(meta, &op, &data, conflict_set).map(|s| (s, cut)),
    ))
}

/// What a conflict on the key does for fast-path INSERTs of `op` (`I` or `X`), if a fast
/// path takes them: the table's policy for `I` (upsert or dead_letter; ignore goes the general
/// way), the `conflict_set` of `X` rows (columns of the table only), none on append tables.
pub(super) fn insert_conflict(
    meta: &TableMeta,
    op: &str,
    conflict_set: Option<Vec<String>>,
) -> Option<Conflict> {
    Some(match (op, meta.append, &meta.policy) {
        ("I", true, _) => Conflict::Append,
        ("I", false, p @ (Conflict::Upsert | Conflict::Fail)) => p.clone(),
        ("X", false, _) => {
            let cols = conflict_set?;
            if !cols.iter().all(|c| meta.types.contains_key(c)) {
                return None;
            }
            Conflict::UpdateSet(cols)
        }
        _ => return None,
    })
}

/// The uniform shape a row of `op` with `data` stands for, if the fast path can take it.
fn classify(
    meta: &TableMeta,
    op: &str,
    data: &str,
    conflict_set: Option<Vec<String>>,
) -> Option<Uniform> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(data).ok()?;
    let known = |c: &String| meta.types.contains_key(c);
    match op {
        "I" | "X" => {
            let conflict = insert_conflict(meta, op, conflict_set)?;
            let strings = object.values().all(|v| v.is_string() || v.is_null());
            let columns: Vec<String> = object
                .keys()
                .filter(|c| !meta.key_columns.contains(c))
                .cloned()
                .collect();
            (strings && object.keys().all(known) && !(meta.append && columns.is_empty()))
                .then_some(Uniform::Insert { columns, conflict })
        }
        "U" if !meta.append => {
            let adds = object.iter().all(|(c, v)| {
                let exact = meta
                    .types
                    .get(c)
                    .is_some_and(|t| EXACT_TYPES.contains(&t.as_str()));
                exact
                    && v.as_object().is_some_and(|m| {
                        m.len() == 1 && m.get("add").is_some_and(|a| a.is_string())
                    })
            });
            let columns: Vec<String> = object.keys().cloned().collect();
            (adds && !columns.is_empty()).then_some(Uniform::Increment { columns })
        }
        _ => None,
    }
}

/// The round's rows, taken out of the inbox (rolled back with the subtransaction): their
/// keys and data as two `text[]` datums in inbox order, never copied into Rust.
struct Taken {
    rows: i64,
    batches: Vec<String>,
    keys: pg_sys::Datum,
    data: pg_sys::Datum,
}

fn take(
    client: &mut SpiClient<'_>,
    relid: pg_sys::Oid,
    cut: i64,
    op: &str,
    conflict_set: Option<Vec<String>>,
) -> SpiResult<Taken> {
    // The arrays are in inbox order: append tables insert in it (serial defaults, triggers),
    // and a key inserted twice keeps its last row (the 21000 retry) by its place in them.
    let t = client.update(
        "WITH taken AS (
             DELETE FROM writebehind.inbox WHERE relid = $1 AND id <= $2
             RETURNING id, key, data, proxy_id, batch_seq, op, conflict_set, vals IS NOT NULL AS packed)
         SELECT count(*),
                (SELECT array_agg(b.k) FROM (SELECT DISTINCT batch_seq || '/' || proxy_id AS k FROM taken) b),
                array_agg(key ORDER BY id), array_agg(data ORDER BY id),
                count(*) FILTER (WHERE op::text <> $3 OR conflict_set IS DISTINCT FROM $4 OR packed)
           FROM taken",
        None,
        &[relid.into(), cut.into(), op.into(), conflict_set.into()],
    )?;
    let r = t.first();
    let rows = r.get::<i64>(1)?.unwrap_or(0);
    let misfits = r.get::<i64>(5)?.unwrap_or(0);
    if misfits > 0 {
        pgrx::error!("uniform apply declined: {misfits} rows of another op or conflict_set");
    }
    let (Some(keys), Some(data)) = (r.get_datum_by_ordinal(3)?, r.get_datum_by_ordinal(4)?) else {
        pgrx::error!("uniform apply declined: no rows to take");
    };
    Ok(Taken {
        rows,
        batches: r.get::<Vec<String>>(2)?.unwrap_or_default(),
        keys,
        data,
    })
}
