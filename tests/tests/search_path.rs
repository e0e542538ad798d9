//! Name resolution per session: a write is acknowledged only when its table name denotes a
//! write-behind table in that very session — through SET search_path (session, local, rolled
//! back), per-role defaults, startup options, the session's own DDL and schema privileges —
//! and a prepared write follows the path as PostgreSQL re-plans it; temporary tables end
//! acknowledging for the session.
//!
//! `public.counters` is write-behind; `app.counters` has the same shape and is not. With an
//! hour-long flush interval an acknowledged write stays out of the table, so reading directly
//! tells where each write went: `public` unchanged means acknowledged from memory, `app`
//! changed means PostgreSQL ran it.

use std::time::Duration;
use tokio_postgres::error::SqlState;
use writebehind_tests::{query_i64, raw, Cluster, Proxy};

const SCHEMA: &str = "
    CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    INSERT INTO counters SELECT g, 0 FROM generate_series(1, 5) g;
    SELECT writebehind.enable('counters');
    CREATE SCHEMA app;
    CREATE TABLE app.counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    INSERT INTO app.counters SELECT g, 0 FROM generate_series(1, 5) g;
    CREATE ROLE appuser LOGIN;
    GRANT USAGE ON SCHEMA app TO appuser;
    GRANT SELECT, INSERT, UPDATE, DELETE ON counters, app.counters TO appuser;
    ALTER ROLE appuser SET search_path = app, public;
    CREATE SCHEMA hidden;
    CREATE TABLE hidden.counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    INSERT INTO hidden.counters VALUES (1, 0);
    SELECT writebehind.enable('hidden.counters');
    GRANT SELECT, UPDATE ON hidden.counters TO appuser;";

const INCREMENT: &str = "UPDATE counters SET n = n + 1 WHERE id = 1";

/// Where the increments went so far: (public.counters, app.counters), read directly.
async fn where_now(direct: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    Ok((
        query_i64(direct, "SELECT n FROM public.counters WHERE id = 1").await?,
        query_i64(direct, "SELECT n FROM app.counters WHERE id = 1").await?,
    ))
}

/// Acknowledged-but-unshipped changes the proxy holds, read from its report.
async fn pending(direct: &tokio_postgres::Client) -> anyhow::Result<i64> {
    // The proxy reports once a second.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    query_i64(
        direct,
        "SELECT coalesce(sum(pending), 0)::int8 FROM writebehind.proxies",
    )
    .await
}

/// `counters.n` of key 1 in `schema`, read through the proxy (the barrier ships what is
/// pending first).
async fn read_through(c: &tokio_postgres::Client, schema: &str) -> anyhow::Result<i64> {
    let sql = format!("SELECT n FROM {schema}.counters WHERE id = 1");
    Ok(c.query_one(&sql, &[]).await?.get(0))
}

async fn setup() -> anyhow::Result<(Cluster, tokio_postgres::Client, Proxy)> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--durability", "memory", "--flush-interval", "1h"],
    )?;
    Ok((cluster, direct, proxy))
}

#[tokio::test]
async fn set_search_path_is_followed() -> anyhow::Result<()> {
    let (_cluster, direct, proxy) = setup().await?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;

    c.simple_query(INCREMENT).await?;
    assert_eq!(
        where_now(&direct).await?,
        (0, 0),
        "acknowledged from memory"
    );

    // Another schema first: the same statement is app.counters, which PostgreSQL runs.
    c.simple_query("SET search_path = app, public").await?;
    c.simple_query(INCREMENT).await?;
    assert_eq!(
        where_now(&direct).await?.1,
        1,
        "app.counters, run by PostgreSQL"
    );

    // Back to public: acknowledged from memory again.
    c.simple_query("SET search_path = public").await?;
    let before = where_now(&direct).await?;
    c.simple_query(INCREMENT).await?;
    assert_eq!(
        where_now(&direct).await?,
        before,
        "acknowledged from memory"
    );
    assert!(pending(&direct).await? >= 1);

    // A SET rolled back leaves the path as it was; SET LOCAL lasts until the end of its block.
    c.batch_execute("BEGIN; SET search_path = app; ROLLBACK")
        .await?;
    c.batch_execute("BEGIN; SET LOCAL search_path = app; COMMIT")
        .await?;
    let before = where_now(&direct).await?;
    c.simple_query(INCREMENT).await?;
    assert_eq!(
        where_now(&direct).await?,
        before,
        "still public: from memory"
    );

    // RESET search_path goes back to the default ("$user", public): public again.
    c.simple_query("SET search_path = app").await?;
    c.simple_query("RESET search_path").await?;
    let before = where_now(&direct).await?;
    c.simple_query(INCREMENT).await?;
    assert_eq!(
        where_now(&direct).await?,
        before,
        "after RESET: from memory"
    );

    // A read through the proxy sees every write of the session, wherever it went.
    assert_eq!(read_through(&c, "public").await?, 4);
    assert_eq!(read_through(&c, "app").await?, 1);
    Ok(())
}

#[tokio::test]
async fn prepared_writes_follow_the_path_like_postgresql() -> anyhow::Result<()> {
    let (_cluster, direct, proxy) = setup().await?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let inc = c
        .prepare("UPDATE counters SET n = n + $1 WHERE id = $2")
        .await?;
    c.execute(&inc, &[&1i64, &1i32]).await?;
    assert_eq!(
        where_now(&direct).await?,
        (0, 0),
        "acknowledged from memory"
    );

    // PostgreSQL re-plans a prepared statement when search_path changed: so does the proxy.
    c.simple_query("SET search_path = app, public").await?;
    c.execute(&inc, &[&10i64, &1i32]).await?;
    assert_eq!(
        where_now(&direct).await?.1,
        10,
        "app.counters, run by PostgreSQL"
    );

    // A prepared SET changes the path each time it runs.
    let back = c.prepare("SET search_path = public").await?;
    c.execute(&back, &[]).await?;
    let before = where_now(&direct).await?;
    c.execute(&inc, &[&100i64, &1i32]).await?;
    assert_eq!(
        where_now(&direct).await?,
        before,
        "public again: from memory"
    );
    c.simple_query("SET search_path = app").await?;
    c.execute(&inc, &[&1000i64, &1i32]).await?;
    assert_eq!(where_now(&direct).await?.1, 1010, "app.counters");
    c.execute(&back, &[]).await?;
    let before = where_now(&direct).await?;
    c.execute(&inc, &[&10000i64, &1i32]).await?;
    assert_eq!(
        where_now(&direct).await?,
        before,
        "public again: from memory"
    );

    assert_eq!(read_through(&c, "public").await?, 10101);
    Ok(())
}

/// Temporary objects shadow tables and are unknown to the proxy's catalog: a session that
/// makes one (CREATE TEMP, SELECT … INTO TEMP) is no longer intercepted.
#[tokio::test]
async fn temporary_tables_end_acknowledging() -> anyhow::Result<()> {
    let (_cluster, direct, proxy) = setup().await?;
    for create in [
        "CREATE TEMP TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
         INSERT INTO counters VALUES (1, 0)",
        "SELECT 1 AS id, 0::int8 AS n INTO TEMP counters",
    ] {
        let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
        c.simple_query(INCREMENT).await?;
        c.batch_execute(create).await?;
        // pg_temp comes first: the increment is the temporary table's, run by PostgreSQL.
        let public = where_now(&direct).await?.0;
        c.simple_query(INCREMENT).await?;
        let rows = c
            .simple_query("SELECT n FROM counters WHERE id = 1")
            .await?;
        let temp_n = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(
            temp_n.as_deref(),
            Some("1"),
            "{create}: the temporary table's row"
        );
        assert_eq!(
            where_now(&direct).await?.0,
            public,
            "{create}: public untouched"
        );
        // Dropped again: public.counters is back, written by PostgreSQL from now on.
        c.simple_query("DISCARD TEMP").await?;
        c.simple_query(INCREMENT).await?;
        assert_eq!(
            where_now(&direct).await?.0,
            public + 1,
            "{create}: written through"
        );
    }
    Ok(())
}

/// A table this very session creates earlier in its search_path shadows the write-behind one
/// at once, before the catalog reload that the DDL's notification brings.
#[tokio::test]
async fn the_sessions_own_ddl_is_followed_at_once() -> anyhow::Result<()> {
    let (_cluster, direct, proxy) = setup().await?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.simple_query(INCREMENT).await?;
    assert_eq!(
        where_now(&direct).await?,
        (0, 0),
        "acknowledged from memory"
    );
    // "$user" comes first in the default search_path.
    c.batch_execute(
        "CREATE SCHEMA postgres; CREATE TABLE postgres.counters AS SELECT 1 AS id, 0::int8 AS n",
    )
    .await?;
    c.simple_query(INCREMENT).await?;
    assert_eq!(
        query_i64(&direct, "SELECT n FROM postgres.counters WHERE id = 1").await?,
        1,
        "postgres.counters, run by PostgreSQL"
    );
    Ok(())
}

/// A statement prepared inside a transaction block cannot be resolved there (the session is
/// asked only between transactions); after another session's DDL shadows the table, its
/// later executions must not reuse what the name meant before.
#[tokio::test]
async fn nothing_is_acknowledged_on_an_answer_from_before_a_schema_change() -> anyhow::Result<()> {
    let (_cluster, direct, proxy) = setup().await?;
    direct.batch_execute("CREATE SCHEMA postgres").await?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.simple_query(INCREMENT).await?;
    direct
        .batch_execute(
            "CREATE TABLE postgres.counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO postgres.counters VALUES (1, 0)",
        )
        .await?;
    // The DDL's notification reloads the proxy's catalog.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    c.batch_execute("BEGIN").await?;
    let inc = c.prepare(INCREMENT).await?;
    c.batch_execute("COMMIT").await?;
    c.execute(&inc, &[]).await?;
    assert_eq!(
        query_i64(&direct, "SELECT n FROM postgres.counters WHERE id = 1").await?,
        1,
        "postgres.counters, run by PostgreSQL"
    );
    Ok(())
}

/// The proxy's question cannot be answered by a function of the session's search_path.
#[tokio::test]
async fn the_question_is_not_answered_by_a_users_function() -> anyhow::Result<()> {
    let (_cluster, direct, proxy) = setup().await?;
    direct
        .batch_execute(
            "CREATE SCHEMA evil;
             CREATE FUNCTION evil.to_regclass(text) RETURNS regclass
               LANGUAGE sql AS $$ SELECT 'public.counters'::regclass $$;
             CREATE TABLE evil.counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO evil.counters VALUES (1, 0);",
        )
        .await?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    c.simple_query("SET search_path = evil, pg_catalog, public")
        .await?;
    c.simple_query(INCREMENT).await?;
    assert_eq!(
        query_i64(&direct, "SELECT n FROM evil.counters WHERE id = 1").await?,
        1,
        "evil.counters, run by PostgreSQL"
    );
    Ok(())
}

/// Asking replaces the session's unnamed statement upstream (a Query does): the proxy parses
/// it again before the client uses it.
#[tokio::test]
async fn the_clients_unnamed_statement_survives_the_question() -> anyhow::Result<()> {
    use std::io::Write;
    let (_cluster, _direct, proxy) = setup().await?;
    let mut s = raw::session(proxy.port, "postgres", "postgres")?;
    let (msg, cstr, read_to_ready) = (raw::message, raw::cstr, raw::read_to_ready);
    let parse = |name: &str, sql: &str| {
        let mut b = cstr(&[name, sql]);
        b.extend_from_slice(&0i16.to_be_bytes());
        msg(b'P', &b)
    };
    let bind_execute_sync = |stmt: &str| {
        let mut b = cstr(&["", stmt]);
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut m = msg(b'B', &b);
        let mut e = cstr(&[""]);
        e.extend_from_slice(&0i32.to_be_bytes());
        m.extend(msg(b'E', &e));
        m.extend(msg(b'S', &[]));
        m
    };
    // The client's unnamed statement, on the server.
    let mut m = parse("", "SELECT 42");
    m.extend(msg(b'S', &[]));
    s.write_all(&m)?;
    read_to_ready(&mut s)?;
    // A write-behind write: its table name is asked about.
    let mut m = parse("w", INCREMENT);
    m.extend(bind_execute_sync("w"));
    s.write_all(&m)?;
    let replies = read_to_ready(&mut s)?;
    assert!(replies.iter().all(|(t, _)| *t != b'E'), "the write failed");
    // The unnamed statement is still there.
    s.write_all(&bind_execute_sync(""))?;
    let replies = read_to_ready(&mut s)?;
    let row = replies.iter().find(|(t, _)| *t == b'D');
    assert!(
        row.is_some_and(|(_, body)| body.ends_with(b"42")),
        "SELECT 42 through the unnamed statement: {replies:?}"
    );
    Ok(())
}

/// A role whose default search_path puts `app` first: PostgreSQL resolves `counters` to
/// app.counters for it, and so must the proxy (it used to assume `public`).
#[tokio::test]
async fn per_role_defaults_and_startup_options_count() -> anyhow::Result<()> {
    let (_cluster, direct, proxy) = setup().await?;
    let app = writebehind_tests::connect(&proxy.conninfo("appuser", "postgres")).await?;
    app.simple_query(INCREMENT).await?;
    assert_eq!(
        where_now(&direct).await?,
        (0, 1),
        "app.counters, run by PostgreSQL"
    );

    // The same role with search_path given at startup.
    let public = writebehind_tests::connect(&format!(
        "{} options='-c search_path=public'",
        proxy.conninfo("appuser", "postgres")
    ))
    .await?;
    public.simple_query(INCREMENT).await?;
    assert_eq!(where_now(&direct).await?, (0, 1), "public: from memory");
    assert!(pending(&direct).await? >= 1);
    Ok(())
}

/// A schema the role may not use: PostgreSQL refuses the write (42501) even though the role
/// holds UPDATE on the table, so the proxy must not acknowledge it.
#[tokio::test]
async fn schemas_the_role_may_not_use_are_refused_by_postgresql() -> anyhow::Result<()> {
    let (_cluster, direct, proxy) = setup().await?;
    let app = writebehind_tests::connect(&proxy.conninfo("appuser", "postgres")).await?;
    let err = app
        .simple_query("UPDATE hidden.counters SET n = n + 1 WHERE id = 1")
        .await
        .expect_err("no USAGE on schema hidden");
    assert_eq!(err.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE), "{err}");
    direct
        .batch_execute("GRANT USAGE ON SCHEMA hidden TO appuser")
        .await?;
    // The GRANT reloads the proxy's catalog (DDL): the next write is asked about again.
    let hidden_n = || query_i64(&direct, "SELECT n FROM hidden.counters WHERE id = 1");
    let mut acked = false;
    for _ in 0..50 {
        let before = hidden_n().await?;
        app.simple_query("UPDATE hidden.counters SET n = n + 1 WHERE id = 1")
            .await?;
        if hidden_n().await? == before {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        acked,
        "acknowledged from memory once the role may use the schema"
    );
    Ok(())
}
