//! The write-behind path in the extended protocol: prepared writes from tokio-postgres
//! (binary parameters, Describe answered with PostgreSQL's inferred types), pgbench in
//! every protocol mode, psycopg 3 (server-side binding, prepared statements,
//! pipelines with an error in the middle), and values the proxy cannot vouch for passing
//! through to PostgreSQL's own error.

use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use writebehind_tests::{run_cmd, Cluster, Proxy};

const SCHEMA: &str =
    "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note varchar(5));
    INSERT INTO counters SELECT g, 0, NULL FROM generate_series(1, 20) g;
    SELECT writebehind.enable('counters');";

async fn count(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

#[tokio::test]
async fn prepared_writes_are_acknowledged_from_memory_with_inferred_types() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    // Only barriers ship: what the table holds before a read proves acknowledgement.
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--flush-interval", "1h"])?;
    let conninfo = proxy.conninfo("postgres", "postgres");
    let c = writebehind_tests::connect(&conninfo).await?;

    let inc = c
        .prepare("UPDATE counters SET n = n + $1 WHERE id = $2")
        .await?;
    assert_eq!(
        inc.params(),
        &[Type::INT8, Type::INT4],
        "Describe answered with the types PostgreSQL infers from the columns"
    );
    assert!(inc.columns().is_empty(), "NoData");
    for _ in 0..10 {
        assert_eq!(c.execute(&inc, &[&3i64, &1i32]).await?, 1);
    }
    let ins = c
        .prepare("INSERT INTO counters (id, n, note) VALUES ($1, $2, $3)")
        .await?;
    assert_eq!(c.execute(&ins, &[&100i32, &7i64, &"hi"]).await?, 1);
    let del = c.prepare("DELETE FROM counters WHERE id = $1").await?;
    assert_eq!(c.execute(&del, &[&20i32]).await?, 1);
    // An unprepared one-off statement with parameters (unnamed statement, one round trip).
    assert_eq!(
        c.execute(
            "UPDATE counters SET note = $1 WHERE id = $2",
            &[&"x", &2i32]
        )
        .await?,
        1
    );
    assert_eq!(
        (
            count(&direct, "SELECT count(*) FROM writebehind.inbox").await?,
            count(&direct, "SELECT n FROM counters WHERE id = 1").await?,
            count(&direct, "SELECT count(*) FROM counters").await?,
        ),
        (0, 0, 20),
        "nothing reached PostgreSQL: acknowledged from memory"
    );
    // The session reads its own writes (the barrier ships and applies them first).
    let row = c
        .query_one("SELECT n FROM counters WHERE id = $1", &[&1i32])
        .await?;
    assert_eq!(row.get::<_, i64>(0), 30);
    assert_eq!(
        count(&c, "SELECT count(*) FROM counters WHERE id IN (100, 20)").await?,
        1
    );
    let note: Option<String> = c
        .query_one("SELECT note FROM counters WHERE id = 2", &[])
        .await?
        .get(0);
    assert_eq!(note.as_deref(), Some("x"));

    // Concurrent prepared increments from 8 sessions, pipelined within each session.
    let mut tasks = Vec::new();
    for s in 0..8i32 {
        let conninfo = conninfo.clone();
        tasks.push(tokio::spawn(async move {
            let c = writebehind_tests::connect(&conninfo).await?;
            let inc = c
                .prepare("UPDATE counters SET n = n + $1 WHERE id = $2")
                .await?;
            for round in 0..25i32 {
                // 10 statements in flight at once: responses must stay in order.
                let ids: Vec<i32> = (0..10i32).map(|i| (s * 3 + round + i) % 19 + 1).collect();
                let (c, inc) = (&c, &inc);
                let futs: Vec<_> = ids
                    .iter()
                    .map(|id| async move { c.execute(inc, &[&1i64, id]).await })
                    .collect();
                for n in futures::future::try_join_all(futs).await? {
                    anyhow::ensure!(n == 1, "tag UPDATE 1");
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let sum = count(&c, "SELECT sum(n)::bigint FROM counters WHERE id < 100").await?;
    assert_eq!(sum, 30 + 8 * 25 * 10, "every increment counted once");
    Ok(())
}

#[tokio::test]
async fn what_the_proxy_cannot_vouch_for_gets_postgres_own_error() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--flush-interval", "1h"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let set_note = c
        .prepare("UPDATE counters SET note = $1 WHERE id = $2")
        .await?;
    assert_eq!(c.execute(&set_note, &[&"ok", &3i32]).await?, 1);
    // Too long for varchar(5): the prepared statement is sent to PostgreSQL (it only existed
    // in the proxy so far) and PostgreSQL raises 22001.
    let err = c
        .execute(&set_note, &[&"far too long", &3i32])
        .await
        .expect_err("22001");
    assert_eq!(err.code(), Some(&SqlState::STRING_DATA_RIGHT_TRUNCATION));
    // The statement still works afterwards, from memory again.
    assert_eq!(c.execute(&set_note, &[&"fine", &4i32]).await?, 1);
    // A key that violates NOT NULL: PostgreSQL's 23502.
    let ins = c
        .prepare("INSERT INTO counters (id, n) VALUES ($1, $2)")
        .await?;
    let err = c
        .execute(&ins, &[&Option::<i32>::None, &1i64])
        .await
        .expect_err("23502");
    assert_eq!(err.code(), Some(&SqlState::NOT_NULL_VIOLATION));
    // A statement with a cast on the parameter is not acknowledged: it runs in PostgreSQL.
    assert_eq!(
        c.execute(
            "UPDATE counters SET n = n + $1::int WHERE id = $2",
            &[&5i32, &5i32]
        )
        .await?,
        1
    );
    let notes: Vec<(i32, Option<String>, i64)> = c
        .query(
            "SELECT id, note, n FROM counters WHERE id IN (3, 4, 5) ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        notes,
        vec![
            (3, Some("ok".into()), 0),
            (4, Some("fine".into()), 0),
            (5, None, 5)
        ]
    );
    let dead = count(&direct, "SELECT count(*) FROM writebehind.dead_letters").await?;
    assert_eq!(dead, 0);
    Ok(())
}

#[tokio::test]
async fn pgbench_increments_sum_exactly_in_every_protocol_mode() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &[])?;
    let dir = std::env::temp_dir().join(format!("wbpgbx-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("inc.sql");
    std::fs::write(
        &script,
        "\\set id random(1, 20)\nUPDATE counters SET n = n + 1 WHERE id = :id;\n",
    )?;
    for mode in ["simple", "prepared", "extended"] {
        let (ok, out, err) = run_cmd(std::process::Command::new("pgbench").args([
            "-n",
            "-M",
            mode,
            "-c",
            "8",
            "-j",
            "2",
            "-t",
            "500",
            "-f",
            &script.to_string_lossy(),
            "-h",
            "127.0.0.1",
            "-p",
            &proxy.port.to_string(),
            "-U",
            "postgres",
            "postgres",
        ]))?;
        assert!(ok, "{mode}: {out}{err}");
        assert!(
            out.contains("number of transactions actually processed: 4000/4000"),
            "{mode}: {out}"
        );
    }
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let sum: i64 = c
        .query_one("SELECT sum(n)::bigint FROM counters", &[])
        .await?
        .get(0);
    assert_eq!(sum, 3 * 4000);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[tokio::test]
async fn psycopg3_prepared_pipelined_and_failing_pipelines() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--flush-interval", "1h"])?;
    python_script("psycopg_writebehind.py", &proxy, &cluster)?;
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

/// Runs `tests/python/<script> PROXY_PORT DIRECT_PORT` with the project's Python (psycopg 3);
/// its output is the error if it fails.
fn python_script(script: &str, proxy: &Proxy, cluster: &Cluster) -> anyhow::Result<()> {
    let python = writebehind_tests::repo_root().join(".venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} missing: run scripts/setup",
        python.display()
    );
    let path = writebehind_tests::repo_root()
        .join("tests/python")
        .join(script);
    let (ok, out, err) = run_cmd(
        std::process::Command::new(python)
            .arg(path)
            .arg(proxy.port.to_string())
            .arg(cluster.port.to_string()),
    )?;
    anyhow::ensure!(ok, "{script} failed:\n{out}\n{err}");
    Ok(())
}

/// Message sequences whose replies through the proxy must be PostgreSQL's own, in a database
/// with a write-behind table (tests/python/protocol_parity.py compares them with a direct
/// session): a Parse PostgreSQL skipped after an error, a local statement first used in a
/// failed transaction, EXECUTE/DEALLOCATE/pg_prepared_statements and a second Parse of a name,
/// the unnamed statement beside a name lookup, an error answering a Flush, COPY FROM STDIN
/// after DDL; psycopg's failing pipeline and COPY after TRUNCATE in a transaction (both hung).
#[tokio::test]
async fn protocol_sequences_get_postgres_own_replies() -> anyhow::Result<()> {
    let (cluster, _direct) = Cluster::start_with_schema(
        "CREATE TABLE wbt (id int PRIMARY KEY, n int);
         SELECT writebehind.enable('wbt');",
    )
    .await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--durability", "memory"])?;
    python_script("protocol_parity.py", &proxy, &cluster)
}

/// A cluster with the write-behind table `table (id int PRIMARY KEY, n int)`, a direct client,
/// a proxy (`memory`), and a raw protocol session through it.
async fn raw_session_on(
    table: &str,
) -> anyhow::Result<(Cluster, tokio_postgres::Client, Proxy, std::net::TcpStream)> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(&format!(
            "CREATE TABLE {table} (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
             SELECT writebehind.enable('{table}');"
        ))
        .await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--durability", "memory"])?;
    let s = writebehind_tests::raw::session(proxy.port, "postgres", "postgres")?;
    Ok((cluster, direct, proxy, s))
}

/// Parse/Bind/Execute of `sql` with text parameters `params`, then Sync if `sync`.
fn extended(sql: &str, params: &[&str], sync: bool) -> Vec<u8> {
    use writebehind_tests::raw;
    let mut parse = raw::cstr(&["", sql]);
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut bind = raw::cstr(&["", ""]);
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        bind.extend_from_slice(&(p.len() as i32).to_be_bytes());
        bind.extend_from_slice(p.as_bytes());
    }
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut execute = raw::cstr(&[""]);
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut m = raw::message(b'P', &parse);
    m.extend(raw::message(b'B', &bind));
    m.extend(raw::message(b'E', &execute));
    if sync {
        m.extend(raw::message(b'S', &[]));
    }
    m
}

/// An extended-protocol COPY FROM STDIN whose Sync came before its data (PostgreSQL ignores
/// it) and whose CopyFail is followed by a write group: PostgreSQL answers the COPY's error
/// and skips the write up to its Sync. Before 2026-12-03 the proxy took the session for idle
/// after the CopyFail, acknowledged the write ahead of the error and applied it.
#[tokio::test]
async fn a_write_after_an_extended_copy_waits_for_its_sync() -> anyhow::Result<()> {
    use std::io::Write;
    use writebehind_tests::raw;
    let (_cluster, direct, _proxy, mut s) = raw_session_on("cc").await?;
    let insert = "INSERT INTO cc (id, n) VALUES ($1, $2)";
    // A first write, acknowledged: the session has resolved `cc`.
    s.write_all(&extended(insert, &["9", "9"], true))?;
    let first: Vec<u8> = raw::read_to_ready(&mut s)?.iter().map(|m| m.0).collect();
    assert_eq!(first, b"12CZ");
    s.write_all(&extended("COPY cc (id, n) FROM STDIN", &[], true))?;
    let mut got = Vec::new();
    while got.last() != Some(&b'G') {
        got.push(raw::read_message(&mut s)?.0);
    }
    assert_eq!(got, b"12G", "ParseComplete, BindComplete, CopyInResponse");
    let mut m = raw::message(b'd', b"1\t1\n");
    m.extend(raw::message(b'f', &raw::cstr(&["nope"])));
    m.extend(extended(insert, &["2", "5"], true));
    s.write_all(&m)?;
    let replies = raw::read_to_ready(&mut s)?;
    let types: Vec<u8> = replies.iter().map(|m| m.0).collect();
    assert_eq!(
        types, b"EZ",
        "the COPY's error, then the write group's ReadyForQuery"
    );
    assert!(
        String::from_utf8_lossy(&replies[0].1).contains("57014"),
        "COPY from stdin failed"
    );
    direct
        .execute("SELECT writebehind.flush(NULL, '30 s')", &[])
        .await?;
    let ids: Vec<i32> = direct
        .query("SELECT id FROM cc ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![9], "neither the COPY's row nor the skipped write");
    Ok(())
}

/// Parse and Bind of a write, then a Flush, then Execute and Sync: PostgreSQL runs the write.
/// Before 2026-12-03 the proxy answered the Parse and Bind at the Flush and kept no portal, so
/// the Execute reached PostgreSQL, which had never seen the Bind: 34000, nothing written.
#[tokio::test]
async fn a_portal_bound_before_a_flush_is_executed_after_it() -> anyhow::Result<()> {
    use std::io::Write;
    use writebehind_tests::raw;
    let (_cluster, direct, _proxy, mut s) = raw_session_on("cp").await?;
    // Parse, Bind (no Execute), Flush.
    let group = extended("INSERT INTO cp (id, n) VALUES ($1, $2)", &["1", "7"], false);
    let execute_at = group.len() - 10; // Execute: 'E', length 9, "" and a row limit
    let mut m = group[..execute_at].to_vec();
    m.extend(raw::message(b'H', &[]));
    s.write_all(&m)?;
    let got = [raw::read_message(&mut s)?.0, raw::read_message(&mut s)?.0];
    assert_eq!(&got, b"12");
    let mut m = group[execute_at..].to_vec();
    m.extend(raw::message(b'S', &[]));
    s.write_all(&m)?;
    let types: Vec<u8> = raw::read_to_ready(&mut s)?.iter().map(|m| m.0).collect();
    assert_eq!(types, b"CZ", "INSERT 0 1, then ReadyForQuery");
    direct
        .execute("SELECT writebehind.flush(NULL, '30 s')", &[])
        .await?;
    let n: i32 = direct
        .query_one("SELECT n FROM cp WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(n, 7);
    Ok(())
}

/// A Close of a prepared write, then a Bind of it in the same group: PostgreSQL no longer has
/// the statement (26000) and skips the rest up to Sync. Before 2026-12-03 the proxy bound the
/// statement it still remembered, acknowledged the write and applied it.
#[tokio::test]
async fn a_statement_closed_earlier_in_the_group_is_not_bound() -> anyhow::Result<()> {
    use std::io::Write;
    use writebehind_tests::raw;
    let (_cluster, direct, _proxy, mut s) = raw_session_on("cb").await?;
    let mut parse = raw::cstr(&["s1", "INSERT INTO cb (id, n) VALUES ($1, 1)"]);
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut m = raw::message(b'P', &parse);
    m.extend(raw::message(b'S', &[]));
    s.write_all(&m)?;
    let types: Vec<u8> = raw::read_to_ready(&mut s)?.iter().map(|m| m.0).collect();
    assert_eq!(types, b"1Z");
    let mut bind = raw::cstr(&["", "s1"]);
    bind.extend_from_slice(&0i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&1i32.to_be_bytes());
    bind.extend_from_slice(b"1");
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut execute = raw::cstr(&[""]);
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut close = vec![b'S'];
    close.extend(raw::cstr(&["s1"]));
    let mut m = raw::message(b'C', &close);
    m.extend(raw::message(b'B', &bind));
    m.extend(raw::message(b'E', &execute));
    m.extend(raw::message(b'S', &[]));
    s.write_all(&m)?;
    let replies = raw::read_to_ready(&mut s)?;
    let types: Vec<u8> = replies.iter().map(|m| m.0).collect();
    assert_eq!(types, b"3EZ", "CloseComplete, then the Bind's error");
    assert!(
        String::from_utf8_lossy(&replies[1].1).contains("26000"),
        "{:?}",
        String::from_utf8_lossy(&replies[1].1)
    );
    direct
        .execute("SELECT writebehind.flush(NULL, '30 s')", &[])
        .await?;
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM cb", &[])
        .await?
        .get(0);
    assert_eq!(rows, 0);
    Ok(())
}

/// A statement prepared (and described) locally reaches PostgreSQL only when something that
/// passes through uses it. If another session changed its column's type meanwhile
/// (`integer` → `bigint`), PostgreSQL must still take the parameter types the client was told:
/// binary parameters of four bytes. Before 2026-12-03 the client's own Parse (no types) went
/// up, PostgreSQL inferred `bigint` and the Bind failed with 08P01 (asyncpg after such a
/// migration), where directly the statement keeps its types.
#[tokio::test]
async fn a_statement_materialized_late_keeps_the_types_it_was_described_with() -> anyhow::Result<()>
{
    use std::io::Write;
    use writebehind_tests::raw;
    let (_cluster, direct, _proxy, mut s) = raw_session_on("mg").await?;
    let mut parse = raw::cstr(&["s1", "INSERT INTO mg (id, n) VALUES ($1, $2)"]);
    parse.extend_from_slice(&0i16.to_be_bytes());
    let mut describe = vec![b'S'];
    describe.extend(raw::cstr(&["s1"]));
    let mut m = raw::message(b'P', &parse);
    m.extend(raw::message(b'D', &describe));
    m.extend(raw::message(b'S', &[]));
    s.write_all(&m)?;
    let replies = raw::read_to_ready(&mut s)?;
    let types: Vec<u8> = replies.iter().map(|m| m.0).collect();
    assert_eq!(types, b"1tnZ");
    // ParameterDescription: two parameters, both int4 (oid 23).
    assert_eq!(replies[1].1, [0, 2, 0, 0, 0, 23, 0, 0, 0, 23]);
    direct
        .batch_execute("ALTER TABLE mg ALTER COLUMN n TYPE bigint")
        .await?;
    // Once the proxy has reloaded its catalog, the write passes through (its statement
    // materialized first); binary int4 parameters, as the client was told.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut bind = raw::cstr(&["", "s1"]);
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&1i16.to_be_bytes());
    bind.extend_from_slice(&2i16.to_be_bytes());
    for v in [1i32, 7] {
        bind.extend_from_slice(&4i32.to_be_bytes());
        bind.extend_from_slice(&v.to_be_bytes());
    }
    bind.extend_from_slice(&0i16.to_be_bytes());
    let mut execute = raw::cstr(&[""]);
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut m = raw::message(b'B', &bind);
    m.extend(raw::message(b'E', &execute));
    m.extend(raw::message(b'S', &[]));
    s.write_all(&m)?;
    let replies = raw::read_to_ready(&mut s)?;
    let types: Vec<u8> = replies.iter().map(|m| m.0).collect();
    assert_eq!(
        types,
        b"2CZ",
        "{:?}",
        replies
            .iter()
            .map(|r| String::from_utf8_lossy(&r.1).into_owned())
            .collect::<Vec<_>>()
    );
    direct
        .execute("SELECT writebehind.flush(NULL, '30 s')", &[])
        .await?;
    let n: i64 = direct
        .query_one("SELECT n FROM mg WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(n, 7);
    Ok(())
}
