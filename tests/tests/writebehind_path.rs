//! The write-behind path end to end (durability = memory): writes acknowledged from memory,
//! read-your-writes through the barrier, exact counters under concurrency, PostgreSQL's own
//! errors for what the proxy does not acknowledge, transactions, drain on SIGTERM. Privileges
//! are in privileges.rs.

use std::time::Duration;
use tokio_postgres::error::SqlState;
use writebehind_tests::{command_tag as tag, Cluster, Proxy};

const SCHEMA: &str =
    "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note varchar(5));
    INSERT INTO counters SELECT g, 0, NULL FROM generate_series(1, 20) g;
    SELECT writebehind.enable('counters');";

fn wb_proxy(cluster: &Cluster, extra: &[&str]) -> anyhow::Result<Proxy> {
    let mut args = vec!["--durability", "memory"];
    args.extend_from_slice(extra);
    Proxy::spawn(&cluster.url("postgres"), &args)
}

#[tokio::test]
async fn acknowledged_writes_are_read_back_and_counters_are_exact() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    // A long flush interval: only barriers ship, so reads prove read-your-writes.
    let proxy = wb_proxy(&cluster, &["--flush-interval", "1h"])?;
    let conninfo = proxy.conninfo("postgres", "postgres");

    let c = writebehind_tests::connect(&conninfo).await?;
    assert_eq!(
        tag(&c, "UPDATE counters SET n = n + 5 WHERE id = 1").await?,
        1
    );
    let inbox: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.inbox", &[])
        .await?
        .get(0);
    let applied: i64 = direct
        .query_one("SELECT n FROM counters WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(
        (inbox, applied),
        (0, 0),
        "acknowledged from memory: nothing shipped yet"
    );
    let rows = c
        .simple_query("SELECT n FROM counters WHERE id = 1")
        .await?;
    let seen = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(
        seen.as_deref(),
        Some("5"),
        "the session reads its own write"
    );

    // Concurrent increments from 8 sessions on 20 hot keys.
    let mut tasks = Vec::new();
    for s in 0..8 {
        let conninfo = conninfo.clone();
        tasks.push(tokio::spawn(async move {
            let c = writebehind_tests::connect(&conninfo).await?;
            for i in 0..250 {
                c.simple_query(&format!(
                    "UPDATE counters SET n = n + 1 WHERE id = {}",
                    (s * 7 + i) % 20 + 1
                ))
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let sum: i64 = c
        .query_one("SELECT sum(n)::bigint FROM counters", &[])
        .await?
        .get(0);
    assert_eq!(sum, 5 + 8 * 250);
    let (applied, rows): (i64, i64) = direct
        .query_one(
            "SELECT (SELECT applied FROM writebehind.status WHERE \"table\" = 'counters'::regclass),
                    (SELECT sum(rows)::int8 FROM writebehind.ingest_stats WHERE relid = 'counters'::regclass)",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    // 2,001 acknowledged increments on 20 keys reached the inbox as at most one row per key
    // and barrier: the proxy coalesced them before shipping.
    assert!(
        applied <= 21 && rows <= 25,
        "folded in the proxy: applied {applied}, inbox rows shipped {rows}"
    );
    Ok(())
}

#[tokio::test]
async fn what_postgres_would_reject_is_never_acknowledged() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct
        .batch_execute("CREATE ROLE reader LOGIN; GRANT SELECT, INSERT ON counters TO reader; GRANT USAGE ON SCHEMA writebehind TO reader;")
        .await?;
    let proxy = wb_proxy(&cluster, &[])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for (sql, code) in [
        (
            "INSERT INTO counters (id, n) VALUES (100, 'many')",
            SqlState::INVALID_TEXT_REPRESENTATION,
        ),
        (
            "INSERT INTO counters (id, n) VALUES (101, NULL)",
            SqlState::NOT_NULL_VIOLATION,
        ),
        (
            "INSERT INTO counters (id, nope) VALUES (102, 1)",
            SqlState::UNDEFINED_COLUMN,
        ),
        (
            "INSERT INTO counters (id, note) VALUES (103, 'too long')",
            SqlState::STRING_DATA_RIGHT_TRUNCATION,
        ),
        (
            "INSERT INTO counters (id) VALUES (99999999999)",
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        ),
        (
            "UPDATE counters SET n = NULL WHERE id = 1",
            SqlState::NOT_NULL_VIOLATION,
        ),
    ] {
        let err = c.simple_query(sql).await.expect_err(sql);
        assert_eq!(err.code(), Some(&code), "{sql}: {err}");
    }
    // A role without UPDATE gets PostgreSQL's 42501, synchronously.
    let r = writebehind_tests::connect(&proxy.conninfo("reader", "postgres")).await?;
    let err = r
        .simple_query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .await
        .expect_err("no privilege");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    assert_eq!(
        tag(&r, "INSERT INTO counters (id) VALUES (200)").await?,
        1,
        "INSERT is granted"
    );
    // Inside a transaction block nothing is acknowledged early: a rollback undoes it.
    c.simple_query("BEGIN").await?;
    c.simple_query("UPDATE counters SET n = n + 1000 WHERE id = 2")
        .await?;
    c.simple_query("ROLLBACK").await?;
    direct.execute("SELECT writebehind.flush()", &[]).await?;
    let n2: i64 = direct
        .query_one("SELECT n FROM counters WHERE id = 2", &[])
        .await?
        .get(0);
    assert_eq!(n2, 0);
    let bad: i64 = direct
        .query_one(
            "SELECT count(*) FROM counters WHERE id BETWEEN 100 AND 103",
            &[],
        )
        .await?
        .get(0);
    let dead: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!((bad, dead), (0, 0));
    let r200: i64 = direct
        .query_one("SELECT count(*) FROM counters WHERE id = 200", &[])
        .await?
        .get(0);
    assert_eq!(r200, 1);
    Ok(())
}

#[tokio::test]
async fn sigterm_ships_every_acknowledged_write_before_exit() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let mut proxy = wb_proxy(&cluster, &["--flush-interval", "1h"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for i in 0..300 {
        assert_eq!(
            tag(
                &c,
                &format!("UPDATE counters SET n = n + 1 WHERE id = {}", i % 20 + 1)
            )
            .await?,
            1
        );
    }
    drop(c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.signal("TERM")?;
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).await?, Some(0));
    direct.execute("SELECT writebehind.flush()", &[]).await?;
    let sum: i64 = direct
        .query_one("SELECT sum(n)::bigint FROM counters", &[])
        .await?
        .get(0);
    assert_eq!(sum, 300, "nothing acknowledged was lost at shutdown");
    Ok(())
}

#[tokio::test]
async fn set_writebehind_sync_makes_a_session_write_through() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = wb_proxy(&cluster, &["--flush-interval", "1h"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let n = |id: i32| {
        let direct = &direct;
        async move {
            anyhow::Ok(
                direct
                    .query_one("SELECT n FROM counters WHERE id = $1", &[&id])
                    .await?
                    .get::<_, i64>(0),
            )
        }
    };
    c.simple_query("SET writebehind.sync = on").await?;
    assert_eq!(
        tag(&c, "UPDATE counters SET n = n + 1 WHERE id = 1").await?,
        1
    );
    assert_eq!(
        n(1).await?,
        1,
        "sync = on: the write went through to PostgreSQL"
    );
    c.simple_query("RESET writebehind.sync").await?;
    assert_eq!(
        tag(&c, "UPDATE counters SET n = n + 1 WHERE id = 2").await?,
        1
    );
    assert_eq!(n(2).await?, 0, "back to write-behind after RESET");
    // SET LOCAL lasts for a transaction block, where writes pass through anyway.
    for sql in [
        "BEGIN",
        "SET LOCAL writebehind.sync = on",
        "UPDATE counters SET n = n + 1 WHERE id = 3",
        "COMMIT",
    ] {
        c.simple_query(sql).await?;
    }
    assert_eq!(n(3).await?, 1);
    assert_eq!(
        tag(&c, "UPDATE counters SET n = n + 1 WHERE id = 4").await?,
        1
    );
    assert_eq!(n(4).await?, 0, "SET LOCAL did not outlive its transaction");
    // The session still reads its own writes.
    let rows = c
        .query("SELECT n FROM counters WHERE id IN (2, 4) ORDER BY id", &[])
        .await?;
    let seen: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seen, vec![1, 1]);
    Ok(())
}

#[tokio::test]
async fn ddl_on_a_registered_table_reloads_the_proxy_catalog() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = wb_proxy(&cluster, &["--flush-interval", "1h"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    assert_eq!(
        tag(&c, "UPDATE counters SET note = 'a' WHERE id = 1").await?,
        1
    );
    c.simple_query("SELECT 1 FROM counters LIMIT 1").await?; // barrier: applied
                                                             // Another session changes the table: the proxy hears of it and reloads.
    direct
        .batch_execute("ALTER TABLE counters DROP COLUMN note, ADD COLUMN label text")
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The dropped column: not acknowledged, PostgreSQL answers 42703.
    let err = c
        .simple_query("UPDATE counters SET note = 'b' WHERE id = 1")
        .await
        .expect_err("note is gone");
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_COLUMN));
    // The new column is acknowledged from memory.
    assert_eq!(
        tag(&c, "UPDATE counters SET label = 'new' WHERE id = 2").await?,
        1
    );
    let direct_label: Option<String> = direct
        .query_one("SELECT label FROM counters WHERE id = 2", &[])
        .await?
        .get(0);
    assert_eq!(direct_label, None, "acknowledged, not yet shipped");
    let rows = c
        .simple_query("SELECT label FROM counters WHERE id = 2")
        .await?;
    let seen = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    });
    assert_eq!(seen.as_deref(), Some("new"));
    let dead: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(dead, 0);
    Ok(())
}

#[tokio::test]
async fn a_poisoned_row_is_dead_lettered_and_the_rest_applies() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0 CHECK (balance >= 0));
             INSERT INTO acct SELECT g, 10 FROM generate_series(1, 5) g;
             SELECT writebehind.enable('acct');",
        )
        .await?;
    let proxy = wb_proxy(&cluster, &["--flush-interval", "1h"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // Only the server knows the CHECK: the proxy acknowledges, the worker isolates the row.
    assert_eq!(
        tag(&c, "UPDATE acct SET balance = balance - 50 WHERE id = 3").await?,
        1
    );
    for id in [1, 2, 4, 5] {
        assert_eq!(
            tag(
                &c,
                &format!("UPDATE acct SET balance = balance + {id} WHERE id = {id}")
            )
            .await?,
            1
        );
    }
    let rows = c
        .query("SELECT id, balance FROM acct ORDER BY id", &[])
        .await?;
    let got: Vec<(i32, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![(1, 11), (2, 12), (3, 10), (4, 14), (5, 15)]);
    let dead = direct
        .query_one(
            "SELECT count(*), min(sqlstate) FROM writebehind.dead_letters WHERE relid = 'acct'::regclass",
            &[],
        )
        .await?;
    assert_eq!(dead.get::<_, i64>(0), 1);
    assert_eq!(dead.get::<_, Option<String>>(1).as_deref(), Some("23514"));
    Ok(())
}

#[tokio::test]
async fn disabling_a_table_under_load_loses_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = wb_proxy(&cluster, &[])?;
    let conninfo = proxy.conninfo("postgres", "postgres");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..4 {
        let (conninfo, stop) = (conninfo.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let c = writebehind_tests::connect(&conninfo).await?;
            let mut acked = 0i64;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                c.simple_query(&format!(
                    "UPDATE counters SET n = n + 1 WHERE id = {}",
                    (s * 5 + i) % 20 + 1
                ))
                .await?;
                acked += 1;
            }
            anyhow::Ok(acked)
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    direct
        .execute("SELECT writebehind.disable('counters')", &[])
        .await?;
    // Writes go on after the disable: they now pass through to PostgreSQL.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    // What the proxy still held for the table ships and applies (as unregistered rows).
    let mut sum = 0i64;
    for _ in 0..100 {
        sum = direct
            .query_one("SELECT sum(n)::bigint FROM counters", &[])
            .await?
            .get(0);
        if sum == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sum, total, "every acknowledged increment applied once");
    let registered: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.tables", &[])
        .await?
        .get(0);
    assert_eq!(registered, 0);
    Ok(())
}

/// Statements that change identity end acknowledging for that session (its writes then go to
/// PostgreSQL directly); statements that merely mention such words — a column named `role` or
/// `temperature` — do not. (Name resolution is followed instead: tests/search_path.rs.)
#[tokio::test]
async fn only_real_session_changes_end_acknowledging() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct
        .batch_execute(
            "CREATE TABLE readings (role text, temperature int);
             INSERT INTO readings VALUES ('sensor', 21);",
        )
        .await?;
    // A long flush interval: an acknowledged write stays out of the table until a barrier.
    let proxy = wb_proxy(&cluster, &["--flush-interval", "1h"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let n_direct = || writebehind_tests::query_i64(&direct, "SELECT n FROM counters WHERE id = 1");
    c.simple_query("SELECT role, temperature FROM readings WHERE role = 'sensor'")
        .await?;
    // Prepared (extended protocol) statements mentioning such words do not count either.
    c.query(
        "SELECT temperature FROM readings WHERE role = $1",
        &[&"sensor"],
    )
    .await?;
    c.simple_query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .await?;
    c.simple_query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .await?;
    assert_eq!(n_direct().await?, 0, "acknowledged from memory");
    // SET ROLE does: the barrier ships the two pending increments, and from now on writes go
    // to PostgreSQL synchronously.
    c.simple_query("SET ROLE postgres").await?;
    c.simple_query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .await?;
    assert_eq!(n_direct().await?, 3, "written through after SET ROLE");
    // The same setting given at startup: that session is never intercepted.
    let opt = writebehind_tests::connect(&format!(
        "{} options='-c role=postgres'",
        proxy.conninfo("postgres", "postgres")
    ))
    .await?;
    opt.simple_query("UPDATE counters SET n = n + 1 WHERE id = 1")
        .await?;
    assert_eq!(n_direct().await?, 4, "written through: role set at startup");
    Ok(())
}

#[tokio::test]
async fn one_key_spelled_two_ways_keeps_its_order() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
             CREATE TABLE nk (id numeric PRIMARY KEY, v int);
             CREATE TABLE ck (id text COLLATE ci PRIMARY KEY, v int);
             INSERT INTO nk VALUES (5, 0);
             INSERT INTO ck VALUES ('a', 0);
             SELECT writebehind.enable('nk');
             SELECT writebehind.enable('ck');",
        )
        .await?;
    // Only barriers ship: without them all four updates would be one batch.
    let proxy = wb_proxy(&cluster, &["--flush-interval", "1h"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // 5.0 = 5 = 5.00 for PostgreSQL, and 'A' = 'a' in a case-insensitive collation. Whatever
    // the proxy acknowledges, the last update must be the one that stays.
    c.batch_execute(
        "UPDATE nk SET v = 11 WHERE id = 5.0;
         UPDATE nk SET v = 12 WHERE id = 5;
         UPDATE nk SET v = 13 WHERE id = 5.00;
         UPDATE nk SET v = 14 WHERE id = 5;
         UPDATE ck SET v = 11 WHERE id = 'A';
         UPDATE ck SET v = 12 WHERE id = 'a';
         UPDATE ck SET v = 13 WHERE id = 'A';
         UPDATE ck SET v = 14 WHERE id = 'a';",
    )
    .await?;
    // Read through the proxy: the barrier ships what is pending and waits until it applied.
    for table in ["nk", "ck"] {
        let v: i32 = c
            .query_one(&format!("SELECT v FROM {table}"), &[])
            .await?
            .get(0);
        assert_eq!(v, 14, "{table}: the last acknowledged update wins");
    }
    Ok(())
}

/// A database no apply worker serves (not in `writebehind.databases`): `enable()` refuses with
/// 55000, and a table registered there all the same (say, enabled before the database was
/// dropped from the list) is not written behind: its writes reach PostgreSQL at once. Before,
/// they were acknowledged and stayed in the inbox for ever, and the next read timed out.
#[tokio::test]
async fn a_database_without_an_apply_worker_is_not_written_behind() -> anyhow::Result<()> {
    let cluster = Cluster::start()?; // workers serve `postgres` only
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute("CREATE DATABASE app").await?;
    let app = cluster.connect("app").await?;
    app.batch_execute(
        "CREATE EXTENSION pg_writebehind; CREATE TABLE t (id int PRIMARY KEY, v int)",
    )
    .await?;
    let refused = app.execute("SELECT writebehind.enable('t')", &[]).await;
    assert_eq!(
        refused.err().as_ref().and_then(|e| e.code()),
        Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE),
        "enable() in a database without an apply worker"
    );
    app.batch_execute(
        "INSERT INTO writebehind.tables (relid, key_columns) VALUES ('t'::regclass, '{id}')",
    )
    .await?;
    let proxy = Proxy::spawn(&cluster.url("app"), &["--durability", "memory"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "app")).await?;
    c.batch_execute("INSERT INTO t VALUES (1, 1)").await?;
    let row = app
        .query_one(
            "SELECT (SELECT count(*) FROM t), (SELECT count(*) FROM writebehind.inbox)",
            &[],
        )
        .await?;
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (1, 0),
        "the insert went to PostgreSQL, not to the inbox"
    );
    Ok(())
}

/// A registered table's primary key changes (or goes) by DDL through the proxy: the registry
/// follows, new writes are keyed by the new key (or pass through without one), and every row
/// arrives as PostgreSQL would have it. Before, the proxy went on keying by the old column and
/// each insert became a 42P10 dead letter (ON CONFLICT on a column without a unique index).
#[tokio::test]
async fn writes_follow_a_changed_primary_key() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE rk (id int, code text NOT NULL, v text, CONSTRAINT rk_pkey PRIMARY KEY (id));
             CREATE TABLE nk (id int PRIMARY KEY, v text);
             SELECT writebehind.enable('rk'), writebehind.enable('nk');",
        )
        .await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--durability", "memory"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.batch_execute(
        "INSERT INTO rk VALUES (1, 'a', 'x');
         ALTER TABLE rk DROP CONSTRAINT rk_pkey, ADD CONSTRAINT rk_pkey PRIMARY KEY (code);",
    )
    .await?;
    c.batch_execute("INSERT INTO rk VALUES (2, 'b', 'y')")
        .await?;
    c.batch_execute("UPDATE rk SET v = 'z' WHERE code = 'b'")
        .await?;
    c.batch_execute("INSERT INTO nk VALUES (1, 'x'); ALTER TABLE nk DROP CONSTRAINT nk_pkey")
        .await?;
    c.batch_execute("INSERT INTO nk VALUES (2, 'y')").await?;
    c.execute("SELECT writebehind.flush()", &[]).await?;
    let rows = |sql: &'static str| {
        let direct = &direct;
        async move {
            Ok::<Vec<String>, anyhow::Error>(
                direct
                    .query(sql, &[])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect(),
            )
        }
    };
    assert_eq!(
        rows("SELECT id || code || v FROM rk ORDER BY id").await?,
        ["1ax", "2bz"]
    );
    assert_eq!(
        rows("SELECT id || v FROM nk ORDER BY id").await?,
        ["1x", "2y"]
    );
    assert_eq!(
        rows("SELECT relid::text || ' ' || key_columns::text FROM writebehind.tables ORDER BY 1")
            .await?,
        ["nk {}", "rk {code}"]
    );
    assert_eq!(
        rows("SELECT sqlstate FROM writebehind.dead_letters").await?,
        Vec::<String>::new()
    );
    Ok(())
}
