//! Hand-made inbox batches for the apply-engine tests: changes in inbox form (docs/inbox.md),
//! shipped the way a proxy ships them, and the helpers that read the result back.

use crate::copy_escape;
use tokio_postgres::Client;

/// One change in inbox form.
#[derive(Clone, Debug)]
pub struct Change {
    pub op: char,
    pub key: Vec<String>,
    pub data: Option<String>,
}

/// Ships one batch of one table the way the proxy does; returns begin_batch's answer.
pub async fn ship(
    client: &mut Client,
    proxy: &str,
    seq: i64,
    relid: u32,
    changes: &[Change],
) -> anyhow::Result<bool> {
    let rows: Vec<(u32, &Change)> = changes.iter().map(|c| (relid, c)).collect();
    ship_rows(client, proxy, seq, &rows).await
}

/// Ships one batch whose rows may belong to several tables.
pub async fn ship_rows(
    client: &mut Client,
    proxy: &str,
    seq: i64,
    rows: &[(u32, &Change)],
) -> anyhow::Result<bool> {
    crate::ship_batch(client, proxy, seq, || {
        let mut text = String::new();
        for (relid, c) in rows {
            let key = serde_json::to_string(&c.key)?;
            let data = c
                .data
                .as_deref()
                .map(copy_escape)
                .unwrap_or_else(|| "\\N".into());
            text.push_str(&format!(
                "{proxy}\t{seq}\t{relid}\t{}\t{}\t{data}\t\\N\n",
                c.op,
                copy_escape(&key)
            ));
        }
        Ok(text)
    })
    .await
}

/// One packed inbox row (docs/inbox.md): changes of one op over the same columns.
#[derive(Clone, Debug)]
pub struct Packed {
    pub op: char,
    /// The first `key_len` are the table's key columns (sent as the key, not as columns).
    pub columns: Vec<String>,
    pub key_len: usize,
    /// One entry per change: its values in `columns` order (`None` is NULL).
    pub rows: Vec<Vec<Option<String>>>,
    pub conflict_set: Option<Vec<String>>,
}

impl Packed {
    /// Changes of `op` to a table keyed by `columns[0]`.
    pub fn new(op: char, columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Self {
        Packed {
            op,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            key_len: 1,
            rows,
            conflict_set: None,
        }
    }

    /// Inserts into an append table (no key).
    pub fn append(columns: &[&str], rows: Vec<Vec<Option<String>>>) -> Self {
        Packed {
            key_len: 0,
            ..Packed::new('I', columns, rows)
        }
    }
}

/// A PostgreSQL array literal: `items` quoted, `None` as NULL.
fn array_literal<'a>(items: impl Iterator<Item = Option<&'a str>>) -> String {
    let inner: Vec<String> = items
        .map(|v| match v {
            None => "NULL".to_string(),
            Some(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The COPY statement for rows in either form.
pub const COPY_ALL: &str = "COPY writebehind.inbox \
     (proxy_id, batch_seq, relid, op, key, data, conflict_set, columns, vals) FROM STDIN";

/// The COPY text of one packed row: `vals[c][r]`, the key's values and then each column's.
pub fn packed_row(proxy: &str, seq: i64, relid: u32, p: &Packed) -> String {
    let columns = array_literal(p.columns[p.key_len..].iter().map(|c| Some(c.as_str())));
    let vals: Vec<String> = (0..p.columns.len())
        .map(|c| array_literal(p.rows.iter().map(|r| r.get(c).and_then(|v| v.as_deref()))))
        .collect();
    let set = p
        .conflict_set
        .as_ref()
        .map(|s| copy_escape(&array_literal(s.iter().map(|c| Some(c.as_str())))))
        .unwrap_or_else(|| "\\N".into());
    format!(
        "{proxy}\t{seq}\t{relid}\t{}\t\\N\t\\N\t{set}\t{}\t{}\n",
        p.op,
        copy_escape(&columns),
        copy_escape(&format!("{{{}}}", vals.join(",")))
    )
}

/// Ships one batch of packed rows of one table; returns begin_batch's answer.
pub async fn ship_packed(
    client: &mut Client,
    proxy: &str,
    seq: i64,
    relid: u32,
    packed: &[Packed],
) -> anyhow::Result<bool> {
    crate::ship_batch_as(client, proxy, seq, COPY_ALL, || {
        Ok(packed
            .iter()
            .map(|p| packed_row(proxy, seq, relid, p))
            .collect())
    })
    .await
}

/// The table's oid, as the inbox's `relid`.
pub async fn relid(client: &Client, table: &str) -> anyhow::Result<u32> {
    Ok(client
        .query_one("SELECT $1::text::regclass::oid", &[&table])
        .await?
        .get(0))
}

/// `writebehind.flush()` of everything, with a generous timeout.
pub async fn flush(client: &Client) -> anyhow::Result<()> {
    client
        .execute("SELECT writebehind.flush(NULL, '60 s')", &[])
        .await?;
    Ok(())
}

/// Every dead letter's key and SQLSTATE, oldest first.
pub async fn dead_letters(client: &Client) -> anyhow::Result<Vec<(String, String)>> {
    Ok(client
        .query(
            "SELECT key, sqlstate FROM writebehind.dead_letters ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}
