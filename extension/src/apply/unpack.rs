//! Packed inbox rows (many changes of one shape, column-wise: docs/inbox.md) turned back into
//! one [`InboxRow`] per change, in their order, so that the general path folds, applies and
//! dead-letters them exactly as if the proxy had sent them one row each.

use super::fold::InboxRow;
use serde_json::{Map, Value};

/// A packed row as taken from the inbox: the row's own fields and its columns and values.
pub struct Packed {
    pub head: InboxRow,
    pub columns: Vec<String>,
    /// `vals` flattened in storage order: column by column, `rows` values each.
    pub flat: Vec<Option<String>>,
    /// `array_ndims(vals)` and `array_length(vals, 1)`, `array_length(vals, 2)`.
    pub dims: (i32, i32, i32),
}

/// Appends `p`'s changes to `out`. The value rows before the listed columns' are the key's
/// (none for an append table); how many there are is read from the row itself, so that a row
/// whose key does not match the table's (a table gone or re-keyed since) still becomes one
/// change per value row, each dead-lettered with its own reason. A row whose arrays have no
/// such shape (not two-dimensional, fewer value rows than listed columns) becomes one change
/// with op `?`, which the fold dead-letters as malformed, with the payload in `data`.
pub fn unpack(p: Packed, out: &mut Vec<InboxRow>) {
    let (ndims, ncols, nrows) = p.dims;
    let listed = p.columns.len();
    if ndims != 2 || ncols < 0 || (ncols as usize) < listed || nrows <= 0 {
        out.push(malformed(p));
        return;
    }
    let (width, nrows) = (ncols as usize, nrows as usize);
    let nk = width - listed;
    if p.flat.len() != width * nrows {
        out.push(malformed(p));
        return;
    }
    let at = |c: usize, r: usize| {
        p.flat[c * nrows + r]
            .clone()
            .map_or(Value::Null, Value::String)
    };
    for r in 0..nrows {
        let key = (nk > 0).then(|| Value::Array((0..nk).map(|c| at(c, r)).collect()).to_string());
        let listed = p
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c, at(nk + i, r)));
        let data = match p.head.op {
            b'D' => None,
            b'U' => {
                let obj: Map<String, Value> = listed
                    .map(|(c, v)| {
                        let mut add = Map::new();
                        add.insert("add".into(), v);
                        (c.clone(), Value::Object(add))
                    })
                    .collect();
                Some(Value::Object(obj).to_string())
            }
            _ => {
                let obj: Map<String, Value> = listed.map(|(c, v)| (c.clone(), v)).collect();
                Some(Value::Object(obj).to_string())
            }
        };
        out.push(InboxRow {
            key,
            data,
            ..p.head.clone()
        });
    }
}

fn malformed(p: Packed) -> InboxRow {
    let mut payload = Map::new();
    payload.insert(
        "columns".into(),
        Value::Array(p.columns.into_iter().map(Value::String).collect()),
    );
    payload.insert(
        "vals".into(),
        Value::Array(
            p.flat
                .into_iter()
                .map(|v| v.map_or(Value::Null, Value::String))
                .collect(),
        ),
    );
    InboxRow {
        op: b'?',
        key: None,
        data: Some(Value::Object(payload).to_string()),
        ..p.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(op: u8) -> InboxRow {
        InboxRow {
            id: 7,
            proxy_id: "p".into(),
            batch_seq: 3,
            op,
            key: None,
            data: None,
            conflict_set: None,
            enqueued_at: None,
        }
    }

    fn flat(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_string)).collect()
    }

    #[test]
    fn increments_become_add_objects_keyed_by_the_key_values() {
        let mut out = Vec::new();
        let p = Packed {
            head: head(b'U'),
            columns: vec!["n".into()],
            flat: flat(&[Some("a"), Some("b"), Some("1"), Some("-2")]),
            dims: (2, 2, 2),
        };
        unpack(p, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].key.as_deref(), Some(r#"["a"]"#));
        assert_eq!(out[0].data.as_deref(), Some(r#"{"n":{"add":"1"}}"#));
        assert_eq!(out[1].key.as_deref(), Some(r#"["b"]"#));
        assert_eq!(out[1].data.as_deref(), Some(r#"{"n":{"add":"-2"}}"#));
        assert!(out.iter().all(|r| r.id == 7 && r.op == b'U'));
    }

    #[test]
    fn inserts_list_their_columns_and_nulls_stay_null() {
        let mut out = Vec::new();
        let p = Packed {
            head: head(b'I'),
            columns: vec!["v".into()],
            flat: flat(&[Some("1"), None]),
            dims: (2, 2, 1),
        };
        unpack(p, &mut out);
        assert_eq!(out[0].key.as_deref(), Some(r#"["1"]"#));
        assert_eq!(out[0].data.as_deref(), Some(r#"{"v":null}"#));
    }

    #[test]
    fn mismatched_arrays_become_one_malformed_change() {
        let mut out = Vec::new();
        let p = Packed {
            head: head(b'I'),
            columns: vec!["v".into()],
            flat: flat(&[Some("1"), Some("2"), Some("3")]),
            dims: (1, 3, 0),
        };
        unpack(p, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].op, b'?');
        assert!(out[0].data.as_deref().is_some_and(|d| d.contains("\"3\"")));
    }
}
