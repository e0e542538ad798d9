//! Writes whose outcome depends on something the proxy cannot see are not acknowledged from
//! memory: they pass through, and the client gets exactly what PostgreSQL says. Each case here
//! was acknowledged once, and PostgreSQL would have answered it differently: keys repeated in
//! one statement, comparisons of mismatched types, increments that PostgreSQL rounds or widens,
//! settings reported by the server (role defaults, `set_config`, `pg_settings`, read-only
//! transactions, a LATIN1 database), row-level security and the SELECT privilege, defaults
//! that depend on the writer's session.

use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, SimpleQueryMessage};
use writebehind_tests::{command_tag, query_i64, Cluster, Proxy};

fn wb_proxy(cluster: &Cluster) -> anyhow::Result<Proxy> {
    Proxy::spawn(&cluster.url("postgres"), &["--durability", "memory"])
}

/// The SQLSTATE `sql` fails with (panics if it succeeds).
async fn fails_with(c: &Client, sql: &str) -> Option<SqlState> {
    let err = c.simple_query(sql).await.expect_err(sql);
    err.code().cloned()
}

/// The first column of the first row of a simple query, as text.
async fn text(c: &Client, sql: &str) -> anyhow::Result<Option<String>> {
    Ok(c.simple_query(sql)
        .await?
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .flatten())
}

#[tokio::test]
async fn keys_repeated_or_compared_across_types_are_postgres_errors() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE kv (id int PRIMARY KEY, a int, b int);
             CREATE TABLE kt (k text PRIMARY KEY, a int);
             INSERT INTO kt VALUES ('5', 0), ('true', 0);
             SELECT writebehind.enable('kv'); SELECT writebehind.enable('kt');",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for (sql, code) in [
        (
            "INSERT INTO kv VALUES (1, 1, 1), (1, 2, 2)",
            SqlState::UNIQUE_VIOLATION,
        ),
        (
            "INSERT INTO kv VALUES (1, 1, 1), (1, 2, 2) ON CONFLICT (id) DO UPDATE SET a = EXCLUDED.a",
            SqlState::CARDINALITY_VIOLATION,
        ),
        // text = integer and text = boolean do not exist (an INSERT would store the text).
        (
            "UPDATE kt SET a = 1 WHERE k = 5",
            SqlState::UNDEFINED_FUNCTION,
        ),
        ("DELETE FROM kt WHERE k = true", SqlState::UNDEFINED_FUNCTION),
    ] {
        assert_eq!(fails_with(&c, sql).await, Some(code), "{sql}");
    }
    // Read through the proxy: its barrier ships anything pending first.
    assert_eq!(
        text(&c, "SELECT count(*) FROM kv").await?.as_deref(),
        Some("0")
    );
    assert_eq!(
        text(
            &c,
            "SELECT string_agg(k || '=' || a, ',' ORDER BY k) FROM kt"
        )
        .await?
        .as_deref(),
        Some("5=0,true=0")
    );
    Ok(())
}

#[tokio::test]
async fn increments_add_up_as_postgres_adds_them() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE c (id int PRIMARY KEY, n int, s smallint, m numeric(5,2),
                             r numeric(5,-2), b bigint, b2 bigint);
             INSERT INTO c VALUES (1, -2000000000, -10000, 1.00, 100, -1,
                                   -9223372036854775808);
             SELECT writebehind.enable('c');",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // PostgreSQL adds int4 + int8 as int8 and assigns the result, which fits; numeric(5,2)
    // rounds after each statement (1.00 + 0.004 stays 1.00, twice), and numeric(5,-2) to
    // hundreds (100 + 50 is 200, + 50 is 300; summed first it would be 200).
    c.batch_execute(
        "UPDATE c SET n = n + 3000000000 WHERE id = 1;
         UPDATE c SET s = s + 40000 WHERE id = 1;
         UPDATE c SET m = m + 0.004 WHERE id = 1;
         UPDATE c SET m = m + 0.004 WHERE id = 1;",
    )
    .await?;
    // One Query each: in one string with the statements above they would pass through with
    // them.
    for _ in 0..2 {
        c.batch_execute("UPDATE c SET r = r + 50 WHERE id = 1")
            .await?;
    }
    // bigint: subtracting its minimum (whose negation is no bigint), and two increments
    // that PostgreSQL adds one at a time but whose sum leaves bigint (shipped in one batch,
    // the worker must not fold them). Until 2026-12-03 all three ended in the dead letters.
    c.batch_execute("UPDATE c SET b = b - -9223372036854775808 WHERE id = 1")
        .await?;
    for _ in 0..2 {
        c.batch_execute("UPDATE c SET b2 = b2 + 9223372036854775807 WHERE id = 1")
            .await?;
    }
    assert_eq!(
        text(&c, "SELECT concat_ws(' ', n, s, m, r, b, b2) FROM c")
            .await?
            .as_deref(),
        Some("1000000000 30000 1.00 300 9223372036854775807 9223372036854775806")
    );
    let dead = query_i64(&direct, "SELECT count(*) FROM writebehind.dead_letters").await?;
    assert_eq!(dead, 0, "nothing was dead-lettered");
    Ok(())
}

/// Words and type names PostgreSQL reads otherwise than as they are spelled: reserved words
/// are no names (`user` is CURRENT_USER), a type name without a schema is looked up through
/// the search path, and a compared varchar parameter is text.
#[tokio::test]
async fn reserved_words_and_type_names_mean_what_postgres_says() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE u (\"user\" text PRIMARY KEY, v int);
             INSERT INTO u VALUES ('alice', 0), ('bob', 0);
             CREATE TABLE \"order\" (id int PRIMARY KEY, \"desc\" text);
             CREATE TABLE tx (id int PRIMARY KEY, s text);
             CREATE TABLE pv (k varchar(5) PRIMARY KEY, v varchar(5));
             CREATE SCHEMA s1;
             CREATE DOMAIN s1.text AS pg_catalog.text CHECK (length(VALUE) < 3);
             SELECT writebehind.enable('u'); SELECT writebehind.enable('\"order\"');
             SELECT writebehind.enable('tx'); SELECT writebehind.enable('pv');",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // CURRENT_USER is 'postgres': no row of alice's, and then every row.
    assert_eq!(
        command_tag(&c, "UPDATE u SET v = 10 WHERE user = 'alice'").await?,
        0
    );
    for (sql, code) in [
        (
            "UPDATE \"order\" SET desc = 'y' WHERE id = 1",
            SqlState::SYNTAX_ERROR,
        ),
        ("INSERT INTO order VALUES (1, 'x')", SqlState::SYNTAX_ERROR),
        (
            "INSERT INTO u (\"user\", v) VALUES ('carol', 1) ON CONFLICT (user) DO NOTHING",
            SqlState::INVALID_COLUMN_REFERENCE,
        ),
    ] {
        assert_eq!(fails_with(&c, sql).await, Some(code), "{sql}");
    }
    assert_eq!(
        command_tag(&c, "DELETE FROM u WHERE user = 'postgres'").await?,
        2
    );
    // With s1 before pg_catalog, `text` is the domain, whose CHECK refuses six letters.
    c.batch_execute("SET search_path = s1, public, pg_catalog")
        .await?;
    assert_eq!(
        fails_with(&c, "INSERT INTO tx VALUES (1, 'abcdef'::text)").await,
        Some(SqlState::CHECK_VIOLATION)
    );
    c.batch_execute("RESET search_path; INSERT INTO tx VALUES (2, 'abcdef'::text)")
        .await?;
    assert_eq!(
        text(&c, "SELECT string_agg(id || s, ',') FROM tx")
            .await?
            .as_deref(),
        Some("2abcdef")
    );
    // Described by the proxy (the statement is one it acknowledges), as PostgreSQL would.
    let st = c.prepare("UPDATE pv SET v = $1 WHERE k = $2").await?;
    assert_eq!(st.params(), &[Type::VARCHAR, Type::TEXT]);
    c.execute(&st, &[&"v", &"k"]).await?;
    assert_eq!(
        query_i64(&direct, "SELECT count(*) FROM u").await?
            + query_i64(&direct, "SELECT count(*) FROM \"order\"").await?,
        0
    );
    let dead = query_i64(&direct, "SELECT count(*) FROM writebehind.dead_letters").await?;
    assert_eq!(dead, 0, "nothing was dead-lettered");
    Ok(())
}

#[tokio::test]
async fn settings_the_server_reports_end_acknowledging() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE kv (id int PRIMARY KEY, t text);
             SELECT writebehind.enable('kv');
             CREATE ROLE legacy LOGIN;
             GRANT ALL ON kv TO legacy;
             ALTER ROLE legacy SET standard_conforming_strings = off;",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let conninfo = proxy.conninfo("postgres", "postgres");
    let session = || writebehind_tests::connect(&conninfo);

    // A role default the startup packet does not show: 'a\tb' holds a TAB for PostgreSQL.
    let legacy = writebehind_tests::connect(&proxy.conninfo("legacy", "postgres")).await?;
    legacy
        .batch_execute("INSERT INTO kv VALUES (1, 'a\\tb')")
        .await?;
    // The same setting changed through pg_settings' rule.
    let c = session().await?;
    c.batch_execute(
        "UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'",
    )
    .await?;
    c.batch_execute("INSERT INTO kv VALUES (2, 'a\\tb')")
        .await?;
    let tabs: i64 = direct
        .query_one("SELECT count(*) FROM kv WHERE t = E'a\\tb'", &[])
        .await?
        .get(0);
    assert_eq!(tabs, 2, "both rows hold a TAB, as PostgreSQL read them");

    // A setting changed so that the write fails in PostgreSQL: the search_path by a quoted
    // set_config (the table is not found), a read-only default for transactions.
    for (id, setting, code) in [
        (
            3,
            "SELECT \"set_config\"('search_path', 'nosuch', false)",
            SqlState::UNDEFINED_TABLE,
        ),
        (
            4,
            "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ),
        (
            5,
            "SELECT set_config('default_transaction_read_only', 'on', false)",
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ),
    ] {
        let c = session().await?;
        c.batch_execute(setting).await?;
        let insert = format!("INSERT INTO kv VALUES ({id}, 'x')");
        assert_eq!(fails_with(&c, &insert).await, Some(code), "after {setting}");
    }
    let ids = text(
        &session().await?,
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM kv",
    )
    .await?;
    assert_eq!(ids.as_deref(), Some("1,2"));
    Ok(())
}

#[tokio::test]
async fn a_latin1_database_is_not_acknowledged_in() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(&["writebehind.databases = 'postgres,l1'"])?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE DATABASE l1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
        )
        .await?;
    let l1 = cluster.connect("l1").await?;
    l1.batch_execute(
        "CREATE EXTENSION pg_writebehind;
         CREATE TABLE e (id int PRIMARY KEY, t text);
         SELECT writebehind.enable('e');",
    )
    .await?;
    let proxy = Proxy::spawn(&cluster.url("l1"), &["--durability", "memory"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "l1")).await?;
    // The euro sign has no LATIN1 form: PostgreSQL refuses it at once.
    assert_eq!(
        fails_with(&c, "INSERT INTO e VALUES (1, '€')").await,
        Some(SqlState::UNTRANSLATABLE_CHARACTER)
    );
    c.batch_execute("INSERT INTO e VALUES (2, 'é')").await?;
    assert_eq!(
        text(&c, "SELECT string_agg(id || t, ',') FROM e")
            .await?
            .as_deref(),
        Some("2é")
    );
    Ok(())
}

#[tokio::test]
async fn row_security_and_the_select_privilege_are_checked_by_postgres() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE r (id int PRIMARY KEY, owner text NOT NULL, v int);
             INSERT INTO r VALUES (2, 'bob', 1);
             SELECT writebehind.enable('r');
             ALTER TABLE r ENABLE ROW LEVEL SECURITY;
             CREATE POLICY mine ON r USING (owner = current_user) WITH CHECK (owner = current_user);
             CREATE ROLE app LOGIN;
             GRANT ALL ON r TO app;
             CREATE TABLE w (id int PRIMARY KEY, v int);
             INSERT INTO w VALUES (1, 0);
             SELECT writebehind.enable('w');
             CREATE ROLE blind LOGIN;
             GRANT INSERT, UPDATE, DELETE ON w TO blind;",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let app = writebehind_tests::connect(&proxy.conninfo("app", "postgres")).await?;
    assert_eq!(
        fails_with(&app, "INSERT INTO r VALUES (1, 'bob', 1)").await,
        Some(SqlState::INSUFFICIENT_PRIVILEGE),
        "the policy's WITH CHECK"
    );
    let msgs = app.simple_query("UPDATE r SET v = 9 WHERE id = 2").await?;
    assert!(
        msgs.iter()
            .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(0))),
        "bob's row is invisible to app: UPDATE 0"
    );
    let blind = writebehind_tests::connect(&proxy.conninfo("blind", "postgres")).await?;
    for sql in [
        "UPDATE w SET v = v + 1 WHERE id = 1",
        "DELETE FROM w WHERE id = 1",
        "INSERT INTO w VALUES (1, 5) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
    ] {
        assert_eq!(
            fails_with(&blind, sql).await,
            Some(SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: reading the key needs SELECT"
        );
    }
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    assert_eq!(
        text(
            &c,
            "SELECT (SELECT v FROM r WHERE id = 2) || ' ' || (SELECT v FROM w WHERE id = 1)"
        )
        .await?
        .as_deref(),
        Some("1 0")
    );
    Ok(())
}

/// Defaults that depend on the writer's session (`current_user`, a custom setting, either
/// behind a user-defined function, a setting the proxy does not follow) are computed by
/// PostgreSQL in that session: such an INSERT passes through. The worker, writing as the
/// owner in its own session, stored the owner's name and NULL (the function's and
/// `extra_float_digits`' cases until 2026-12-03: only a list of built-in names was looked for).
#[tokio::test]
async fn session_dependent_defaults_are_the_writers() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE FUNCTION app_tenant() RETURNS text LANGUAGE sql STABLE
                 AS $$SELECT current_setting('app.tenant', true)$$;
             CREATE TABLE sd (id int PRIMARY KEY, v text,
                              who text DEFAULT current_user,
                              tenant text DEFAULT current_setting('app.tenant', true),
                              via text DEFAULT app_tenant(),
                              third text DEFAULT (0.1::float8 * 3)::text);
             SELECT writebehind.enable('sd');
             CREATE ROLE app LOGIN;
             GRANT ALL ON sd TO app;",
        )
        .await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--durability", "memory"])?;
    let c = writebehind_tests::connect(&proxy.conninfo("app", "postgres")).await?;
    c.batch_execute("SET app.tenant = 'acme'; SET extra_float_digits = 0")
        .await?;
    c.batch_execute("INSERT INTO sd (id, v) VALUES (1, 'x')")
        .await?;
    c.batch_execute("INSERT INTO sd VALUES (2, 'y', DEFAULT, DEFAULT, DEFAULT, DEFAULT)")
        .await?;
    // Only the function's column left to its default.
    c.batch_execute("INSERT INTO sd (id, v, who, tenant, third) VALUES (4, 'w', 'me', 't', '0.3')")
        .await?;
    // Every column given: acknowledged from memory as usual.
    c.batch_execute("INSERT INTO sd VALUES (3, 'z', 'me', 't', 'f', '0.3')")
        .await?;
    c.execute("SELECT writebehind.flush()", &[]).await?;
    let got: Vec<String> = direct
        .query(
            "SELECT concat_ws(':', id, who, tenant, via, third) FROM sd ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        got,
        [
            "1:app:acme:acme:0.3",
            "2:app:acme:acme:0.3",
            "3:me:t:f:0.3",
            "4:me:t:acme:0.3"
        ]
    );
    let acked: i64 = direct
        .query_one(
            "SELECT acked FROM writebehind.status WHERE \"table\" = 'sd'::regclass",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(acked, 1, "only the INSERT with every column given");
    Ok(())
}

/// A constant default the column refuses (`'abc'` into `varchar(2)`, 40000 into `smallint`,
/// too many digits for `numeric(3,1)`) and a default that raises (`1/0`) fail the INSERT in
/// PostgreSQL: such an INSERT passes through and gets PostgreSQL's error. Until 2026-12-03
/// the proxy acknowledged it and the worker sent it to the dead letters; in a two-statement
/// string, the first statement's row was applied.
#[tokio::test]
async fn defaults_that_fail_fail_the_insert() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE TABLE fd (id int PRIMARY KEY, x int,
                              s varchar(2) DEFAULT 'abc',
                              i smallint DEFAULT 40000,
                              n numeric(3,1) DEFAULT 123.45,
                              z int DEFAULT 1/0,
                              ok varchar(3) DEFAULT 'abc');
             SELECT writebehind.enable('fd');
             CREATE TABLE big (id int PRIMARY KEY, x int, r real DEFAULT 1e300);
             SELECT writebehind.enable('big');
             CREATE TABLE tiny (id int PRIMARY KEY, x int,
                                r real DEFAULT 0.00000000000000000000000000000000000000000000000001);
             SELECT writebehind.enable('tiny');",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let cases = [
        ("s", SqlState::STRING_DATA_RIGHT_TRUNCATION),
        ("i", SqlState::NUMERIC_VALUE_OUT_OF_RANGE),
        ("n", SqlState::NUMERIC_VALUE_OUT_OF_RANGE),
        ("z", SqlState::DIVISION_BY_ZERO),
    ];
    for (i, (left, code)) in cases.iter().enumerate() {
        let given: Vec<&str> = ["s", "i", "n", "z"]
            .into_iter()
            .filter(|c| c != left)
            .collect();
        let values = given
            .iter()
            .map(|c| if *c == "s" { "'ab'" } else { "1" })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO fd (id, x, {}) VALUES ({}, 0, {values})",
            given.join(", "),
            100 + i
        );
        assert_eq!(fails_with(&c, &sql).await, Some(code.clone()), "{sql}");
        // One implicit transaction: the first row goes with the second's error.
        let two = format!(
            "INSERT INTO fd VALUES ({}, 1, 'ab', 1, 1, 1); {sql}",
            200 + i
        );
        assert_eq!(fails_with(&c, &two).await, Some(code.clone()), "{two}");
    }
    // The one default that fits is acknowledged.
    c.batch_execute("INSERT INTO fd (id, x, s, i, n, z) VALUES (1, 1, 'ab', 1, 1, 1)")
        .await?;
    c.execute("SELECT writebehind.flush()", &[]).await?;
    assert_eq!(
        text(
            &direct,
            "SELECT string_agg(id || ok, ',' ORDER BY id) FROM fd"
        )
        .await?
        .as_deref(),
        Some("1abc")
    );
    let row = direct
        .query_one(
            "SELECT acked, dead_letters FROM writebehind.status WHERE \"table\" = 'fd'::regclass",
            &[],
        )
        .await?;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 0));
    // A constant of another type than the column's is converted when the row is stored:
    // 1e300 is printed as a numeric, too large for real, and 1e-50 too small. (Until
    // 2026-12-03 the first was acknowledged and dead-lettered.)
    for table in ["big", "tiny"] {
        let sql = format!("INSERT INTO {table} (id, x) VALUES (1, 0)");
        assert_eq!(
            fails_with(&c, &sql).await,
            Some(SqlState::NUMERIC_VALUE_OUT_OF_RANGE),
            "{sql}"
        );
    }
    Ok(())
}

/// What PostgreSQL checks besides the table's privileges: USAGE on the sequence a default
/// draws from, and the role a role default makes the session run as (`ALTER ROLE … SET
/// role`). Such writes pass through and get 42501. Until 2026-12-03 the proxy asked about
/// the table and the login role only, acknowledged them, and the worker applied them.
#[tokio::test]
async fn sequences_and_role_defaults_are_checked_by_postgres() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct
        .batch_execute(
            "CREATE SEQUENCE wseq;
             CREATE TABLE sq (id int PRIMARY KEY, v text, n bigint DEFAULT nextval('wseq'));
             SELECT writebehind.enable('sq');
             CREATE ROLE app LOGIN;
             GRANT ALL ON sq TO app;
             CREATE ROLE nopriv;
             CREATE ROLE app2 LOGIN IN ROLE nopriv;
             GRANT ALL ON sq TO app2;
             GRANT USAGE ON SEQUENCE wseq TO app2;
             ALTER ROLE app2 SET role = 'nopriv';",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let app = writebehind_tests::connect(&proxy.conninfo("app", "postgres")).await?;
    assert_eq!(
        fails_with(&app, "INSERT INTO sq (id, v) VALUES (1, 'a')").await,
        Some(SqlState::INSUFFICIENT_PRIVILEGE)
    );
    let app2 = writebehind_tests::connect(&proxy.conninfo("app2", "postgres")).await?;
    assert_eq!(
        fails_with(&app2, "INSERT INTO sq VALUES (2, 'b', 2)").await,
        Some(SqlState::INSUFFICIENT_PRIVILEGE)
    );
    // Granted, the sequence no longer stops the write: acknowledged from memory.
    direct
        .batch_execute("GRANT USAGE ON SEQUENCE wseq TO app")
        .await?;
    // (The grant's notification reaches the proxy asynchronously: until then writes pass through.)
    let mut acked = false;
    let mut written = 0;
    for k in 0..50 {
        app.batch_execute(&format!("INSERT INTO sq (id, v) VALUES ({}, 'c')", 10 + k))
            .await?;
        written += 1;
        app.execute("SELECT writebehind.flush()", &[]).await?;
        if query_i64(
            &direct,
            "SELECT acked FROM writebehind.status WHERE \"table\" = 'sq'::regclass",
        )
        .await?
            > 0
        {
            acked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        acked,
        "a write by a role holding every privilege is acknowledged"
    );
    assert_eq!(
        query_i64(
            &direct,
            "SELECT count(*) FROM sq WHERE id >= 10 AND n IS NOT NULL"
        )
        .await?,
        written
    );
    assert_eq!(
        query_i64(&direct, "SELECT count(*) FROM sq WHERE id < 10").await?,
        0
    );
    Ok(())
}
