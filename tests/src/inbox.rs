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
