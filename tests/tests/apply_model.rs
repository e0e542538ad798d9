//! The apply engine against an in-memory model on a numeric column: decimal and negative
//! increments, increments of NULL staying NULL, upserts listing only some columns, updates of
//! missing keys doing nothing, delete-then-insert; batches shipped exactly as a proxy ships them.

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use tokio_postgres::Client;
use writebehind_tests::{copy_escape, Cluster};

/// Ships one batch (BEGIN; begin_batch; COPY; COMMIT); rows are (op, key, data).
async fn ship(
    client: &mut Client,
    proxy: &str,
    seq: i64,
    relid: u32,
    rows: &[(char, i32, Option<String>)],
) -> anyhow::Result<bool> {
    writebehind_tests::ship_batch(client, proxy, seq, || {
        let mut text = String::new();
        for (op, id, data) in rows {
            let key = serde_json::to_string(&[id.to_string()])?;
            let data = data
                .as_deref()
                .map(copy_escape)
                .unwrap_or_else(|| "\\N".into());
            text.push_str(&format!(
                "{proxy}\t{seq}\t{relid}\t{op}\t{}\t{data}\t\\N\n",
                copy_escape(&key)
            ));
        }
        Ok(text)
    })
    .await
}

/// Model row; x in thousandths.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    n: i64,
    s: Option<String>,
    x: Option<i64>,
}

fn milli(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.abs();
    format!("{sign}{}.{:03}", a / 1000, a % 1000)
}

#[tokio::test]
async fn randomized_numeric_sequences_match_the_model() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, s text, x numeric);
             SELECT writebehind.enable('t');",
        )
        .await?;
    let rel: u32 = client
        .query_one("SELECT 't'::regclass::oid", &[])
        .await?
        .get(0);
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model: BTreeMap<i32, Row> = BTreeMap::new();
    for seq in 1..=30i64 {
        let mut rows = Vec::new();
        for _ in 0..rng.random_range(1..120) {
            let id: i32 = rng.random_range(1..=20);
            match rng.random_range(0..12) {
                0..=2 => {
                    // Upsert listing x (sometimes n too).
                    let x: i64 = rng.random_range(-5000..5000);
                    let with_n = rng.random_bool(0.5);
                    let n: i64 = rng.random_range(-9..9);
                    let mut obj = serde_json::Map::new();
                    obj.insert("x".into(), serde_json::Value::String(milli(x)));
                    if with_n {
                        obj.insert("n".into(), serde_json::Value::String(n.to_string()));
                    }
                    rows.push(('I', id, Some(serde_json::Value::Object(obj).to_string())));
                    let r = model.entry(id).or_insert(Row {
                        n: 0,
                        s: None,
                        x: None,
                    });
                    r.x = Some(x);
                    if with_n {
                        r.n = n;
                    }
                }
                3 => {
                    // Insert without x: a new row has x NULL.
                    rows.push(('I', id, Some(r#"{"s": "a\tb\\c"}"#.to_string())));
                    let r = model.entry(id).or_insert(Row {
                        n: 0,
                        s: None,
                        x: None,
                    });
                    r.s = Some("a\tb\\c".into());
                }
                4..=7 => {
                    // Decimal (possibly negative) increment of x, integer increment of n.
                    let dx: i64 = rng.random_range(-2500..2500);
                    let dn: i64 = rng.random_range(-3..4);
                    let json = format!(
                        r#"{{"x": {{"add": "{}"}}, "n": {{"add": "{dn}"}}}}"#,
                        milli(dx)
                    );
                    rows.push(('U', id, Some(json)));
                    if let Some(r) = model.get_mut(&id) {
                        r.x = r.x.map(|x| x + dx);
                        r.n += dn;
                    }
                }
                8 => {
                    // Set x to NULL or a value.
                    let v = rng.random_bool(0.5).then(|| rng.random_range(-999..999i64));
                    let json = serde_json::json!({ "x": { "set": v.map(milli) } }).to_string();
                    rows.push(('U', id, Some(json)));
                    if let Some(r) = model.get_mut(&id) {
                        r.x = v;
                    }
                }
                _ => {
                    rows.push(('D', id, None));
                    model.remove(&id);
                    if rng.random_bool(0.5) {
                        rows.push(('I', id, Some(r#"{"x": "0.5"}"#.to_string())));
                        model.insert(
                            id,
                            Row {
                                n: 0,
                                s: None,
                                x: Some(500),
                            },
                        );
                    }
                }
            }
        }
        assert!(ship(&mut client, "numeric", seq, rel, &rows).await?);
        if rng.random_bool(0.2) {
            client
                .execute("SELECT writebehind.flush(NULL, '60 s')", &[])
                .await?;
        }
    }
    client
        .execute("SELECT writebehind.flush(NULL, '60 s')", &[])
        .await?;
    let actual: BTreeMap<i32, Row> = client
        .query("SELECT id, n, s, (x * 1000)::bigint FROM t", &[])
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Row {
                    n: r.get(1),
                    s: r.get(2),
                    x: r.get(3),
                },
            )
        })
        .collect();
    assert_eq!(actual, model, "seed {seed}");
    let dead: i64 = client
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(dead, 0, "seed {seed}");
    Ok(())
}
