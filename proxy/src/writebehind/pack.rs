//! A batch's COPY text (docs/inbox.md): changes of one shape become one packed inbox row, so
//! the extension applies them by one statement that reads their values column-wise; the rest
//! go one JSON row each.
//!
//! Order is kept where it matters. A key with more than one change in the batch keeps all of
//! them as JSON rows, in order (only keys with a single change are packed, and the changes of
//! different keys commute within a batch). Rows of an append table have no key, so only runs
//! of consecutive rows of one shape are packed together.

use super::encode::{copy_row, field, Change, ColumnChange};
use foldhash::{HashMap, HashMapExt};

/// The fewest changes worth a packed row.
const MIN_PACKED: usize = 2;

/// What changes must share to go in one packed row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Shape<'a> {
    relid: u32,
    op: u8,
    columns: Vec<&'a str>,
    conflict_set: Option<&'a [String]>,
    key_len: usize,
    /// For append tables: the run of consecutive rows of this shape (0 for keyed tables).
    run: usize,
}

/// The packed shape of `c`, if it can be packed at all: an UPDATE only when it only adds, and
/// never a change without a single value (an append table's all-default insert: a packed row
/// needs one value row at least).
fn shape(c: &Change, run: usize) -> Option<Shape<'_>> {
    let s = shape_of(c, run)?;
    (s.key_len + s.columns.len() > 0).then_some(s)
}

fn shape_of(c: &Change, run: usize) -> Option<Shape<'_>> {
    match c {
        Change::Insert {
            relid,
            key,
            values,
            op,
            conflict_set,
        } => Some(Shape {
            relid: *relid,
            op: *op,
            columns: values.iter().map(|(c, _)| c.as_str()).collect(),
            conflict_set: conflict_set.as_deref(),
            key_len: key.as_ref().map_or(0, Vec::len),
            run: if key.is_none() { run } else { 0 },
        }),
        Change::Update {
            relid,
            key,
            columns,
        } => columns
            .iter()
            .all(|(_, ch)| matches!(ch, ColumnChange::Add(_)))
            .then(|| Shape {
                relid: *relid,
                op: b'U',
                columns: columns.iter().map(|(c, _)| c.as_str()).collect(),
                conflict_set: None,
                key_len: key.len(),
                run: 0,
            }),
        Change::Delete { relid, key } => Some(Shape {
            relid: *relid,
            op: b'D',
            columns: Vec::new(),
            conflict_set: None,
            key_len: key.len(),
            run: 0,
        }),
    }
}

fn key_of(c: &Change) -> Option<(u32, &[String])> {
    match c {
        Change::Insert { relid, key, .. } => key.as_deref().map(|k| (*relid, k)),
        Change::Update { relid, key, .. } | Change::Delete { relid, key } => Some((*relid, key)),
    }
}

/// Appends batch (`proxy_id`, `seq`)'s COPY text for `changes` (folded, in order) to `out`;
/// returns how many packed rows it wrote.
pub fn encode_batch(out: &mut Vec<u8>, proxy_id: &str, seq: i64, changes: &[Change]) -> usize {
    let mut per_key: HashMap<(u32, &[String]), usize> = HashMap::with_capacity(changes.len());
    for c in changes {
        if let Some(k) = key_of(c) {
            *per_key.entry(k).or_default() += 1;
        }
    }
    // Each packable change's group, groups in order of their first change.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index: HashMap<Shape<'_>, usize> = HashMap::with_capacity(8);
    let mut member: Vec<Option<usize>> = vec![None; changes.len()];
    let mut run = 0;
    let mut previous: Option<Shape<'_>> = None;
    for (i, c) in changes.iter().enumerate() {
        let single = key_of(c).is_none_or(|k| per_key.get(&k) == Some(&1));
        let Some(mut s) = shape(c, 0).filter(|_| single) else {
            run += 1;
            previous = None;
            continue;
        };
        if s.key_len == 0 {
            if previous.as_ref() != Some(&s) {
                run += 1;
                previous = shape(c, 0);
            }
            s.run = run;
        }
        let g = *index.entry(s).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
        member[i] = Some(g);
    }
    let mut packed = 0;
    let mut written = vec![false; groups.len()];
    for (i, c) in changes.iter().enumerate() {
        match member[i] {
            Some(g) if groups[g].len() >= MIN_PACKED => {
                if !written[g] {
                    written[g] = true;
                    packed += 1;
                    let rows: Vec<&Change> = groups[g].iter().map(|&j| &changes[j]).collect();
                    packed_row(out, proxy_id, seq, &rows);
                }
            }
            _ => copy_row(out, proxy_id, seq, c),
        }
    }
    packed
}

/// One packed row of `rows` (non-empty, all of one [`Shape`]).
fn packed_row(out: &mut Vec<u8>, proxy_id: &str, seq: i64, rows: &[&Change]) {
    let first = rows[0];
    let Some(s) = shape(first, 0) else {
        return;
    };
    field(out, Some(proxy_id));
    out.extend_from_slice(format!("\t{seq}\t{}\t", s.relid).as_bytes());
    out.push(s.op);
    out.extend_from_slice(b"\t\\N\t\\N\t");
    match s.conflict_set {
        Some(cols) => array(out, cols.iter().map(|c| Some(c.as_str()))),
        None => out.extend_from_slice(b"\\N"),
    }
    out.push(b'\t');
    array(out, s.columns.iter().map(|c| Some(*c)));
    out.push(b'\t');
    // vals: the key's values, then each listed column's, one value per change.
    out.push(b'{');
    for k in 0..s.key_len {
        if k > 0 {
            out.push(b',');
        }
        array(out, rows.iter().map(|c| key_value(c, k)));
    }
    for col in 0..s.columns.len() {
        if s.key_len > 0 || col > 0 {
            out.push(b',');
        }
        array(out, rows.iter().map(|c| column_value(c, col)));
    }
    out.extend_from_slice(b"}\n");
}

fn key_value(c: &Change, k: usize) -> Option<&str> {
    match c {
        Change::Insert { key, .. } => key.as_ref().and_then(|key| key.get(k)).map(String::as_str),
        Change::Update { key, .. } | Change::Delete { key, .. } => key.get(k).map(String::as_str),
    }
}

fn column_value(c: &Change, col: usize) -> Option<&str> {
    match c {
        Change::Insert { values, .. } => values.get(col).and_then(|(_, v)| v.as_deref()),
        Change::Update { columns, .. } => match columns.get(col) {
            Some((_, ColumnChange::Add(d))) => Some(d.as_str()),
            _ => None,
        },
        Change::Delete { .. } => None,
    }
}

/// A one-dimensional array literal of `items` (`None` is NULL), escaped for COPY text.
fn array<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = Option<&'a str>>) {
    out.push(b'{');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let Some(v) = item else {
            out.extend_from_slice(b"NULL");
            continue;
        };
        // Array quoting (`"`, and a backslash before `"` and `\`), then COPY's escapes.
        out.push(b'"');
        for &b in v.as_bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\\\\\"),
                b'"' => out.extend_from_slice(b"\\\\\""),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                _ => out.push(b),
            }
        }
        out.push(b'"');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(relid: u32, key: &str, d: &str) -> Change {
        Change::Update {
            relid,
            key: vec![key.into()],
            columns: vec![("n".into(), ColumnChange::Add(d.into()))],
        }
    }

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .expect("utf8")
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn increments_of_single_keys_pack_and_repeated_keys_stay_rows() {
        let changes = vec![
            add(1, "a", "1"),
            add(1, "b\"q", "2"),
            Change::Delete {
                relid: 1,
                key: vec!["c".into()],
            },
            add(1, "c", "5"),
            add(1, "d\\t", "-3"),
        ];
        let mut out = Vec::new();
        assert_eq!(encode_batch(&mut out, "p", 9, &changes), 1);
        let l = lines(&out);
        assert_eq!(l.len(), 3);
        assert_eq!(
            l[0],
            r#"p	9	1	U	\N	\N	\N	{"n"}	{{"a","b\\"q","d\\\\t"},{"1","2","-3"}}"#
        );
        assert!(l[1].starts_with("p\t9\t1\tD\t[\"c\"]\t\\N\t\\N\t\\N\t\\N"));
        assert!(l[2].starts_with("p\t9\t1\tU\t[\"c\"]\t"));
    }

    #[test]
    fn append_rows_pack_only_in_runs_and_nulls_stay_null() {
        let ins = |cols: &[&str], v: Option<&str>| Change::Insert {
            relid: 2,
            key: None,
            values: cols
                .iter()
                .map(|c| (c.to_string(), v.map(str::to_string)))
                .collect(),
            op: b'I',
            conflict_set: None,
        };
        let changes = vec![
            ins(&["a"], Some("1")),
            ins(&["a"], None),
            ins(&["a", "b"], Some("x")),
            ins(&["a"], Some("2")),
            ins(&["a"], Some("3")),
        ];
        let mut out = Vec::new();
        assert_eq!(encode_batch(&mut out, "p", 1, &changes), 2);
        let l = lines(&out);
        assert_eq!(l.len(), 3);
        assert!(l[0].ends_with("\t{\"a\"}\t{{\"1\",NULL}}"));
        assert!(l[1].contains("{\"a\":\"x\",\"b\":\"x\"}"));
        assert!(l[2].ends_with("\t{{\"2\",\"3\"}}"));
    }
}
