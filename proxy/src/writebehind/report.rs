//! The once-a-second report of each database's runtime to `writebehind.report`: what this
//! proxy process holds and did (for `writebehind.proxies` and `writebehind.status`), and the
//! worker's per-table counters it gets back (for `/metrics` and `SHOW TABLES`).

use super::runtime::DbRuntime;
use crate::stats::Stats;
use crate::wal::Wal;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// How often each runtime reports.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The apply worker's counters of one table (`writebehind.table_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub applied: i64,
    pub coalesced: i64,
    pub dead_letters: i64,
    /// `applied` by statement kind ([`KINDS`](super::queue::KINDS) order).
    pub by_kind: [i64; 3],
}

/// What a runtime's report says about the proxy as a whole.
pub struct Reporter {
    pub proxy_id: String,
    pub address: String,
    pub durability: String,
    pub started_at: SystemTime,
    pub stats: Arc<Stats>,
    pub wal: Option<Arc<Wal>>,
}

/// Reports for `rt` once a second until it is dropped. A failed report (PostgreSQL away) is
/// logged at debug level and the next one goes out a second later.
pub fn spawn(rt: Weak<DbRuntime>, me: Reporter) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REPORT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(rt) = rt.upgrade() else { return };
            if let Err(error) = send(&rt, &me).await {
                tracing::debug!(%error, "reporting to writebehind.report failed");
            }
        }
    })
}

/// Sends one report and keeps the counters it returns.
async fn send(rt: &DbRuntime, me: &Reporter) -> Result<(), tokio_postgres::Error> {
    let flusher = rt.barrier.flusher();
    let progress = flusher.progress().borrow().clone();
    let tables = rt.queue.table_counts();
    let (pending, pending_bytes) = rt.queue.pending();
    let acked: u64 = tables.values().map(|c| c.acked.iter().sum::<u64>()).sum();
    let pending_by_table: serde_json::Map<String, serde_json::Value> = tables
        .iter()
        .map(|(relid, c)| (relid.to_string(), c.pending.into()))
        .collect();
    let report = serde_json::json!({
        "address": me.address,
        "durability": me.durability,
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": humantime::format_rfc3339_micros(me.started_at).to_string(),
        "clients": me.stats.active(),
        "acked": acked,
        "pending": pending,
        "pending_bytes": pending_bytes,
        "shipped": progress.rows,
        "batches": progress.batches,
        "wal_bytes": me.wal.as_ref().map_or(0, |w| w.stats().appended_bytes),
        "errors": progress.errors,
        "last_error": progress.last_error,
        "paused": flusher.paused(),
        "pending_by_table": pending_by_table,
    });
    let rows = rt
        .own()
        // One round trip, no named statement: sent once a second.
        .query_typed(
            "SELECT relid::int8, applied, coalesced, dead_letters,
                    applied_inserts, applied_updates, applied_deletes
             FROM writebehind.report($1, $2::text::jsonb)",
            &[
                (&me.proxy_id, tokio_postgres::types::Type::TEXT),
                (&report.to_string(), tokio_postgres::types::Type::TEXT),
            ],
        )
        .await?;
    let mut applied = HashMap::new();
    for r in rows {
        let relid: i64 = r.try_get(0)?;
        applied.insert(
            u32::try_from(relid).unwrap_or_default(),
            Applied {
                applied: r.try_get(1)?,
                coalesced: r.try_get(2)?,
                dead_letters: r.try_get(3)?,
                by_kind: [r.try_get(4)?, r.try_get(5)?, r.try_get(6)?],
            },
        );
    }
    rt.set_applied(applied);
    Ok(())
}
