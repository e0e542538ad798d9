//! Ships encoded batches into the extension's inbox, one transaction each, exactly once.
//!
//! The protocol is docs/inbox.md: `SELECT writebehind.claim(id)` once per process (and
//! `claim(id, epoch)` on each later connection, which holds the id for this process while it
//! lives), then per batch `BEGIN; SELECT writebehind.begin_batch(id, seq, epoch); COPY ...;
//! COMMIT`. A replay of a batch that already committed is answered `false` by `begin_batch`
//! and reported as [`Delivery::AlreadyDelivered`], so the caller may resend a batch whenever it
//! does not know whether the last attempt committed.

use super::flusher::BatchTable;
use crate::session::own_tls::OwnTls;
use bytes::Bytes;
use futures::SinkExt;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config};

/// The COPY statement of the inbox contract; the column order is the order of encoded rows.
pub const COPY_INBOX: &str =
    "COPY writebehind.inbox (proxy_id, batch_seq, relid, op, key, data, conflict_set, columns, vals) FROM STDIN";

/// What became of a batch that was shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// This attempt committed the batch.
    Committed,
    /// An earlier attempt had committed it already; nothing was written twice.
    AlreadyDelivered,
}

/// Why a shipment or a flush did not complete. Every variant is retryable by the caller.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// No connection to PostgreSQL could be made.
    #[error("cannot connect to PostgreSQL: {}", detail(.0))]
    Connect(#[source] tokio_postgres::Error),
    /// The batch transaction failed; it rolled back as a whole.
    #[error("shipping batch {seq} failed: {}", detail(.source))]
    Batch {
        /// The batch's sequence number.
        seq: i64,
        /// The error PostgreSQL or the connection gave.
        #[source]
        source: tokio_postgres::Error,
    },
    /// `writebehind.claim()` refused: another running process holds the proxy id (55006),
    /// or took it over since this one claimed it (55000).
    #[error("cannot claim the proxy id: {}", detail(.0))]
    Claim(#[source] tokio_postgres::Error),
    /// `writebehind.flush()` or `committed_seq()` failed or timed out.
    #[error("waiting for the apply worker failed: {}", detail(.0))]
    Flush(#[source] tokio_postgres::Error),
}

/// A tokio-postgres error with what the server said: its own Display is just "db error" for
/// an ErrorResponse, which made "the database system is starting up", "too many clients" and
/// the like indistinguishable in the flusher's warnings.
fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => e.to_string(),
    }
}

impl ShipError {
    /// The SQLSTATE PostgreSQL reported, if the error came from the server.
    pub fn sqlstate(&self) -> Option<&SqlState> {
        match self {
            ShipError::Connect(e)
            | ShipError::Batch { source: e, .. }
            | ShipError::Claim(e)
            | ShipError::Flush(e) => e.code(),
        }
    }
}

/// One proxy-owned connection that ships batches for one database.
pub struct InboxShipper {
    config: Config,
    proxy_id: String,
    client: Option<Client>,
    /// The epoch from [`claim`](Self::claim): batches are begun with it, so those of an
    /// earlier process with the same proxy id are refused.
    epoch: Option<i64>,
}

impl InboxShipper {
    /// A shipper for the database in `config`, shipping as `proxy_id`. Connects lazily.
    pub fn new(config: Config, proxy_id: impl Into<String>) -> Self {
        Self {
            config,
            proxy_id: proxy_id.into(),
            client: None,
            epoch: None,
        }
    }

    /// The proxy id this shipper writes into `writebehind.progress`.
    pub fn proxy_id(&self) -> &str {
        &self.proxy_id
    }

    async fn client(&mut self) -> Result<&mut Client, ShipError> {
        let client = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                let (client, conn) = self
                    .config
                    .connect(OwnTls::new())
                    .await
                    .map_err(ShipError::Connect)?;
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "shipper connection ended");
                    }
                });
                // A claimed id is held by the connection that claimed it: a new connection
                // takes it again (keeping the epoch) before it ships anything.
                if let Some(epoch) = self.epoch {
                    client
                        .query_one(
                            "SELECT batch_seq FROM writebehind.claim($1, $2)",
                            &[&self.proxy_id, &epoch],
                        )
                        .await
                        .map_err(ShipError::Claim)?;
                }
                client
            }
        };
        Ok(self.client.insert(client))
    }

    /// Drops the connection so that the next call starts from a clean one.
    pub fn reset(&mut self) {
        self.client = None;
    }

    /// The last batch sequence number of this proxy that committed (0 if none).
    pub async fn committed_seq(&mut self) -> Result<i64, ShipError> {
        let id = self.proxy_id.clone();
        let result = async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT writebehind.committed_seq($1)", &[&id])
                .await
                .map_err(ShipError::Flush)?;
            row.try_get::<_, i64>(0).map_err(ShipError::Flush)
        }
        .await;
        if result.is_err() {
            self.reset();
        }
        result
    }

    /// Claims the proxy id for this process (`writebehind.claim`): refused with
    /// [`ShipError::Claim`] (55006) while another running process holds the id; otherwise
    /// waits for a batch of an earlier process still in flight, fences off any later one, and
    /// returns the last batch sequence number committed. Batches this shipper begins from then
    /// on carry the epoch, and its connection holds the id until it closes.
    pub async fn claim(&mut self) -> Result<i64, ShipError> {
        let id = self.proxy_id.clone();
        let result = async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT batch_seq, epoch FROM writebehind.claim($1)", &[&id])
                .await
                .map_err(ShipError::Claim)?;
            let seq: i64 = row.try_get(0).map_err(ShipError::Flush)?;
            let epoch: i64 = row.try_get(1).map_err(ShipError::Flush)?;
            Ok((seq, epoch))
        }
        .await;
        match result {
            Ok((seq, epoch)) => {
                self.epoch = Some(epoch);
                Ok(seq)
            }
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    /// Ships one batch: `rows` is the COPY text of docs/inbox.md for batch `seq`.
    pub async fn ship(&mut self, seq: i64, rows: Bytes) -> Result<Delivery, ShipError> {
        self.ship_counted(seq, rows, &[]).await
    }

    /// As [`ship`](Self::ship), and counts `tables` (each table's acknowledged changes and
    /// the rows they became) in `writebehind.ingest_stats` in the same transaction.
    pub async fn ship_counted(
        &mut self,
        seq: i64,
        rows: Bytes,
        tables: &[BatchTable],
    ) -> Result<Delivery, ShipError> {
        let id = self.proxy_id.clone();
        let epoch = self.epoch;
        let counted = !tables.is_empty();
        let relids: Vec<u32> = tables.iter().map(|t| t.relid).collect();
        let acked: Vec<i64> = tables.iter().map(|t| count(t.changes)).collect();
        let inbox_rows: Vec<i64> = tables.iter().map(|t| count(t.rows.iter().sum())).collect();
        let result = async {
            let client = self.client().await?;
            let batch_err = |source| ShipError::Batch { seq, source };
            let tx = client.transaction().await.map_err(batch_err)?;
            let fresh: bool = tx
                .query_one(
                    "SELECT writebehind.begin_batch($1, $2, $3, $4, $5, $6)",
                    &[
                        &id,
                        &seq,
                        &epoch,
                        &counted.then_some(&relids),
                        &counted.then_some(&acked),
                        &counted.then_some(&inbox_rows),
                    ],
                )
                .await
                .and_then(|row| row.try_get(0))
                .map_err(batch_err)?;
            if !fresh {
                tx.rollback().await.map_err(batch_err)?;
                return Ok(Delivery::AlreadyDelivered);
            }
            let sink = tx
                .copy_in::<_, Bytes>(COPY_INBOX)
                .await
                .map_err(batch_err)?;
            futures::pin_mut!(sink);
            sink.send(rows).await.map_err(batch_err)?;
            sink.finish().await.map_err(batch_err)?;
            tx.commit().await.map_err(batch_err)?;
            Ok(Delivery::Committed)
        }
        .await;
        if result.is_err() {
            // The outcome of a failed COMMIT is unknown: the caller resends the same batch,
            // and begin_batch tells whether it had landed.
            self.reset();
        }
        result
    }

    /// Waits until the extension has applied everything committed to the inbox for `relid`
    /// (or for every table when `None`), up to `timeout`.
    pub async fn flush(&mut self, relid: Option<u32>, timeout: Duration) -> Result<(), ShipError> {
        let interval = format!("{} ms", timeout.as_millis());
        let result = async {
            let client = self.client().await?;
            client
                .execute(
                    "SELECT writebehind.flush($1::oid::regclass, $2::text::interval)",
                    &[&relid, &interval],
                )
                .await
                .map_err(ShipError::Flush)?;
            Ok(())
        }
        .await;
        if matches!(result, Err(ShipError::Connect(_)))
            || self.client.as_ref().is_some_and(Client::is_closed)
        {
            self.reset();
        }
        result
    }
}

/// A count as a bigint (counts never come near 2^63).
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
