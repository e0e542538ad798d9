//! The extension's SQL interface around the write path: registry options validated with
//! 22023/22004, dead letters visible only to readers of their table and retried by an
//! administrator with the status still adding up, a disabled append table still applying what
//! proxies acknowledged before they heard of the disable, and `writebehind.sync` followed
//! however it is set (a role default here).

use std::time::Duration;
use tokio_postgres::error::SqlState;
use writebehind_tests::{query_i64, settled_status, Cluster, Proxy};

async fn code(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    c.batch_execute(sql)
        .await
        .err()
        .and_then(|e| e.code().map(|c| c.code().to_string()))
}

#[tokio::test]
async fn registry_options_are_validated() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let c = cluster.connect("postgres").await?;
    c.batch_execute(
        "CREATE TABLE k (id int PRIMARY KEY, v int);
         CREATE TABLE ap (msg text);
         SELECT writebehind.enable('k', on_conflict => 'ignore');
         SELECT writebehind.enable('ap', mode => 'append');",
    )
    .await?;
    for (sql, expected) in [
        // On an append table nothing conflicts: no policy but upsert, however it is reached.
        ("SELECT writebehind.alter('ap', on_conflict => 'ignore')", "22023"),
        ("SELECT writebehind.alter('k', mode => 'append')", "22023"),
        // A bounded interval: a larger one overflowed the proxies' catalog query.
        (
            "SELECT writebehind.alter('k', flush_interval => '2147483647 days')",
            "22023",
        ),
        (
            "CREATE TABLE k2 (id int PRIMARY KEY); SELECT writebehind.enable('k2', flush_interval => '2 days')",
            "22023",
        ),
        ("SELECT writebehind.flush('k', timeout => NULL)", "22004"),
    ] {
        assert_eq!(code(&c, sql).await.as_deref(), Some(expected), "{sql}");
    }
    c.batch_execute("SELECT writebehind.alter('k', flush_interval => '1 day')")
        .await?;
    let on_conflict: String = c
        .query_one(
            "SELECT on_conflict FROM writebehind.tables WHERE relid = 'ap'::regclass",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(on_conflict, "upsert");
    Ok(())
}

#[tokio::test]
async fn dead_letters_are_for_readers_of_their_table_and_retried_by_an_administrator(
) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let admin = cluster.connect("postgres").await?;
    admin
        .batch_execute(
            "CREATE TABLE d (id int PRIMARY KEY, n int CHECK (n < 10), secret text);
             INSERT INTO d VALUES (1, 5, 'x');
             SELECT writebehind.enable('d');
             CREATE ROLE outsider LOGIN; CREATE ROLE reader LOGIN;
             GRANT SELECT ON d TO reader;",
        )
        .await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--durability", "memory"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.batch_execute("UPDATE d SET n = 20, secret = 'ssn 123' WHERE id = 1")
        .await?;
    c.batch_execute("SELECT writebehind.flush()").await?;
    assert_eq!(
        query_i64(&admin, "SELECT count(*) FROM writebehind.dead_letters").await?,
        1
    );
    let as_role = |role: &str| format!("{} user={role}", cluster.conninfo("postgres"));
    let outsider = writebehind_tests::connect(&as_role("outsider")).await?;
    let reader = writebehind_tests::connect(&as_role("reader")).await?;
    assert_eq!(
        query_i64(&outsider, "SELECT count(*) FROM writebehind.dead_letters").await?,
        0,
        "a role that may not read d does not see its rows in dead letters"
    );
    assert_eq!(
        query_i64(&reader, "SELECT count(*) FROM writebehind.dead_letters").await?,
        1
    );
    let refused = reader
        .query_one("SELECT writebehind.retry_dead_letters('d')", &[])
        .await
        .expect_err("only an administrator retries");
    assert_eq!(refused.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));

    admin
        .batch_execute("ALTER TABLE d DROP CONSTRAINT d_n_check")
        .await?;
    let retried = query_i64(&admin, "SELECT writebehind.retry_dead_letters('d')").await?;
    assert_eq!(retried, 1);
    admin.batch_execute("SELECT writebehind.flush()").await?;
    assert_eq!(query_i64(&admin, "SELECT n::int8 FROM d").await?, 20);
    let status = settled_status(&admin, "d", Duration::from_secs(10)).await?;
    assert!(status.adds_up(), "{status:?}");
    assert_eq!(status.dead_letters, 0, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn a_disabled_append_table_with_a_key_applies_what_proxies_still_held() -> anyhow::Result<()>
{
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE ev (id bigserial PRIMARY KEY, msg text);
             SELECT writebehind.enable('ev', mode => 'append');",
        )
        .await?;
    let mut proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--durability", "memory", "--flush-interval", "1h"],
    )?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for i in 0..3 {
        c.batch_execute(&format!("INSERT INTO ev (msg) VALUES ('m{i}')"))
            .await?;
    }
    // Disabled while the proxy still holds the three: they ship after it committed.
    direct
        .batch_execute("SELECT writebehind.disable('ev')")
        .await?;
    drop(c);
    proxy.signal("TERM")?;
    assert_eq!(proxy.wait_exit(Duration::from_secs(30)).await?, Some(0));
    direct.batch_execute("SELECT writebehind.flush()").await?;
    assert_eq!(
        query_i64(&direct, "SELECT count(*) FROM writebehind.dead_letters").await?,
        0
    );
    assert_eq!(query_i64(&direct, "SELECT count(*) FROM ev").await?, 3);
    Ok(())
}

#[tokio::test]
async fn a_role_default_for_writebehind_sync_is_followed() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE d (id int PRIMARY KEY, n int CHECK (n < 10));
             INSERT INTO d VALUES (42, 1);
             SELECT writebehind.enable('d');
             CREATE ROLE careful LOGIN; GRANT SELECT, UPDATE ON d TO careful;
             ALTER ROLE careful SET writebehind.sync = on;",
        )
        .await?;
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--durability", "memory", "--flush-interval", "1h"],
    )?;
    let careful = writebehind_tests::connect(&proxy.conninfo("careful", "postgres")).await?;
    // Synchronous: PostgreSQL's CHECK answers, not a dead letter later.
    let err = careful
        .batch_execute("UPDATE d SET n = 99 WHERE id = 42")
        .await
        .expect_err("the CHECK refuses it");
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err}");
    careful
        .batch_execute("UPDATE d SET n = 3 WHERE id = 42")
        .await?;
    assert_eq!(
        query_i64(&direct, "SELECT n::int8 FROM d WHERE id = 42").await?,
        3,
        "written through, not held for an hour"
    );
    // SET turns it off for the session, as PostgreSQL reports.
    careful.batch_execute("SET writebehind.sync = off").await?;
    careful
        .batch_execute("UPDATE d SET n = 4 WHERE id = 42")
        .await?;
    assert_eq!(
        query_i64(&direct, "SELECT n::int8 FROM d WHERE id = 42").await?,
        3,
        "acknowledged from memory again"
    );
    Ok(())
}
