//! Folding a table's inbox rows per key into the fewest ordered steps (DESIGN §2 merge rules).
//!
//! Per key, in inbox order: a later value of a column wins; increments add up exactly; a set
//! followed by an increment becomes `v + k`; a DELETE, and whatever follows it, is a step of
//! its own (the DELETE may fail, and then what came before and after it must still apply:
//! nothing is folded across it). Where folding is
//! not exact (an increment on a column an INSERT did not list, an INSERT whose conflict policy
//! is not upsert, …), the change becomes the key's next step, applied after the one before.

use super::decimal;
use std::collections::{BTreeMap, HashMap};

/// How an INSERT treats an existing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Conflict {
    /// Update the listed non-key columns (`upsert`, and `I` rows under that policy).
    Upsert,
    /// Keep the existing row (`ignore`, `N` rows).
    Ignore,
    /// Fail with 23505, so the row goes to the dead letters (`dead_letter`).
    Fail,
    /// `ON CONFLICT (pk) DO UPDATE SET` exactly these columns (`X` rows).
    UpdateSet(Vec<String>),
    /// Append tables: no key, a plain INSERT.
    Append,
}

/// One column's pending change in an UPDATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColOp {
    /// `c = v`.
    Set(Option<String>),
    /// `c = c + k`.
    Add(String),
    /// `c = v + k` (a set followed by increments).
    SetAdd(Option<String>, String),
}

impl ColOp {
    /// Short code used to group updates of the same shape into one statement.
    pub fn kind(&self) -> u8 {
        match self {
            ColOp::Set(_) => b's',
            ColOp::Add(_) => b'a',
            ColOp::SetAdd(..) => b'b',
        }
    }
}

/// One step of a key: applied with every other key's step of the same index and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// DELETE by key.
    Delete,
    /// INSERT of these column values (key columns included).
    Insert {
        conflict: Conflict,
        values: BTreeMap<String, Option<String>>,
    },
    /// UPDATE by key.
    Update { ops: BTreeMap<String, ColOp> },
}

/// Where a change came from: the index (in the rows given to [`fold`]) of the last inbox row
/// that contributed to it.
pub type Origin = usize;

/// A step with its origin.
#[derive(Debug, Clone)]
pub struct Change {
    pub step: Step,
    pub origin: Origin,
}

/// Everything pending for one key, in order.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    /// The key's values as text, in key-column order (empty for append tables).
    pub key: Vec<String>,
    pub changes: Vec<Change>,
}

/// An inbox row as read from the table.
#[derive(Debug, Clone)]
pub struct InboxRow {
    pub id: i64,
    pub proxy_id: String,
    pub batch_seq: i64,
    pub op: u8,
    pub key: Option<String>,
    pub data: Option<String>,
    pub conflict_set: Option<Vec<String>>,
    pub enqueued_at: Option<pgrx::datum::TimestampWithTimeZone>,
}

/// A row that cannot even be read (bad JSON, unknown op, wrong key arity): a dead letter now.
#[derive(Debug, Clone)]
pub struct Malformed {
    pub origin: Origin,
    pub message: String,
}

/// The folded plan of one table's round.
#[derive(Debug, Default)]
pub struct Plan {
    /// Per key, in the order keys first appeared.
    pub keys: Vec<KeyPlan>,
    pub malformed: Vec<Malformed>,
}

impl Plan {
    /// The most steps any key has.
    pub fn depth(&self) -> usize {
        self.keys.iter().map(|k| k.changes.len()).max().unwrap_or(0)
    }
}

/// The table facts folding needs.
pub struct TableShape<'a> {
    pub key_columns: &'a [String],
    pub append: bool,
    pub policy: Conflict,
}

/// Folds rows (in inbox order) into a plan.
pub fn fold(rows: &[InboxRow], shape: &TableShape<'_>) -> Plan {
    let mut plan = Plan::default();
    let mut index: HashMap<Vec<String>, usize> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        let parsed = match parse_row(row, shape) {
            Ok(p) => p,
            Err(message) => {
                plan.malformed.push(Malformed { origin: i, message });
                continue;
            }
        };
        let change = Change {
            step: parsed.1,
            origin: i,
        };
        if shape.append {
            plan.keys.push(KeyPlan {
                key: Vec::new(),
                changes: vec![change],
            });
            continue;
        }
        let slot = match index.get(&parsed.0) {
            Some(&slot) => slot,
            None => {
                plan.keys.push(KeyPlan {
                    key: parsed.0.clone(),
                    changes: Vec::new(),
                });
                index.insert(parsed.0, plan.keys.len() - 1);
                plan.keys.len() - 1
            }
        };
        push(&mut plan.keys[slot].changes, change);
    }
    plan
}

/// Appends one change to a key's steps, folding it into the last one where that is exact.
fn push(steps: &mut Vec<Change>, next: Change) {
    let Change { step, origin } = next;
    match step {
        // A DELETE is the key's next step: the changes before it stay. Dropping them is exact
        // only if the DELETE succeeds; when it fails (a foreign key from a table that is not
        // write-behind, a trigger that raises) they must still apply, as they would have one
        // statement at a time, and the DELETE alone is the dead letter.
        Step::Delete => {
            steps.push(Change {
                step: Step::Delete,
                origin,
            });
        }
        Step::Update { ops } => {
            let Some(last) = steps.last_mut() else {
                steps.push(Change {
                    step: Step::Update { ops },
                    origin,
                });
                return;
            };
            match &mut last.step {
                // After a DELETE that succeeds it changes nothing (the key is missing); after
                // one that fails it applies, as PostgreSQL would have applied it.
                Step::Delete => steps.push(Change {
                    step: Step::Update { ops },
                    origin,
                }),
                Step::Update { ops: prev } => match merge_updates(prev, &ops) {
                    Some(merged) => {
                        *prev = merged;
                        last.origin = origin;
                    }
                    None => steps.push(Change {
                        step: Step::Update { ops },
                        origin,
                    }),
                },
                Step::Insert {
                    conflict: Conflict::Upsert,
                    values,
                } => match update_into_insert(values, &ops) {
                    Some(merged) => {
                        *values = merged;
                        last.origin = origin;
                    }
                    None => steps.push(Change {
                        step: Step::Update { ops },
                        origin,
                    }),
                },
                Step::Insert { .. } => steps.push(Change {
                    step: Step::Update { ops },
                    origin,
                }),
            }
        }
        Step::Insert { conflict, values } => {
            if let Some(Change {
                step:
                    Step::Insert {
                        conflict: prev_conflict,
                        values: prev,
                    },
                origin: prev_origin,
            }) = steps.last_mut()
            {
                // Upsert after upsert: the listed columns overlay. Anything else is the key's
                // next step; so is a DO NOTHING insert after another insert: it does nothing
                // only if that one applies, and must insert when that one fails (a CHECK).
                if matches!(
                    (&*prev_conflict, &conflict),
                    (Conflict::Upsert, Conflict::Upsert)
                ) {
                    prev.extend(values);
                    *prev_origin = origin;
                    return;
                }
            }
            steps.push(Change {
                step: Step::Insert { conflict, values },
                origin,
            });
        }
    }
}

fn merge_updates(
    prev: &BTreeMap<String, ColOp>,
    next: &BTreeMap<String, ColOp>,
) -> Option<BTreeMap<String, ColOp>> {
    let mut out = prev.clone();
    for (col, op) in next {
        let merged = match (out.get(col), op) {
            (_, ColOp::Set(v)) => ColOp::Set(v.clone()),
            (None, op) => op.clone(),
            (Some(ColOp::Set(v)), ColOp::Add(k)) => ColOp::SetAdd(v.clone(), k.clone()),
            (Some(ColOp::Add(a)), ColOp::Add(k)) => ColOp::Add(add_increments(a, k)?),
            (Some(ColOp::SetAdd(v, a)), ColOp::Add(k)) => {
                ColOp::SetAdd(v.clone(), add_increments(a, k)?)
            }
            (Some(_), ColOp::SetAdd(..)) => return None,
        };
        out.insert(col.clone(), merged);
    }
    Some(out)
}

/// The sum of two increments, or `None` (not folded: applied one after the other) for two
/// integers whose sum leaves bigint. A bigint column takes each of them, as PostgreSQL adds
/// them one statement at a time (`n = n + 9223372036854775807` twice from the minimum), but
/// not their sum.
fn add_increments(a: &str, k: &str) -> Option<String> {
    match (a.parse::<i64>(), k.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.checked_add(y).map(|sum| sum.to_string()),
        _ => decimal::add(a, k),
    }
}

/// Folds an UPDATE into a preceding upsert INSERT, where the result is exact.
fn update_into_insert(
    values: &BTreeMap<String, Option<String>>,
    ops: &BTreeMap<String, ColOp>,
) -> Option<BTreeMap<String, Option<String>>> {
    let mut out = values.clone();
    for (col, op) in ops {
        let v = match op {
            ColOp::Set(v) => v.clone(),
            ColOp::Add(k) => match values.get(col)? {
                None => None,
                Some(x) => Some(decimal::add(x, k)?),
            },
            ColOp::SetAdd(..) => return None,
        };
        out.insert(col.clone(), v);
    }
    Some(out)
}

/// Reads one inbox row: its key values and its step.
fn parse_row(row: &InboxRow, shape: &TableShape<'_>) -> Result<(Vec<String>, Step), String> {
    if row.op == b'?' {
        return Err(
            "packed row: vals is not a two-dimensional array with one value row per column".into(),
        );
    }
    let key: Vec<String> = if shape.append {
        Vec::new()
    } else {
        let raw = row.key.as_deref().ok_or("inbox row has no key")?;
        let vals: Vec<Option<String>> = serde_json::from_str(raw)
            .map_err(|e| format!("key is not a JSON array of strings: {e}"))?;
        if vals.len() != shape.key_columns.len() {
            return Err(format!(
                "key has {} values, the table's primary key has {} columns",
                vals.len(),
                shape.key_columns.len()
            ));
        }
        vals.into_iter()
            .map(|v| v.ok_or_else(|| "a key value is null".to_string()))
            .collect::<Result<_, _>>()?
    };
    let step = match row.op {
        b'D' if !shape.append => Step::Delete,
        b'I' | b'N' | b'X' => {
            let mut values: BTreeMap<String, Option<String>> = match row.data.as_deref() {
                Some(d) => serde_json::from_str(d)
                    .map_err(|e| format!("data is not a JSON object of strings: {e}"))?,
                None => BTreeMap::new(),
            };
            for (col, v) in shape.key_columns.iter().zip(&key) {
                values.insert(col.clone(), Some(v.clone()));
            }
            let conflict = match (row.op, shape.append) {
                (_, true) => Conflict::Append,
                (b'N', _) => Conflict::Ignore,
                (b'X', _) => Conflict::UpdateSet(row.conflict_set.clone().unwrap_or_default()),
                _ => shape.policy.clone(),
            };
            Step::Insert { conflict, values }
        }
        b'U' if !shape.append => {
            let raw: BTreeMap<String, serde_json::Value> = match row.data.as_deref() {
                Some(d) => serde_json::from_str(d)
                    .map_err(|e| format!("data is not a JSON object: {e}"))?,
                None => BTreeMap::new(),
            };
            let mut ops = BTreeMap::new();
            for (col, v) in raw {
                let op = match v {
                    serde_json::Value::Object(m) if !m.is_empty() && m.len() <= 2 => {
                        let set = match m.get("set") {
                            None => None,
                            Some(serde_json::Value::Null) => Some(None),
                            Some(serde_json::Value::String(s)) => Some(Some(s.clone())),
                            Some(_) => {
                                return Err(format!(
                                    "column \"{col}\": \"set\" must be text or null"
                                ))
                            }
                        };
                        let add = match m.get("add") {
                            None => None,
                            Some(serde_json::Value::String(k)) => Some(k.clone()),
                            Some(_) => {
                                return Err(format!("column \"{col}\": \"add\" must be text"))
                            }
                        };
                        match (set, add) {
                            (Some(v), None) if m.len() == 1 => ColOp::Set(v),
                            (None, Some(k)) if m.len() == 1 => ColOp::Add(k),
                            (Some(v), Some(k)) => ColOp::SetAdd(v, k),
                            _ => return Err(format!("column \"{col}\": expected {{\"set\": text|null}} or {{\"add\": text}}")),
                        }
                    }
                    _ => {
                        return Err(format!(
                        "column \"{col}\": expected {{\"set\": text|null}} or {{\"add\": text}}"
                    ))
                    }
                };
                ops.insert(col, op);
            }
            if ops.is_empty() {
                return Err("UPDATE without columns".into());
            }
            Step::Update { ops }
        }
        other => {
            return Err(format!(
                "op '{}' is not valid for a{} table",
                other as char,
                if shape.append { "n append" } else { " keyed" }
            ))
        }
    };
    Ok((key, step))
}
