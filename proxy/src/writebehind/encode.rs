//! Encoding one acknowledged change as an inbox row in COPY text format (docs/inbox.md).

use serde_json::{Map, Value};

/// One column's change in an UPDATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnChange {
    /// `c = v` (None = NULL).
    Set(Option<String>),
    /// `c = c + delta` (a subtraction is sent as a negated delta).
    Add(String),
}

/// A change to one row, ready to ship.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// INSERT; `op` is `I` (table policy), `N` (DO NOTHING) or `X` (DO UPDATE SET `conflict_set`).
    Insert {
        relid: u32,
        key: Option<Vec<String>>,
        values: Vec<(String, Option<String>)>,
        op: u8,
        conflict_set: Option<Vec<String>>,
    },
    /// UPDATE by key.
    Update {
        relid: u32,
        key: Vec<String>,
        columns: Vec<(String, ColumnChange)>,
    },
    /// DELETE by key.
    Delete { relid: u32, key: Vec<String> },
}

impl Change {
    /// The table the change belongs to.
    pub fn relid(&self) -> u32 {
        match self {
            Change::Insert { relid, .. }
            | Change::Update { relid, .. }
            | Change::Delete { relid, .. } => *relid,
        }
    }
}

/// Negates a numeric literal's text (`5` → `-5`, `-2.5` → `2.5`).
pub fn negate(delta: &str) -> String {
    match delta.strip_prefix('-') {
        Some(rest) => rest.to_string(),
        None => format!("-{}", delta.strip_prefix('+').unwrap_or(delta)),
    }
}

/// Appends one COPY text row for `change` in batch (`proxy_id`, `seq`).
pub fn copy_row(out: &mut Vec<u8>, proxy_id: &str, seq: i64, change: &Change) {
    let key_json = |k: &Vec<String>| serde_json::to_string(k).unwrap_or_else(|_| "[]".into());
    let (op, key, data, set) = match change {
        Change::Insert {
            key,
            values,
            op,
            conflict_set,
            ..
        } => {
            let obj: Map<String, Value> = values
                .iter()
                .map(|(c, v)| (c.clone(), v.clone().map_or(Value::Null, Value::String)))
                .collect();
            (
                *op,
                key.as_ref().map(key_json),
                Some(Value::Object(obj).to_string()),
                conflict_set.clone(),
            )
        }
        Change::Update { key, columns, .. } => {
            let obj: Map<String, Value> = columns
                .iter()
                .map(|(c, ch)| {
                    let mut m = Map::new();
                    match ch {
                        ColumnChange::Set(v) => {
                            m.insert("set".into(), v.clone().map_or(Value::Null, Value::String))
                        }
                        ColumnChange::Add(d) => m.insert("add".into(), Value::String(d.clone())),
                    };
                    (c.clone(), Value::Object(m))
                })
                .collect();
            (
                b'U',
                Some(key_json(key)),
                Some(Value::Object(obj).to_string()),
                None,
            )
        }
        Change::Delete { key, .. } => (b'D', Some(key_json(key)), None, None),
    };
    field(out, Some(proxy_id));
    out.push(b'\t');
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b'\t');
    out.extend_from_slice(change.relid().to_string().as_bytes());
    out.push(b'\t');
    out.push(op);
    out.push(b'\t');
    field(out, key.as_deref());
    out.push(b'\t');
    field(out, data.as_deref());
    out.push(b'\t');
    let set = set.map(|cols| {
        let quoted: Vec<String> = cols
            .iter()
            .map(|c| format!("\"{}\"", c.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!("{{{}}}", quoted.join(","))
    });
    field(out, set.as_deref());
    // columns, vals: a packed row's (writebehind/pack.rs); NULL in a row of one change.
    out.extend_from_slice(b"\t\\N\t\\N\n");
}

/// One COPY text field: `\N` for NULL; backslash, tab, newline and carriage return escaped.
pub(super) fn field(out: &mut Vec<u8>, v: Option<&str>) {
    let Some(v) = v else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for &b in v.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_follow_the_inbox_contract() {
        let mut out = Vec::new();
        copy_row(
            &mut out,
            "p1",
            7,
            &Change::Update {
                relid: 16384,
                key: vec!["a\tb".into()],
                columns: vec![
                    ("n".into(), ColumnChange::Add(negate("2"))),
                    ("s".into(), ColumnChange::Set(None)),
                ],
            },
        );
        copy_row(
            &mut out,
            "p1",
            7,
            &Change::Insert {
                relid: 16384,
                key: Some(vec!["1".into()]),
                values: vec![("v".into(), Some("line\nbreak \\ \"q\"".into()))],
                op: b'X',
                conflict_set: Some(vec!["v".into()]),
            },
        );
        copy_row(
            &mut out,
            "p1",
            7,
            &Change::Delete {
                relid: 16384,
                key: vec!["1".into()],
            },
        );
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "p1\t7\t16384\tU\t[\"a\\\\tb\"]\t{\"n\":{\"add\":\"-2\"},\"s\":{\"set\":null}}\t\\N\t\\N\t\\N"
        );
        assert_eq!(
            lines[1],
            "p1\t7\t16384\tX\t[\"1\"]\t{\"v\":\"line\\\\nbreak \\\\\\\\ \\\\\"q\\\\\"\"}\t{\"v\"}\t\\N\t\\N"
        );
        assert_eq!(lines[2], "p1\t7\t16384\tD\t[\"1\"]\t\\N\t\\N\t\\N\t\\N");
        assert_eq!(negate("-2.5"), "2.5");
        assert_eq!(negate("+3"), "-3");
    }
}
