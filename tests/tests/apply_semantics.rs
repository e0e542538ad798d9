//! What the apply engine stores is what PostgreSQL would store for the same changes run one
//! statement at a time: values of `char(n)` and `bit(n)` columns, deferred constraints, an
//! `ON CONFLICT DO NOTHING` after a failed insert, changes that need another key's change of
//! the same round, and the arrival order of append rows. Fed as a proxy feeds the inbox.

use writebehind_tests::inbox::{flush, relid, ship, ship_rows, Change};
use writebehind_tests::Cluster;

/// `char(n)`, `bit(n)` and arrays of `char(n)` take the whole value, as an INSERT does: the
/// worker cast them to `character` and `bit`, which mean `char(1)` and `bit(1)`, so 'hello'
/// was stored as 'h' and a `bit(4)` value was dead-lettered. Too long is still 22001.
#[tokio::test]
async fn char_n_and_bit_n_values_are_not_truncated() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE cb (id int PRIMARY KEY, c char(5), b bit(4), a char(3)[]);
             SELECT writebehind.enable('cb');",
        )
        .await?;
    let rel = relid(&client, "cb").await?;
    let row = |id: i32, data: &str| Change {
        op: 'I',
        key: vec![id.to_string()],
        data: Some(data.into()),
    };
    // One shape (the one-statement path), then mixed shapes (the general path).
    let uniform = vec![
        row(1, r#"{"c": "hello", "b": "1010", "a": "{abc,de}"}"#),
        row(2, r#"{"c": "hi", "b": "0001", "a": "{x}"}"#),
    ];
    let mixed = vec![
        row(3, r#"{"c": "world"}"#),
        row(4, r#"{"b": "1100"}"#),
        row(5, r#"{"c": "toolong"}"#),
    ];
    assert!(ship(&mut client, "chars", 1, rel, &uniform).await?);
    assert!(ship(&mut client, "chars", 2, rel, &mixed).await?);
    flush(&client).await?;
    let got: Vec<String> = client
        .query(
            "SELECT id || ':' || coalesce(c, '-') || ':' || coalesce(b::text, '-') || ':' ||
                    coalesce(a::text, '-') FROM cb ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        got,
        [
            r#"1:hello:1010:{abc,"de "}"#,
            r#"2:hi:0001:{"x  "}"#,
            "3:world:-:-",
            "4:-:1100:-"
        ]
    );
    let dead: Vec<String> = client
        .query("SELECT sqlstate FROM writebehind.dead_letters", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead, ["22001"], "only the value too long for char(5)");
    Ok(())
}

/// A change that violates a DEFERRABLE INITIALLY DEFERRED constraint is one dead letter and the
/// table's other changes apply: the violation used to surface at the worker's COMMIT, outside
/// the subtransactions that isolate failures, failing the table's every round for good. A
/// deferrable primary key is refused by enable() (the worker upserts by it).
#[tokio::test]
async fn deferred_constraints_dead_letter_one_change_not_the_table() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE dp (id int PRIMARY KEY);
             INSERT INTO dp VALUES (1);
             CREATE TABLE dc (id int PRIMARY KEY,
                              pid int REFERENCES dp DEFERRABLE INITIALLY DEFERRED,
                              u text UNIQUE DEFERRABLE INITIALLY DEFERRED);
             SELECT writebehind.enable('dc');
             CREATE TABLE dk (id int PRIMARY KEY DEFERRABLE);",
        )
        .await?;
    let refused = client.execute("SELECT writebehind.enable('dk')", &[]).await;
    assert_eq!(
        refused.err().as_ref().and_then(|e| e.code()),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "a deferrable primary key"
    );
    let rel = relid(&client, "dc").await?;
    let row = |id: i32, data: &str| Change {
        op: 'I',
        key: vec![id.to_string()],
        data: Some(data.into()),
    };
    let batch = vec![
        row(1, r#"{"pid": "1", "u": "a"}"#),
        row(2, r#"{"pid": "99", "u": "b"}"#),
        row(3, r#"{"pid": "1", "u": "a"}"#),
        row(4, r#"{"pid": "1", "u": "c"}"#),
    ];
    assert!(ship(&mut client, "deferred", 1, rel, &batch).await?);
    flush(&client).await?;
    let ids: Vec<i32> = client
        .query("SELECT id FROM dc ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1, 4]);
    let dead: Vec<String> = client
        .query(
            "SELECT key || ' ' || sqlstate FROM writebehind.dead_letters ORDER BY key",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(dead, [r#"["2"] 23503"#, r#"["3"] 23505"#]);
    Ok(())
}

/// `INSERT … ON CONFLICT DO NOTHING` after another insert of the same key in one round: when the
/// first fails (here a CHECK), the DO NOTHING row is inserted, as in PostgreSQL. It used to be
/// folded away, so an acknowledged write was neither applied nor dead-lettered.
#[tokio::test]
async fn a_do_nothing_insert_applies_when_the_insert_before_it_fails() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE dn (id int PRIMARY KEY, n int CHECK (n >= 0), v text);
             SELECT writebehind.enable('dn');",
        )
        .await?;
    let rel = relid(&client, "dn").await?;
    let row = |op: char, id: i32, data: &str| Change {
        op,
        key: vec![id.to_string()],
        data: Some(data.into()),
    };
    let batch = vec![
        row('I', 1, r#"{"n": "-1", "v": "bad"}"#),
        row('N', 1, r#"{"n": "5", "v": "good"}"#),
        row('I', 2, r#"{"n": "1", "v": "first"}"#),
        row('N', 2, r#"{"n": "2", "v": "ignored"}"#),
    ];
    assert!(ship(&mut client, "nothing", 1, rel, &batch).await?);
    flush(&client).await?;
    let got: Vec<String> = client
        .query("SELECT id || ':' || n || ':' || v FROM dn ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, ["1:5:good", "2:1:first"]);
    let dead: i64 = client
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(dead, 1, "the failing insert");
    Ok(())
}

/// Changes of one round that depend on another key's change applied by a later statement of
/// the round: a child row whose parent (same table) comes in another column shape, and a
/// unique value another key's UPDATE gives up. PostgreSQL, one statement after the other,
/// applies them; the worker now retries such integrity failures at the end of the round
/// instead of dead-lettering them. Append tables keep arrival order across column shapes
/// (their serial numbers follow it).
#[tokio::test]
async fn changes_that_need_another_keys_change_apply_and_append_rows_keep_order(
) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE sr (id int PRIMARY KEY, parent int REFERENCES sr, v text);
             CREATE TABLE uq (id int PRIMARY KEY, email text UNIQUE);
             INSERT INTO uq VALUES (1, 'a@x');
             CREATE TABLE ev (seq bigserial, kind text DEFAULT 'none', n int);
             SELECT writebehind.enable('sr'), writebehind.enable('uq');
             SELECT writebehind.enable('ev', mode => 'append');",
        )
        .await?;
    let change = |op: char, key: Vec<String>, data: &str| Change {
        op,
        key,
        data: Some(data.into()),
    };
    let k = |id: i32| vec![id.to_string()];
    let (sr, uq, ev) = (
        relid(&client, "sr").await?,
        relid(&client, "uq").await?,
        relid(&client, "ev").await?,
    );
    let sr_rows = [
        change('I', k(9), r#"{"parent": null, "v": "x"}"#),
        change('I', k(1), r#"{"v": "root"}"#),
        change('I', k(2), r#"{"parent": "1", "v": "child"}"#),
    ];
    let uq_rows = [
        change('I', k(3), r#"{"email": "c@x"}"#),
        change('U', k(1), r#"{"email": {"set": "b@x"}}"#),
        change('I', k(2), r#"{"email": "a@x"}"#),
    ];
    let ev_rows = [
        change('I', vec![], r#"{"kind": "login", "n": "1"}"#),
        change('I', vec![], r#"{"n": "2"}"#),
        change('I', vec![], r#"{"kind": "logout", "n": "3"}"#),
        change('I', vec![], r#"{"n": "4"}"#),
    ];
    let mut rows: Vec<(u32, &Change)> = sr_rows.iter().map(|c| (sr, c)).collect();
    rows.extend(uq_rows.iter().map(|c| (uq, c)));
    rows.extend(ev_rows.iter().map(|c| (ev, c)));
    assert!(ship_rows(&mut client, "order", 1, &rows).await?);
    flush(&client).await?;
    let text = |sql: &'static str| {
        let client = &client;
        async move {
            Ok::<Vec<String>, anyhow::Error>(
                client
                    .query(sql, &[])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect(),
            )
        }
    };
    assert_eq!(
        text("SELECT id || ':' || coalesce(parent::text, '-') FROM sr ORDER BY id").await?,
        ["1:-", "2:1", "9:-"]
    );
    assert_eq!(
        text("SELECT id || ':' || email FROM uq ORDER BY id").await?,
        ["1:b@x", "2:a@x", "3:c@x"]
    );
    assert_eq!(
        text("SELECT n::text FROM ev ORDER BY seq").await?,
        ["1", "2", "3", "4"]
    );
    assert_eq!(
        text("SELECT sqlstate FROM writebehind.dead_letters").await?,
        Vec::<String>::new()
    );
    Ok(())
}
