//! The statements of the uniform fast path ([`super::uniform`]): one INSERT or UPDATE over a
//! whole round, which decodes the rows' JSON in PostgreSQL, checks that each row has the round's
//! shape, and reports what it did so that the caller can tell whether every row was accounted for.
//!
//! Parameters: `$1` the rows' keys and `$2` their data (`text[]`, in inbox order), `$3` the
//! round's non-key (or increment) columns, `$4` every column a row may list.

use super::as_owner;
use super::fold::Conflict;
use super::isolate::in_subtransaction;
use super::statements::on_conflict;
use super::table::TableMeta;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, SpiClient};

/// One statement of the fast path and how to read what it did.
pub struct Statement {
    pub sql: String,
    /// True: its row count is both the rows that fit and those applied. False: it returns
    /// (rows that fit, rows applied, rows it should have applied).
    pub counted_by_rows: bool,
}

/// The statement for a round, and the one to try when a key came twice (if there is one).
pub struct Statements {
    pub first: Statement,
    pub last_per_key: Option<Statement>,
}

/// Runs `st`; returns (rows that fit, applied, what applied must be). Errors are raised.
pub fn execute(
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

/// Runs a round's statements as `owner`: the first in a subtransaction, and if it met a key
/// twice under `ON CONFLICT DO UPDATE` (21000) the one that keeps each key's last change, where
/// there is one. Returns (rows that fit, applied, what applied must be); errors are raised.
pub fn run_as_owner(
    client: &mut SpiClient<'_>,
    owner: pg_sys::Oid,
    statements: &Statements,
    args: &[DatumWithOid<'_>],
    rows: i64,
) -> (i64, i64, i64) {
    as_owner(owner, || {
        let first = in_subtransaction(|| execute(client, &statements.first, args, rows));
        match (first, &statements.last_per_key) {
            (Ok(counts), _) => counts,
            (Err((state, _)), Some(again)) if state == "21000" => {
                execute(client, again, args, rows)
            }
            (Err((state, message)), _) => pgrx::error!("{message} ({state})"),
        }
    })
}

/// Whether keeping each key's last INSERT is exactly what folding a key inserted twice gives:
/// an upsert of the listed columns, or `X` rows whose conflict_set is every listed column.
pub fn last_change_wins(conflict: &Conflict, columns: &[String]) -> bool {
    match conflict {
        Conflict::Upsert => true,
        Conflict::UpdateSet(cols) => {
            let mut a = cols.clone();
            let mut b = columns.to_vec();
            a.sort();
            b.sort();
            a == b
        }
        _ => false,
    }
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
pub fn insert_sql(meta: &TableMeta, columns: &[String], conflict: &Conflict) -> Statements {
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
        on_conflict(meta, conflict, columns)
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
    let last_per_key = (!meta.append && !columns.is_empty() && last_change_wins(conflict, columns))
        .then(|| {
            LastPerKey {
                source: &format!(
                    "SELECT v.* FROM {ORDERED_DECODED} WHERE {}",
                    fits.join(" AND ")
                ),
                keys: &key_exprs(meta).join(", "),
                newest_first: "v.o DESC",
            }
            .insert(meta, &targets, &values, &on_conflict)
        });
    Statements {
        first,
        last_per_key,
    }
}

/// The retry of an insert round that had a key twice (21000): each key's newest change only.
pub struct LastPerKey<'a> {
    /// The round's changes, as a query whose rows are `v`.
    pub source: &'a str,
    /// The key expressions over `v`, comma-separated.
    pub keys: &'a str,
    /// ORDER BY terms over `v` that put a key's newest change first.
    pub newest_first: &'a str,
}

impl LastPerKey<'_> {
    /// Inserts each key's newest change as `values` into `targets`, with the ON CONFLICT
    /// `clause`; returns (changes, rows inserted, distinct keys).
    pub fn insert(
        &self,
        meta: &TableMeta,
        targets: &[String],
        values: &[String],
        clause: &str,
    ) -> Statement {
        let (source, keys, newest_first) = (self.source, self.keys, self.newest_first);
        Statement {
            sql: format!(
                "WITH v AS ({source}),
                      x AS (SELECT DISTINCT ON ({keys}) v.* FROM v ORDER BY {keys}, {newest_first}),
                      ins AS (INSERT INTO {} ({}) SELECT {} FROM x AS v{clause} RETURNING 1)
                 SELECT (SELECT count(*) FROM v), (SELECT count(*) FROM ins), (SELECT count(*) FROM x)",
                meta.qualified,
                targets.join(", "),
                values.join(", "),
            ),
            counted_by_rows: false,
        }
    }
}

/// `$3` the increment columns (`$4` unused). Returns (rows that fit, keys applied).
pub fn increment_sql(meta: &TableMeta, columns: &[String]) -> Statements {
    let nk = meta.key_columns.len();
    let mut select = key_exprs(meta)
        .into_iter()
        .enumerate()
        .map(|(i, e)| format!("{e} AS k{i}"))
        .collect::<Vec<_>>();
    // Each listed column holds exactly {"add": k} (so it is there), and nothing else is listed.
    // A key with a NULL value matches no row: it must not count as applied (the general path
    // makes it a dead letter).
    let mut fits = vec![
        format!("jsonb_array_length(v.k) = {nk}"),
        "NOT (v.k @> '[null]'::jsonb)".to_string(),
        "(v.d - $3::text[]) = '{}'::jsonb".to_string(),
    ];
    for (j, c) in columns.iter().enumerate() {
        let lit = literal(c);
        // Each distinct row text is decoded once and weighted by how often it came. Deltas
        // are read as TableMeta::delta_type, not the column's type: `n + 3000000000` on an
        // integer column that ends in range is valid in PostgreSQL (int4 + int8, assigned).
        let ty = meta.delta_type(c);
        select.push(format!("sum((v.d->{lit}->>'add')::{ty} * v.c) AS s{j}"));
        fits.push(format!(
            "(v.d->{lit}->>'add') IS NOT NULL AND ((v.d->{lit}) - 'add'::text) = '{{}}'::jsonb"
        ));
    }
    select.push("sum(v.c) AS n".into());
    increment_update(
        meta,
        &format!(
            "SELECT {} FROM {DISTINCT_DECODED} WHERE {} GROUP BY {}",
            select.join(", "),
            fits.join(" AND "),
            key_groups(meta)
        ),
        columns,
    )
}

/// `GROUP BY` positions of the key columns (the first ones of the grouped select).
pub fn key_groups(meta: &TableMeta) -> String {
    (1..=meta.key_columns.len())
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statement of a round of increments: `grouped` selects per key `k0…`, each column's
/// summed deltas `s0…` (in `columns` order) and the rows it counted `n`; each key's columns
/// get their sums added. Returns (rows counted, keys, keys): an absent key is applied as zero
/// rows, as the UPDATE it stands for.
pub fn increment_update(meta: &TableMeta, grouped: &str, columns: &[String]) -> Statements {
    let sets: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(j, c)| {
            let q = quote_identifier(c);
            // Added as numeric; the assignment casts the result (22003 if it does not fit).
            format!("{q} = t.{q} + g.s{j}::numeric")
        })
        .collect();
    let matches = meta
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("t.{} = g.k{i}", quote_identifier(c)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "WITH g AS ({grouped}),
              upd AS (UPDATE {} AS t SET {} FROM g WHERE {matches} RETURNING 1)
         SELECT (SELECT coalesce(sum(n), 0)::int8 FROM g), (SELECT count(*) FROM g),
                (SELECT count(*) FROM g)
          WHERE (SELECT count(*) FROM upd) >= 0",
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
