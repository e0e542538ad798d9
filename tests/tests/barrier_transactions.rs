//! The read barrier around transactions: a REPEATABLE READ transaction's snapshot, deferred
//! foreign keys checked at COMMIT, a barrier that times out or is cancelled between
//! transactions (the statement fails, the session goes on) or inside one (PostgreSQL fails
//! the transaction), a barrier bounded by the session's `statement_timeout`, and a cancel
//! request while a write waits for room in the queue. Only
//! barriers ship (`--flush-interval 1h`), so a read that does not wait misses the
//! acknowledged writes.

use std::time::Duration;
use tokio_postgres::error::SqlState;
use writebehind_tests::{query_i64, Cluster, Proxy};

fn wb_proxy(cluster: &Cluster, extra: &[&str]) -> anyhow::Result<Proxy> {
    let mut args = vec!["--durability", "memory", "--flush-interval", "1h"];
    args.extend_from_slice(extra);
    Proxy::spawn(&cluster.url("postgres"), &args)
}

/// A cluster with the write-behind table `t (id, v)`, and a direct connection to it.
async fn cluster_with_t() -> anyhow::Result<(Cluster, tokio_postgres::Client)> {
    Cluster::start_with_schema(
        "CREATE TABLE t (id int PRIMARY KEY, v int);
         SELECT writebehind.enable('t');",
    )
    .await
}

/// A session through `proxy` with the acknowledged write `t (1, 1)` pending, and a direct
/// session whose lock on `t` keeps the worker from applying it until it commits.
async fn pending_behind_a_lock(
    cluster: &Cluster,
    proxy: &Proxy,
) -> anyhow::Result<(tokio_postgres::Client, tokio_postgres::Client)> {
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let lock = cluster.connect("postgres").await?;
    lock.batch_execute("BEGIN; LOCK TABLE t IN SHARE MODE")
        .await?;
    c.batch_execute("INSERT INTO t VALUES (1, 1)").await?;
    Ok((c, lock))
}

/// The transaction of `c` is aborted, as PostgreSQL aborts it after an error (25P02 until it
/// ends): ROLLBACK ends it.
async fn ends_aborted_transaction(c: &tokio_postgres::Client) -> anyhow::Result<()> {
    let aborted = c.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(
        aborted.code(),
        Some(&SqlState::IN_FAILED_SQL_TRANSACTION),
        "{aborted}"
    );
    c.batch_execute("ROLLBACK").await?;
    Ok(())
}

/// Runs `sql` on `c` (simple protocol, or extended with `extended`), which must fail with
/// 57014; returns the error and how long it took.
async fn query_canceled(
    c: &tokio_postgres::Client,
    sql: &str,
    extended: bool,
) -> (tokio_postgres::Error, Duration) {
    let started = std::time::Instant::now();
    let err = if extended {
        c.query(sql, &[]).await.map(|_| ())
    } else {
        c.simple_query(sql).await.map(|_| ())
    }
    .expect_err("the wait cannot complete");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{sql}: {err}");
    (err, started.elapsed())
}

/// Runs `sql` on `c` (simple protocol, or extended with `extended`) and cancels it from
/// another connection after 500 ms: it must fail with 57014 well before the 60 s timeout it
/// waits for (`what`).
async fn cancelled_while_waiting(
    c: &tokio_postgres::Client,
    sql: &str,
    extended: bool,
    what: &str,
) -> anyhow::Result<()> {
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let (_, waited) = query_canceled(c, sql, extended).await;
    assert!(
        waited < Duration::from_secs(20),
        "the cancel ended the wait, not the 60 s {what}"
    );
    canceller.await??;
    Ok(())
}

#[tokio::test]
async fn a_repeatable_read_snapshot_includes_acknowledged_writes() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v int);
             INSERT INTO t VALUES (4, 0);
             SELECT writebehind.enable('t');",
        )
        .await?;
    let proxy = wb_proxy(&cluster, &[])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for isolation in ["REPEATABLE READ", "SERIALIZABLE"] {
        c.batch_execute("INSERT INTO t VALUES (17, 1) ON CONFLICT (id) DO UPDATE SET v = t.v + 1")
            .await?;
        c.batch_execute("UPDATE t SET v = 7 WHERE id = 4").await?;
        // The snapshot is taken by SELECT 1, which reads no write-behind table.
        c.batch_execute(&format!("BEGIN ISOLATION LEVEL {isolation}; SELECT 1"))
            .await?;
        assert_eq!(
            query_i64(&c, "SELECT count(*) FROM t WHERE id = 17").await?,
            1,
            "{isolation}: the acknowledged insert is in the snapshot"
        );
        // Not a serialization failure: the update was applied before the snapshot.
        c.batch_execute("UPDATE t SET v = v + 1 WHERE id = 4; COMMIT")
            .await?;
        assert_eq!(
            query_i64(&direct, "SELECT v::int8 FROM t WHERE id = 4").await?,
            8
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_deferred_foreign_key_sees_writes_acknowledged_before_commit() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE p (id int PRIMARY KEY, v int);
             CREATE TABLE cd (id int PRIMARY KEY,
                              pid int REFERENCES p (id) DEFERRABLE INITIALLY DEFERRED);
             SELECT writebehind.enable('p');",
        )
        .await?;
    let proxy = wb_proxy(&cluster, &[])?;
    let conninfo = proxy.conninfo("postgres", "postgres");
    let s1 = writebehind_tests::connect(&conninfo).await?;
    let s2 = writebehind_tests::connect(&conninfo).await?;
    s1.batch_execute("BEGIN; INSERT INTO cd VALUES (1, 700)")
        .await?;
    // Acknowledged while s1's transaction is open; PostgreSQL would have committed it first.
    s2.batch_execute("INSERT INTO p VALUES (700, 1)").await?;
    s1.batch_execute("COMMIT").await?;
    assert_eq!(query_i64(&direct, "SELECT count(*) FROM cd").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_barrier_timeout_between_transactions_fails_only_the_statement() -> anyhow::Result<()> {
    let (cluster, direct) = cluster_with_t().await?;
    let proxy = wb_proxy(&cluster, &["--barrier-timeout", "1s"])?;
    let (c, lock) = pending_behind_a_lock(&cluster, &proxy).await?;
    c.batch_execute("PREPARE q AS SELECT 41 + 1").await?;
    let err = c
        .simple_query("SELECT count(*) FROM t")
        .await
        .expect_err("the barrier cannot complete");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
    // The session still works (a statement that reads nothing write-behind needs no barrier).
    assert_eq!(query_i64(&c, "SELECT 7::int8").await?, 7);
    lock.batch_execute("COMMIT").await?;
    // Its prepared statement too (EXECUTE may read anything: it waits for the barrier).
    let row = c.query_one("EXECUTE q", &[]).await?;
    assert_eq!(row.get::<_, i32>(0), 42);
    tokio::time::timeout(Duration::from_secs(30), async {
        query_i64(&c, "SELECT count(*) FROM t").await
    })
    .await??;
    assert_eq!(query_i64(&direct, "SELECT count(*) FROM t").await?, 1);
    Ok(())
}

/// Runs `sql` on `c` (simple protocol, or extended with `extended`): it must fail with
/// PostgreSQL's statement-timeout error well before the 60 s barrier or overflow timeout.
async fn timed_out(c: &tokio_postgres::Client, sql: &str, extended: bool) -> anyhow::Result<()> {
    let (err, waited) = query_canceled(c, sql, extended).await;
    assert_eq!(
        err.as_db_error().map(|e| e.message()),
        Some("canceling statement due to statement timeout"),
        "{sql}"
    );
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(20),
        "{sql}: the statement timeout ended the wait, not the 60 s timeout ({waited:?})"
    );
    Ok(())
}

/// A barrier's wait counts against the session's `statement_timeout`, however it was set (SET,
/// `set_config`, SET LOCAL, a role default): the statement fails with PostgreSQL's own 57014,
/// nothing of it runs, and inside a transaction block the transaction is aborted as PostgreSQL
/// aborts it. Without a statement timeout the wait goes on (a cancel ends it).
#[tokio::test]
async fn statement_timeout_bounds_a_barrier_wait() -> anyhow::Result<()> {
    let (cluster, direct) = cluster_with_t().await?;
    direct
        .batch_execute(
            "CREATE ROLE patient LOGIN;
             GRANT SELECT, INSERT ON t TO patient;
             GRANT USAGE ON SCHEMA writebehind TO patient;
             ALTER ROLE patient SET statement_timeout = '300ms'",
        )
        .await?;
    let proxy = wb_proxy(&cluster, &["--barrier-timeout", "60s"])?;
    let (c, lock) = pending_behind_a_lock(&cluster, &proxy).await?;

    // Between transactions: SET, simple protocol; the session goes on.
    c.batch_execute("SET statement_timeout = '300ms'").await?;
    timed_out(&c, "SELECT count(*) FROM t", false).await?;
    assert_eq!(query_i64(&c, "SELECT 7::int8").await?, 7);
    // set_config, extended protocol.
    c.batch_execute("RESET statement_timeout").await?;
    c.query("SELECT set_config('statement_timeout', '1s', false)", &[])
        .await?;
    timed_out(&c, "SELECT count(*) FROM t WHERE id > 0", true).await?;
    // SET LOCAL inside a transaction block: PostgreSQL aborts the transaction.
    c.batch_execute("RESET statement_timeout; BEGIN; SET LOCAL statement_timeout = '300ms'")
        .await?;
    timed_out(&c, "SELECT count(*) FROM t WHERE id < 10", true).await?;
    ends_aborted_transaction(&c).await?;
    // A role default, which only PostgreSQL knows.
    let patient = writebehind_tests::connect(&proxy.conninfo("patient", "postgres")).await?;
    timed_out(&patient, "SELECT count(*) FROM t", false).await?;
    // statement_timeout = 0: only a cancel (or the barrier timeout) ends the wait.
    cancelled_while_waiting(&c, "SELECT count(*) FROM t", false, "barrier_timeout").await?;

    lock.batch_execute("COMMIT").await?;
    assert_eq!(query_i64(&c, "SELECT count(*) FROM t").await?, 1);
    assert_eq!(query_i64(&patient, "SELECT count(*) FROM t").await?, 1);
    assert_eq!(query_i64(&direct, "SELECT sum(v)::int8 FROM t").await?, 1);
    Ok(())
}

/// The proxy's question for `statement_timeout` while a barrier waits takes no snapshot: a
/// REPEATABLE READ transaction whose first statement waits still sees the writes it waited for
/// (a FunctionCall there would fix the snapshot before they are applied). (protocol_parity.py
/// checks that the unnamed statement and portal outlive the question.)
#[tokio::test]
async fn the_question_during_a_barrier_wait_takes_no_snapshot() -> anyhow::Result<()> {
    let (cluster, direct) = cluster_with_t().await?;
    let proxy = wb_proxy(&cluster, &["--barrier-timeout", "60s"])?;
    // The transaction begins with nothing pending (a BEGIN waits at the barrier too).
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.batch_execute("SET statement_timeout = '30s'; BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    let (_writer, lock) = pending_behind_a_lock(&cluster, &proxy).await?;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        lock.batch_execute("COMMIT").await.map(|()| lock)
    });
    let started = std::time::Instant::now();
    assert_eq!(
        query_i64(&c, "SELECT count(*) FROM t").await?,
        1,
        "the snapshot is taken after the wait"
    );
    assert!(started.elapsed() >= Duration::from_millis(500), "it waited");
    c.batch_execute("COMMIT").await?;
    release.await??;
    assert_eq!(query_i64(&direct, "SELECT sum(v)::int8 FROM t").await?, 1);
    Ok(())
}

/// While a barrier waits, the session's backend is idle upstream: the proxy keeps PostgreSQL's
/// idle timeouts (`idle_session_timeout` between transactions,
/// `idle_in_transaction_session_timeout` inside a transaction block) from ending the session,
/// as they would not end a statement that runs. Without it PostgreSQL ends the session (FATAL
/// 57P05 / 25P03) after 1 s.
#[tokio::test]
async fn a_barrier_wait_longer_than_the_idle_timeouts_keeps_the_session() -> anyhow::Result<()> {
    let (cluster, direct) = cluster_with_t().await?;
    let proxy = wb_proxy(&cluster, &["--barrier-timeout", "60s"])?;
    let release_after = |lock: tokio_postgres::Client| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(2500)).await;
            lock.batch_execute("COMMIT").await.map(|()| lock)
        })
    };

    let (writer, lock) = pending_behind_a_lock(&cluster, &proxy).await?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.batch_execute("SET idle_session_timeout = '1s'").await?;
    let release = release_after(lock);
    let started = std::time::Instant::now();
    assert_eq!(query_i64(&c, "SELECT count(*) FROM t").await?, 1);
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "it waited"
    );
    let lock = release.await??;

    c.batch_execute(
        "SET idle_session_timeout = 0; SET idle_in_transaction_session_timeout = '1s'; BEGIN",
    )
    .await?;
    lock.batch_execute("BEGIN; LOCK TABLE t IN SHARE MODE")
        .await?;
    writer.batch_execute("INSERT INTO t VALUES (2, 2)").await?;
    let release = release_after(lock);
    let started = std::time::Instant::now();
    assert_eq!(query_i64(&c, "SELECT count(*) FROM t").await?, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(1800),
        "it waited"
    );
    c.batch_execute("COMMIT").await?;
    release.await??;
    assert_eq!(query_i64(&direct, "SELECT sum(v)::int8 FROM t").await?, 3);
    Ok(())
}

#[tokio::test]
async fn a_cancel_request_ends_a_barrier_wait_between_transactions() -> anyhow::Result<()> {
    let (cluster, _direct) = cluster_with_t().await?;
    let proxy = wb_proxy(&cluster, &["--barrier-timeout", "60s"])?;
    let (c, lock) = pending_behind_a_lock(&cluster, &proxy).await?;
    cancelled_while_waiting(&c, "SELECT count(*) FROM t", false, "barrier_timeout").await?;
    assert_eq!(query_i64(&c, "SELECT 7::int8").await?, 7);
    lock.batch_execute("COMMIT").await?;
    assert_eq!(query_i64(&c, "SELECT count(*) FROM t").await?, 1);
    Ok(())
}

/// Inside a transaction block a barrier that times out, or a cancel while it waits, fails the
/// transaction as PostgreSQL would (the error comes from PostgreSQL: the transaction is
/// aborted, ROLLBACK ends it), and the session goes on.
#[tokio::test]
async fn a_failed_barrier_inside_a_transaction_aborts_it_and_keeps_the_session(
) -> anyhow::Result<()> {
    let (cluster, _direct) = cluster_with_t().await?;
    let proxy = wb_proxy(&cluster, &["--barrier-timeout", "2s"])?;
    let (c, lock) = pending_behind_a_lock(&cluster, &proxy).await?;

    // A timeout, simple protocol.
    c.batch_execute("BEGIN; SELECT 1").await?;
    let err = c
        .simple_query("SELECT count(*) FROM t")
        .await
        .expect_err("the barrier cannot complete");
    assert_eq!(err.code(), Some(&SqlState::CANNOT_CONNECT_NOW), "{err}");
    ends_aborted_transaction(&c).await?;
    assert_eq!(query_i64(&c, "SELECT 7::int8").await?, 7);

    // A cancel, extended protocol, with the barrier timeout far away.
    let proxy2 = wb_proxy(&cluster, &["--barrier-timeout", "60s"])?;
    let c1 = c;
    let c = writebehind_tests::connect(&proxy2.conninfo("postgres", "postgres")).await?;
    c.batch_execute("INSERT INTO t VALUES (2, 2)").await?;
    c.batch_execute("BEGIN").await?;
    cancelled_while_waiting(
        &c,
        "SELECT count(*) FROM t WHERE id > 0",
        true,
        "barrier_timeout",
    )
    .await?;
    ends_aborted_transaction(&c).await?;
    lock.batch_execute("COMMIT").await?;
    assert_eq!(
        query_i64(&c1, "SELECT count(*) FROM t WHERE id = 1").await?,
        1
    );
    assert_eq!(
        query_i64(&c, "SELECT count(*) FROM t WHERE id = 2").await?,
        1
    );
    Ok(())
}

/// A cancel request also ends a wait for room in the queue (`overflow = block`), and so does the
/// session's `statement_timeout`: the statement fails with 57014 at once, nothing of it is
/// queued, and the session goes on. A wait longer than `idle_session_timeout` does not end the
/// session.
#[tokio::test]
async fn a_cancel_request_or_statement_timeout_ends_a_wait_for_room_in_the_queue(
) -> anyhow::Result<()> {
    let (cluster, _direct) = cluster_with_t().await?;
    let proxy = wb_proxy(
        &cluster,
        &[
            "--max-pending-rows",
            "2",
            "--overflow",
            "block",
            "--overflow-timeout",
            "60s",
        ],
    )?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // Nothing can ship while the inbox is locked, so the queue stays full.
    let lock = cluster.connect("postgres").await?;
    lock.batch_execute("BEGIN; LOCK TABLE writebehind.inbox IN ACCESS EXCLUSIVE MODE")
        .await?;
    c.batch_execute("INSERT INTO t VALUES (1, 1)").await?;
    c.batch_execute("INSERT INTO t VALUES (2, 2)").await?;
    cancelled_while_waiting(&c, "INSERT INTO t VALUES (3, 3)", false, "overflow_timeout").await?;
    assert_eq!(query_i64(&c, "SELECT 7::int8").await?, 7);
    // The session's statement_timeout ends the wait too, in either protocol.
    c.batch_execute("SET statement_timeout = '300ms'").await?;
    timed_out(&c, "INSERT INTO t VALUES (4, 4)", false).await?;
    timed_out(&c, "INSERT INTO t VALUES (5, 5)", true).await?;
    c.batch_execute("RESET statement_timeout").await?;
    // A wait longer than the session's idle_session_timeout: the proxy keeps the backend from
    // ending the session (PostgreSQL: FATAL 57P05 after 1 s), and the write is acknowledged
    // once there is room.
    c.batch_execute("SET idle_session_timeout = '1s'").await?;
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        lock.batch_execute("COMMIT").await
    });
    c.batch_execute("INSERT INTO t VALUES (6, 6)").await?;
    c.batch_execute("RESET idle_session_timeout").await?;
    release.await??;
    assert_eq!(query_i64(&c, "SELECT count(*) FROM t").await?, 3);
    assert_eq!(
        query_i64(&c, "SELECT count(*) FROM t WHERE id BETWEEN 3 AND 5").await?,
        0
    );
    Ok(())
}

/// Writes acknowledged while `writebehind.disable` commits (another session's disable, or
/// this session's own before the proxy reloaded its catalog) are applied before the later
/// writes of the same keys, which pass through once the table is no longer write-behind.
/// Until 2026-12-03 no barrier waited for a table the catalog no longer had: its pending
/// writes shipped at the proxy's flush interval and overwrote the later ones, and the
/// session did not read its own write.
#[tokio::test]
async fn writes_acknowledged_across_a_disable_keep_their_order() -> anyhow::Result<()> {
    let (cluster, direct) = cluster_with_t().await?;
    direct
        .batch_execute("INSERT INTO t VALUES (1, 0), (2, 0)")
        .await?;
    let proxy = wb_proxy(&cluster, &["--admin-users", "postgres"])?;
    let a = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let b = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // a's first write: its table name and privileges are known from then on.
    a.batch_execute("UPDATE t SET v = 0 WHERE id = 2").await?;
    b.batch_execute("BEGIN; SELECT writebehind.disable('t')")
        .await?;
    // Still write-behind until b commits: acknowledged from memory.
    a.batch_execute("UPDATE t SET v = 1 WHERE id = 1").await?;
    b.batch_execute("COMMIT").await?;
    // The registry's notification reaches the proxy: then a's writes pass through.
    let admin = writebehind_tests::connect(&proxy.conninfo("postgres", "writebehind")).await?;
    let mut listed = true;
    for _ in 0..100 {
        let tables = admin.simple_query("SHOW TABLES").await?;
        listed = tables.iter().any(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(1) == Some("public.t"))
        });
        if !listed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!listed, "the proxy saw the disable");
    a.batch_execute("UPDATE t SET v = 2 WHERE id = 1").await?;
    assert_eq!(
        query_i64(&a, "SELECT v::int8 FROM t WHERE id = 1").await?,
        2
    );
    // This session's own disable, and a write right after it in the same string.
    a.batch_execute("SELECT writebehind.enable('t')").await?;
    a.batch_execute("UPDATE t SET v = 3 WHERE id = 2").await?;
    a.batch_execute("SELECT writebehind.disable('t')").await?;
    a.batch_execute("INSERT INTO t VALUES (3, 3)").await?;
    assert_eq!(
        query_i64(&a, "SELECT count(*) FROM t WHERE id = 3").await?,
        1
    );
    a.batch_execute("UPDATE t SET v = 4 WHERE id = 2").await?;
    a.execute("SELECT writebehind.flush()", &[]).await?;
    // A graceful stop (once the sessions ended) ships whatever is still pending: nothing
    // may be.
    drop((a, b, admin));
    let mut proxy = proxy;
    proxy.signal("TERM")?;
    assert_eq!(proxy.wait_exit(Duration::from_secs(30)).await?, Some(0));
    direct.execute("SELECT writebehind.flush()", &[]).await?;
    let rows: Vec<String> = direct
        .query("SELECT id || '=' || v FROM t ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, ["1=2", "2=4", "3=3"]);
    Ok(())
}

/// A transaction that wrote a row, then reads while another session's acknowledged write of
/// that row is pending: the barrier ships it, and the worker waits for the transaction's row
/// lock, so the barrier cannot end before the transaction does. The read goes on without it,
/// as in PostgreSQL, where the other write would be the one waiting; it applies after the
/// COMMIT. Before 2026-12-03 the read waited out the barrier timeout and failed (57P03),
/// aborting the transaction.
#[tokio::test]
async fn a_transaction_is_not_kept_waiting_for_its_own_row_lock() -> anyhow::Result<()> {
    let (cluster, direct) = cluster_with_t().await?;
    direct
        .batch_execute("INSERT INTO t VALUES (1, 0), (2, 0)")
        .await?;
    let proxy = wb_proxy(&cluster, &[])?;
    let a = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let b = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    a.batch_execute("BEGIN; UPDATE t SET v = 10 WHERE id = 2")
        .await?;
    b.batch_execute("UPDATE t SET v = 20 WHERE id = 2").await?;
    let started = std::time::Instant::now();
    assert_eq!(
        query_i64(&a, "SELECT v::int8 FROM t WHERE id = 2").await?,
        10
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the read waited {:?}",
        started.elapsed()
    );
    a.batch_execute("COMMIT").await?;
    b.execute("SELECT writebehind.flush()", &[]).await?;
    assert_eq!(
        query_i64(&direct, "SELECT v::int8 FROM t WHERE id = 2").await?,
        20
    );
    Ok(())
}
