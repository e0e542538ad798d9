//! Crash safety of the proxy's WAL (DESIGN §3): the proxy is killed with SIGKILL at random
//! moments under a mixed multi-session write load and restarted on the same WAL directory;
//! the final table equals the model of every acknowledged write (nothing lost, nothing twice).
//! Also: durability `memory` loses at most what was unshipped, and a second proxy on the same
//! WAL directory is refused.
//!
//! Heavier runs: `WRITEBEHIND_CRASH_KILLS=100 cargo test --release -p writebehind-tests --test
//! crash_safety -- --nocapture` (docs/RELIABILITY.md).

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use writebehind_tests::{Cluster, Proxy};

const SCHEMA: &str = "CREATE TABLE kv (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, s text);
    INSERT INTO kv SELECT g, 0, NULL FROM generate_series(1, 10) g;
    SELECT writebehind.enable('kv');";

/// Hot keys 1..=10: every session increments them (increments commute, so the model is exact
/// whatever order the sessions' writes interleave in).
const HOT: i32 = 10;

/// A fresh WAL directory for one test.
fn wal_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "wb-wal-{name}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A cluster with [`SCHEMA`], a direct connection to it, and a fresh WAL directory `name`.
async fn wal_test(name: &str) -> anyhow::Result<(Cluster, tokio_postgres::Client, PathBuf)> {
    let (cluster, direct) = Cluster::start_with_schema(SCHEMA).await?;
    Ok((cluster, direct, wal_dir(name)))
}

/// The proxy's arguments for durability `wal` in `dir`, shipping every `interval`.
fn wal_args(dir: &std::path::Path, interval: &str) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    [
        "--durability",
        "wal",
        "--wal-dir",
        &dir,
        "--flush-interval",
        interval,
    ]
    .map(str::to_string)
    .to_vec()
}

/// The model of one key a session owns: `None` = no row.
type Row = Option<(i64, Option<String>)>;

/// A statement, the hot key and increment it adds (if any), and the owned key's state after
/// it (if any).
type Op = (String, Option<(usize, i64)>, Option<(i32, Row)>);

/// What a session reached: acknowledged writes, in-doubt ones, its owned keys' model.
#[derive(Default)]
struct SessionResult {
    acked: u64,
    in_doubt: u64,
    hot_acked: Vec<i64>,
    hot_in_doubt: Vec<i64>,
    owned: BTreeMap<i32, Row>,
}

/// The proxy's current address, replaced at every restart.
type Target = Arc<Mutex<String>>;

async fn connect_retry(target: &Target) -> anyhow::Result<tokio_postgres::Client> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let conninfo = target.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
        match writebehind_tests::connect(&conninfo).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(30)).await,
        }
    }
}

/// Reads a row through the proxy (the read barrier makes every acknowledged write visible).
async fn read_row(c: &tokio_postgres::Client, id: i32) -> anyhow::Result<Row> {
    let msgs = c
        .simple_query(&format!("SELECT n, s FROM kv WHERE id = {id}"))
        .await?;
    for m in msgs {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let n: i64 = r.get(0).unwrap_or("0").parse()?;
            return Ok(Some((n, r.get(1).map(str::to_string))));
        }
    }
    Ok(None)
}

fn is_db_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<tokio_postgres::Error>()
        .is_some_and(|e| e.code().is_some())
}

/// One session: a random mix of writes, in the simple or the extended protocol. Keys `base+1..=base+40` belong to this session alone
/// (upserts, inserts, partial updates with increments, deletes); hot keys are incremented.
async fn session(
    w: i32,
    target: Target,
    stop: Arc<AtomicBool>,
    acked_total: Arc<AtomicU64>,
) -> anyhow::Result<SessionResult> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + w as u64);
    let base = 1000 * (w + 1);
    let mut res = SessionResult {
        hot_acked: vec![0; HOT as usize],
        hot_in_doubt: vec![0; HOT as usize],
        ..SessionResult::default()
    };
    for k in 1..=40 {
        res.owned.insert(base + k, None);
    }
    let mut c = connect_retry(&target).await?;
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (sql, hot, next): Op = if rng.random_bool(0.4) {
            let h = rng.random_range(0..HOT);
            let d = rng.random_range(1..=3);
            (
                format!("UPDATE kv SET n = n + {d} WHERE id = {}", h + 1),
                Some((h as usize, d)),
                None,
            )
        } else {
            let id = base + rng.random_range(1..=40);
            let cur = res.owned.get(&id).cloned().flatten();
            let s = format!("w{w}i{i}");
            match rng.random_range(0..4) {
                0 => {
                    let v = rng.random_range(0..1000);
                    (
                            format!("INSERT INTO kv (id, n, s) VALUES ({id}, {v}, '{s}') ON CONFLICT (id) DO UPDATE SET n = EXCLUDED.n, s = EXCLUDED.s"),
                            None,
                            Some((id, Some((v, Some(s))))),
                        )
                }
                1 if cur.is_none() => (
                    format!("INSERT INTO kv (id, s) VALUES ({id}, '{s}')"),
                    None,
                    Some((id, Some((0, Some(s))))),
                ),
                1 | 2 => {
                    let d = rng.random_range(1..=5);
                    let after = cur.map(|(n, _)| (n + d, Some(s.clone())));
                    (
                        format!("UPDATE kv SET s = '{s}', n = n + {d} WHERE id = {id}"),
                        None,
                        Some((id, after)),
                    )
                }
                _ => (
                    format!("DELETE FROM kv WHERE id = {id}"),
                    None,
                    Some((id, None)),
                ),
            }
        };
        // Even sessions use the simple protocol, odd ones the extended protocol (an unnamed
        // statement: Parse/Describe/Sync, then Bind/Execute/Sync).
        let sent = if w % 2 == 0 {
            c.simple_query(&sql).await.map(|_| ())
        } else {
            c.execute(sql.as_str(), &[]).await.map(|_| ())
        };
        match sent {
            Ok(()) => {
                res.acked += 1;
                acked_total.fetch_add(1, Ordering::Relaxed);
                if let Some((h, d)) = hot {
                    res.hot_acked[h] += d;
                }
                if let Some((id, row)) = next {
                    res.owned.insert(id, row);
                }
            }
            Err(e) if e.code().is_some() => {
                anyhow::bail!("session {w}: PostgreSQL refused {sql:?}: {e}")
            }
            Err(_) => {
                // The proxy died: this statement may or may not have been acknowledged.
                res.in_doubt += 1;
                if let Some((h, d)) = hot {
                    res.hot_in_doubt[h] += d;
                }
                c = connect_retry(&target).await?;
                if let Some((id, row)) = next {
                    // Resolve an owned key through the new proxy (WAL replayed, barrier
                    // applied): it must be the state before or after the statement. The
                    // proxy may be killed again meanwhile: then ask the next one.
                    let seen = loop {
                        match read_row(&c, id).await {
                            Ok(seen) => break seen,
                            Err(e) if is_db_error(&e) => return Err(e),
                            Err(_) => c = connect_retry(&target).await?,
                        }
                    };
                    let before = res.owned.get(&id).cloned().flatten();
                    anyhow::ensure!(
                        seen == before || seen == row,
                        "key {id} after an in-doubt {sql:?}: {seen:?} is neither {before:?} nor {row:?}"
                    );
                    res.owned.insert(id, seen);
                }
            }
        }
    }
    Ok(res)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_proxy_loses_no_acknowledged_write() -> anyhow::Result<()> {
    kill_test("wal", 10).await
}

/// The same kill test in `fsync` durability (acknowledgements wait for the group fsync).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_proxy_in_fsync_mode_loses_no_acknowledged_write() -> anyhow::Result<()> {
    kill_test("fsync", 5).await
}

/// Kills the proxy `WRITEBEHIND_CRASH_KILLS` times (default `default_kills`) under a 4-session
/// load in durability `durability` and checks the table against the model.
async fn kill_test(durability: &str, default_kills: usize) -> anyhow::Result<()> {
    let kills: usize = std::env::var("WRITEBEHIND_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_kills);
    let (cluster, direct, dir) = wal_test(&format!("kill-{durability}")).await?;
    let dir_s = dir.to_string_lossy().to_string();
    let args = [
        "--durability",
        durability,
        "--wal-dir",
        &dir_s,
        "--flush-interval",
        "20ms",
        "--max-batch-rows",
        "200",
    ];
    let url = cluster.url("postgres");
    let mut proxy = Proxy::spawn(&url, &args)?;
    let target: Target = Arc::new(Mutex::new(proxy.conninfo("postgres", "postgres")));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let sessions: Vec<_> = (0..4)
        .map(|w| tokio::spawn(session(w, target.clone(), stop.clone(), acked.clone())))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let started = Instant::now();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..600))).await;
        proxy.signal("KILL")?;
        proxy.wait_exit(Duration::from_secs(10)).await?;
        eprintln!(
            "kill {}: {} writes acknowledged so far",
            k + 1,
            acked.load(Ordering::Relaxed)
        );
        proxy = Proxy::spawn(&url, &args)?;
        *target.lock().map_err(|_| anyhow::anyhow!("lock"))? =
            proxy.conninfo("postgres", "postgres");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for s in sessions {
        results.push(s.await??);
    }
    // Read everything through the proxy once: the barrier applies every acknowledged write.
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.simple_query("SELECT count(*) FROM kv").await?;

    let mut expected: BTreeMap<i32, Row> = BTreeMap::new();
    let (mut total_acked, mut total_doubt) = (0, 0);
    let mut hot_lo = vec![0i64; HOT as usize];
    let mut hot_hi = vec![0i64; HOT as usize];
    for r in &results {
        total_acked += r.acked;
        total_doubt += r.in_doubt;
        for h in 0..HOT as usize {
            hot_lo[h] += r.hot_acked[h];
            hot_hi[h] += r.hot_acked[h] + r.hot_in_doubt[h];
        }
        expected.extend(r.owned.iter().map(|(k, v)| (*k, v.clone())));
    }
    let mut actual: BTreeMap<i32, Row> = BTreeMap::new();
    for row in direct
        .query("SELECT id, n, s FROM kv ORDER BY id", &[])
        .await?
    {
        actual.insert(row.get(0), Some((row.get(1), row.get(2))));
    }
    let dead: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    eprintln!(
        "{durability}: {kills} kills in {:.1}s: {total_acked} writes acknowledged, {total_doubt} in doubt (connection lost before the reply), dead letters {dead}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(dead, 0, "no write was dead-lettered");
    for h in 0..HOT {
        let n = actual
            .get(&(h + 1))
            .cloned()
            .flatten()
            .map_or(-1, |(n, _)| n);
        assert!(
            n >= hot_lo[h as usize],
            "hot key {}: {n} < {} acknowledged increments: acknowledged writes were lost",
            h + 1,
            hot_lo[h as usize]
        );
        assert!(
            n <= hot_hi[h as usize],
            "hot key {}: {n} > {} (acknowledged + in doubt): a write was applied twice",
            h + 1,
            hot_hi[h as usize]
        );
    }
    let mut lost_or_wrong = Vec::new();
    for (id, want) in &expected {
        let got = actual.get(id).cloned().flatten();
        if got != *want {
            lost_or_wrong.push((id, want.clone(), got));
        }
    }
    assert!(
        lost_or_wrong.is_empty(),
        "{} owned keys differ from the model (key, model, table): {:?}",
        lost_or_wrong.len(),
        &lost_or_wrong[..lost_or_wrong.len().min(10)]
    );
    assert!(
        total_acked > 500,
        "the load was too light to mean anything: {total_acked}"
    );
    // writebehind.status adds up across the kills: each change was counted by the batch that
    // carried it, once, whichever process shipped it. Wait for the last report (1 s).
    let status = writebehind_tests::settled_status(&direct, "kv", Duration::from_secs(15)).await?;
    eprintln!("{durability}: {status:?}");
    assert_eq!(
        (status.pending_in_proxies, status.inbox_rows),
        (0, 0),
        "{status:?}"
    );
    assert!(status.adds_up(), "{status:?}");
    assert!(
        status.acked as u64 <= total_acked + total_doubt,
        "status counts {} acknowledged changes, clients sent at most {}: counted twice",
        status.acked,
        total_acked + total_doubt
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Durability `memory` keeps nothing across a crash: what was acknowledged but not yet shipped
/// is lost, and nothing else. The test measures the loss against what was unshipped.
#[tokio::test]
async fn memory_mode_loses_only_what_was_unshipped() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--durability", "memory", "--flush-interval", "1h"],
    )?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for _ in 0..300 {
        c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
            .await?;
    }
    // A read ships and applies those 300 (the barrier) ...
    c.simple_query("SELECT n FROM kv WHERE id = 1").await?;
    // ... these 200 stay unshipped (flush interval 1 h) until the crash.
    for _ in 0..200 {
        c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
            .await?;
    }
    let mut proxy = proxy;
    proxy.signal("KILL")?;
    proxy.wait_exit(Duration::from_secs(10)).await?;
    let n: i64 = direct
        .query_one("SELECT n FROM kv WHERE id = 1", &[])
        .await?
        .get(0);
    eprintln!(
        "memory mode: 500 acknowledged, 300 shipped, {n} applied, lost {}",
        500 - n
    );
    assert_eq!(
        n, 300,
        "exactly the unshipped writes are lost in memory mode"
    );
    Ok(())
}

/// The same scenario in `wal` mode loses nothing; and a second proxy cannot open the
/// directory while the first holds it.
#[tokio::test]
async fn wal_mode_keeps_unshipped_writes_and_locks_its_directory() -> anyhow::Result<()> {
    let (cluster, direct, dir) = wal_test("lock").await?;
    let args = wal_args(&dir, "1h");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proxy = Proxy::spawn(&cluster.url("postgres"), &args)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for _ in 0..200 {
        c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
            .await?;
    }
    let second = std::process::Command::new(writebehind_tests::proxy_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &cluster.url("postgres"),
        ])
        .args(&args)
        .output()?;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success(),
        "a second proxy on the same WAL directory started"
    );
    assert!(stderr.contains("locked"), "unclear refusal: {stderr}");
    let unshipped: i64 = direct
        .query_one("SELECT n FROM kv WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(unshipped, 0, "nothing shipped yet (flush interval 1 h)");
    proxy.signal("KILL")?;
    proxy.wait_exit(Duration::from_secs(10)).await?;
    // Restart: the WAL is replayed before clients are accepted.
    let proxy = Proxy::spawn(&cluster.url("postgres"), &args)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let seen = read_row(&c, 1).await?;
    assert_eq!(
        seen,
        Some((200, None)),
        "the replayed WAL applied every acknowledged write"
    );
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A restarted proxy reads its predecessor's writes: what the killed process had already
/// committed to the inbox, but the worker had not applied yet, is waited for by the new
/// process's first read of the table. The worker is held back by a lock, so a read that does
/// not wait sees the old row at once.
#[tokio::test]
async fn a_restarted_proxy_waits_for_what_its_predecessor_shipped() -> anyhow::Result<()> {
    let (cluster, direct, dir) = wal_test("predecessor").await?;
    let args = wal_args(&dir, "10ms");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = cluster.url("postgres");
    let mut proxy = Proxy::spawn(&url, &args)?;
    // The worker cannot apply kv while this transaction holds SHARE (its UPDATE waits).
    let mut locker = cluster.connect("postgres").await?;
    let lock = locker.transaction().await?;
    lock.batch_execute("LOCK TABLE kv IN SHARE MODE").await?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.simple_query("UPDATE kv SET n = n + 5, s = 'new' WHERE id = 3")
        .await?;
    // Shipped: the change is committed in the inbox (and taken by the blocked worker, which
    // cannot commit).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shipped: i64 = direct
            .query_one(
                "SELECT count(*) FROM writebehind.progress WHERE batch_seq > 0",
                &[],
            )
            .await?
            .get(0);
        if shipped > 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the change was never shipped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.signal("KILL")?;
    proxy.wait_exit(Duration::from_secs(10)).await?;
    let proxy = Proxy::spawn(&url, &args)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let read = tokio::spawn(async move { read_row(&c, 3).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !read.is_finished(),
        "the read did not wait for the predecessor's shipped change: {:?}",
        read.await?
    );
    lock.rollback().await?;
    let seen = tokio::time::timeout(Duration::from_secs(30), read).await???;
    assert_eq!(seen, Some((5, Some("new".into()))), "read your writes");
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Start-up replay waits for PostgreSQL for as long as it is down: a SIGTERM meanwhile stops
/// the proxy (exit 0, the WAL keeps everything), and no WAL segment it has not replayed yet is
/// removed, so a kill -9 while it waits loses nothing. (The segment janitor used to keep only
/// what started databases needed: 4,122 of 6,000 rows were lost so.)
#[tokio::test]
async fn a_proxy_stopped_or_killed_while_replay_waits_loses_nothing() -> anyhow::Result<()> {
    let (cluster, direct, dir) = wal_test("replay-wait").await?;
    direct
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);
             SELECT writebehind.enable('big');",
        )
        .await?;
    let args = wal_args(&dir, "1h");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proxy = Proxy::spawn(&cluster.url("postgres"), &args)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // 24 MB acknowledged: more than one 16 MiB WAL segment.
    let pad = "x".repeat(4000);
    for chunk in 0..60 {
        let values: Vec<String> = (0..100)
            .map(|i| format!("({}, '{pad}')", chunk * 100 + i))
            .collect();
        c.batch_execute(&format!("INSERT INTO big VALUES {}", values.join(",")))
            .await?;
    }
    drop(c);
    proxy.signal("KILL")?;
    proxy.wait_exit(Duration::from_secs(10)).await?;
    cluster.stop("fast")?;

    let mut waiting = Proxy::spawn(&cluster.url("postgres"), &args)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    waiting.signal("TERM")?;
    assert_eq!(
        waiting.wait_exit(Duration::from_secs(15)).await?,
        Some(0),
        "SIGTERM stops a proxy whose start-up waits for PostgreSQL"
    );

    let mut waiting = Proxy::spawn(&cluster.url("postgres"), &args)?;
    // The segment janitor runs once a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    waiting.signal("KILL")?;
    waiting.wait_exit(Duration::from_secs(10)).await?;

    cluster.restart()?;
    let direct = cluster.connect("postgres").await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &args)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.batch_execute("SELECT writebehind.flush()").await?;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM big", &[])
        .await?
        .get(0);
    assert_eq!(n, 6000, "every acknowledged row was applied");
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Two running proxies given one `proxy_id` (a configuration mistake): the second one's
/// `writebehind.claim` is refused (55006) while the first holds the id, so it passes its writes
/// through instead of fencing off the first, which used to go on acknowledging writes that could
/// never ship (and, restarted, skipped its own writes up to the other's batches: 700 of 1,000
/// applied in the run that found it). Everything either acknowledged is applied.
#[tokio::test]
async fn a_second_proxy_with_the_same_proxy_id_is_refused_and_loses_nothing() -> anyhow::Result<()>
{
    let (cluster, direct, dir_a) = wal_test("dup-a").await?;
    let dir_b = wal_dir("dup-b");
    let url = cluster.url("postgres");
    let log_b = std::env::temp_dir().join(format!(
        "wb-dup-b-{}-{:08x}.log",
        std::process::id(),
        rand::random::<u32>()
    ));
    let with_id = |dir: &std::path::Path| {
        let mut args = wal_args(dir, "10ms");
        args.extend(["--proxy-id".to_string(), "twin".to_string()]);
        args
    };
    let args_a = with_id(&dir_a);
    let args_a: Vec<&str> = args_a.iter().map(String::as_str).collect();
    let args_b = with_id(&dir_b);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();

    let insert = |c: tokio_postgres::Client, ids: std::ops::Range<i32>| async move {
        for id in ids {
            c.simple_query(&format!("INSERT INTO kv (id, n) VALUES ({id}, {id})"))
                .await?;
        }
        anyhow::Ok(c)
    };
    // Both proxies start write-behind in the database (at their first session) before either
    // has shipped anything.
    let mut proxy_a = Proxy::spawn(&url, &args_a)?;
    let a = writebehind_tests::connect(&proxy_a.conninfo("postgres", "postgres")).await?;
    let proxy_b = Proxy::spawn_logged(&url, &args_b, &log_b)?;
    let b = writebehind_tests::connect(&proxy_b.conninfo("postgres", "postgres")).await?;
    let a = insert(a, 100..400).await?;
    let b = insert(b, 400..700).await?;
    let a = insert(a, 700..1000).await?;
    b.batch_execute("SELECT writebehind.flush()").await?;
    drop((a, b));
    drop(proxy_b);

    // A restart of the first proxy replays and ships what it acknowledged, none skipped.
    proxy_a.signal("KILL")?;
    proxy_a.wait_exit(Duration::from_secs(10)).await?;
    let proxy_a = Proxy::spawn(&url, &args_a)?;
    let a = writebehind_tests::connect(&proxy_a.conninfo("postgres", "postgres")).await?;
    a.batch_execute("SELECT writebehind.flush()").await?;
    let (rows, sum): (i64, i64) = {
        let r = direct
            .query_one("SELECT count(*), sum(n)::int8 FROM kv WHERE id >= 100", &[])
            .await?;
        (r.get(0), r.get(1))
    };
    assert_eq!(
        (rows, sum),
        (900, (100..1000).sum::<i64>()),
        "every acknowledged row applied"
    );
    let log = std::fs::read_to_string(&log_b)?;
    assert!(
        log.contains("in use by another running proxy"),
        "the second proxy did not say why it stays pass-through: {log}"
    );
    drop(proxy_a);
    let _ = std::fs::remove_dir_all(&dir_a);
    let _ = std::fs::remove_dir_all(&dir_b);
    let _ = std::fs::remove_file(&log_b);
    Ok(())
}
