//! What the proxy tells about itself: `/metrics` in Prometheus text format with counters that
//! match a known workload, `/health` turning 503 while PostgreSQL is down and 200 after,
//! `writebehind.status` and `writebehind.proxies` adding up, and the admin console's
//! write-behind commands through psql.

use std::io::{Read, Write};
use std::time::{Duration, Instant};
use writebehind_tests::{free_port, psql, run_cmd, Cluster, Proxy};

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
    let mut histogram = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap_or_default().to_string();
            let kind = parts.next().unwrap_or_default();
            anyhow::ensure!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type {kind}"
            );
            anyhow::ensure!(!typed.contains(&name), "TYPE twice for {name}");
            histogram = kind == "histogram";
            typed.push(name);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("no value: {line}"))?;
        let mut family = series.split('{').next().unwrap_or_default().to_string();
        if histogram {
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = family.strip_suffix(suffix) {
                    family = base.to_string();
                    break;
                }
            }
        }
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
    // PostgreSQL's own errors are counted by SQLSTATE as they pass.
    assert!(c.simple_query("SELECT 1/0").await.is_err());
    let samples = parse(&get(mport, "/metrics")?.1)?;
    assert_eq!(
        value(
            &samples,
            "writebehind_upstream_errors_total{sqlstate=\"22012\"}"
        ),
        Some(1.0)
    );
    // So are those that end a login (here: no such database).
    let refused = writebehind_tests::connect(&proxy.conninfo("postgres", "no_such_db")).await;
    assert!(refused.is_err(), "a login to a missing database");
    let samples = parse(&get(mport, "/metrics")?.1)?;
    assert_eq!(
        value(
            &samples,
            "writebehind_upstream_errors_total{sqlstate=\"3D000\"}"
        ),
        Some(1.0)
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

/// Runs one admin console command through psql: (success, stdout, stderr).
fn admin(port: u16, command: &str) -> anyhow::Result<(bool, String, String)> {
    run_cmd(
        psql(port, "admin", "writebehind")
            .args(["-A", "-t", "-v", "VERBOSITY=verbose", "-c", command])
            .env("PGCONNECT_TIMEOUT", "10"),
    )
}

/// A known workload through the proxy, with shipping paused and resumed from the admin
/// console: afterwards the status view's numbers add up (acked = applied + coalesced + dead
/// letters), the proxy's report matches, and /metrics counts the same.
#[tokio::test]
async fn status_adds_up_and_admin_commands_steer_shipping() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0 CHECK (n < 1000));
             INSERT INTO counters SELECT g, 0 FROM generate_series(1, 10) g;
             SELECT writebehind.enable('counters');",
        )
        .await?;
    let mport = free_port();
    let listen = format!("127.0.0.1:{mport}");
    let mut proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &[
            "--metrics-listen",
            &listen,
            "--flush-interval",
            "100ms",
            "--admin-users",
            "admin",
        ],
    )?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // Start the database's runtime, then pause shipping before any write.
    c.simple_query("INSERT INTO counters (id, n) VALUES (99, 0)")
        .await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while direct
        .query_opt("SELECT 1 FROM counters WHERE id = 99", &[])
        .await?
        .is_none()
    {
        anyhow::ensure!(Instant::now() < deadline, "row 99 never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out, err) = admin(proxy.port, "PAUSE")?;
    assert!(ok, "PAUSE: {out} {err}");
    // 1 + 20 inserts, 100 increments over 10 keys, 5 deletes, and one row the CHECK refuses
    // when applied: 127 acknowledged changes.
    for i in 100..120 {
        c.simple_query(&format!("INSERT INTO counters (id, n) VALUES ({i}, {i})"))
            .await?;
    }
    for i in 0..100 {
        c.simple_query(&format!(
            "UPDATE counters SET n = n + 1 WHERE id = {}",
            i % 10 + 1
        ))
        .await?;
    }
    for i in 100..105 {
        c.simple_query(&format!("DELETE FROM counters WHERE id = {i}"))
            .await?;
    }
    c.simple_query("INSERT INTO counters (id, n) VALUES (500, 5000)")
        .await?;
    // Paused: nothing ships, however long the flush interval has passed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let batches: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.inbox", &[])
        .await?
        .get(0);
    let sum: i64 = direct
        .query_one("SELECT sum(n)::int8 FROM counters", &[])
        .await?
        .get(0);
    assert_eq!((batches, sum), (0, 0), "shipped while paused");
    let (ok, _, err) = admin(proxy.port, "FLUSH")?;
    assert!(!ok && err.contains("55000"), "FLUSH while paused: {err}");
    let (ok, out, err) = admin(proxy.port, "SHOW TABLES")?;
    assert!(ok, "{err}");
    // database|table|acked|pending|coalesced|shipped|applied|dead_letters
    let cols: Vec<&str> = out.trim().split('|').collect();
    assert_eq!(
        cols[..6],
        ["postgres", "public.counters", "127", "126", "0", "1"],
        "SHOW TABLES while paused: {out}"
    );

    // A FLUSH that cannot finish (the table is locked) ends at a cancel request: 57014.
    let mut locker = cluster.connect("postgres").await?;
    let lock = locker.transaction().await?;
    lock.batch_execute("LOCK TABLE counters IN ACCESS EXCLUSIVE MODE")
        .await?;
    let (ok, out, err) = admin(proxy.port, "RESUME")?;
    assert!(ok, "RESUME: {out} {err}");
    let console = writebehind_tests::connect(&proxy.conninfo("admin", "writebehind")).await?;
    let token = console.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = Instant::now();
    let flushed = tokio::time::timeout(
        Duration::from_secs(20),
        console.simple_query("FLUSH counters"),
    )
    .await?;
    canceller.await??;
    let code = flushed.err().and_then(|e| e.code().cloned());
    assert_eq!(
        code,
        Some(tokio_postgres::error::SqlState::QUERY_CANCELED),
        "FLUSH of a locked table, cancelled after {:?}",
        started.elapsed()
    );
    assert!(console.simple_query("SHOW VERSION").await.is_ok());
    drop(console); // the report's client count below is the one session's
    lock.rollback().await?;
    let (ok, out, err) = admin(proxy.port, "FLUSH counters")?;
    assert!(ok, "FLUSH counters: {out} {err}");
    let sum: i64 = direct
        .query_one("SELECT sum(n)::int8 FROM counters WHERE id <= 10", &[])
        .await?
        .get(0);
    assert_eq!(sum, 100, "FLUSH returned before the increments applied");
    let (ok, _, err) = admin(proxy.port, "FLUSH nosuch")?;
    assert!(
        !ok && err.contains("42P01"),
        "FLUSH of an unknown table: {err}"
    );
    let (ok, out, err) = admin(proxy.port, "RELOAD")?;
    assert!(ok, "RELOAD: {out} {err}");

    // The proxy reports once a second: wait until its report shows nothing pending.
    let st =
        writebehind_tests::settled_status(&direct, "counters", Duration::from_secs(15)).await?;
    let (acked, pending, inbox, applied, dead) = (
        st.acked,
        st.pending_in_proxies,
        st.inbox_rows,
        st.applied,
        st.dead_letters,
    );
    assert_eq!((acked, pending, inbox, dead), (127, 0, 0, 1), "{st:?}");
    assert!(st.adds_up(), "{st:?}");
    // 100 increments of 10 keys leave at most 10 rows; 5 inserts were deleted again.
    assert!(st.coalesced >= 90, "{st:?}");
    let dead_state: String = direct
        .query_one(
            "SELECT sqlstate FROM writebehind.dead_letters WHERE key = '[\"500\"]'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(dead_state, "23514");

    let p = direct
        .query_one(
            "SELECT stale, acked, pending, durability, paused, clients FROM writebehind.proxies",
            &[],
        )
        .await?;
    assert!(!p.get::<_, bool>(0));
    assert_eq!(p.get::<_, i64>(1), 127);
    assert_eq!(p.get::<_, i64>(2), 0);
    assert_eq!(p.get::<_, String>(3), "wal");
    assert!(!p.get::<_, bool>(4));
    assert_eq!(p.get::<_, i64>(5), 1);

    // The applied and dead-letter families come from the answer to the proxy's last report
    // (once a second), so they may trail the status just read by one report.
    let t = "database=\"postgres\",table=\"public.counters\"";
    let applied_series = |k: &str| format!("writebehind_table_applied_total{{{t},kind=\"{k}\"}}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let samples = loop {
        let samples = parse(&get(mport, "/metrics")?.1)?;
        let reported: f64 = ["insert", "update", "delete"]
            .iter()
            .map(|k| value(&samples, &applied_series(k)).unwrap_or(0.0))
            .sum();
        let dead_reported = value(
            &samples,
            &format!("writebehind_table_dead_letters_total{{{t}}}"),
        );
        if (reported == applied as f64 && dead_reported == Some(1.0)) || Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (kind, n) in [("insert", 22.0), ("update", 100.0), ("delete", 5.0)] {
        assert_eq!(
            value(
                &samples,
                &format!("writebehind_table_acked_total{{{t},kind=\"{kind}\"}}")
            ),
            Some(n),
            "{kind}"
        );
    }
    let applied_by_kind: Vec<f64> = ["insert", "update", "delete"]
        .iter()
        .map(|k| value(&samples, &applied_series(k)).unwrap_or(-1.0))
        .collect();
    assert_eq!(
        applied_by_kind.iter().sum::<f64>(),
        applied as f64,
        "{applied_by_kind:?}"
    );
    // The 5 deletes met keys whose inserts never reached PostgreSQL: they apply as deletes
    // of nothing, or cancel out in the proxy; every key 1..10 got its increments.
    assert!(applied_by_kind[1] >= 1.0, "{applied_by_kind:?}");
    assert_eq!(
        value(
            &samples,
            &format!("writebehind_table_dead_letters_total{{{t}}}")
        ),
        Some(1.0)
    );
    let db = "database=\"postgres\"";
    assert!(
        value(&samples, &format!("writebehind_ship_seconds_count{{{db}}}")).unwrap_or(0.0) >= 1.0
    );
    assert!(
        value(
            &samples,
            &format!("writebehind_ship_seconds_bucket{{{db},le=\"+Inf\"}}")
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(
        value(&samples, "writebehind_errors_total{sqlstate=\"55000\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "writebehind_errors_total{sqlstate=\"42P01\"}"),
        Some(1.0)
    );

    // A proxy that stops reporting is marked stale after 5 seconds.
    proxy.signal("KILL")?;
    let _ = proxy.child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stale: bool = direct
            .query_one("SELECT stale FROM writebehind.proxies", &[])
            .await?
            .get(0);
        if stale {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "never marked stale");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

/// Admin `RELOAD` reads the configuration file again: reloadable keys take effect at once
/// (a new admin user, a new flush interval), the others are named as waiting for a restart,
/// and an invalid file changes nothing.
#[tokio::test]
async fn reload_applies_the_reloadable_keys() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let file = std::env::temp_dir().join(format!("wb-reload-{}.toml", free_port()));
    let write = |text: &str| std::fs::write(&file, text);
    write("admin_users = [\"admin\"]\nflush_interval = \"100ms\"\nwal_fsync_interval = \"1s\"\n")?;
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--config", &file.to_string_lossy()],
    )?;
    let ops = |command: &str| {
        run_cmd(psql(proxy.port, "ops", "writebehind").args([
            "-A",
            "-t",
            "-v",
            "VERBOSITY=verbose",
            "-c",
            command,
        ]))
    };
    let (ok, _, err) = ops("SHOW CONFIG")?;
    assert!(
        !ok && err.contains("not allowed on the admin console"),
        "ops is no admin yet: {err}"
    );
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let n_direct = || writebehind_tests::query_i64(&direct, "SELECT n FROM counters WHERE id = 1");
    // Every 100 ms, an acknowledged write ships by itself.
    c.simple_query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while n_direct().await? != 1 {
        anyhow::ensure!(Instant::now() < deadline, "never shipped at 100 ms");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    write("admin_users = [\"admin\", \"ops\"]\nflush_interval = \"1h\"\nwal_fsync_interval = \"2s\"\n")?;
    let (ok, out, err) = admin(proxy.port, "RELOAD")?;
    assert!(ok, "RELOAD: {out} {err}");
    assert!(
        err.contains("applied: flush_interval, admin_users"),
        "notice of what applied: {err}"
    );
    assert!(
        err.contains("restarts: wal_fsync_interval"),
        "notice of what waits for a restart: {err}"
    );
    let (ok, out, err) = ops("SHOW CONFIG")?;
    assert!(ok, "ops is an admin now: {err}");
    assert!(out.contains("flush_interval|1h"), "{out}");
    assert!(
        out.contains("wal_fsync_interval|1s"),
        "kept until restart: {out}"
    );
    // At 1 h, a write stays in the proxy.
    c.simple_query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        n_direct().await?,
        1,
        "shipped although flush_interval is 1h"
    );

    write("flush_interval = \"banana\"\n")?;
    let (ok, _, err) = admin(proxy.port, "RELOAD")?;
    assert!(!ok && err.contains("22023"), "invalid file: {err}");
    let (ok, out, err) = ops("SHOW CONFIG")?;
    assert!(
        ok && out.contains("flush_interval|1h"),
        "unchanged: {out} {err}"
    );

    // SIGHUP reloads as RELOAD does (it used to end the process, and with it the pending
    // write); SIGUSR1 and SIGUSR2 pause and resume shipping.
    write("admin_users = [\"admin\", \"ops\"]\nflush_interval = \"100ms\"\n")?;
    proxy.signal("HUP")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while n_direct().await? != 2 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "SIGHUP did not reload flush_interval"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.signal("USR1")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.simple_query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(n_direct().await?, 2, "paused by SIGUSR1");
    proxy.signal("USR2")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while n_direct().await? != 3 {
        anyhow::ensure!(Instant::now() < deadline, "SIGUSR2 did not resume shipping");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, _, err) = ops("SHOW CONFIG")?;
    assert!(ok, "the proxy still serves: {err}");
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// Logs written to a file are plain text (colours only on a terminal), and an empty
/// `RUST_LOG` logs at `info` instead of nothing.
#[tokio::test]
async fn logs_in_a_file_are_plain_and_an_empty_rust_log_means_info() -> anyhow::Result<()> {
    let log = std::env::temp_dir().join(format!(
        "wb-plain-log-{}-{:08x}.log",
        std::process::id(),
        rand::random::<u32>()
    ));
    let wal = std::env::temp_dir().join(format!(
        "wb-plain-wal-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let port = free_port();
    let mut child = std::process::Command::new(writebehind_tests::proxy_binary())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--upstream",
            &format!("postgresql://postgres@127.0.0.1:{}/postgres", free_port()),
        ])
        .arg("--wal-dir")
        .arg(&wal)
        .env("RUST_LOG", "")
        .stdin(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let ready = writebehind_tests::wait_until(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("writebehind-proxy ready"))
    });
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_dir_all(&wal);
    assert!(
        ready,
        "no `ready` line at info with RUST_LOG empty: {text:?}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "terminal colour codes in a log file: {text:?}"
    );
    Ok(())
}
