//! What the proxy tells about itself: `/metrics` in Prometheus text format with counters that
//! match a known workload, and `/health` turning 503 while PostgreSQL is down and 200 after.

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use writebehind_tests::{free_port, Cluster, Proxy};

const SCHEMA: &str = "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g;
    SELECT writebehind.enable('counters');";

/// GET `path` from the metrics endpoint: (status code, body).
fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header end in {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Parses the text format strictly enough to catch malformed output: every sample line is
/// `name{labels} value` with a declared TYPE, each family's samples together.
fn parse(text: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let mut typed: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or_default().to_string();
            let kind = parts.next().unwrap_or_default();
            anyhow::ensure!(["counter", "gauge"].contains(&kind), "type {kind}");
            anyhow::ensure!(!typed.contains(&name), "TYPE twice for {name}");
            typed.push(name);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("no value: {line}"))?;
        let family = series.split('{').next().unwrap_or_default().to_string();
        anyhow::ensure!(
            typed.last() == Some(&family),
            "{family} sample outside its family"
        );
        anyhow::ensure!(
            family
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad name {family}"
        );
        out.push((series.to_string(), value.parse::<f64>()?));
    }
    Ok(out)
}

fn value(samples: &[(String, f64)], series: &str) -> Option<f64> {
    samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v)
}

#[tokio::test]
async fn metrics_match_the_workload_and_health_follows_postgres() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--metrics-listen", &listen, "--flush-interval", "1h"],
    )?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for i in 0..100 {
        c.simple_query(&format!(
            "UPDATE counters SET n = n + 1 WHERE id = {}",
            i % 10 + 1
        ))
        .await?;
    }
    let samples = parse(&get(mport, "/metrics")?.1)?;
    let db = "{database=\"postgres\"}";
    assert_eq!(
        value(&samples, &format!("writebehind_acked_total{db}")),
        Some(100.0)
    );
    assert_eq!(
        value(&samples, &format!("writebehind_pending_rows{db}")),
        Some(100.0)
    );
    assert_eq!(
        value(&samples, &format!("writebehind_shipped_rows_total{db}")),
        Some(0.0)
    );
    assert_eq!(value(&samples, "writebehind_clients"), Some(1.0));
    assert!(value(&samples, "writebehind_wal_bytes_total").unwrap_or(0.0) > 0.0);
    // A read: the barrier ships the 100 increments coalesced into at most 10 rows.
    c.simple_query("SELECT sum(n) FROM counters").await?;
    let samples = parse(&get(mport, "/metrics")?.1)?;
    assert_eq!(
        value(&samples, &format!("writebehind_pending_rows{db}")),
        Some(0.0)
    );
    let shipped = value(&samples, &format!("writebehind_shipped_rows_total{db}")).unwrap_or(-1.0);
    assert!(
        (1.0..=10.0).contains(&shipped),
        "coalesced to {shipped} rows"
    );
    assert_eq!(
        get(mport, "/health")?,
        (200, "{\"status\":\"ok\"}\n".to_string())
    );
    assert_eq!(get(mport, "/nothing")?.0, 404);

    // PostgreSQL goes away: 503 with the reason; back: 200 again.
    cluster.stop("fast")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = get(mport, "/health")?;
    while last.0 != 503 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = get(mport, "/health")?;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert!(last.1.contains("unreachable"), "{}", last.1);
    cluster.restart()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while last.0 != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = get(mport, "/health")?;
    }
    assert_eq!(last.0, 200, "{}", last.1);
    let samples = parse(&get(mport, "/metrics")?.1)?;
    assert_eq!(
        value(&samples, &format!("writebehind_upstream_up{db}")),
        Some(1.0)
    );
    Ok(())
}
