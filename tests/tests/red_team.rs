//! Writes the proxy once acknowledged from memory although PostgreSQL answers them differently.
//! From a first red-team pass: quoted increments that PostgreSQL types as the column's type,
//! quoted keyword type names, tables with rules or inheritance children, foreign keys between
//! two write-behind tables, a malformed Bind, a numeric beyond PostgreSQL's limits, defaults
//! that depend on the time zone or date style. From a second: self-referencing cascades,
//! identifiers longer than 63 bytes, the upsert policy and the UPDATE privilege, NOT NULL
//! domains. In each test the client must get exactly what PostgreSQL gives directly
//! (SQLSTATE, command tag, rows), and after a read through the proxy (its barrier ships
//! anything pending and waits until it is applied) the tables must hold what PostgreSQL would
//! hold, with nothing dead-lettered.

use std::io::Write;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, SimpleQueryMessage};
use writebehind_tests::{raw, Cluster, Proxy};

/// A write-behind proxy in front of `cluster` (memory durability, with `extra` flags) and a
/// client through it. Spawned once the tables are enabled, so that its first catalog load
/// sees them.
async fn through_proxy(cluster: &Cluster, extra: &[&str]) -> anyhow::Result<(Proxy, Client)> {
    let mut args = vec!["--durability", "memory"];
    args.extend_from_slice(extra);
    let proxy = Proxy::spawn(&cluster.url("postgres"), &args)?;
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    Ok((proxy, client))
}

/// A new cluster with `schema` run directly, a direct client, and [`through_proxy`].
async fn setup(schema: &str, extra: &[&str]) -> anyhow::Result<(Cluster, Client, Proxy, Client)> {
    let (cluster, direct) = Cluster::start_with_schema(schema).await?;
    let (proxy, client) = through_proxy(&cluster, extra).await?;
    Ok((cluster, direct, proxy, client))
}

/// What the client is told: the row count of the command tag, or the error's SQLSTATE.
async fn answer(c: &Client, sql: &str) -> Result<u64, SqlState> {
    match c.simple_query(sql).await {
        Ok(msgs) => Ok(msgs
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => Some(*n),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{sql}: no command tag"))),
        Err(e) => Err(e
            .code()
            .cloned()
            .unwrap_or_else(|| panic!("{sql}: no SQLSTATE in {e}"))),
    }
}

/// The first column of every row of a simple query, as text (NULL as "NULL").
async fn rows(c: &Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let msgs = c.simple_query(sql).await.map_err(|e| {
        let why = e.as_db_error().map_or(e.to_string(), |db| db.to_string());
        anyhow::anyhow!("{sql}: {why}")
    })?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect())
}

/// Reads `sql` through the proxy (its barrier ships what is pending and waits until it is
/// applied), checks that nothing was dead-lettered (listing what was, read directly), and
/// returns the rows.
async fn after_barrier(c: &Client, direct: &Client, sql: &str) -> anyhow::Result<Vec<String>> {
    let got = rows(c, sql).await?;
    let dead = rows(
        direct,
        "SELECT table_name || ' ' || op::text || ' ' || coalesce(key, '') || ': ' || sqlstate || ' '
                || message FROM writebehind.dead_letters ORDER BY id",
    )
    .await?;
    assert_eq!(dead, Vec::<String>::new(), "dead letters");
    Ok(got)
}

/// Gives `table` `extra` (a rule, a child table) and enables it, in that order if
/// `writebehind.enable` accepts a table that has `extra`. If it refuses, the refusal must be
/// clear (0A000, feature not supported, with a message naming one of `what`); that attempt is
/// rolled back (`relhasrules` stays set after a DROP RULE) and the table is enabled first and
/// given `extra` afterwards, so the proxy is still tested against a write-behind table with it.
async fn enable_with(
    direct: &Client,
    table: &str,
    extra: &str,
    what: &[&str],
) -> anyhow::Result<()> {
    let enable = format!("SELECT writebehind.enable('{table}')");
    direct.batch_execute("BEGIN").await?;
    direct.batch_execute(extra).await?;
    let Err(e) = direct.batch_execute(&enable).await else {
        return Ok(direct.batch_execute("COMMIT").await?);
    };
    direct.batch_execute("ROLLBACK").await?;
    let db = e
        .as_db_error()
        .expect("enable's refusal is an ErrorResponse");
    eprintln!(
        "enable('{table}') with {extra:?} refused: {} {}",
        db.code().code(),
        db.message()
    );
    assert_eq!(
        db.code(),
        &SqlState::FEATURE_NOT_SUPPORTED,
        "enable('{table}'): {db}"
    );
    assert!(
        what.iter().any(|w| db.message().contains(w)),
        "enable('{table}') must say why (one of {what:?}): {db}"
    );
    direct.batch_execute(&enable).await?;
    direct.batch_execute(extra).await?;
    Ok(())
}

/// PostgreSQL types a quoted literal added to a column as the column's type (`int4 + unknown`
/// resolves to `int4 + int4`), so `n + '3000000000'` fails to parse the literal (22003) where
/// `n + 3000000000` would be added in bigint; `'-40000'` is out of range for smallint and
/// `'1.5'` is not an integer (22P02). A quoted literal that fits is added as usual.
#[tokio::test]
async fn quoted_increments_are_typed_as_the_column_and_range_checked() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup(
        "CREATE TABLE t (id int PRIMARY KEY, n int, s smallint);
         INSERT INTO t VALUES (1, -2000000000, 30000);
         SELECT writebehind.enable('t');",
        &[],
    )
    .await?;
    for (sql, code) in [
        (
            "UPDATE t SET n = n + '3000000000' WHERE id = 1",
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        ),
        (
            "UPDATE t SET s = s + '-40000' WHERE id = 1",
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        ),
        (
            "UPDATE t SET n = n - '3000000000' WHERE id = 1",
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
        ),
        (
            "UPDATE t SET n = n + '1.5' WHERE id = 1",
            SqlState::INVALID_TEXT_REPRESENTATION,
        ),
    ] {
        assert_eq!(answer(&c, sql).await, Err(code), "{sql}");
    }
    assert_eq!(
        after_barrier(&c, &direct, "SELECT n || ' ' || s FROM t").await?,
        ["-2000000000 30000"],
        "no rejected increment was applied"
    );
    let valid = "UPDATE t SET n = n + '5' WHERE id = 1";
    assert_eq!(answer(&c, valid).await, Ok(1), "{valid}");
    assert_eq!(
        after_barrier(&c, &direct, "SELECT n || ' ' || s FROM t").await?,
        ["-1999999995 30000"]
    );
    Ok(())
}

/// A quoted identifier is never a keyword: `"integer"`, `"bigint"` and `"int"` name no type
/// in PostgreSQL (42704, whether in a value or in the key), while `"int4"` is the real name of
/// integer and works.
#[tokio::test]
async fn quoted_keyword_type_names_are_not_types() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup(
        "CREATE TABLE t (id int PRIMARY KEY, n int);
         INSERT INTO t VALUES (1, 0);
         SELECT writebehind.enable('t');",
        &[],
    )
    .await?;
    for sql in [
        "INSERT INTO t (id, n) VALUES (2, '5'::\"integer\")",
        "INSERT INTO t (id, n) VALUES (2, '5'::\"bigint\")",
        "UPDATE t SET n = '5'::\"int\" WHERE id = 1",
        "UPDATE t SET n = 5 WHERE id = '1'::\"integer\"",
    ] {
        assert_eq!(
            answer(&c, sql).await,
            Err(SqlState::UNDEFINED_OBJECT),
            "{sql}"
        );
    }
    assert_eq!(
        after_barrier(&c, &direct, "SELECT id || ':' || n FROM t ORDER BY id").await?,
        ["1:0"],
        "nothing was written"
    );
    let valid = "INSERT INTO t (id, n) VALUES (3, '5'::\"int4\")";
    assert_eq!(answer(&c, valid).await, Ok(1), "{valid}");
    assert_eq!(
        after_barrier(&c, &direct, "SELECT id || ':' || n FROM t ORDER BY id").await?,
        ["1:0", "3:5"]
    );
    Ok(())
}

/// A `DO ALSO` rule on INSERT runs its own INSERT in the writer's statement: PostgreSQL
/// answers `INSERT 0 1` and both the table and the rule's log hold the row.
#[tokio::test]
async fn an_also_rule_writes_its_log_too() -> anyhow::Result<()> {
    let (cluster, direct) = Cluster::start_with_schema(
        "CREATE TABLE r (id int PRIMARY KEY, n int);
         CREATE TABLE r_log (id int, n int);",
    )
    .await?;
    enable_with(
        &direct,
        "r",
        "CREATE RULE r_ins AS ON INSERT TO r DO ALSO INSERT INTO r_log VALUES (new.id, new.n)",
        &["rule"],
    )
    .await?;
    let (_proxy, c) = through_proxy(&cluster, &[]).await?;
    let sql = "INSERT INTO r VALUES (1, 1)";
    assert_eq!(answer(&c, sql).await, Ok(1), "{sql}");
    assert_eq!(
        after_barrier(
            &c,
            &direct,
            "SELECT 'r ' || id || ':' || n FROM r UNION ALL SELECT 'r_log ' || id || ':' || n FROM r_log ORDER BY 1"
        )
        .await?,
        ["r 1:1", "r_log 1:1"]
    );
    Ok(())
}

/// A `DO INSTEAD NOTHING` rule on UPDATE replaces the statement by nothing: PostgreSQL answers
/// `UPDATE 0` and the row keeps its value.
#[tokio::test]
async fn an_instead_nothing_rule_updates_nothing() -> anyhow::Result<()> {
    let (cluster, direct) = Cluster::start_with_schema(
        "CREATE TABLE u (id int PRIMARY KEY, n int);
         INSERT INTO u VALUES (1, 1);",
    )
    .await?;
    enable_with(
        &direct,
        "u",
        "CREATE RULE u_upd AS ON UPDATE TO u DO INSTEAD NOTHING",
        &["rule"],
    )
    .await?;
    let (_proxy, c) = through_proxy(&cluster, &[]).await?;
    let sql = "UPDATE u SET n = 2 WHERE id = 1";
    assert_eq!(answer(&c, sql).await, Ok(0), "{sql}");
    assert_eq!(after_barrier(&c, &direct, "SELECT n FROM u").await?, ["1"]);
    Ok(())
}

/// `UPDATE p` and `DELETE FROM p` (without ONLY) include the rows of p's inheritance children:
/// with id 2 in both p and p_c (the primary key is p's alone), PostgreSQL answers `DELETE 2`
/// and `UPDATE 2`, and changes both rows.
#[tokio::test]
async fn inheritance_children_are_written_and_counted() -> anyhow::Result<()> {
    let (cluster, direct) =
        Cluster::start_with_schema("CREATE TABLE p (id int PRIMARY KEY, n int);").await?;
    enable_with(
        &direct,
        "p",
        "CREATE TABLE p_c () INHERITS (p)",
        &["inherit", "child"],
    )
    .await?;
    let (_proxy, c) = through_proxy(&cluster, &[]).await?;
    // INSERT INTO p writes p only; p_c's rows are its own.
    direct
        .batch_execute(
            "INSERT INTO p VALUES (2, 0), (3, 0);
             INSERT INTO p_c VALUES (2, 0), (3, 0);",
        )
        .await?;
    let delete = "DELETE FROM p WHERE id = 2";
    assert_eq!(answer(&c, delete).await, Ok(2), "{delete}");
    let update = "UPDATE p SET n = 7 WHERE id = 3";
    assert_eq!(answer(&c, update).await, Ok(2), "{update}");
    assert_eq!(
        after_barrier(
            &c,
            &direct,
            "SELECT tableoid::regclass || ' ' || id || ':' || n FROM p ORDER BY 1"
        )
        .await?,
        ["p 3:7", "p_c 3:7"]
    );
    Ok(())
}

/// Deleting a child row and then its parent, as two statements, is valid in PostgreSQL (the
/// foreign key is checked at the end of each statement, after the child is gone). Pending
/// together (a long flush interval), the two deletes must still apply, child first.
#[tokio::test]
async fn a_child_deleted_before_its_parent_applies_in_order() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup(
        "CREATE TABLE fp (id int PRIMARY KEY);
         CREATE TABLE fc (id int PRIMARY KEY, pid int REFERENCES fp);
         SELECT writebehind.enable('fp');
         SELECT writebehind.enable('fc');
         INSERT INTO fp VALUES (100);
         INSERT INTO fc VALUES (100, 100);",
        &["--flush-interval", "1h"],
    )
    .await?;
    for sql in [
        "DELETE FROM fc WHERE id = 100",
        "DELETE FROM fp WHERE id = 100",
    ] {
        assert_eq!(answer(&c, sql).await, Ok(1), "{sql}");
    }
    assert_eq!(
        after_barrier(
            &c,
            &direct,
            "SELECT (SELECT count(*) FROM fp) || ' ' || (SELECT count(*) FROM fc)"
        )
        .await?,
        ["0 0"],
        "both rows are gone"
    );
    Ok(())
}

/// The SQLSTATE of the first ErrorResponse among `replies`.
fn first_error(replies: &[(u8, Vec<u8>)]) -> Option<String> {
    let (_, body) = replies.iter().find(|(ty, _)| *ty == b'E')?;
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

/// Parse (one int4 parameter), a Bind with two parameter format codes for that one
/// parameter, Execute, Sync: the replies up to ReadyForQuery from the server at `port`.
fn bind_with_extra_format_code(port: u16, sql: &str) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut s = raw::session(port, "postgres", "postgres")?;
    let mut parse = raw::cstr(&["", sql]);
    parse.extend_from_slice(&1i16.to_be_bytes());
    parse.extend_from_slice(&23u32.to_be_bytes());
    let mut bind = raw::cstr(&["", ""]);
    for n in [2i16, 0, 0, 1] {
        // Two format codes (text, text), then one parameter…
        bind.extend_from_slice(&n.to_be_bytes());
    }
    bind.extend_from_slice(&1i32.to_be_bytes());
    bind.extend_from_slice(b"1");
    bind.extend_from_slice(&0i16.to_be_bytes()); // …and no result format codes.
    let mut execute = raw::cstr(&[""]);
    execute.extend_from_slice(&0i32.to_be_bytes());
    let mut m = raw::message(b'P', &parse);
    m.extend(raw::message(b'B', &bind));
    m.extend(raw::message(b'E', &execute));
    m.extend(raw::message(b'S', &[]));
    s.write_all(&m)?;
    raw::read_to_ready(&mut s)
}

/// A Bind must carry zero, one, or as many parameter format codes as parameters: PostgreSQL
/// refuses two codes for one parameter with 08P01 ("bind message has 2 parameter formats but
/// 1 parameters") and runs nothing.
#[tokio::test]
async fn a_bind_with_more_format_codes_than_parameters_is_refused() -> anyhow::Result<()> {
    let (cluster, direct, proxy, c) = setup(
        "CREATE TABLE t (id int PRIMARY KEY, n int);
         INSERT INTO t VALUES (1, 0);
         SELECT writebehind.enable('t');",
        &[],
    )
    .await?;
    let sql = "UPDATE t SET n = 5 WHERE id = $1";
    let direct_replies = bind_with_extra_format_code(cluster.port, sql)?;
    assert_eq!(
        first_error(&direct_replies).as_deref(),
        Some(SqlState::PROTOCOL_VIOLATION.code()),
        "PostgreSQL directly: {direct_replies:?}"
    );
    let replies = bind_with_extra_format_code(proxy.port, sql)?;
    assert_eq!(
        first_error(&replies).as_deref(),
        Some(SqlState::PROTOCOL_VIOLATION.code()),
        "through the proxy: {replies:?}"
    );
    assert!(
        !replies.iter().any(|(ty, _)| *ty == b'C'),
        "no CommandComplete: {replies:?}"
    );
    assert_eq!(
        after_barrier(&c, &direct, "SELECT n FROM t").await?,
        ["0"],
        "nothing ran"
    );
    Ok(())
}

/// PostgreSQL's numeric holds at most 131072 digits before the decimal point: a literal of
/// 131073 nines is refused with 22003 and nothing is written.
#[tokio::test]
async fn a_numeric_beyond_postgres_limits_is_out_of_range() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup(
        "CREATE TABLE m (id int PRIMARY KEY, x numeric);
         SELECT writebehind.enable('m');",
        &[],
    )
    .await?;
    let sql = format!("INSERT INTO m VALUES (1, {})", "9".repeat(131_073));
    assert_eq!(
        answer(&c, &sql).await,
        Err(SqlState::NUMERIC_VALUE_OUT_OF_RANGE),
        "131073 nines"
    );
    assert_eq!(
        after_barrier(&c, &direct, "SELECT count(*) FROM m").await?,
        ["0"]
    );
    Ok(())
}

/// A default that depends on TimeZone or DateStyle (`current_date`, `now()` into a
/// `timestamp`, a time printed as text) is computed by PostgreSQL with the writing session's
/// settings. The worker would compute it with its own, so a session whose settings differ
/// from the database's has such an INSERT pass through (it is in the table at once, with the
/// session's day and format); a session with the database's settings is acknowledged, and so
/// is one that gives every such column a value.
#[tokio::test]
async fn defaults_are_computed_with_the_writers_time_zone_and_date_style() -> anyhow::Result<()> {
    let (_cluster, direct, proxy, c) = setup(
        "CREATE TABLE d (id int PRIMARY KEY, day date DEFAULT current_date,
                         ts timestamp DEFAULT now(), txt text DEFAULT now()::text,
                         tz timestamptz DEFAULT now());
         SELECT writebehind.enable('d');",
        &["--flush-interval", "1h"],
    )
    .await?;
    let there = |id: i32| {
        let direct = &direct;
        async move {
            rows(
                direct,
                &format!(
                    "SELECT (ts = tz AT TIME ZONE 'Pacific/Kiritimati')::text || ' '
                            || (day = (tz AT TIME ZONE 'Pacific/Kiritimati')::date)::text || ' '
                            || txt FROM d WHERE id = {id}"
                ),
            )
            .await
        }
    };
    c.batch_execute("SET timezone = 'Pacific/Kiritimati'")
        .await?;
    assert_eq!(answer(&c, "INSERT INTO d (id) VALUES (1)").await, Ok(1));
    let kiritimati = there(1).await?;
    assert!(
        kiritimati.len() == 1
            && kiritimati[0].starts_with("true true ")
            && kiritimati[0].ends_with("+14"),
        "computed in the session, in its time zone: {kiritimati:?}"
    );
    // Every such column given: nothing for the worker to compute, acknowledged.
    assert_eq!(
        answer(
            &c,
            "INSERT INTO d (id, day, ts, txt) VALUES (2, NULL, NULL, 'x')"
        )
        .await,
        Ok(1)
    );
    assert_eq!(
        there(2).await?,
        Vec::<String>::new(),
        "acknowledged, not applied yet"
    );

    let dmy = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    dmy.batch_execute("SET datestyle = 'SQL, DMY'").await?;
    assert_eq!(answer(&dmy, "INSERT INTO d (id) VALUES (3)").await, Ok(1));
    let txt = rows(&direct, "SELECT txt FROM d WHERE id = 3").await?;
    assert!(
        txt.len() == 1 && txt[0].contains('/'),
        "printed in the session's DateStyle: {txt:?}"
    );

    // The database's own settings: acknowledged, and the worker's values are the same.
    let plain = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    assert_eq!(answer(&plain, "INSERT INTO d (id) VALUES (4)").await, Ok(1));
    assert_eq!(
        rows(&direct, "SELECT id FROM d WHERE id = 4").await?,
        Vec::<String>::new(),
        "acknowledged, not applied yet"
    );
    let zone = rows(&direct, "SHOW timezone").await?;
    let applied = after_barrier(
        &plain,
        &direct,
        &format!(
            "SELECT (ts = tz AT TIME ZONE '{}')::text FROM d WHERE id = 4",
            zone.first().map_or("UTC", String::as_str)
        ),
    )
    .await?;
    assert_eq!(applied, ["true"]);
    Ok(())
}

/// Round 2. With a self-referencing foreign key `ON DELETE CASCADE`, re-parenting a row and
/// then deleting its old parent keeps the row (the cascade finds no child left): PostgreSQL
/// ends with rows 2 and 3. Pending together, the worker must not delete row 1 (and cascade into
/// row 2) before row 2's re-parenting applies.
#[tokio::test]
async fn a_self_referencing_cascade_sees_earlier_changes_first() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup(
        "CREATE TABLE tree (id int PRIMARY KEY, parent int REFERENCES tree (id) ON DELETE CASCADE,
                            n int);
         INSERT INTO tree VALUES (1, NULL, 0), (2, 1, 0), (3, NULL, 0);
         SELECT writebehind.enable('tree');",
        &["--flush-interval", "1h"],
    )
    .await?;
    for sql in [
        "UPDATE tree SET n = 9 WHERE id = 1",
        "UPDATE tree SET parent = 3 WHERE id = 2",
        "DELETE FROM tree WHERE id = 1",
    ] {
        assert_eq!(answer(&c, sql).await, Ok(1), "{sql}");
    }
    assert_eq!(
        after_barrier(
            &c,
            &direct,
            "SELECT id || ':' || coalesce(parent::text, '-') || ':' || n FROM tree ORDER BY id"
        )
        .await?,
        ["2:3:0", "3:-:0"]
    );
    Ok(())
}

/// Round 2. PostgreSQL truncates identifiers to 63 bytes, so a longer spelling names the same
/// table: a read spelled that way must wait for the acknowledged write (read-your-writes),
/// and a write spelled that way must apply after it.
#[tokio::test]
async fn a_name_longer_than_63_bytes_is_the_truncated_table() -> anyhow::Result<()> {
    let name = "l".repeat(63);
    let (_cluster, direct, _proxy, c) = setup(
        &format!(
            "CREATE TABLE {name} (id int PRIMARY KEY, n int);
             INSERT INTO {name} VALUES (1, 0);
             SELECT writebehind.enable('{name}');"
        ),
        &["--flush-interval", "1h"],
    )
    .await?;
    let long = format!("{name}xxxx");
    let sql = format!("UPDATE {name} SET n = 1 WHERE id = 1");
    assert_eq!(answer(&c, &sql).await, Ok(1), "{sql}");
    assert_eq!(
        rows(&c, &format!("SELECT n FROM {long}")).await?,
        ["1"],
        "read through the longer spelling"
    );
    let sql = format!("UPDATE {name} SET n = 2 WHERE id = 1");
    assert_eq!(answer(&c, &sql).await, Ok(1), "{sql}");
    let sql = format!("UPDATE {long} SET n = 3 WHERE id = 1");
    assert_eq!(answer(&c, &sql).await, Ok(1), "{sql}");
    assert_eq!(
        after_barrier(&c, &direct, &format!("SELECT n FROM {name}")).await?,
        ["3"]
    );
    Ok(())
}

/// Round 2. With the table's `on_conflict` policy `upsert`, the worker applies an INSERT of an
/// existing key as an update, as the table's owner. A role that may INSERT but not UPDATE
/// gets what PostgreSQL says to its plain INSERT of an existing key (23505), and the row keeps
/// its value; its INSERT of a new key is written.
#[tokio::test]
async fn a_role_without_update_cannot_overwrite_through_the_upsert_policy() -> anyhow::Result<()> {
    let (_cluster, direct, proxy, _c) = setup(
        "CREATE TABLE owned (id int PRIMARY KEY, s text);
         INSERT INTO owned VALUES (1, 'owner''s');
         SELECT writebehind.enable('owned');
         CREATE ROLE ins_only LOGIN;
         GRANT INSERT, SELECT ON owned TO ins_only;
         GRANT USAGE ON SCHEMA writebehind TO ins_only;",
        &[],
    )
    .await?;
    let c = writebehind_tests::connect(&proxy.conninfo("ins_only", "postgres")).await?;
    let sql = "INSERT INTO owned VALUES (1, 'overwritten')";
    assert_eq!(
        answer(&c, sql).await,
        Err(SqlState::UNIQUE_VIOLATION),
        "{sql}"
    );
    let sql = "INSERT INTO owned VALUES (2, 'new')";
    assert_eq!(answer(&c, sql).await, Ok(1), "{sql}");
    assert_eq!(
        after_barrier(&c, &direct, "SELECT id || ':' || s FROM owned ORDER BY id").await?,
        ["1:owner's", "2:new"]
    );
    Ok(())
}

/// Round 2. A column of a NOT NULL domain left out of an INSERT is NULL, which the domain
/// refuses (23502); a domain CHECK that NULL fails likewise (23514). Nothing is written.
#[tokio::test]
async fn an_omitted_column_of_a_not_null_domain_is_refused() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup(
        "CREATE DOMAIN nn_int AS int NOT NULL;
         CREATE DOMAIN present AS text CHECK (VALUE IS NOT NULL);
         CREATE TABLE dn (id int PRIMARY KEY, n int, d nn_int, p present DEFAULT 'x');
         CREATE TABLE dc (id int PRIMARY KEY, p present);
         SELECT writebehind.enable('dn'); SELECT writebehind.enable('dc');",
        &[],
    )
    .await?;
    for (sql, code) in [
        (
            "INSERT INTO dn (id, n) VALUES (1, 1)",
            SqlState::NOT_NULL_VIOLATION,
        ),
        (
            "INSERT INTO dn VALUES (1, 1, DEFAULT)",
            SqlState::NOT_NULL_VIOLATION,
        ),
        ("INSERT INTO dc (id) VALUES (1)", SqlState::CHECK_VIOLATION),
    ] {
        assert_eq!(answer(&c, sql).await, Err(code), "{sql}");
    }
    assert_eq!(
        after_barrier(
            &c,
            &direct,
            "SELECT (SELECT count(*) FROM dn) + (SELECT count(*) FROM dc)"
        )
        .await?,
        ["0"]
    );
    Ok(())
}

/// Round 2 review. A client that pipelines `SET timezone` and the next write (the write's
/// Bind sent before PostgreSQL answered the SET) gets the write computed in the new time
/// zone: the proxy compares the session's settings once the SET's reply is in.
#[tokio::test]
async fn a_time_zone_set_just_before_in_a_pipeline_counts() -> anyhow::Result<()> {
    let (_cluster, direct, _proxy, c) = setup(
        "CREATE TABLE d (id int PRIMARY KEY, day date DEFAULT current_date,
                         tz timestamptz DEFAULT now());
         SELECT writebehind.enable('d');",
        &["--flush-interval", "1h"],
    )
    .await?;
    let insert = c.prepare("INSERT INTO d (id) VALUES ($1)").await?;
    let (set, written) = tokio::join!(
        c.batch_execute("SET timezone = 'Pacific/Kiritimati'"),
        c.execute(&insert, &[&1i32])
    );
    set?;
    assert_eq!(written?, 1);
    assert_eq!(
        rows(
            &direct,
            "SELECT (day = (tz AT TIME ZONE 'Pacific/Kiritimati')::date)::text FROM d WHERE id = 1"
        )
        .await?,
        ["true"],
        "computed by PostgreSQL in the session's new time zone"
    );
    Ok(())
}
