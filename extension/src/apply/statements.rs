//! Builds the set-based statements of one apply step: one INSERT, UPDATE or DELETE for a whole
//! group of keys, fed by text arrays through `unnest`, values cast to the column types there.

use super::fold::{ColOp, Conflict, Step};
use super::table::TableMeta;
use pgrx::spi::quote_identifier;

/// The shape shared by every change of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Shape {
    Delete,
    Insert {
        conflict: Conflict,
        columns: Vec<String>,
    },
    Update {
        ops: Vec<(String, u8)>,
    },
}

impl Shape {
    /// The shape of a step.
    pub fn of(step: &Step) -> Shape {
        match step {
            Step::Delete => Shape::Delete,
            Step::Insert { conflict, values } => Shape::Insert {
                conflict: conflict.clone(),
                columns: values.keys().cloned().collect(),
            },
            Step::Update { ops } => Shape::Update {
                ops: ops.iter().map(|(c, o)| (c.clone(), o.kind())).collect(),
            },
        }
    }
}

/// A statement and its parameters: each parameter is one text array, one element per change.
pub struct Statement {
    pub sql: String,
    pub columns: Vec<Vec<Option<String>>>,
}

fn cast(meta: &TableMeta, column: &str, alias: &str) -> String {
    match meta.types.get(column) {
        Some(t) => format!("v.{alias}::{t}"),
        // An unknown column: PostgreSQL reports it (42703) and the change is dead-lettered.
        None => format!("v.{alias}"),
    }
}

/// An increment's delta, in [`TableMeta::delta_type`] (the result is cast on assignment).
fn delta(meta: &TableMeta, column: &str, alias: &str) -> String {
    format!("v.{alias}::{}", meta.delta_type(column))
}

fn unnest(n: usize) -> (String, String) {
    let params = (1..=n)
        .map(|i| format!("${i}::text[]"))
        .collect::<Vec<_>>()
        .join(", ");
    let aliases = (1..=n)
        .map(|i| format!("a{i}"))
        .collect::<Vec<_>>()
        .join(", ");
    (params, aliases)
}

fn key_match(meta: &TableMeta) -> String {
    meta.key_columns
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "t.{} = {}",
                quote_identifier(k),
                cast(meta, k, &format!("a{}", i + 1))
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_list(meta: &TableMeta) -> String {
    meta.key_columns
        .iter()
        .map(quote_identifier)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the statement for `shape` over `changes` (each with its key values).
pub fn build(meta: &TableMeta, shape: &Shape, changes: &[(&[String], &Step)]) -> Statement {
    match shape {
        Shape::Delete => {
            let k = meta.key_columns.len();
            let mut columns = vec![Vec::with_capacity(changes.len()); k];
            for (key, _) in changes {
                for (i, v) in key.iter().enumerate() {
                    columns[i].push(Some(v.clone()));
                }
            }
            let (params, aliases) = unnest(k);
            Statement {
                sql: format!(
                    "DELETE FROM {} AS t USING unnest({params}) AS v({aliases}) WHERE {}",
                    meta.qualified,
                    key_match(meta)
                ),
                columns,
            }
        }
        Shape::Insert {
            conflict,
            columns: cols,
        } => {
            let mut columns = vec![Vec::with_capacity(changes.len()); cols.len()];
            for (_, step) in changes {
                if let Step::Insert { values, .. } = step {
                    for (i, c) in cols.iter().enumerate() {
                        columns[i].push(values.get(c).cloned().flatten());
                    }
                }
            }
            let (params, aliases) = unnest(cols.len());
            let targets = cols
                .iter()
                .map(quote_identifier)
                .collect::<Vec<_>>()
                .join(", ");
            let select = cols
                .iter()
                .enumerate()
                .map(|(i, c)| cast(meta, c, &format!("a{}", i + 1)))
                .collect::<Vec<_>>()
                .join(", ");
            let on_conflict = on_conflict(meta, conflict, cols);
            if cols.is_empty() {
                // Rows of defaults only (`INSERT … DEFAULT VALUES` into an append table): a
                // query of no columns fills none of the table's, one row per change.
                return Statement {
                    sql: format!(
                        "INSERT INTO {} SELECT FROM generate_series(1, {}){on_conflict}",
                        meta.qualified,
                        changes.len()
                    ),
                    columns: Vec::new(),
                };
            }
            Statement {
                sql: format!(
                    "INSERT INTO {} ({targets}) SELECT {select} FROM unnest({params}) AS v({aliases}){on_conflict}",
                    meta.qualified
                ),
                columns,
            }
        }
        Shape::Update { ops } => {
            let k = meta.key_columns.len();
            let width = k + ops
                .iter()
                .map(|(_, kind)| if *kind == b'b' { 2 } else { 1 })
                .sum::<usize>();
            let mut columns = vec![Vec::with_capacity(changes.len()); width];
            for (key, step) in changes {
                for (i, v) in key.iter().enumerate() {
                    columns[i].push(Some(v.clone()));
                }
                if let Step::Update { ops: colops } = step {
                    let mut j = k;
                    for (col, _) in ops {
                        match colops.get(col) {
                            Some(ColOp::Set(v)) => {
                                columns[j].push(v.clone());
                                j += 1;
                            }
                            Some(ColOp::Add(d)) => {
                                columns[j].push(Some(d.clone()));
                                j += 1;
                            }
                            Some(ColOp::SetAdd(v, d)) => {
                                columns[j].push(v.clone());
                                columns[j + 1].push(Some(d.clone()));
                                j += 2;
                            }
                            None => {}
                        }
                    }
                }
            }
            let mut sets = Vec::new();
            let mut j = k;
            for (col, kind) in ops {
                let q = quote_identifier(col);
                let a = format!("a{}", j + 1);
                match kind {
                    b's' => sets.push(format!("{q} = {}", cast(meta, col, &a))),
                    b'a' => sets.push(format!("{q} = t.{q} + {}", delta(meta, col, &a))),
                    _ => {
                        let b = format!("a{}", j + 2);
                        sets.push(format!(
                            "{q} = {} + {}",
                            cast(meta, col, &a),
                            delta(meta, col, &b)
                        ));
                        j += 1;
                    }
                }
                j += 1;
            }
            let (params, aliases) = unnest(width);
            Statement {
                sql: format!(
                    "UPDATE {} AS t SET {} FROM unnest({params}) AS v({aliases}) WHERE {}",
                    meta.qualified,
                    sets.join(", "),
                    key_match(meta)
                ),
                columns,
            }
        }
    }
}

/// The `ON CONFLICT` clause of an INSERT of the `listed` columns under `conflict`: an upsert
/// updates the listed non-key columns, an `X` row its conflict_set, `ignore` nothing; with
/// nothing to update a conflict does nothing. Empty where a conflict must fail (or there is
/// no key).
pub(super) fn on_conflict(meta: &TableMeta, conflict: &Conflict, listed: &[String]) -> String {
    let set: Vec<String> = match conflict {
        Conflict::Upsert => listed
            .iter()
            .filter(|c| !meta.key_columns.contains(c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_identifier(c)))
            .collect(),
        Conflict::UpdateSet(cols) => cols
            .iter()
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_identifier(c)))
            .collect(),
        Conflict::Ignore => Vec::new(),
        Conflict::Fail | Conflict::Append => return String::new(),
    };
    if set.is_empty() {
        format!(" ON CONFLICT ({}) DO NOTHING", key_list(meta))
    } else {
        format!(
            " ON CONFLICT ({}) DO UPDATE SET {}",
            key_list(meta),
            set.join(", ")
        )
    }
}
