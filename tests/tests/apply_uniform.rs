//! The apply engine's uniform fast path (extension/src/apply/uniform.rs): rounds of one shape
//! are applied by one statement, with exactly the result of the general path; rounds that do
//! not fit, or fail, fall back to it with nothing lost, nothing doubled, and their dead letters.

use std::collections::BTreeMap;
use tokio_postgres::Client;
use writebehind_tests::inbox::{dead_letters, flush, relid, ship, Change};
use writebehind_tests::{copy_escape, query_i64, ship_batch, Cluster};

fn insert(id: i64, data: &str) -> Change {
    Change {
        op: 'I',
        key: vec![id.to_string()],
        data: Some(data.into()),
    }
}

fn add(id: i64, delta: &str) -> Change {
    Change {
        op: 'U',
        key: vec![id.to_string()],
        data: Some(format!(r#"{{"n": {{"add": "{delta}"}}}}"#)),
    }
}

/// Ships `INSERT … ON CONFLICT (id) DO UPDATE SET <set>` rows (op `X`) of keys with their data.
async fn ship_upserts(
    client: &mut Client,
    seq: i64,
    relid: u32,
    rows: &[(i64, String)],
    set: &str,
) -> anyhow::Result<bool> {
    ship_batch(client, "x", seq, || {
        Ok(rows
            .iter()
            .map(|(id, data)| {
                format!(
                    "x\t{seq}\t{relid}\tX\t[\"{id}\"]\t{}\t{set}\n",
                    copy_escape(data)
                )
            })
            .collect())
    })
    .await
}

async fn uniform_rounds(client: &Client, table: &str) -> anyhow::Result<i64> {
    query_i64(
        client,
        &format!(
            "SELECT coalesce(sum(uniform_rounds), 0)::int8 FROM writebehind.table_stats
              WHERE relid = '{table}'::regclass"
        ),
    )
    .await
}

#[tokio::test]
async fn uniform_inserts_and_increments_take_one_statement_and_match_the_model(
) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE u (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0,
                             s text DEFAULT 'dflt', v varchar(5));
             SELECT writebehind.enable('u');",
        )
        .await?;
    let rel = relid(&client, "u").await?;
    // 1,000 inserts of one column set: v is not listed, so it keeps its default (NULL).
    let rows: Vec<Change> = (1..=1000)
        .map(|i| {
            insert(
                i,
                &format!(r#"{{"id": "{i}", "n": "{}", "s": "r{i}"}}"#, i * 10),
            )
        })
        .collect();
    assert!(ship(&mut client, "u", 1, rel, &rows).await?);
    flush(&client).await?;
    assert!(
        uniform_rounds(&client, "u").await? >= 1,
        "a round of uniform inserts takes the fast path"
    );
    let wrong = query_i64(
        &client,
        "SELECT count(*) FROM u WHERE n <> id * 10 OR s <> 'r' || id OR v IS NOT NULL",
    )
    .await?;
    assert_eq!(query_i64(&client, "SELECT count(*) FROM u").await?, 1000);
    assert_eq!(wrong, 0, "every inserted row has its values and defaults");

    // 20,000 increments over 100 keys (and 5 keys that do not exist), deltas of both signs.
    let mut model: BTreeMap<i64, i64> = (1..=1000).map(|i| (i, i * 10)).collect();
    let before = uniform_rounds(&client, "u").await?;
    for b in 0..4i64 {
        let batch: Vec<Change> = (0..5000i64)
            .map(|j| {
                let id = (j * 7 + b) % 105 + 1;
                let delta = (j % 13) - 4;
                if let Some(n) = model.get_mut(&id) {
                    if id <= 100 {
                        *n += delta;
                    }
                }
                // Five of the 105 keys are absent from the table (2001..=2005).
                let id = if id > 100 { id + 1900 } else { id };
                add(id, &delta.to_string())
            })
            .collect();
        assert!(ship(&mut client, "u", b + 2, rel, &batch).await?);
    }
    flush(&client).await?;
    assert!(
        uniform_rounds(&client, "u").await? > before,
        "rounds of pure increments take the fast path"
    );
    let got: BTreeMap<i64, i64> = client
        .query("SELECT id::int8, n FROM u ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        got, model,
        "increments folded exactly; absent keys created nothing"
    );
    // Upserts (op X) that update only `s` on a conflict: n keeps its value for existing keys.
    let before = uniform_rounds(&client, "u").await?;
    let upserts: Vec<(i64, String)> = (991..=1010)
        .map(|i| (i, format!(r#"{{"n": "-1", "s": "x{i}"}}"#)))
        .collect();
    assert!(ship_upserts(&mut client, 1, rel, &upserts, "{s}").await?);
    flush(&client).await?;
    assert!(
        uniform_rounds(&client, "u").await? > before,
        "a round of upserts takes the fast path"
    );
    for (id, n, s) in client
        .query(
            "SELECT id::int8, n, s FROM u WHERE id > 990 ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                r.get::<_, i64>(1),
                r.get::<_, String>(2),
            )
        })
    {
        assert_eq!(s, format!("x{id}"));
        assert_eq!(n, if id <= 1000 { model[&id] } else { -1 }, "id {id}");
    }
    // A key inserted twice in one round (ON CONFLICT DO UPDATE cannot take it in one statement):
    // the fast path keeps each key's last row, which is what folding them gives.
    let before = uniform_rounds(&client, "u").await?;
    let mut rows: Vec<Change> = (2001..=2100)
        .map(|i| insert(i, &format!(r#"{{"n": "{i}", "s": "first"}}"#)))
        .collect();
    rows.push(insert(2050, r#"{"n": "-2050", "s": "last"}"#));
    assert!(ship(&mut client, "u", 10, rel, &rows).await?);
    flush(&client).await?;
    assert!(
        uniform_rounds(&client, "u").await? > before,
        "a round with a key inserted twice still takes the fast path"
    );
    assert_eq!(
        query_i64(
            &client,
            "SELECT count(*) FROM u WHERE id BETWEEN 2001 AND 2100
                AND n = CASE id WHEN 2050 THEN -2050 ELSE id END
                AND s = CASE id WHEN 2050 THEN 'last' ELSE 'first' END"
        )
        .await?,
        100
    );
    let (applied, coalesced): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT applied, coalesced FROM writebehind.table_stats WHERE relid = 'u'::regclass",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    assert_eq!(
        applied + coalesced,
        21_121,
        "every inbox row is accounted for"
    );
    assert!(dead_letters(&client).await?.is_empty());

    // A column whose name needs quoting in a string literal and as an identifier.
    client
        .batch_execute(
            r#"CREATE TABLE q (id int PRIMARY KEY, "it's\x" int NOT NULL DEFAULT 0);
               INSERT INTO q VALUES (1), (2);
               SELECT writebehind.enable('q');"#,
        )
        .await?;
    let q = relid(&client, "q").await?;
    let incs: Vec<Change> = (0..100)
        .map(|j| Change {
            op: 'U',
            key: vec![(j % 2 + 1).to_string()],
            data: Some(r#"{"it's\\x": {"add": "2"}}"#.into()),
        })
        .collect();
    assert!(ship(&mut client, "q", 1, q, &incs).await?);
    flush(&client).await?;
    assert_eq!(uniform_rounds(&client, "q").await?, 1);
    assert_eq!(
        query_i64(&client, r#"SELECT sum("it's\x")::int8 FROM q"#).await?,
        200
    );
    Ok(())
}

#[tokio::test]
async fn rounds_that_do_not_fit_or_fail_fall_back_to_the_general_path() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE f (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0,
                             s text DEFAULT 'dflt', v varchar(5));
             INSERT INTO f (id, s) VALUES (1, 'keep');
             SELECT writebehind.enable('f');",
        )
        .await?;
    let rel = relid(&client, "f").await?;
    // A row listing fewer columns among uniform ones: s takes its default for a new key and
    // keeps its value for an existing one (a one-statement INSERT would have nulled it).
    let mut rows: Vec<Change> = (2..=50)
        .map(|i| insert(i, &format!(r#"{{"n": "{i}", "s": "r{i}"}}"#)))
        .collect();
    rows.insert(10, insert(1, r#"{"n": "100"}"#));
    rows.insert(20, insert(60, r#"{"n": "600"}"#));
    // Too long for varchar(5): 22001, never silently truncated.
    rows.insert(30, insert(70, r#"{"n": "7", "s": "x", "v": "abcdefgh"}"#));
    // The same key twice in one round: the later values win.
    rows.push(insert(2, r#"{"n": "222", "s": "again"}"#));
    assert!(ship(&mut client, "f", 1, rel, &rows).await?);
    flush(&client).await?;
    let got: Vec<(i32, i64, Option<String>)> = client
        .query(
            "SELECT id, n, s FROM f WHERE id IN (1, 2, 3, 60, 70) ORDER BY id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 100, Some("keep".into())),
            (2, 222, Some("again".into())),
            (3, 3, Some("r3".into())),
            (60, 600, Some("dflt".into())),
        ]
    );
    assert_eq!(query_i64(&client, "SELECT count(*) FROM f").await?, 51);
    // Increments with one poisoned delta (not an integer, in place of one of key 35's): the
    // fast statement fails, the general path folds key 7's increments into one change that
    // lands in the dead letters with PostgreSQL's SQLSTATE, and everything else applies.
    let mut incs: Vec<Change> = (0..3000i64).map(|j| add(j % 50 + 1, "1")).collect();
    assert_eq!(incs[1234].key, vec!["35".to_string()]);
    incs[1234] = add(7, "1.5");
    assert!(ship(&mut client, "f", 2, rel, &incs).await?);
    flush(&client).await?;
    assert_eq!(
        query_i64(
            &client,
            "SELECT sum(n)::int8 FROM f WHERE id BETWEEN 3 AND 50 AND id <> 7"
        )
        .await?,
        (3..=50)
            .filter(|i| *i != 7)
            .map(|i| i + if i == 35 { 59 } else { 60 })
            .sum::<i64>()
    );
    assert_eq!(query_i64(&client, "SELECT n FROM f WHERE id = 7").await?, 7);
    // INSERT … ON CONFLICT DO NOTHING (op N) of an existing key among INSERTs of the same
    // columns (its own table, so that no earlier decline makes the worker skip the attempt):
    // its data fits the round's shape, its op does not, and it must not update the row.
    client
        .batch_execute(
            "CREATE TABLE o (id int PRIMARY KEY, n bigint, s text);
             INSERT INTO o VALUES (1, 1, 'first');
             SELECT writebehind.enable('o');",
        )
        .await?;
    let o = relid(&client, "o").await?;
    let mut rows: Vec<Change> = (2..=20)
        .map(|i| insert(i, &format!(r#"{{"n": "{i}", "s": "r{i}"}}"#)))
        .collect();
    rows.insert(
        5,
        Change {
            op: 'N',
            key: vec!["1".into()],
            data: Some(r#"{"n": "-5", "s": "nothing"}"#.into()),
        },
    );
    assert!(ship(&mut client, "o", 1, o, &rows).await?);
    flush(&client).await?;
    assert_eq!(
        query_i64(
            &client,
            "SELECT count(*) FROM o WHERE n = id AND s IN ('first', 'r' || id)"
        )
        .await?,
        20
    );
    let dead = dead_letters(&client).await?;
    assert_eq!(
        dead,
        vec![
            ("[\"70\"]".to_string(), "22001".to_string()),
            ("[\"7\"]".to_string(), "22P02".to_string()),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn append_tables_keep_the_order_and_triggers_see_every_row() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE ev (seq bigserial, kind text NOT NULL, at int);
             CREATE TABLE seen (kind text);
             CREATE FUNCTION note() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO seen VALUES (NEW.kind);
                        IF NEW.at < 0 THEN RETURN NULL; END IF; RETURN NEW; END $$;
             CREATE TRIGGER note BEFORE INSERT ON ev FOR EACH ROW EXECUTE FUNCTION note();
             SELECT writebehind.enable('ev', mode => 'append');",
        )
        .await?;
    let rel = relid(&client, "ev").await?;
    let events: Vec<Change> = (0..2000)
        .map(|i| Change {
            op: 'I',
            key: vec![],
            data: Some(format!(r#"{{"kind": "e{i}", "at": "{i}"}}"#)),
        })
        .collect();
    assert!(ship(&mut client, "ev", 1, rel, &events).await?);
    flush(&client).await?;
    assert!(uniform_rounds(&client, "ev").await? >= 1);
    let out_of_order = query_i64(
        &client,
        "SELECT count(*) FROM (SELECT at, lag(at) OVER (ORDER BY seq) AS prev FROM ev) x
          WHERE at <> prev + 1",
    )
    .await?;
    assert_eq!(query_i64(&client, "SELECT count(*) FROM ev").await?, 2000);
    assert_eq!(out_of_order, 0, "events are inserted in inbox order");
    // A BEFORE trigger that skips a row: the one statement cannot account for it, so the round
    // goes the general way, which gives the same table.
    let mixed: Vec<Change> = (0..100)
        .map(|i| Change {
            op: 'I',
            key: vec![],
            data: Some(format!(
                r#"{{"kind": "m{i}", "at": "{}"}}"#,
                if i == 50 { -1 } else { i }
            )),
        })
        .collect();
    assert!(ship(&mut client, "ev", 2, rel, &mixed).await?);
    flush(&client).await?;
    assert_eq!(query_i64(&client, "SELECT count(*) FROM ev").await?, 2099);
    // The declined attempt was rolled back with its trigger's side effects: each row was seen
    // once, by the statement that counted.
    assert_eq!(query_i64(&client, "SELECT count(*) FROM seen").await?, 2100);
    assert!(dead_letters(&client).await?.is_empty());
    Ok(())
}

/// An increment whose key holds a JSON null (malformed: the proxy never ships one) matches no
/// row; the fast path counted it applied, the general path makes it a dead letter (22P02).
/// Found by a review on 2026-12-03.
#[tokio::test]
async fn an_increment_of_a_null_key_is_a_dead_letter() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE cn (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);
             INSERT INTO cn VALUES (1, 0);
             SELECT writebehind.enable('cn');",
        )
        .await?;
    let rel = relid(&client, "cn").await?;
    let data = copy_escape(r#"{"n": {"add": "1"}}"#);
    assert!(
        ship_batch(&mut client, "cn", 1, || Ok(format!(
            "cn\t1\t{rel}\tU\t[null]\t{data}\t\\N\n"
        )))
        .await?
    );
    flush(&client).await?;
    assert_eq!(
        dead_letters(&client).await?,
        vec![("[null]".to_string(), "22P02".to_string())]
    );
    assert_eq!(
        query_i64(&client, "SELECT n::int8 FROM cn WHERE id = 1").await?,
        0
    );
    Ok(())
}
