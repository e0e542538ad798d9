//! The observability endpoint on `metrics_listen`: `GET /metrics` in Prometheus text format and
//! `GET /health` (200, or 503 with a JSON reason), over a minimal HTTP/1.1 server.

use crate::session::Shared;
use crate::telemetry::Snapshot;
use crate::writebehind::queue::KINDS;
use crate::writebehind::runtime::DbRuntime;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Pending writes above this share of the bound make `/health` answer 503.
const PENDING_ALARM: f64 = 0.8;

/// Serves `/metrics` and `/health` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (mut sock, _) = match listener.accept().await {
            Ok(s) => s,
            Err(error) => {
                warn!(%error, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut req = Vec::with_capacity(512);
            let mut buf = [0u8; 1024];
            // The request line and headers, up to 8 KiB or 5 s.
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let line = String::from_utf8_lossy(&req);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics(&shared)),
                "/health" => {
                    let problems = health(&shared);
                    if problems.is_empty() {
                        ("200 OK", "application/json", "{\"status\":\"ok\"}\n".into())
                    } else {
                        let reasons: Vec<String> = problems
                            .iter()
                            .map(|p| serde_json::Value::String(p.clone()).to_string())
                            .collect();
                        (
                            "503 Service Unavailable",
                            "application/json",
                            format!(
                                "{{\"status\":\"unhealthy\",\"reasons\":[{}]}}\n",
                                reasons.join(",")
                            ),
                        )
                    }
                }
                _ => ("404 Not Found", "text/plain", "not found\n".into()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if sock.write_all(head.as_bytes()).await.is_ok() {
                let _ = sock.write_all(body.as_bytes()).await;
            }
            let _ = sock.shutdown().await;
            debug!(path, status, "metrics request");
        });
    }
}

/// What is wrong, if anything: PostgreSQL unreachable, shipping failing, pending writes near
/// the bound, the WAL unable to promise durability.
pub fn health(shared: &Shared) -> Vec<String> {
    let mut problems = Vec::new();
    // Also before any database's write-behind runtime has started (it never reached PostgreSQL).
    if let Some(why) = shared.stats.upstream_down() {
        problems.push(format!("PostgreSQL unreachable: {why}"));
    }
    let Some(wb) = &shared.writebehind else {
        return problems;
    };
    if let Some(reason) = wb.wal().and_then(|w| w.failure()) {
        problems.push(format!("WAL not writable: {reason}"));
    }
    for (db, rt) in wb.databases() {
        if !rt.reachable() {
            problems.push(format!("database {db}: PostgreSQL unreachable"));
        }
        if let Some(e) = rt.barrier.flusher().progress().borrow().last_error.clone() {
            problems.push(format!("database {db}: shipping failing: {e}"));
        }
        let ((rows, bytes), (max_rows, max_bytes)) = (rt.queue.pending(), rt.bounds());
        if rows as f64 > PENDING_ALARM * max_rows as f64
            || bytes as f64 > PENDING_ALARM * max_bytes as f64
        {
            problems.push(format!(
                "database {db}: {rows} rows / {bytes} bytes pending, above 80 % of the bound"
            ));
        }
    }
    problems
}

/// The Prometheus text exposition.
pub fn metrics(shared: &Shared) -> String {
    let mut m = Metrics::default();
    m.gauge(
        "writebehind_clients",
        "Client connections now.",
        &[],
        shared.stats.active() as f64,
    );
    m.counter(
        "writebehind_clients_total",
        "Client connections accepted.",
        &[],
        shared.stats.clients_total.load(Ordering::Relaxed) as f64,
    );
    m.gauge(
        "writebehind_upstream_connections",
        "Client sessions with a server connection now.",
        &[],
        shared
            .stats
            .clients
            .iter()
            .filter(|c| c.upstream.is_some())
            .count() as f64,
    );
    for (sqlstate, n) in crate::telemetry::errors() {
        m.counter(
            "writebehind_errors_total",
            "Errors the proxy itself sent to clients, by SQLSTATE (PostgreSQL's are relayed).",
            &[("sqlstate", sqlstate)],
            n as f64,
        );
    }
    for (sqlstate, n) in crate::telemetry::upstream_errors() {
        m.counter(
            "writebehind_upstream_errors_total",
            "ErrorResponses PostgreSQL sent to clients through the proxy, by SQLSTATE.",
            &[("sqlstate", &sqlstate)],
            n as f64,
        );
    }
    for e in shared.stats.databases.iter() {
        let l = [("database", e.key().as_str())];
        let c = e.value();
        m.counter(
            "writebehind_queries_total",
            "Query and Execute messages from clients.",
            &l,
            c.queries.load(Ordering::Relaxed) as f64,
        );
        m.counter(
            "writebehind_client_received_bytes_total",
            "Bytes received from clients.",
            &l,
            c.received.load(Ordering::Relaxed) as f64,
        );
        m.counter(
            "writebehind_client_sent_bytes_total",
            "Bytes sent to clients.",
            &l,
            c.sent.load(Ordering::Relaxed) as f64,
        );
    }
    if let Some(wb) = &shared.writebehind {
        for (db, rt) in wb.databases() {
            use crate::ship::BatchSource;
            let l = [("database", db.as_str())];
            let p = rt.barrier.flusher().progress().borrow().clone();
            let (rows, bytes) = rt.queue.pending();
            m.counter(
                "writebehind_acked_total",
                "Writes (changes) acknowledged by the proxy.",
                &l,
                rt.queue.acked() as f64,
            );
            m.counter(
                "writebehind_shipped_rows_total",
                "Inbox rows committed (after coalescing).",
                &l,
                p.rows as f64,
            );
            m.counter(
                "writebehind_shipped_batches_total",
                "Batches committed to the inbox.",
                &l,
                p.batches as f64,
            );
            m.counter(
                "writebehind_ship_errors_total",
                "Failed shipment attempts.",
                &l,
                p.errors as f64,
            );
            m.gauge(
                "writebehind_pending_rows",
                "Acknowledged changes not yet committed upstream.",
                &l,
                rows as f64,
            );
            m.gauge(
                "writebehind_pending_bytes",
                "Memory held by pending changes (estimate).",
                &l,
                bytes as f64,
            );
            m.counter(
                "writebehind_overflow_total",
                "Writes that met max_pending_rows/max_pending_bytes.",
                &l,
                rt.overflows.load(Ordering::Relaxed) as f64,
            );
            m.histogram(
                "writebehind_ship_seconds",
                "Time to commit a batch to the inbox, retries included.",
                &l,
                &rt.barrier.flusher().latency().snapshot(),
            );
            m.histogram(
                "writebehind_barrier_seconds",
                "Time read barriers waited for shipping and apply (those that did not pass at once).",
                &l,
                &rt.barrier.latency().snapshot(),
            );
            m.gauge(
                "writebehind_paused",
                "Whether shipping is paused (admin PAUSE).",
                &l,
                if rt.barrier.flusher().paused() {
                    1.0
                } else {
                    0.0
                },
            );
            tables(&mut m, &db, &rt);
            m.gauge(
                "writebehind_upstream_up",
                "Whether the proxy's own connection to PostgreSQL is up.",
                &l,
                if rt.reachable() { 1.0 } else { 0.0 },
            );
        }
        if let Some(wal) = wb.wal() {
            let s = wal.stats();
            m.counter(
                "writebehind_wal_bytes_total",
                "Bytes appended to the proxy's WAL since start.",
                &[],
                s.appended_bytes as f64,
            );
            m.counter(
                "writebehind_wal_fsyncs_total",
                "fsyncs of WAL segment files since start.",
                &[],
                s.fsyncs as f64,
            );
            m.gauge(
                "writebehind_wal_segments",
                "WAL segment files on disk.",
                &[],
                s.segments as f64,
            );
            m.gauge(
                "writebehind_wal_next_lsn",
                "The lsn the next WAL record gets.",
                &[],
                s.next_lsn as f64,
            );
            m.gauge(
                "writebehind_wal_synced_lsn",
                "The highest lsn on stable storage.",
                &[],
                s.synced_lsn as f64,
            );
        }
    }
    m.render()
}

/// Per table and statement kind: acknowledged and shipped; per table: coalesced, pending,
/// and the worker's applied and dead-lettered counts (as of the proxy's last report).
fn tables(m: &mut Metrics, db: &str, rt: &DbRuntime) {
    let catalog = rt.catalog.borrow().clone();
    let applied = rt.applied();
    let counts = rt.queue.table_counts();
    let name = |relid: u32| {
        catalog
            .table(relid)
            .map(|t| t.qualified_name())
            .unwrap_or_else(|| relid.to_string())
    };
    for (relid, c) in &counts {
        let table = name(*relid);
        for (i, kind) in KINDS.iter().enumerate() {
            let l = [("database", db), ("table", table.as_str()), ("kind", kind)];
            m.counter(
                "writebehind_table_acked_total",
                "Changes acknowledged by this process, by table and statement kind.",
                &l,
                c.acked[i] as f64,
            );
            m.counter(
                "writebehind_table_shipped_rows_total",
                "Inbox rows committed by this process, by table and statement kind.",
                &l,
                c.shipped[i] as f64,
            );
        }
        let l = [("database", db), ("table", table.as_str())];
        m.counter(
            "writebehind_table_coalesced_total",
            "Changes merged into an earlier change of the same key before shipping.",
            &l,
            c.coalesced as f64,
        );
        m.gauge(
            "writebehind_table_pending_rows",
            "Changes acknowledged and not yet committed upstream, by table.",
            &l,
            c.pending as f64,
        );
    }
    for (relid, a) in &applied {
        if catalog.table(*relid).is_none() {
            continue;
        }
        let table = name(*relid);
        for (i, kind) in KINDS.iter().enumerate() {
            m.counter(
                "writebehind_table_applied_total",
                "Changes the apply worker applied, by the kind of statement (all proxies; from writebehind.table_stats).",
                &[("database", db), ("table", table.as_str()), ("kind", kind)],
                a.by_kind[i] as f64,
            );
        }
        let l = [("database", db), ("table", table.as_str())];
        m.counter(
            "writebehind_table_dead_letters_total",
            "Changes the apply worker sent to writebehind.dead_letters (all proxies).",
            &l,
            a.dead_letters as f64,
        );
    }
}

/// Builds the exposition text: each family's HELP and TYPE, then all its samples together.
#[derive(Default)]
struct Metrics {
    families: Vec<(&'static str, &'static str, String, Vec<String>)>,
}

impl Metrics {
    fn sample(
        &mut self,
        kind: &'static str,
        name: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let labels = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.join(","))
        };
        let line = format!("{name}{labels} {v}");
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.push(line),
            None => self
                .families
                .push((name, kind, help.to_string(), vec![line])),
        }
    }

    fn counter(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample("counter", name, help, labels, v);
    }

    fn gauge(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample("gauge", name, help, labels, v);
    }

    /// A histogram family: cumulative `_bucket` samples with `le`, then `_sum` and `_count`.
    fn histogram(&mut self, name: &'static str, help: &str, labels: &[(&str, &str)], h: &Snapshot) {
        let base: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        let mut lines = Vec::with_capacity(h.cumulative.len() + 2);
        for (bound, n) in &h.cumulative {
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            let mut l = base.clone();
            l.push(format!("le=\"{le}\""));
            lines.push(format!("{name}_bucket{{{}}} {n}", l.join(",")));
        }
        let plain = if base.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", base.join(","))
        };
        lines.push(format!("{name}_sum{plain} {}", h.sum));
        lines.push(format!("{name}_count{plain} {}", h.count));
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.3.extend(lines),
            None => self
                .families
                .push((name, "histogram", help.to_string(), lines)),
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, lines) in &self.families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

/// A label value escaped as the text format requires.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
