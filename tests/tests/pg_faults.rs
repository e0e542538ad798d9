//! PostgreSQL failures under write-behind load (issue 5, docs/RELIABILITY.md): an immediate
//! stop in the middle of a multi-session load and in the middle of an apply round; PostgreSQL
//! down for a while (acknowledgements go on up to `max_pending_rows`, then back-pressure with
//! SQLSTATE 53400; barriers fail instead of hanging); a streaming standby promoted under load
//! with a multi-host upstream. After each, the table equals the model of the acknowledged
//! writes: increments of hot keys are summed exactly (acknowledged ≤ n ≤ acknowledged + in
//! doubt) and every acknowledged insert is there, none that was refused.
//!
//! `cargo test --release -p writebehind-tests --test pg_faults -- --nocapture`
//! Heavier: `WRITEBEHIND_PG_STOPS=20 WRITEBEHIND_PG_DOWN_SECS=120 cargo test ...`

use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use writebehind_tests::fault_load::{
    barrier_through, doubt_codes, env_num, join, spawn_sessions, verify, Load, Tally, HOT, SCHEMA,
};
use writebehind_tests::{Cluster, Proxy};

/// `pg_ctl stop -m immediate` (a PostgreSQL crash) in the middle of a 4-session write load,
/// `WRITEBEHIND_PG_STOPS` times (default 2); PostgreSQL restarts, the proxy goes on (it is
/// not restarted). Nothing acknowledged is lost, nothing applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_stop_under_multi_session_load_loses_nothing() -> anyhow::Result<()> {
    let stops = env_num("WRITEBEHIND_PG_STOPS", 2);
    let started = Instant::now();
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let mut proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &[
            "--durability",
            "wal",
            "--flush-interval",
            "20ms",
            "--max-batch-rows",
            "200",
            "--connect-timeout",
            "2s",
        ],
    )?;
    let load = Arc::new(Load::default());
    *load.target.lock().map_err(|_| anyhow::anyhow!("lock"))? =
        proxy.conninfo("postgres", "postgres");
    let sessions = spawn_sessions(4, &load);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for k in 0..stops {
        tokio::time::sleep(Duration::from_millis(rng.random_range(700..1500))).await;
        let before = load.acked.load(Ordering::Relaxed);
        load.down.store(true, Ordering::Relaxed);
        cluster.stop("immediate")?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        cluster.restart()?;
        load.down.store(false, Ordering::Relaxed);
        eprintln!(
            "immediate stop {}: {before} writes acknowledged before it, {} by the restart",
            k + 1,
            load.acked.load(Ordering::Relaxed)
        );
    }
    // Writes go on being acknowledged after the last restart (at once, unless many short
    // outages let the queue reach max_pending_rows: then once shipping has caught up).
    let before_end = load.acked.load(Ordering::Relaxed);
    let back = Instant::now();
    while load.acked.load(Ordering::Relaxed) < before_end + 1000 {
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(60),
            "writes are not acknowledged again within 60 s of the last restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resumed = back.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop.store(true, Ordering::Relaxed);
    let tallies = join(sessions).await?;
    barrier_through(&proxy.conninfo("postgres", "postgres")).await?;
    assert!(
        proxy.child.try_wait()?.is_none(),
        "the proxy was not restarted"
    );
    let direct = cluster.connect("postgres").await?;
    let f = verify(&direct, &tallies).await?;
    eprintln!(
        "{stops} immediate stops under load in {:.1}s: {} writes acknowledged ({} while PostgreSQL was down), {} in doubt {:?}, {} refused, 1000 more acknowledged {resumed:.2?} after the last restart, lost 0, applied twice 0",
        started.elapsed().as_secs_f64(),
        f.acked,
        f.acked_down,
        f.in_doubt,
        doubt_codes(&tallies),
        f.refused
    );
    assert!(f.acked > 1000, "load too light: {}", f.acked);
    Ok(())
}

/// A big backlog (flush interval 1 h: increments of 100 000 distinct keys, one each, and 3 000
/// increments of hot keys)
/// is shipped by a barrier; PostgreSQL is stopped with `immediate` while the worker is applying
/// it (some rows applied, some still in the inbox). After the restart the table equals the
/// model exactly: every row once, every increment once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_stop_during_an_apply_round_loses_nothing() -> anyhow::Result<()> {
    const STMTS: i32 = 100;
    const ROWS_PER: i32 = 1000;
    const INCS: usize = 3000;
    let started = Instant::now();
    let cluster = Cluster::start_with(&["writebehind.max_apply_rows = 5000"])?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct
        .batch_execute(&format!(
            "INSERT INTO kv SELECT g, 0 FROM generate_series(100000, {}) g",
            100_000 + STMTS * ROWS_PER - 1
        ))
        .await?;
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &[
            "--durability",
            "wal",
            "--flush-interval",
            "1h",
            "--max-pending-rows",
            "1000000",
            "--barrier-timeout",
            "60s",
        ],
    )?;
    let conninfo = proxy.conninfo("postgres", "postgres");
    let a = writebehind_tests::connect(&conninfo).await?;
    let b = writebehind_tests::connect(&conninfo).await?;
    let inserts = async {
        for s in 0..STMTS {
            let updates: String = (0..ROWS_PER)
                .map(|r| {
                    format!(
                        "UPDATE kv SET n = n + 1 WHERE id = {};",
                        100_000 + s * ROWS_PER + r
                    )
                })
                .collect();
            a.simple_query(&updates).await?;
        }
        anyhow::Ok(())
    };
    let mut hot = [0i64; HOT];
    let increments = async {
        for i in 0..INCS {
            let h = i % HOT;
            let d = (i % 3 + 1) as i64;
            b.simple_query(&format!("UPDATE kv SET n = n + {d} WHERE id = {}", h + 1))
                .await?;
            hot[h] += d;
        }
        anyhow::Ok(())
    };
    let (r1, r2) = tokio::join!(inserts, increments);
    r1?;
    r2?;
    let backlog_secs = started.elapsed().as_secs_f64();
    let applied0: i64 = direct
        .query_one("SELECT count(*) FROM kv WHERE id > 10 AND n > 0", &[])
        .await?
        .get(0);
    assert_eq!(applied0, 0, "nothing shipped yet (flush interval 1 h)");

    // A read through the proxy ships the backlog and waits for the worker to apply it.
    let reader = tokio::spawn({
        let conninfo = conninfo.clone();
        async move {
            let c = writebehind_tests::connect(&conninfo).await?;
            c.simple_query("SELECT count(*) FROM kv").await?;
            anyhow::Ok(())
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    // Mid-round: some rows applied, rows left in the inbox, and the worker's apply
    // transaction holds its lock on the table right now.
    let (inbox, applied, worker) = loop {
        anyhow::ensure!(Instant::now() < deadline, "the apply never started");
        let row = direct
            .query_one(
                "SELECT (SELECT count(*) FROM writebehind.inbox),
                        (SELECT count(*) FROM kv WHERE id > 10 AND n > 0),
                        (SELECT min(a.backend_type) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                          WHERE l.relation = 'kv'::regclass AND a.backend_type <> 'client backend')",
                &[],
            )
            .await?;
        let (inbox, applied, worker): (i64, i64, Option<String>) =
            (row.get(0), row.get(1), row.get(2));
        if inbox > 0 && applied > 0 && worker.is_some() {
            break (inbox, applied, worker);
        }
        anyhow::ensure!(
            applied < i64::from(STMTS * ROWS_PER),
            "the whole backlog applied before the stop could hit a round"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    cluster.stop("immediate")?;
    let stopped_at = started.elapsed().as_secs_f64();
    drop(direct);
    cluster.restart()?;
    // The read that was waiting for the apply: it may fail (PostgreSQL went away under it).
    let _ = reader.await;
    barrier_through(&conninfo).await?;
    let direct = cluster.connect("postgres").await?;
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM kv WHERE id > 10 AND n = 1", &[])
        .await?
        .get(0);
    let sum: i64 = direct
        .query_one(
            "SELECT coalesce(sum(n), 0)::int8 FROM kv WHERE id > 10",
            &[],
        )
        .await?
        .get(0);
    let got: Vec<i64> = direct
        .query("SELECT n FROM kv WHERE id <= 10 ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let dead: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    eprintln!(
        "stop during apply: backlog of {} distinct-key increments + {INCS} hot-key increments acknowledged in {backlog_secs:.1}s; stopped at {stopped_at:.1}s with {applied} rows applied, {inbox} inbox rows left, {worker:?} in an apply transaction; after restart {rows} keys at n = 1 (sum {sum}), hot keys {got:?} (model {hot:?}), lost 0, twice 0, {:.1}s",
        STMTS * ROWS_PER,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(dead, 0);
    assert_eq!(
        (rows, sum),
        (i64::from(STMTS * ROWS_PER), i64::from(STMTS * ROWS_PER)),
        "every key incremented exactly once (n = 1): no round lost, none applied twice"
    );
    assert_eq!(got, hot.to_vec(), "every increment exactly once");
    drop(proxy);
    Ok(())
}

/// PostgreSQL down for `WRITEBEHIND_PG_DOWN_SECS` (default 30) under a 4-session load through a
/// proxy with `max_pending_rows = 2000`, `overflow = block`, `overflow_timeout = 1s`: writes are
/// acknowledged while it is down until the bound, then refused with 53400 after about 1 s; a
/// second proxy with `overflow = error` refuses at once; a read (barrier) fails with 57P03 or
/// 08006 after `barrier_timeout` instead of hanging. When PostgreSQL is back, every acknowledged
/// write is applied without restarting the proxies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_backpressure_then_everything_applies() -> anyhow::Result<()> {
    let down_secs = env_num("WRITEBEHIND_PG_DOWN_SECS", 30);
    let started = Instant::now();
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let common = [
        "--durability",
        "wal",
        "--flush-interval",
        "50ms",
        "--max-pending-rows",
        "2000",
        "--barrier-timeout",
        "2s",
        "--connect-timeout",
        "2s",
    ];
    let mut block = Proxy::spawn(
        &cluster.url("postgres"),
        &[
            &common[..],
            &["--overflow", "block", "--overflow-timeout", "1s"],
        ]
        .concat(),
    )?;
    let mut error = Proxy::spawn(
        &cluster.url("postgres"),
        &[&common[..], &["--overflow", "error"]].concat(),
    )?;
    let load = Arc::new(Load::default());
    *load.target.lock().map_err(|_| anyhow::anyhow!("lock"))? =
        block.conninfo("postgres", "postgres");
    // Sessions opened while PostgreSQL is up: a reader on `block`, a writer on `error`.
    let reader = writebehind_tests::connect(&block.conninfo("postgres", "postgres")).await?;
    reader.simple_query("SELECT count(*) FROM kv").await?;
    let eager = writebehind_tests::connect(&error.conninfo("postgres", "postgres")).await?;
    // While PostgreSQL is up, so the proxy has checked the INSERT privilege (it cannot while
    // PostgreSQL is down: a statement whose privilege is unknown passes through).
    eager
        .simple_query("INSERT INTO kv (id, n) VALUES (4999999, 1)")
        .await?;
    let sessions = spawn_sessions(4, &load);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked_up = load.acked.load(Ordering::Relaxed);

    load.down.store(true, Ordering::Relaxed);
    let down_at = Instant::now();
    cluster.stop("immediate")?;

    // A read needs the barrier: an error after about barrier_timeout, not a hang.
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        reader.simple_query("SELECT n FROM kv WHERE id = 1"),
    )
    .await;
    let barrier_wait = t.elapsed();
    let barrier_code = match r {
        Err(_) => anyhow::bail!("a read hung for 20 s while PostgreSQL was down"),
        Ok(Ok(_)) => anyhow::bail!("a read succeeded while PostgreSQL was down"),
        Ok(Err(e)) => e.code().map(|c| c.code().to_string()),
    };
    assert!(
        matches!(barrier_code.as_deref(), Some("57P03") | Some("08006")),
        "a barrier while PostgreSQL is down fails with 57P03 or 08006, not {barrier_code:?}"
    );

    // overflow = error: acknowledged up to the bound, then 53400 at once.
    let mut error_acked: Vec<i32> = vec![4_999_999];
    let mut error_refused: Vec<i32> = Vec::new();
    let mut error_refusal_wait = Duration::ZERO;
    let mut next = 5_000_000;
    while error_refused.len() < 5 {
        anyhow::ensure!(next < 5_010_000, "overflow = error never refused");
        let ids: Vec<i32> = (next..next + 50).collect();
        next += 50;
        let values: Vec<String> = ids.iter().map(|i| format!("({i}, 1)")).collect();
        let t = Instant::now();
        match eager
            .simple_query(&format!(
                "INSERT INTO kv (id, n) VALUES {}",
                values.join(", ")
            ))
            .await
        {
            Ok(_) if error_refused.is_empty() => error_acked.extend(ids),
            Ok(_) => anyhow::bail!("acknowledged after a 53400 while nothing could ship"),
            Err(e) => {
                let code = e.code().map(|c| c.code().to_string());
                anyhow::ensure!(
                    code.as_deref() == Some("53400"),
                    "overflow = error: 53400 expected after {} rows, got {code:?}: {e}",
                    error_acked.len()
                );
                error_refusal_wait = error_refusal_wait.max(t.elapsed());
                error_refused.extend(ids);
            }
        }
    }
    assert!(
        error_refusal_wait < Duration::from_millis(500),
        "overflow = error refuses at once, not after {error_refusal_wait:?}"
    );

    let remaining = Duration::from_secs(down_secs).saturating_sub(down_at.elapsed());
    tokio::time::sleep(remaining).await;
    let acked_by_restart = load.acked.load(Ordering::Relaxed);
    cluster.restart()?;
    let down_for = down_at.elapsed();
    load.down.store(false, Ordering::Relaxed);
    // The proxy recovers by itself: the backlog ships and acknowledgements resume.
    let back = Instant::now();
    let resumed = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if load.acked.load(Ordering::Relaxed) > acked_by_restart + 1000 {
            break Some(back.elapsed());
        }
        if back.elapsed() > Duration::from_secs(30) {
            break None;
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    load.stop.store(true, Ordering::Relaxed);
    let mut tallies = join(sessions).await?;
    let resumed = resumed.ok_or_else(|| {
        anyhow::anyhow!("acknowledgements did not resume within 30 s of PostgreSQL's return")
    })?;
    for p in [&block, &error] {
        barrier_through(&p.conninfo("postgres", "postgres")).await?;
    }
    assert!(
        block.child.try_wait()?.is_none() && error.child.try_wait()?.is_none(),
        "the proxies were not restarted"
    );
    // Fold the overflow = error proxy's writes into the model.
    tallies.push(Tally {
        acked: error_acked.len() as u64,
        acked_down: error_acked.len() as u64 - 1,
        refused: error_refused.len() as u64,
        hot_acked: vec![0; HOT],
        hot_doubt: vec![0; HOT],
        ids_acked: error_acked.clone(),
        ids_refused: error_refused.clone(),
        ..Tally::default()
    });
    let f = verify(&cluster.connect("postgres").await?, &tallies).await?;
    let waits: Vec<(Duration, Duration)> = tallies.iter().filter_map(|t| t.refusal_wait).collect();
    let max_wait = waits.iter().map(|w| w.0).max().unwrap_or_default();
    let min_wait = waits.iter().map(|w| w.1).min().unwrap_or_default();
    eprintln!(
        "PostgreSQL down {:.1}s: {} writes acknowledged in all ({acked_up} before the stop, {} while down, {} of them on the overflow=error proxy), {} refused with 53400 (block waited {min_wait:.2?}..{max_wait:.2?}, error refused within {error_refusal_wait:.2?}), {} in doubt {:?}; barrier gave {barrier_code:?} after {barrier_wait:.2?}; {acked_by_restart} acknowledged by the restart, 1000 more {resumed:.2?} after it; lost 0; {:.1}s",
        down_for.as_secs_f64(),
        f.acked,
        f.acked_down,
        error_acked.len() - 1,
        f.refused,
        f.in_doubt,
        doubt_codes(&tallies),
        started.elapsed().as_secs_f64()
    );
    assert!(
        barrier_wait < Duration::from_secs(10),
        "the barrier failed within about barrier_timeout"
    );
    // The overflow = error proxy had nothing pending at the stop: it acknowledges rows up to
    // max_pending_rows (2000, within one 50-row statement) while PostgreSQL is down. (The
    // block proxy's sessions may already be near the bound when PostgreSQL stops.)
    let error_acked_down = error_acked.len() - 1;
    assert!(
        (1950..=2000).contains(&error_acked_down),
        "rows acknowledged while PostgreSQL is down, up to max_pending_rows: {error_acked_down}"
    );
    let block_refused: u64 = tallies[..4].iter().map(|t| t.refused).sum();
    assert!(
        block_refused > 0,
        "overflow = block refused nothing at the bound"
    );
    assert!(
        min_wait >= Duration::from_millis(900),
        "overflow = block waits overflow_timeout before 53400: {min_wait:?}"
    );
    drop(error);
    Ok(())
}

/// A streaming standby is promoted in the middle of the load; the proxy's upstream is
/// multi-host (`host1,host2 … target_session_attrs=read-write`). The old primary is stopped
/// with `fast` (everything it committed has streamed), the standby promoted; the proxy (not
/// restarted) ships the rest to the new primary, whose worker applies it: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoted_standby_gets_everything_through_a_multi_host_upstream() -> anyhow::Result<()> {
    let started = Instant::now();
    let primary = Cluster::start()?;
    let direct = primary.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let standby = primary.standby()?;
    let url = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let proxy = Proxy::spawn(
        &url,
        &[
            "--durability",
            "wal",
            "--flush-interval",
            "20ms",
            "--max-batch-rows",
            "200",
            "--connect-timeout",
            "2s",
        ],
    )?;
    let load = Arc::new(Load::default());
    *load.target.lock().map_err(|_| anyhow::anyhow!("lock"))? =
        proxy.conninfo("postgres", "postgres");
    eprintln!("standby test: set up in {:.1?}", started.elapsed());
    let sessions = spawn_sessions(4, &load);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = load.acked.load(Ordering::Relaxed);
    load.down.store(true, Ordering::Relaxed);
    let t = Instant::now();
    primary.stop("fast")?;
    standby.promote()?;
    let failover = t.elapsed();
    load.down.store(false, Ordering::Relaxed);
    let at_promotion = load.acked.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.stop.store(true, Ordering::Relaxed);
    let tallies = join(sessions).await?;
    let conninfo = proxy.conninfo("postgres", "postgres");
    let c = writebehind_tests::connect(&conninfo).await?;
    let (port, recovery): (i32, bool) = {
        let row = c
            .query_one(
                "SELECT current_setting('port')::int, pg_is_in_recovery()",
                &[],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (port, recovery),
        (i32::from(standby.port), false),
        "sessions go to the new primary"
    );
    let applied_in = barrier_through(&conninfo).await?;
    eprintln!(
        "standby test: the backlog was shipped and applied {applied_in:.2?} after the load stopped"
    );
    let new_primary = standby.connect("postgres").await?;
    let f = verify(&new_primary, &tallies).await?;
    eprintln!(
        "standby promoted under load (failover {failover:.2?}): {} writes acknowledged ({before} before the old primary stopped, {} by the promotion, {} while neither was primary), {} in doubt {:?}, lost 0, applied twice 0; {:.1}s",
        f.acked,
        at_promotion,
        f.acked_down,
        f.in_doubt,
        doubt_codes(&tallies),
        started.elapsed().as_secs_f64()
    );
    assert!(
        f.acked > at_promotion,
        "writes were acknowledged after the promotion"
    );
    drop(proxy);
    Ok(())
}
