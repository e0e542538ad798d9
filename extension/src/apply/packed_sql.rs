//! The statements of the packed fast path ([`super::packed`]): one INSERT or UPDATE over up to
//! [`super::packed::MAX_CHUNKS`] packed rows, which reads each value straight out of the rows'
//! two-dimensional `text[]` arrays and casts it to its column's type: no JSON, no row per change.
//!
//! Parameters: `$1` … `$k`, the packed rows' `vals` in inbox order (key values first). Every statement reports
//! (rows it read, rows applied, rows it should have applied), as [`super::uniform_sql`]'s do.

use super::fold::Conflict;
use super::statements::on_conflict;
use super::table::TableMeta;
use super::uniform_sql::{
    increment_update, key_groups, last_change_wins, LastPerKey, Statement, Statements,
};
use pgrx::spi::quote_identifier;

/// The changes of `k` packed rows of `width` columns, as rows `v(ck, c1 … c<width>, o)`:
/// `ck` the packed row's place in the round, `o` the change's place in it.
fn source(k: usize, width: usize) -> String {
    let parts: Vec<String> = (1..=k)
        .map(|p| {
            let slices: Vec<String> = (1..=width).map(|c| format!("${p}[{c}:{c}][:]")).collect();
            let names: Vec<String> = (1..=width).map(|c| format!("c{c}")).collect();
            format!(
                "SELECT {p} AS ck, u.* FROM unnest({}) WITH ORDINALITY AS u({}, o)",
                slices.join(", "),
                names.join(", ")
            )
        })
        .collect();
    parts.join(" UNION ALL ")
}

/// Where `column`'s values are in a packed row: the key columns first (the key, as in the JSON
/// form's `key`), then the listed columns; a key column listed again is read from the key.
fn slot(meta: &TableMeta, packed: &[String], column: &str) -> usize {
    let nk = meta.key_columns.len();
    match meta.key_columns.iter().position(|k| k == column) {
        Some(i) => i + 1,
        None => packed
            .iter()
            .position(|c| c == column)
            .map_or(0, |i| nk + i + 1),
    }
}

/// The value of `column` in a change, cast to the column's type.
fn value(meta: &TableMeta, packed: &[String], column: &str) -> String {
    let ty = meta.types.get(column).map_or("text", String::as_str);
    format!("v.c{}::{ty}", slot(meta, packed, column))
}

/// INSERT of the packed rows' changes; `columns` are the non-key columns they list.
pub fn insert_sql(
    meta: &TableMeta,
    packed: &[String],
    columns: &[String],
    conflict: &Conflict,
    k: usize,
) -> Statements {
    let src = source(k, meta.key_columns.len() + packed.len());
    let mut targets: Vec<String> = meta.key_columns.iter().map(quote_identifier).collect();
    targets.extend(columns.iter().map(quote_identifier));
    let mut values: Vec<String> = meta
        .key_columns
        .iter()
        .map(|c| value(meta, packed, c))
        .collect();
    values.extend(columns.iter().map(|c| value(meta, packed, c)));
    let (order, clause) = if meta.append {
        // Serial defaults and triggers see the changes in the order they were acknowledged.
        (" ORDER BY v.ck, v.o", String::new())
    } else {
        ("", on_conflict(meta, conflict, columns))
    };
    let first = Statement {
        sql: format!(
            "INSERT INTO {} ({}) SELECT {} FROM ({src}) v{order}{clause}",
            meta.qualified,
            targets.join(", "),
            values.join(", "),
        ),
        counted_by_rows: true,
    };
    // A key inserted twice: as in the JSON form, keep each key's last change where that is
    // exactly what folding gives.
    let last_per_key = (!meta.append && !columns.is_empty() && last_change_wins(conflict, columns))
        .then(|| {
            let keys: Vec<String> = meta
                .key_columns
                .iter()
                .map(|c| value(meta, packed, c))
                .collect();
            LastPerKey {
                source: &src,
                keys: &keys.join(", "),
                newest_first: "v.ck DESC, v.o DESC",
            }
            .insert(meta, &targets, &values, &clause)
        });
    Statements {
        first,
        last_per_key,
    }
}

/// The increments of the packed rows, summed per key and added in one UPDATE; `columns` are
/// the incremented columns. A change with a NULL key or delta is not counted as read, so the
/// round goes the general way (where it is a dead letter).
pub fn increment_sql(
    meta: &TableMeta,
    packed: &[String],
    columns: &[String],
    k: usize,
) -> Statements {
    let src = source(k, meta.key_columns.len() + packed.len());
    let mut select: Vec<String> = meta
        .key_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} AS k{i}", value(meta, packed, c)))
        .collect();
    let mut complete: Vec<String> = meta
        .key_columns
        .iter()
        .chain(columns)
        .map(|c| format!("v.c{} IS NOT NULL", slot(meta, packed, c)))
        .collect();
    complete.dedup();
    for (j, c) in columns.iter().enumerate() {
        // Deltas are read as TableMeta::delta_type, not the column's type: `n + 3000000000`
        // on an integer column that ends in range is valid in PostgreSQL (int4 + int8, then
        // assigned); sum() of int8 is numeric, exact.
        select.push(format!(
            "sum(v.c{}::{}) AS s{j}",
            slot(meta, packed, c),
            meta.delta_type(c)
        ));
    }
    select.push(format!(
        "count(*) FILTER (WHERE {}) AS n",
        complete.join(" AND ")
    ));
    increment_update(
        meta,
        &format!(
            "SELECT {} FROM ({src}) v GROUP BY {}",
            select.join(", "),
            key_groups(meta)
        ),
        columns,
    )
}
