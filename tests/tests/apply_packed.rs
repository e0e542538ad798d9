//! Packed inbox rows (docs/inbox.md): many changes of one shape in one row, column-wise. Rounds
//! of them are applied by one statement that reads the arrays (extension/src/apply/packed.rs),
//! with exactly the result of the same changes sent one JSON row each; rounds that do not fit,
//! or fail, are unpacked for the general path, with nothing lost, nothing doubled, and their
//! dead letters.

use tokio_postgres::Client;
use writebehind_tests::inbox::{flush, packed_row, relid, ship, ship_packed, Change, Packed};
use writebehind_tests::{query_i64, ship_batch_as, Cluster};

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// The JSON form of a packed row's changes (docs/inbox.md, "op and data"); key first.
fn as_json(p: &Packed) -> Vec<Change> {
    p.rows
        .iter()
        .map(|r| {
            let mut obj = serde_json::Map::new();
            for (c, v) in p.columns.iter().zip(r).skip(p.key_len) {
                let v = v
                    .clone()
                    .map_or(serde_json::Value::Null, serde_json::Value::String);
                let v = if p.op == 'U' {
                    serde_json::json!({ "add": v })
                } else {
                    v
                };
                obj.insert(c.clone(), v);
            }
            Change {
                op: p.op,
                key: r[..p.key_len]
                    .iter()
                    .map(|k| k.clone().unwrap_or_default())
                    .collect(),
                data: (p.op != 'D').then(|| serde_json::Value::Object(obj).to_string()),
            }
        })
        .collect()
}

/// One hand-made batch: a JSON row, or a packed row.
enum Batch {
    Json(Change),
    Packed(Packed),
}

/// (rounds, rounds applied by one statement) of a table.
async fn rounds(client: &Client, table: &str) -> anyhow::Result<(i64, i64)> {
    let r = client
        .query_one(
            "SELECT coalesce(sum(rounds), 0)::int8, coalesce(sum(uniform_rounds), 0)::int8
               FROM writebehind.table_stats WHERE relid = $1::text::regclass",
            &[&table],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

/// Text that a COPY row and an array literal both have to escape.
const AWKWARD: [&str; 6] = [
    "quote \" here",
    "back\\slash",
    "tab\tand\nnewline",
    "{braces},comma",
    "NULL",
    "",
];

#[tokio::test]
async fn packed_rounds_take_one_statement_and_equal_the_json_form() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    let ddl = "(id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, s text DEFAULT 'dflt',
                v varchar(5), d numeric DEFAULT 0)";
    client
        .batch_execute(&format!(
            "CREATE TABLE p {ddl}; CREATE TABLE j {ddl};
             SELECT writebehind.enable('p'); SELECT writebehind.enable('j');"
        ))
        .await?;
    let (rp, rj) = (relid(&client, "p").await?, relid(&client, "j").await?);
    let mut batches: Vec<Vec<Packed>> = Vec::new();
    // Inserts of 1,000 keys in two packed rows (v not listed: it keeps its default).
    batches.push(
        (0..2)
            .map(|half| {
                let rows = (1..=500)
                    .map(|i| {
                        let id = half * 500 + i;
                        let s = AWKWARD[id as usize % AWKWARD.len()];
                        vec![
                            text(id),
                            text(id * 10),
                            (id % 7 != 0).then(|| s.to_string()),
                        ]
                    })
                    .collect();
                Packed::new('I', &["id", "n", "s"], rows)
            })
            .collect(),
    );
    // Increments: 3 packed rows of 2,000 changes over 120 keys (20 of them absent), on n and d.
    for b in 0..3i64 {
        let rows = (0..2000i64)
            .map(|j| {
                let id = (j * 11 + b) % 120 + 1 + if j % 6 == 0 { 1000 } else { 0 };
                vec![text(id), text((j % 9) - 3), text(format!("{}.25", j % 5))]
            })
            .collect();
        batches.push(vec![Packed::new('U', &["id", "n", "d"], rows)]);
    }
    // Upserts of existing and new keys, one key twice (the later one wins).
    let mut x = Packed::new(
        'X',
        &["id", "v", "s"],
        (990..=1010)
            .chain([1000])
            .enumerate()
            .map(|(i, id)| vec![text(id), text(format!("v{i}")), text(format!("x{i}"))])
            .collect(),
    );
    x.conflict_set = Some(vec!["v".into(), "s".into()]);
    batches.push(vec![x]);
    for (seq, batch) in batches.iter().enumerate() {
        let seq = seq as i64 + 1;
        assert!(ship_packed(&mut client, "p", seq, rp, batch).await?);
        let json: Vec<Change> = batch.iter().flat_map(as_json).collect();
        assert!(ship(&mut client, "j", seq, rj, &json).await?);
    }
    flush(&client).await?;
    assert_eq!(query_i64(&client, "SELECT count(*) FROM p").await?, 1010);
    assert_eq!(
        query_i64(&client, "SELECT count(*) FROM writebehind.dead_letters").await?,
        0
    );
    let (all, one_statement) = rounds(&client, "p").await?;
    assert!(
        all >= 3,
        "inserts, increments and upserts are rounds of their own"
    );
    assert_eq!(
        one_statement, all,
        "every packed round takes the one-statement path"
    );
    // The JSON twin's X rows went without their conflict_set (`ship` sends none): compare the
    // keys that batch did not touch, and check the X batch on its own below.
    let diff = query_i64(
        &client,
        "SELECT count(*) FROM ((SELECT * FROM p WHERE id < 990 EXCEPT SELECT * FROM j WHERE id < 990)
                         UNION ALL (SELECT * FROM j WHERE id < 990 EXCEPT SELECT * FROM p WHERE id < 990)) d",
    )
    .await?;
    assert_eq!(diff, 0, "packed and JSON forms give the same rows");
    let awkward = query_i64(
        &client,
        "SELECT count(*) FROM p WHERE id < 990 AND s IS NOT DISTINCT FROM
            (ARRAY['quote \" here', E'back\\\\slash', E'tab\\tand\\nnewline', '{braces},comma', 'NULL', ''])
              [id % 6 + 1] AND id % 7 <> 0",
    )
    .await?;
    assert_eq!(
        awkward,
        query_i64(
            &client,
            "SELECT count(*) FROM p WHERE id < 990 AND id % 7 <> 0"
        )
        .await?,
        "every awkward string arrives as it was sent"
    );
    assert_eq!(
        query_i64(
            &client,
            "SELECT count(*) FROM p WHERE id % 7 = 0 AND id < 990 AND s IS NOT NULL"
        )
        .await?,
        0,
        "NULL stays NULL, not the string 'NULL'"
    );
    // The X batch: conflict_set (v, s) updated those columns only; key 1000 took its later row.
    assert_eq!(
        query_i64(
            &client,
            "SELECT count(*) FROM p WHERE id BETWEEN 990 AND 1010 AND v LIKE 'v%'"
        )
        .await?,
        21
    );
    let late: (String, String) = client
        .query_one("SELECT v, s FROM p WHERE id = 1000", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    assert_eq!(late, ("v21".to_string(), "x21".to_string()));
    // Increments: the sums are exact on both columns, absent keys stayed absent.
    let sums = query_i64(
        &client,
        "SELECT count(*) FROM p FULL JOIN j USING (id)
          WHERE id <= 120 AND (p.n, p.d) IS DISTINCT FROM (j.n, j.d)",
    )
    .await?;
    assert_eq!(sums, 0, "the increments' sums are exact on both columns");
    assert_eq!(
        query_i64(&client, "SELECT count(*) FROM p WHERE id > 1010").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn packed_rounds_that_do_not_fit_are_unpacked_for_the_general_path() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE q (id int PRIMARY KEY, n int NOT NULL DEFAULT 0, v varchar(3));
             SELECT writebehind.enable('q');
             CREATE TABLE ev (seq serial, id int, note text);
             SELECT writebehind.enable('ev', mode => 'append');",
        )
        .await?;
    let rq = relid(&client, "q").await?;
    // A bad value (22P02) and an overflowing varchar (22001) among good inserts.
    let rows = (1..=100)
        .map(|i| {
            let n = if i == 17 {
                "x".to_string()
            } else {
                i.to_string()
            };
            let v = if i == 33 { "long" } else { "ok" };
            vec![text(i), Some(n), text(v)]
        })
        .collect();
    // A NULL delta: malformed (dead letter); the other increments apply.
    let adds = (1..=100)
        .map(|i| vec![text(i), if i == 50 { None } else { text(2) }])
        .collect();
    // Deletes and DO NOTHING inserts are packed too, and go the general way.
    let dels = (91..=100).map(|i| vec![text(i)]).collect();
    let nothing = (89..=92).map(|i| vec![text(i), text(-1)]).collect();
    // Per key, JSON and packed rows apply in the order they were shipped.
    let j = |op: char, data: Option<&str>| {
        Batch::Json(Change {
            op,
            key: vec!["500".into()],
            data: data.map(str::to_string),
        })
    };
    let one = |op: char, n: i64| {
        Batch::Packed(Packed::new(
            op,
            &["id", "n"],
            vec![vec![text(500), text(n)]],
        ))
    };
    let batches = vec![
        Batch::Packed(Packed::new('I', &["id", "n", "v"], rows)),
        Batch::Packed(Packed::new('U', &["id", "n"], adds)),
        Batch::Packed(Packed::new('D', &["id"], dels)),
        Batch::Packed(Packed::new('N', &["id", "n"], nothing)),
        j('I', Some(r#"{"n": "1"}"#)),
        one('U', 5),
        j('D', None),
        one('I', 7),
        j('U', Some(r#"{"n": {"add": "3"}}"#)),
    ];
    let mut seq = 0i64;
    for batch in batches {
        seq += 1;
        let fresh = match batch {
            Batch::Json(c) => ship(&mut client, "q", seq, rq, &[c]).await?,
            Batch::Packed(p) => ship_packed(&mut client, "q", seq, rq, &[p]).await?,
        };
        assert!(fresh);
    }
    let mut next = || {
        seq += 1;
        seq
    };
    // A packed row whose arrays do not match its columns.
    let s = next();
    let bad = format!("q\t{s}\t{rq}\tI\t\\N\t\\N\t\\N\t{{id,n}}\t{{1,2,3}}\n");
    assert!(
        ship_batch_as(
            &mut client,
            "q",
            s,
            writebehind_tests::inbox::COPY_ALL,
            || Ok(bad)
        )
        .await?
    );
    // Append: packed rows keep their order across rows and within them.
    let rev = relid(&client, "ev").await?;
    let chunk = |from: i64| {
        Packed::append(
            &["id", "note"],
            (from..from + 50)
                .map(|i| vec![text(i), text(format!("e{i}"))])
                .collect(),
        )
    };
    let s = next();
    let text_rows = format!(
        "{}{}",
        packed_row("q", s, rev, &chunk(1)),
        packed_row("q", s, rev, &chunk(51))
    );
    assert!(
        ship_batch_as(
            &mut client,
            "q",
            s,
            writebehind_tests::inbox::COPY_ALL,
            || Ok(text_rows)
        )
        .await?
    );
    flush(&client).await?;

    let dead: Vec<(String, String)> = client
        .query("SELECT coalesce(key, '') AS k, sqlstate FROM writebehind.dead_letters ORDER BY k, sqlstate", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect: Vec<(String, String)> = [
        ("", "22P02"),
        (r#"["17"]"#, "22P02"),
        (r#"["33"]"#, "22001"),
        (r#"["50"]"#, "22P02"),
    ]
    .iter()
    .map(|(k, s)| (k.to_string(), s.to_string()))
    .collect();
    assert_eq!(
        dead, expect,
        "exactly the four bad changes are dead letters"
    );
    // 100 inserts - 2 dead - 10 deleted + (89, 90 kept by DO NOTHING; 91, 92 re-inserted as -1)
    assert_eq!(
        query_i64(&client, "SELECT count(*) FROM q WHERE id < 500").await?,
        90
    );
    assert_eq!(
        query_i64(&client, "SELECT sum(n) FROM q WHERE id BETWEEN 91 AND 92").await?,
        -2
    );
    let wrong = query_i64(
        &client,
        "SELECT count(*) FROM q WHERE id <= 90 AND n <> id + CASE WHEN id = 50 THEN 0 ELSE 2 END",
    )
    .await?;
    assert_eq!(
        wrong, 0,
        "every increment but the malformed one applied once"
    );
    assert_eq!(
        query_i64(&client, "SELECT n::int8 FROM q WHERE id = 500").await?,
        10,
        "I 1, +5, D, I 7, +3"
    );
    assert_eq!(
        query_i64(
            &client,
            "SELECT count(*) FROM ev WHERE seq <> id OR note <> 'e' || id"
        )
        .await?,
        0,
        "append rows keep their order"
    );
    assert_eq!(query_i64(&client, "SELECT count(*) FROM ev").await?, 100);
    Ok(())
}

#[tokio::test]
async fn a_queue_of_alternating_packed_shapes_is_applied_in_one_round() -> anyhow::Result<()> {
    // The worker polls only once an hour: everything queued must go in the round a commit or
    // a flush wakes it for, however many runs of one shape the queue holds (one packed row per
    // shape and batch, as a proxy ships inserts and increments of different keys).
    let cluster = Cluster::start_with(&["writebehind.naptime = '1h'"])?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE c (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO c SELECT g, 0 FROM generate_series(1, 10) g;
             SELECT writebehind.enable('c');",
        )
        .await?;
    let rc = relid(&client, "c").await?;
    let mut rows = String::new();
    for b in 0..40i64 {
        let p = if b % 2 == 0 {
            Packed::new(
                'U',
                &["id", "n"],
                (1..=10).map(|k| vec![text(k), text(1)]).collect(),
            )
        } else {
            Packed::new(
                'I',
                &["id", "n"],
                (0..5)
                    .map(|j| vec![text(100 + b * 5 + j), text(7)])
                    .collect(),
            )
        };
        rows.push_str(&packed_row("alt", 1, rc, &p));
    }
    assert!(
        ship_batch_as(
            &mut client,
            "alt",
            1,
            writebehind_tests::inbox::COPY_ALL,
            || Ok(rows)
        )
        .await?
    );
    client
        .execute("SELECT writebehind.flush('c', '20 s')", &[])
        .await?;
    assert_eq!(
        query_i64(&client, "SELECT sum(n)::int8 FROM c WHERE id <= 10").await?,
        200
    );
    assert_eq!(
        query_i64(&client, "SELECT count(*) FROM c WHERE id > 10 AND n = 7").await?,
        100
    );
    let (segments, one_statement) = rounds(&client, "c").await?;
    assert_eq!(
        (segments, one_statement),
        (40, 40),
        "each run of one shape is one statement"
    );
    Ok(())
}

#[tokio::test]
async fn json_rows_before_packed_rows_leave_them_the_fast_path() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE m (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO m SELECT g, 0 FROM generate_series(1, 20) g;
             SELECT writebehind.enable('m');",
        )
        .await?;
    let rm = relid(&client, "m").await?;
    // As the proxy ships a batch: a key with two changes as JSON rows (an insert and an
    // increment: not one shape), then the packed increments of keys with one change each.
    let json = |op: char, id: i64, data: Option<&str>| -> String {
        let data = data.map_or("\\N".to_string(), writebehind_tests::copy_escape);
        format!("mix\t1\t{rm}\t{op}\t[\"{id}\"]\t{data}\t\\N\t\\N\t\\N\n")
    };
    let mut rows = json('I', 500, Some(r#"{"n": "1"}"#));
    rows.push_str(&json('U', 500, Some(r#"{"n": {"add": "2"}}"#)));
    let adds = Packed::new(
        'U',
        &["id", "n"],
        (5..=20).map(|k| vec![text(k), text(k)]).collect(),
    );
    rows.push_str(&packed_row("mix", 1, rm, &adds));
    // A JSON row between the two packed rows: they are not one run.
    rows.push_str(&json('D', 1, None));
    // A packed row with array bounds other than 1 (a writer may send them): value row 0 is the
    // key, value row 1 the delta. Read in storage order, by the general path.
    rows.push_str(&format!(
        "mix\t1\t{rm}\tU\t\\N\t\\N\t\\N\t{{n}}\t[0:1][1:2]={{{{3,4}},{{30,40}}}}\n"
    ));
    assert!(
        ship_batch_as(
            &mut client,
            "mix",
            1,
            writebehind_tests::inbox::COPY_ALL,
            || Ok(rows)
        )
        .await?
    );
    flush(&client).await?;
    assert_eq!(
        query_i64(&client, "SELECT n FROM m WHERE id = 500").await?,
        3
    );
    assert_eq!(
        query_i64(
            &client,
            "SELECT count(*) FROM m WHERE id BETWEEN 5 AND 20 AND n <> id"
        )
        .await?,
        0
    );
    assert_eq!(
        query_i64(&client, "SELECT n FROM m WHERE id = 3").await?,
        30
    );
    assert_eq!(
        query_i64(&client, "SELECT n FROM m WHERE id = 4").await?,
        40
    );
    assert_eq!(
        query_i64(&client, "SELECT count(*) FROM writebehind.dead_letters").await?,
        0
    );
    let (_, one_statement) = rounds(&client, "m").await?;
    assert!(
        one_statement >= 1,
        "the packed increments took the fast path after the JSON rows went the general way"
    );
    Ok(())
}
