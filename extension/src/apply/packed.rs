//! The fast path for packed inbox rows (docs/inbox.md): consecutive packed rows of one shape
//! (INSERTs of one column set, or increments of integer or numeric columns) are applied by one
//! statement that reads their arrays directly. Like [`super::uniform`], an optimisation and
//! never a second semantics: any error, or any change the statement cannot account for, rolls
//! it back, and the general path takes the round (it unpacks the rows, [`super::unpack`]).

use super::fold::Conflict;
use super::isolate::in_subtransaction;
use super::packed_sql::{increment_sql, insert_sql};
use super::table::TableMeta;
use super::uniform::{insert_conflict, Done, EXACT_TYPES};
use super::uniform_sql::run_as_owner;
use super::Outcome;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiResult};
use std::collections::HashSet;

/// The most packed rows one statement reads (each is one parameter).
pub const MAX_CHUNKS: usize = 32;

/// What a packed round may be applied as.
#[derive(Debug, PartialEq, Eq)]
enum Shape {
    /// INSERTs listing these non-key columns (every key column is listed too).
    Insert {
        columns: Vec<String>,
        conflict: Conflict,
    },
    /// Increments of these columns.
    Increment { columns: Vec<String> },
}

/// One packed row at the head of the table's queue, as the probe sees it (without its values).
struct Head {
    id: i64,
    op: String,
    columns: Option<Vec<String>>,
    conflict_set: Option<Vec<String>>,
    n: i64,
    packed: bool,
}

/// What became of a round whose first row is packed.
pub enum Attempt {
    /// Applied by one statement.
    Applied(Done),
    /// Not a shape this path takes (deletes, `N` rows, …): nothing was tried.
    NotEligible,
    /// Tried and rolled back; the general path takes the round.
    Declined,
}

/// Applies the packed rows at the head of `relid`'s queue (up to `max_rows` changes, at least
/// one row) in one statement if they have one shape this path takes.
pub fn try_apply(
    client: &mut SpiClient<'_>,
    meta: &TableMeta,
    relid: pg_sys::Oid,
    max_rows: i64,
) -> SpiResult<Attempt> {
    let heads = probe(client, relid)?;
    let Some(first) = heads.first() else {
        return Ok(Attempt::NotEligible);
    };
    let (Some(packed_columns), true) = (first.columns.clone(), first.packed) else {
        return Ok(Attempt::NotEligible);
    };
    let Some(shape) = classify(meta, &first.op, &packed_columns, first.conflict_set.clone()) else {
        return Ok(Attempt::NotEligible);
    };
    let mut ids = Vec::new();
    let mut expected = 0i64;
    for h in heads.iter().take(MAX_CHUNKS) {
        let same = h.packed
            && h.op == first.op
            && h.columns == first.columns
            && h.conflict_set == first.conflict_set;
        if !same || (!ids.is_empty() && expected + h.n > max_rows) {
            break;
        }
        ids.push(h.id);
        expected += h.n;
    }
    let k = ids.len();
    let statements = match &shape {
        Shape::Insert { columns, conflict } => {
            insert_sql(meta, &packed_columns, columns, conflict, k)
        }
        Shape::Increment { columns } => increment_sql(meta, &packed_columns, columns, k),
    };
    let increments = matches!(shape, Shape::Increment { .. });
    let width = (meta.key_columns.len() + packed_columns.len()) as i32;
    let run = in_subtransaction(|| {
        let taken = take(client, relid, &ids, width).unwrap_or_else(|e| pgrx::error!("{e}"));
        if taken.rows != expected {
            pgrx::error!(
                "packed apply declined: took {} changes, expected {expected}",
                taken.rows
            );
        }
        // SAFETY: the arrays are datums of the take's SPI tuple table, which lives until this
        // SPI connection ends (or the subtransaction aborts), so past the statement below.
        let args: Vec<DatumWithOid<'_>> = taken
            .vals
            .iter()
            .map(|&d| unsafe { DatumWithOid::new(d, pg_sys::TEXTARRAYOID) })
            .collect();
        let rows = taken.rows;
        let (accounted, applied, should) =
            run_as_owner(client, meta.owner, &statements, &args, rows);
        if accounted != rows || applied != should {
            pgrx::error!(
                "packed apply declined: {accounted} of {rows} changes fit, {applied} of {should} applied"
            );
        }
        (rows, applied, taken.batches)
    });
    match run {
        Ok((rows, applied, batches)) => {
            let applied = applied as usize;
            let mut applied_by_kind = [0; 3];
            applied_by_kind[usize::from(increments)] = applied;
            Ok(Attempt::Applied(Done {
                outcome: Outcome {
                    rows: rows as usize,
                    applied,
                    applied_by_kind,
                    ..Outcome::default()
                },
                batches,
            }))
        }
        Err((sqlstate, message)) => {
            pgrx::debug1!(
                "pg_writebehind: packed apply of {relid:?} declined ({sqlstate}): {message}"
            );
            Ok(Attempt::Declined)
        }
    }
}

/// The first rows of the table's queue, without their values (a packed row's `vals` stays in
/// its TOAST table until it is taken).
fn probe(client: &SpiClient<'_>, relid: pg_sys::Oid) -> SpiResult<Vec<Head>> {
    let mut heads = Vec::new();
    for r in client.select(
        "SELECT id, op::text, columns, conflict_set, n::int8, vals IS NOT NULL
           FROM writebehind.inbox WHERE relid = $1 ORDER BY id LIMIT $2",
        None,
        &[relid.into(), (MAX_CHUNKS as i64).into()],
    )? {
        heads.push(Head {
            id: r.get(1)?.unwrap_or_default(),
            op: r.get(2)?.unwrap_or_default(),
            columns: r.get(3)?,
            conflict_set: r.get(4)?,
            n: r.get(5)?.unwrap_or(0),
            packed: r.get(6)?.unwrap_or(false),
        });
    }
    Ok(heads)
}

/// The shape packed rows of `op` over `columns` stand for, if this path can take them.
fn classify(
    meta: &TableMeta,
    op: &str,
    columns: &[String],
    conflict_set: Option<Vec<String>>,
) -> Option<Shape> {
    let distinct: HashSet<&String> = columns.iter().collect();
    let known = columns.iter().all(|c| meta.types.contains_key(c));
    if distinct.len() != columns.len() || !known {
        return None;
    }
    let non_key: Vec<String> = columns
        .iter()
        .filter(|c| !meta.key_columns.contains(c))
        .cloned()
        .collect();
    match op {
        "I" | "X" => {
            let conflict = insert_conflict(meta, op, conflict_set)?;
            (!(meta.append && non_key.is_empty())).then_some(Shape::Insert {
                columns: non_key,
                conflict,
            })
        }
        "U" if !meta.append && non_key.len() == columns.len() => {
            let exact = non_key.iter().all(|c| {
                meta.types
                    .get(c)
                    .is_some_and(|t| EXACT_TYPES.contains(&t.as_str()))
            });
            (exact && !non_key.is_empty()).then_some(Shape::Increment { columns: non_key })
        }
        _ => None,
    }
}

/// The taken rows' arrays (in inbox order), their changes and batches.
struct Taken {
    rows: i64,
    batches: Vec<String>,
    vals: Vec<pg_sys::Datum>,
}

fn take(
    client: &mut SpiClient<'_>,
    relid: pg_sys::Oid,
    ids: &[i64],
    width: i32,
) -> SpiResult<Taken> {
    let mut t = client.update(
        "DELETE FROM writebehind.inbox WHERE relid = $1 AND id = ANY ($2)
         RETURNING id, vals, proxy_id, batch_seq, n::int8,
                   coalesce(array_ndims(vals) = 2 AND array_length(vals, 1) = $3
                            AND array_lower(vals, 1) = 1 AND array_lower(vals, 2) = 1, false)",
        None,
        &[relid.into(), ids.to_vec().into(), width.into()],
    )?;
    let mut rows = Vec::new();
    let mut batches = HashSet::new();
    let mut changes = 0i64;
    while let Some(r) = t.next() {
        let id: i64 = r.get(1)?.unwrap_or_default();
        let well_formed: bool = r.get(6)?.unwrap_or(false);
        // The table's cursor is on `r`: its raw datum, not a copy.
        let Some(vals) = t.get_datum_by_ordinal(2)? else {
            pgrx::error!("packed apply declined: a row without values");
        };
        if !well_formed {
            pgrx::error!("packed apply declined: a row's vals do not match its columns");
        }
        let proxy: String = r.get(3)?.unwrap_or_default();
        let seq: i64 = r.get(4)?.unwrap_or_default();
        batches.insert(format!("{seq}/{proxy}"));
        changes += r.get::<i64>(5)?.unwrap_or(0);
        rows.push((id, vals));
    }
    if rows.len() != ids.len() {
        pgrx::error!(
            "packed apply declined: took {} of {} rows",
            rows.len(),
            ids.len()
        );
    }
    rows.sort_unstable_by_key(|(id, _)| *id);
    Ok(Taken {
        rows: changes,
        batches: batches.into_iter().collect(),
        vals: rows.into_iter().map(|(_, v)| v).collect(),
    })
}
