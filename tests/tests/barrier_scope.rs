//! The read barrier's scope: a passed-through statement waits only for the write-behind tables
//! it may read. With a one-hour flush interval only barriers ship, so a direct connection to
//! PostgreSQL shows whether a statement through the proxy waited for the pending writes.

use std::time::{Duration, Instant};
use writebehind_tests::{command_tag as tag, Cluster, Proxy};

const SCHEMA: &str = "
    CREATE TABLE wb (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    INSERT INTO wb SELECT g, 0 FROM generate_series(1, 20) g;
    SELECT writebehind.enable('wb');
    CREATE TABLE other (id int PRIMARY KEY, v text);
    INSERT INTO other VALUES (1, 'x');
    CREATE TABLE c (id int PRIMARY KEY, wb_id int NOT NULL REFERENCES wb (id));
    CREATE FUNCTION wb_n(k int) RETURNS bigint LANGUAGE sql STABLE
        AS 'SELECT n FROM wb WHERE id = k';
    CREATE TABLE trig (id int PRIMARY KEY, seen bigint);
    CREATE FUNCTION trig_fill() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.seen := (SELECT n FROM wb WHERE id = NEW.id); RETURN NEW; END $$;
    CREATE TRIGGER trig_fill BEFORE INSERT ON trig FOR EACH ROW EXECUTE FUNCTION trig_fill();";

/// A proxy whose flusher never ships on its own: only barriers do.
fn lazy_proxy(cluster: &Cluster) -> anyhow::Result<Proxy> {
    Proxy::spawn(
        &cluster.url("postgres"),
        &["--durability", "memory", "--flush-interval", "1h"],
    )
}

async fn setup() -> anyhow::Result<(
    Cluster,
    tokio_postgres::Client,
    Proxy,
    tokio_postgres::Client,
)> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = lazy_proxy(&cluster)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    Ok((cluster, direct, proxy, c))
}

/// `wb.n` of key `id` as PostgreSQL has it (direct connection), if the row exists.
async fn applied(direct: &tokio_postgres::Client, id: i32) -> anyhow::Result<Option<i64>> {
    Ok(direct
        .query_opt("SELECT n FROM wb WHERE id = $1", &[&id])
        .await?
        .map(|r| r.get(0)))
}

/// The first column of the first row of a simple-protocol query.
async fn first(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<Option<String>> {
    Ok(c.simple_query(sql).await?.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
        _ => None,
    }))
}

/// An acknowledged increment of `wb.n` for key `id` (UPDATE 1 from memory).
async fn bump(c: &tokio_postgres::Client, id: i32) -> anyhow::Result<()> {
    let msgs = c
        .simple_query(&format!("UPDATE wb SET n = n + 1 WHERE id = {id}"))
        .await?;
    anyhow::ensure!(
        matches!(
            msgs.first(),
            Some(tokio_postgres::SimpleQueryMessage::CommandComplete(1))
        ),
        "UPDATE 1 expected"
    );
    Ok(())
}

#[tokio::test]
async fn statements_that_cannot_read_a_write_behind_table_do_not_wait() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup().await?;
    bump(&c, 1).await?;
    assert_eq!(
        applied(&direct, 1).await?,
        Some(0),
        "acknowledged, not shipped"
    );

    let unrelated = [
        "SELECT v FROM other WHERE id = 1",
        "SELECT 1",
        "SHOW statement_timeout",
        "SELECT 'wb', $$ SELECT n FROM wb $$ -- wb in a comment",
        "BEGIN; SELECT v FROM other; COMMIT",
        "SET application_name = 'scoped'",
        "LISTEN wake; UNLISTEN wake",
    ];
    for sql in unrelated {
        c.simple_query(sql).await?;
        assert_eq!(
            applied(&direct, 1).await?,
            Some(0),
            "{sql:?} passed through without a barrier"
        );
    }
    // A transaction block, statement by statement.
    for sql in ["BEGIN", "SELECT v FROM other", "SAVEPOINT s", "COMMIT"] {
        c.simple_query(sql).await?;
    }
    // Extended protocol (tokio-postgres prepares, binds and executes).
    let v: String = c
        .query_one("SELECT v FROM other WHERE id = $1", &[&1i32])
        .await?
        .get(0);
    assert_eq!(v, "x");
    let one: i32 = c.query_one("SELECT 1", &[]).await?.get(0);
    assert_eq!(one, 1);
    assert_eq!(
        applied(&direct, 1).await?,
        Some(0),
        "no statement above may read wb: nothing waited for its pending write"
    );
    let inbox: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.inbox", &[])
        .await?
        .get(0);
    assert_eq!(inbox, 0, "nothing was shipped");

    // Reading wb itself still waits.
    assert_eq!(
        first(&c, "SELECT n FROM wb WHERE id = 1").await?.as_deref(),
        Some("1")
    );
    assert_eq!(applied(&direct, 1).await?, Some(1));
    Ok(())
}

#[tokio::test]
async fn reads_of_the_write_behind_table_see_acknowledged_writes() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup().await?;
    let spellings = [
        "SELECT n FROM wb WHERE id = 2",
        "SELECT n FROM public.wb WHERE id = 2",
        "SELECT n FROM public.\"wb\" WHERE id = 2",
        "select N from PUBLIC.WB where ID = 2",
        "SELECT x.n FROM other o JOIN /* comment */ \"public\" . \"wb\" x ON x.id = o.id + 1",
        "SELECT 1; SELECT n FROM wb WHERE id = 2",
        "WITH t AS (SELECT * FROM wb) SELECT n FROM t WHERE id = 2",
    ];
    let mut expected = 0;
    for sql in spellings {
        bump(&c, 2).await?;
        expected += 1;
        let rows = c.simple_query(sql).await?;
        let seen: Vec<String> = rows
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        assert_eq!(
            seen.last().map(String::as_str),
            Some(expected.to_string().as_str()),
            "{sql:?} reads its own writes"
        );
    }
    // Extended protocol: named prepared statement, bound twice.
    let stmt = c.prepare("SELECT n FROM wb WHERE id = $1").await?;
    for _ in 0..2 {
        bump(&c, 2).await?;
        expected += 1;
        let n: i64 = c.query_one(&stmt, &[&2i32]).await?.get(0);
        assert_eq!(
            n, expected,
            "prepared read of wb sees the acknowledged write"
        );
    }
    // Unnamed statement (query_raw / parameterless query).
    bump(&c, 2).await?;
    expected += 1;
    let n: i64 = c
        .query_one("SELECT n FROM \"wb\" WHERE id = 2", &[])
        .await?
        .get(0);
    assert_eq!(n, expected);
    assert_eq!(applied(&direct, 2).await?, Some(expected));
    Ok(())
}

#[tokio::test]
async fn a_foreign_key_neighbour_waits_for_the_write_behind_table() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup().await?;
    // A key that exists only as an acknowledged, unshipped write.
    c.simple_query("INSERT INTO wb (id, n) VALUES (100, 7)")
        .await?;
    assert_eq!(applied(&direct, 100).await?, None, "not shipped yet");
    c.simple_query("INSERT INTO c VALUES (1, 100)").await?;
    assert_eq!(applied(&direct, 100).await?, Some(7));
    // A read of the child waits too.
    bump(&c, 100).await?;
    let children: i64 = c
        .query_one("SELECT count(*) FROM c WHERE wb_id = $1", &[&100i32])
        .await?
        .get(0);
    assert_eq!(children, 1);
    assert_eq!(
        applied(&direct, 100).await?,
        Some(8),
        "SELECT FROM c barriers wb"
    );
    Ok(())
}

#[tokio::test]
async fn views_functions_triggers_and_do_blocks_wait() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup().await?;

    // A SQL function reading wb.
    bump(&c, 3).await?;
    assert_eq!(first(&c, "SELECT wb_n(3)").await?.as_deref(), Some("1"));
    bump(&c, 3).await?;
    let n: i64 = c.query_one("SELECT wb_n($1)", &[&3i32]).await?.get(0);
    assert_eq!(n, 2, "extended protocol");

    // A plain table whose trigger reads wb.
    bump(&c, 4).await?;
    assert_eq!(
        first(&c, "INSERT INTO trig (id) VALUES (4) RETURNING seen")
            .await?
            .as_deref(),
        Some("1")
    );

    // A DO block.
    bump(&c, 5).await?;
    c.simple_query("DO $$ BEGIN PERFORM 1; END $$").await?;
    assert_eq!(
        applied(&direct, 5).await?,
        Some(1),
        "DO waits for everything"
    );

    // A view created through the proxy, read at once by the same session.
    c.simple_query("CREATE VIEW wb_view AS SELECT id, n FROM wb")
        .await?;
    bump(&c, 6).await?;
    assert_eq!(
        first(&c, "SELECT n FROM wb_view WHERE id = 6")
            .await?
            .as_deref(),
        Some("1")
    );

    // A view created by another connection after the proxy started: the proxy learns of it
    // from the `schema` notification. Until it arrives a read may miss the pending write.
    direct
        .batch_execute("CREATE VIEW wb_doubled AS SELECT id, 2 * n AS d FROM wb")
        .await?;
    let start = Instant::now();
    let mut expected = 0;
    loop {
        bump(&c, 7).await?;
        expected += 1;
        let d = first(&c, "SELECT d FROM wb_doubled WHERE id = 7").await?;
        if d == Some((2 * expected).to_string()) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the view created after the proxy started never got a barrier (last {d:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // From then on, every read of it waits.
    for _ in 0..3 {
        bump(&c, 7).await?;
        expected += 1;
        assert_eq!(
            first(&c, "SELECT d FROM wb_doubled WHERE id = 7").await?,
            Some((2 * expected).to_string())
        );
    }
    Ok(())
}

/// A table enabled with `read_barrier => false`: plain reads skip the wait (eventual
/// consistency), writes that pass through still wait for the key's pending changes.
#[tokio::test]
async fn a_table_without_read_barrier_is_read_without_waiting() -> anyhow::Result<()> {
    let (cluster, direct) = Cluster::start_with_schema(
        "CREATE TABLE hits (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
         INSERT INTO hits VALUES (1, 0);
         SELECT writebehind.enable('hits', read_barrier => false);",
    )
    .await?;
    let proxy = lazy_proxy(&cluster)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for _ in 0..5 {
        assert_eq!(tag(&c, "UPDATE hits SET n = n + 1 WHERE id = 1").await?, 1);
    }
    // Eventual consistency: the read does not wait for the pending increments.
    let n: i64 = c
        .query_one("SELECT n FROM hits WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(n, 0, "read_barrier => false: no barrier before the read");
    // They are not lost: a SIGTERM ships them (once the session has ended).
    drop(c);
    let mut proxy = proxy;
    proxy.signal("TERM")?;
    assert_eq!(proxy.wait_exit(Duration::from_secs(30)).await?, Some(0));
    direct
        .execute("SELECT writebehind.flush('hits')", &[])
        .await?;
    let n: i64 = direct
        .query_one("SELECT n FROM hits WHERE id = 1", &[])
        .await?
        .get(0);
    assert_eq!(n, 5);

    // A write that passes through waits for the pending changes all the same: they come
    // first in the key's order. Synchronous by the session's choice, not by the key, and at
    // the pending bound with overflow = sync.
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &[
            "--durability",
            "memory",
            "--flush-interval",
            "1h",
            "--max-pending-rows",
            "3",
            "--overflow",
            "sync",
        ],
    )?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let n = || async {
        anyhow::Ok(
            direct
                .query_one("SELECT n FROM hits WHERE id = 2", &[])
                .await?
                .get::<_, i64>(0),
        )
    };
    assert_eq!(tag(&c, "INSERT INTO hits VALUES (2, 1)").await?, 1);
    c.batch_execute("SET writebehind.sync = on").await?;
    assert_eq!(tag(&c, "UPDATE hits SET n = n * 10 WHERE id = 2").await?, 1);
    c.batch_execute("RESET writebehind.sync").await?;
    assert_eq!(
        n().await?,
        10,
        "the synchronous update came after the insert"
    );
    assert_eq!(tag(&c, "UPDATE hits SET n = n + 1 WHERE id = 2").await?, 1);
    assert_eq!(
        tag(&c, "UPDATE hits SET n = n * 10 WHERE id = 2 AND n > 0").await?,
        1
    );
    assert_eq!(
        n().await?,
        110,
        "the update not by the key came after the increment"
    );
    for _ in 0..3 {
        assert_eq!(tag(&c, "UPDATE hits SET n = n + 1 WHERE id = 2").await?, 1);
    }
    // The fourth is at the bound: it passes through, after the three pending ones.
    assert_eq!(tag(&c, "UPDATE hits SET n = 0 WHERE id = 2").await?, 1);
    c.batch_execute("SELECT writebehind.flush()").await?;
    assert_eq!(n().await?, 0, "overflow = sync wrote last");
    Ok(())
}

/// Found by a review on 2026-12-03 (each part fails against 3b109de): a table EXPLAIN ANALYZE
/// makes, a built-in that runs SQL called by a quoted name, the first statement of another
/// session's REPEATABLE READ transaction, and a sequence the table's default draws from.
#[tokio::test]
async fn reads_reached_in_less_obvious_ways_wait() -> anyhow::Result<()> {
    // Everything made before the proxy starts: no catalog reload races the statements.
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct
        .batch_execute(
            "CREATE TABLE ws (id int PRIMARY KEY, n int, s serial);
             SELECT writebehind.enable('ws');",
        )
        .await?;
    let proxy = lazy_proxy(&cluster)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // EXPLAIN ANALYZE CREATE TEMP TABLE wb: from then on `wb` is the temporary table, which
    // PostgreSQL writes (and the session reads) and the proxy must not acknowledge for. (The
    // session has resolved `wb` already.)
    bump(&c, 1).await?;
    c.batch_execute("EXPLAIN (ANALYZE) CREATE TEMP TABLE wb AS SELECT id, n FROM wb WHERE false")
        .await?;
    c.batch_execute("INSERT INTO wb (id, n) VALUES (100, 1)")
        .await?;
    assert_eq!(
        first(&c, "SELECT count(*) FROM wb").await?.as_deref(),
        Some("1"),
        "the session's own temporary table holds its row"
    );
    assert_eq!(applied(&direct, 100).await?, None, "public.wb never got it");

    // A second session: quoted built-ins, and a REPEATABLE READ snapshot taken after BEGIN.
    let d = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    bump(&d, 2).await?;
    assert_eq!(
        first(
            &d,
            "SELECT \"query_to_xml\"('SELECT n FROM public.wb WHERE id = 2', false, true, '')::text LIKE '%<n>1</n>%'"
        )
        .await?
        .as_deref(),
        Some("t")
    );
    let r = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    r.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await?;
    bump(&d, 3).await?; // acknowledged before r's snapshot is taken
    assert_eq!(
        first(&r, "SELECT 'snapshot'").await?.as_deref(),
        Some("snapshot")
    );
    assert_eq!(
        first(&r, "SELECT n FROM public.wb WHERE id = 3")
            .await?
            .as_deref(),
        Some("1"),
        "the snapshot holds what was acknowledged before it"
    );
    r.batch_execute("COMMIT").await?;

    // The serial column's sequence: the acknowledged insert has drawn from it.
    d.batch_execute("INSERT INTO ws (id, n) VALUES (1, 1)")
        .await?;
    assert_eq!(
        first(&d, "SELECT is_called FROM ws_s_seq")
            .await?
            .as_deref(),
        Some("t")
    );
    drop(cluster);
    Ok(())
}
