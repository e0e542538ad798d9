//! Per-table flush intervals (`writebehind.enable(..., flush_interval => ...)`): a table's
//! acknowledged change ships within its own interval, a slower table's change waits for its
//! own, changes of a slow table queued before a due one ship with it (a batch is a prefix of
//! the queue), and `writebehind.alter(..., flush_interval => ...)` takes effect once the proxy
//! reloaded its catalog. Applied rows are read directly from PostgreSQL: a read through the
//! proxy would pass a read barrier, which ships everything.

use std::time::{Duration, Instant};
use writebehind_tests::{query_i64, Cluster, Proxy};

const SCHEMA: &str = "CREATE TABLE fast (id int PRIMARY KEY, n int NOT NULL);
    CREATE TABLE slow (id int PRIMARY KEY, n int NOT NULL);
    SELECT writebehind.enable('fast');
    SELECT writebehind.enable('slow', flush_interval => '3 s');";

/// Whether row `id` of `table` is applied (read directly from PostgreSQL).
async fn applied(direct: &tokio_postgres::Client, table: &str, id: i32) -> anyhow::Result<bool> {
    Ok(query_i64(
        direct,
        &format!("SELECT count(*) FROM {table} WHERE id = {id}"),
    )
    .await?
        == 1)
}

/// Polls until row `id` of `table` is applied; returns how long after `since` it was seen,
/// or fails after `timeout` from `since`.
async fn applied_within(
    direct: &tokio_postgres::Client,
    table: &str,
    id: i32,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    loop {
        if applied(direct, table, id).await? {
            return Ok(since.elapsed());
        }
        anyhow::ensure!(
            since.elapsed() < timeout,
            "{table} row {id} not applied within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_table_ships_within_its_own_flush_interval() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    // The proxy-wide flush_interval stays at its default, 100 ms.
    let proxy = Proxy::spawn(&cluster.url("postgres"), &[])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // Warm up: the database's runtime starts and the privileges are checked once.
    c.simple_query("INSERT INTO fast VALUES (0, 0)").await?;
    c.simple_query("INSERT INTO slow VALUES (0, 0)").await?;
    applied_within(&direct, "slow", 0, Instant::now(), Duration::from_secs(10)).await?;

    // A fast change then a slow one: the fast table's round ships up to its own change, the
    // slow change queued after it waits for its 3 s.
    let t0 = Instant::now();
    c.simple_query("INSERT INTO fast VALUES (1, 1)").await?;
    c.simple_query("INSERT INTO slow VALUES (1, 1)").await?;
    let fast = applied_within(&direct, "fast", 1, t0, Duration::from_secs(2)).await?;
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(t0.elapsed())).await;
    assert!(
        !applied(&direct, "slow", 1).await?,
        "the 3 s table's change was applied within {:?} (fast one after {fast:?})",
        t0.elapsed()
    );
    let slow = applied_within(&direct, "slow", 1, t0, Duration::from_secs(6)).await?;
    assert!(
        slow >= Duration::from_millis(2500),
        "the 3 s table's change shipped after {slow:?}"
    );

    // A slow change then a fast one: a batch is a prefix of the queue, so the slow change
    // ships with the fast one, earlier than its own interval.
    let t1 = Instant::now();
    c.simple_query("INSERT INTO slow VALUES (2, 2)").await?;
    c.simple_query("INSERT INTO fast VALUES (2, 2)").await?;
    applied_within(&direct, "fast", 2, t1, Duration::from_secs(2)).await?;
    let slow = applied_within(&direct, "slow", 2, t1, Duration::from_secs(2)).await?;
    assert!(
        slow < Duration::from_millis(2500),
        "queued before the fast change, shipped after {slow:?}"
    );

    // alter() shortens the slow table's interval once the catalog reload (NOTIFY) is in.
    direct
        .batch_execute("SELECT writebehind.alter('slow', flush_interval => '100 ms')")
        .await?;
    let reloaded = Instant::now() + Duration::from_secs(10);
    let mut id = 10;
    loop {
        let t = Instant::now();
        c.simple_query(&format!("INSERT INTO slow VALUES ({id}, {id})"))
            .await?;
        let took = applied_within(&direct, "slow", id, t, Duration::from_secs(6)).await?;
        if took < Duration::from_millis(1500) {
            break;
        }
        anyhow::ensure!(
            Instant::now() < reloaded,
            "alter(flush_interval => '100 ms') not in effect: a change took {took:?}"
        );
        id += 1;
    }
    // And back to a long interval: a new change waits again.
    direct
        .batch_execute("SELECT writebehind.alter('slow', flush_interval => '1 h')")
        .await?;
    // (Give the reload time: before it, the change would ship at 100 ms.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.simple_query("INSERT INTO slow VALUES (100, 100)").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !applied(&direct, "slow", 100).await?,
        "applied although the table's flush_interval is 1 h"
    );
    Ok(())
}
