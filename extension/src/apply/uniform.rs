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
use super::table::TableMeta;
use super::{as_owner, Outcome};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, SpiClient, SpiResult};
use std::cell::RefCell;
use std::collections::HashMap;

/// Column types whose increments sum exactly (`sum()` of them is a wider integer or numeric).
const EXACT_TYPES: [&str; 4] = ["smallint", "integer", "bigint", "numeric"];

/// Rounds a table skips the fast path after it was declined (doubling, up to this).
const MAX_SKIP: u32 = 64;

thread_local! {
    /// Per table: (rounds still to skip, the next skip length).
    static BACKOFF: RefCell<HashMap<u32, (u32, u32)>> = RefCell::new(HashMap::new());
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

/// One statement of the fast path and how to read what it did.
struct Statement {
    sql: String,
    /// True: its row count is both the rows that fit and those applied. False: it returns
    /// (rows that fit, rows applied, rows it should have applied).
    counted_by_rows: bool,
}

/// The statement for a round, and the one to try when a key came twice (if there is one).
struct Statements {
    first: Statement,
    last_per_key: Option<Statement>,
}

/// Runs `st`; returns (rows that fit, applied, what applied must be). Errors are raised.
fn execute(
    client: &mut SpiClient<'_>,
    st: &Statement,
    args: &[DatumWithOid<'_>],
    rows: i64,
) -> (i64, i64, i64) {
    let t = client
        .update(&st.sql, None, args)
        .unwrap_or_else(|e| pgrx::error!("{e}"));
    if st.counted_by_rows {
        (t.len() as i64, t.len() as i64, rows)
    } else {
        let r = t.first();
        let n = |i| r.get::<i64>(i).ok().flatten().unwrap_or(-1);
        (n(1), n(2), n(3))
    }
}

/// What the fast path did: the round's outcome and how many batches it covered.
pub struct Done {
    pub outcome: Outcome,
    pub batches: i64,
}

/// Applies `relid`'s next round (up to `max_rows` inbox rows) in one statement if it has one
/// uniform shape; `None` when it does not (or failed), with nothing changed.
pub fn try_apply(
    client: &mut SpiClient<'_>,
    meta: &TableMeta,
    relid: pg_sys::Oid,
    max_rows: i64,
) -> SpiResult<Option<Done>> {
    if !crate::gucs::UNIFORM_APPLY.get() || skipping(relid) {
        return Ok(None);
    }
    let Some((shape, cut)) = probe(client, meta, relid, max_rows)? else {
        return Ok(None);
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
        let taken = take(client, relid, cut, meta.append, op, conflict_set)
            .unwrap_or_else(|e| pgrx::error!("{e}"));
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
        let (accounted, applied, expected) = as_owner(meta.owner, || {
            let first = in_subtransaction(|| execute(client, &statements.first, &args, rows));
            match (first, &statements.last_per_key) {
                (Ok(counts), _) => counts,
                // 21000: ON CONFLICT DO UPDATE met a key twice; keep the last row of each.
                (Err((state, _)), Some(again)) if state == "21000" => {
                    execute(client, again, &args, rows)
                }
                (Err((state, message)), _) => pgrx::error!("{message} ({state})"),
            }
        });
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
            settle(relid, true);
            let rows = rows as usize;
            let applied = applied as usize;
            let mut applied_by_kind = [0; 3];
            applied_by_kind[usize::from(increments)] = applied;
            Ok(Some(Done {
                outcome: Outcome {
                    rows,
                    applied,
                    applied_by_kind,
                    dead: 0,
                },
                batches,
            }))
        }
        Err((sqlstate, message)) => {
            settle(relid, false);
            pgrx::debug1!(
                "pg_writebehind: uniform apply of {relid:?} declined ({sqlstate}): {message}"
            );
            Ok(None)
        }
    }
}

fn skipping(relid: pg_sys::Oid) -> bool {
    BACKOFF.with(|b| match b.borrow_mut().get_mut(&u32::from(relid)) {
        Some((left, _)) if *left > 0 => {
            *left -= 1;
            true
        }
        _ => false,
    })
}

fn settle(relid: pg_sys::Oid, fitted: bool) {
    BACKOFF.with(|b| {
        let mut b = b.borrow_mut();
        if fitted {
            b.remove(&u32::from(relid));
        } else {
            let next = b.get(&u32::from(relid)).map_or(1, |(_, n)| *n);
            b.insert(u32::from(relid), (next, (next * 2).min(MAX_SKIP)));
        }
    });
}

/// The round's shape, read from its first row, and its last inbox id.
fn probe(
    client: &SpiClient<'_>,
    meta: &TableMeta,
    relid: pg_sys::Oid,
    max_rows: i64,
) -> SpiResult<Option<(Uniform, i64)>> {
    let rows = client.select(
        "SELECT i.op::text, i.data, i.conflict_set,
                (SELECT max(c.id) FROM
                   (SELECT j.id FROM writebehind.inbox j WHERE j.relid = $1 ORDER BY j.id LIMIT $2) c)
           FROM writebehind.inbox i WHERE i.relid = $1 ORDER BY i.id LIMIT 1",
        None,
        &[relid.into(), max_rows.into()],
    )?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let op: Option<String> = row.get(1)?;
    let data: Option<String> = row.get(2)?;
    let conflict_set: Option<Vec<String>> = row.get(3)?;
    let cut: Option<i64> = row.get(4)?;
    let (Some(op), Some(data), Some(cut)) = (op, data, cut) else {
        return Ok(None);
    };
    Ok(classify(meta, &op, &data, conflict_set).map(|s| (s, cut)))
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
            let conflict = match (op, meta.append, &meta.policy) {
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
            };
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
    batches: i64,
    keys: pg_sys::Datum,
    data: pg_sys::Datum,
}

fn take(
    client: &mut SpiClient<'_>,
    relid: pg_sys::Oid,
    cut: i64,
    ordered: bool,
    op: &str,
    conflict_set: Option<Vec<String>>,
) -> SpiResult<Taken> {
    // Order matters only where rows are inserted without a key (serial defaults, triggers);
    // a keyed round that fits has each key once and the same result in any order.
    let order = if ordered { " ORDER BY id" } else { "" };
    let t = client.update(
        &format!(
            "WITH taken AS (
                 DELETE FROM writebehind.inbox WHERE relid = $1 AND id <= $2
                 RETURNING id, key, data, proxy_id, batch_seq, op, conflict_set)
             SELECT count(*),
                    (SELECT count(*) FROM (SELECT DISTINCT proxy_id, batch_seq FROM taken) b),
                    array_agg(key), array_agg(data),
                    count(*) FILTER (WHERE op <> $3 OR conflict_set IS DISTINCT FROM $4)
               FROM (SELECT key, data, op::text, conflict_set FROM taken{order}) s"
        ),
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
        batches: r.get::<i64>(2)?.unwrap_or(0),
        keys,
        data,
    })
}

/// A SQL string literal of `s`, whatever standard_conforming_strings says (as quote_literal).
fn literal(s: &str) -> String {
    let quoted = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

fn type_of<'a>(meta: &'a TableMeta, column: &str) -> &'a str {
    meta.types.get(column).map_or("text", String::as_str)
}

/// The rows as (k jsonb, d jsonb), each decoded once; `$1` keys, `$2` data.
const DECODED: &str = "(SELECT u.k::jsonb AS k, u.d::jsonb AS d
                          FROM unnest($1::text[], $2::text[]) AS u(k, d) OFFSET 0) v";

/// The same with each row's position `o` in the round.
const ORDERED_DECODED: &str = "(SELECT u.k::jsonb AS k, u.d::jsonb AS d, u.o
                                  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(k, d, o)
                                OFFSET 0) v";

/// The same, one row per distinct (key, data) text with its count `c`: a hot key's repeated
/// increments are decoded once, not once each.
const DISTINCT_DECODED: &str = "(SELECT u.k::jsonb AS k, u.d::jsonb AS d, u.c
                                   FROM (SELECT k, d, count(*) AS c
                                           FROM unnest($1::text[], $2::text[]) AS r(k, d)
                                          GROUP BY k, d) u OFFSET 0) v";

fn key_exprs(meta: &TableMeta) -> Vec<String> {
    meta.key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("(v.k->>{i})::{}", type_of(meta, c)))
        .collect()
}

/// `$3` the non-key columns, `$4` every column a row may list; its row count is the rows that
/// fit and applied.
fn insert_sql(meta: &TableMeta, columns: &[String], conflict: &Conflict) -> Statements {
    let mut targets: Vec<String> = meta.key_columns.iter().map(quote_identifier).collect();
    targets.extend(columns.iter().map(quote_identifier));
    let mut values = key_exprs(meta);
    values.extend(
        columns
            .iter()
            .map(|c| format!("(v.d->>{})::{}", literal(c), type_of(meta, c))),
    );
    let mut fits = vec![
        "v.d ?& $3::text[]".to_string(),
        "(v.d - $4::text[]) = '{}'::jsonb".to_string(),
    ];
    let on_conflict = if meta.append {
        String::new()
    } else {
        fits.push(format!(
            "jsonb_array_length(v.k) = {}",
            meta.key_columns.len()
        ));
        let keys = meta
            .key_columns
            .iter()
            .map(quote_identifier)
            .collect::<Vec<_>>()
            .join(", ");
        // As the general path: an upsert updates the listed non-key columns, an `X` row its
        // conflict_set; with nothing to update, a conflict does nothing.
        let update = match conflict {
            Conflict::Fail | Conflict::Append | Conflict::Ignore => None,
            Conflict::Upsert => Some(columns),
            Conflict::UpdateSet(cols) => Some(cols.as_slice()),
        };
        match update {
            None => String::new(),
            Some([]) => format!(" ON CONFLICT ({keys}) DO NOTHING"),
            Some(cols) => format!(
                " ON CONFLICT ({keys}) DO UPDATE SET {}",
                cols.iter()
                    .map(|c| format!("{0} = EXCLUDED.{0}", quote_identifier(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    };
    let first = Statement {
        sql: format!(
            "INSERT INTO {} ({}) SELECT {} FROM {DECODED} WHERE {}{on_conflict}",
            meta.qualified,
            targets.join(", "),
            values.join(", "),
            fits.join(" AND "),
        ),
        counted_by_rows: true,
    };
    // A key inserted twice makes ON CONFLICT DO UPDATE fail (21000). Where the later row's
    // values are exactly what folding both gives (an upsert of the same columns, or an `X`
    // row whose conflict_set is every listed column), keep the last row of each key.
    let updates_all = match conflict {
        Conflict::Upsert => true,
        Conflict::UpdateSet(cols) => {
            let mut a = cols.clone();
            let mut b = columns.to_vec();
            a.sort();
            b.sort();
            a == b
        }
        _ => false,
    };
    let last_per_key = (!meta.append && !columns.is_empty() && updates_all).then(|| {
        let keys = key_exprs(meta).join(", ");
        Statement {
            sql: format!(
                "WITH v AS (SELECT v.* FROM {ORDERED_DECODED} WHERE {}),
                      x AS (SELECT DISTINCT ON ({keys}) v.k, v.d FROM v ORDER BY {keys}, v.o DESC),
                      ins AS (INSERT INTO {} ({}) SELECT {} FROM x AS v{on_conflict} RETURNING 1)
                 SELECT (SELECT count(*) FROM v), (SELECT count(*) FROM ins), (SELECT count(*) FROM x)",
                fits.join(" AND "),
                meta.qualified,
                targets.join(", "),
                values.join(", "),
            ),
            counted_by_rows: false,
        }
    });
    Statements {
        first,
        last_per_key,
    }
}

/// `$3` the increment columns (`$4` unused). Returns (rows that fit, keys applied).
fn increment_sql(meta: &TableMeta, columns: &[String]) -> Statements {
    let nk = meta.key_columns.len();
    let mut select = key_exprs(meta)
        .into_iter()
        .enumerate()
        .map(|(i, e)| format!("{e} AS k{i}"))
        .collect::<Vec<_>>();
    // Each listed column holds exactly {"add": k} (so it is there), and nothing else is listed.
    let mut fits = vec![
        format!("jsonb_array_length(v.k) = {nk}"),
        "(v.d - $3::text[]) = '{}'::jsonb".to_string(),
    ];
    let mut sets = Vec::new();
    for (j, c) in columns.iter().enumerate() {
        let ty = type_of(meta, c);
        let lit = literal(c);
        // Each distinct row text is decoded once and weighted by how often it came; sum() of
        // an integer type is a wider integer or numeric: exact (an overflow is an error).
        select.push(format!("sum((v.d->{lit}->>'add')::{ty} * v.c) AS s{j}"));
        fits.push(format!(
            "(v.d->{lit}->>'add') IS NOT NULL AND ((v.d->{lit}) - 'add'::text) = '{{}}'::jsonb"
        ));
        let q = quote_identifier(c);
        sets.push(format!("{q} = t.{q} + g.s{j}::text::{ty}"));
    }
    select.push("sum(v.c) AS n".into());
    let group = (1..=nk)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let matches = meta
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{} = g.k{i}", quote_identifier(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "WITH g AS (SELECT {} FROM {DISTINCT_DECODED} WHERE {} GROUP BY {group}),
              upd AS (UPDATE {} AS t SET {} FROM g WHERE {matches} RETURNING 1)
         SELECT (SELECT coalesce(sum(n), 0)::int8 FROM g), (SELECT count(*) FROM g),
                (SELECT count(*) FROM g)
          WHERE (SELECT count(*) FROM upd) >= 0",
        select.join(", "),
        fits.join(" AND "),
        meta.qualified,
        sets.join(", "),
    );
    Statements {
        first: Statement {
            sql,
            counted_by_rows: false,
        },
        last_per_key: None,
    }
}
