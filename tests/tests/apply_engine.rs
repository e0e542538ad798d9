//! The extension's apply engine, fed exactly as a proxy feeds it (BEGIN; begin_batch; COPY;
//! COMMIT), checked against an in-memory model: randomized sequences, replays, poisoned rows,
//! a worker restart. What the worker runs as a table's owner is in apply_as_owner.rs.

use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;
use writebehind_tests::inbox::{flush, relid, ship, Change};
use writebehind_tests::Cluster;

/// Row of the model table `m (id int PK, n bigint NOT NULL DEFAULT 0, s text)`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    n: i64,
    s: Option<String>,
}

#[tokio::test]
async fn randomized_sequences_match_the_model() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE m (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, s text);
             SELECT writebehind.enable('m');",
        )
        .await?;
    let rel = relid(&client, "m").await?;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut model: BTreeMap<i32, Row> = BTreeMap::new();
    let mut seq = 0i64;
    for _batch in 0..40 {
        let mut changes = Vec::new();
        for _ in 0..rng.random_range(1..150) {
            let id: i32 = rng.random_range(1..=12);
            let key = vec![id.to_string()];
            match rng.random_range(0..10) {
                // Upsert of the listed columns.
                0..=2 => {
                    let n: i64 = rng.random_range(-50..50);
                    let with_s = rng.random_bool(0.5);
                    let s = format!("s{}", rng.random_range(0..1000));
                    let data = if with_s {
                        format!(r#"{{"n": "{n}", "s": "{s}"}}"#)
                    } else {
                        format!(r#"{{"n": "{n}"}}"#)
                    };
                    changes.push(Change {
                        op: 'I',
                        key,
                        data: Some(data),
                    });
                    let row = model.entry(id).or_insert(Row { n: 0, s: None });
                    row.n = n;
                    if with_s {
                        row.s = Some(s);
                    }
                }
                // Increments.
                3..=6 => {
                    let k: i64 = rng.random_range(-3..=5);
                    changes.push(Change {
                        op: 'U',
                        key,
                        data: Some(format!(r#"{{"n": {{"add": "{k}"}}}}"#)),
                    });
                    if let Some(r) = model.get_mut(&id) {
                        r.n += k;
                    }
                }
                // Partial update: set s (sometimes to NULL).
                7 => {
                    let v = rng
                        .random_bool(0.8)
                        .then(|| format!("u{}", rng.random_range(0..1000)));
                    let json = serde_json::json!({ "s": { "set": v } }).to_string();
                    changes.push(Change {
                        op: 'U',
                        key,
                        data: Some(json),
                    });
                    if let Some(r) = model.get_mut(&id) {
                        r.s = v;
                    }
                }
                // Delete, sometimes followed at once by an insert (replace).
                _ => {
                    changes.push(Change {
                        op: 'D',
                        key: key.clone(),
                        data: None,
                    });
                    model.remove(&id);
                    if rng.random_bool(0.5) {
                        changes.push(Change {
                            op: 'I',
                            key,
                            data: Some(r#"{"s": "reborn"}"#.into()),
                        });
                        model.insert(
                            id,
                            Row {
                                n: 0,
                                s: Some("reborn".into()),
                            },
                        );
                    }
                }
            }
        }
        seq += 1;
        assert!(ship(&mut client, "model", seq, rel, &changes).await?);
        if rng.random_bool(0.2) {
            flush(&client).await?;
        }
    }
    flush(&client).await?;
    let actual: BTreeMap<i32, Row> = client
        .query("SELECT id, n, s FROM m", &[])
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Row {
                    n: r.get(1),
                    s: r.get(2),
                },
            )
        })
        .collect();
    assert_eq!(actual, model, "seed {seed}");
    let dead: i64 = client
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(dead, 0);
    let (applied, coalesced): (i64, i64) = client
        .query_one(
            "SELECT applied, coalesced FROM writebehind.status WHERE \"table\" = 'm'::regclass",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    assert!(
        applied > 0 && coalesced > 0,
        "applied {applied}, coalesced {coalesced}"
    );
    Ok(())
}

#[tokio::test]
async fn replayed_batches_apply_once_and_poisoned_rows_become_dead_letters() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE c (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0 CHECK (n < 1000000));
             INSERT INTO c SELECT g, 0 FROM generate_series(1, 10) g;
             SELECT writebehind.enable('c');",
        )
        .await?;
    let rel = relid(&client, "c").await?;
    let incs: Vec<Change> = (0..500)
        .map(|i| Change {
            op: 'U',
            key: vec![(i % 10 + 1).to_string()],
            data: Some(r#"{"n": {"add": "1"}}"#.into()),
        })
        .collect();
    assert!(ship(&mut client, "replayer", 1, rel, &incs).await?);
    // The same batch again, as after a lost COMMIT reply: refused, applied once.
    assert!(!ship(&mut client, "replayer", 1, rel, &incs).await?);
    assert!(!ship(&mut client, "replayer", 1, rel, &incs).await?);
    // A batch with a CHECK violation and a bad literal among good rows.
    let mut mixed: Vec<Change> = (11..=60)
        .map(|i| Change {
            op: 'I',
            key: vec![i.to_string()],
            data: Some(format!(r#"{{"n": "{i}"}}"#)),
        })
        .collect();
    mixed.insert(
        7,
        Change {
            op: 'I',
            key: vec!["100".into()],
            data: Some(r#"{"n": "5000000"}"#.into()),
        },
    );
    mixed.insert(
        20,
        Change {
            op: 'I',
            key: vec!["101".into()],
            data: Some(r#"{"n": "lots"}"#.into()),
        },
    );
    assert!(ship(&mut client, "replayer", 2, rel, &mixed).await?);
    flush(&client).await?;
    let sum: i64 = client
        .query_one("SELECT sum(n)::bigint FROM c WHERE id <= 10", &[])
        .await?
        .get(0);
    assert_eq!(sum, 500, "the replayed increments applied exactly once");
    let good: i64 = client
        .query_one("SELECT count(*) FROM c WHERE id BETWEEN 11 AND 60", &[])
        .await?
        .get(0);
    assert_eq!(good, 50, "every good row of the poisoned batch applied");
    let mut dead = writebehind_tests::inbox::dead_letters(&client).await?;
    dead.sort();
    assert_eq!(
        dead,
        vec![
            ("[\"100\"]".to_string(), "23514".to_string()),
            ("[\"101\"]".to_string(), "22P02".to_string())
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_terminated_worker_comes_back_and_nothing_is_lost_or_doubled() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE k (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO k SELECT g, 0 FROM generate_series(1, 100) g;
             SELECT writebehind.enable('k');",
        )
        .await?;
    let rel = relid(&client, "k").await?;
    let batch: Vec<Change> = (0..2000)
        .map(|i| Change {
            op: 'U',
            key: vec![(i % 100 + 1).to_string()],
            data: Some(r#"{"n": {"add": "1"}}"#.into()),
        })
        .collect();
    let first_pid: i32 = client
        .query_one("SELECT pid FROM writebehind.workers", &[])
        .await?
        .get(0);
    for seq in 1..=10i64 {
        assert!(ship(&mut client, "restart", seq, rel, &batch).await?);
        if seq == 5 {
            client
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM writebehind.workers",
                    &[],
                )
                .await?;
        }
    }
    // The postmaster restarts the worker (bgw_restart_time = 1 s).
    let mut new_pid = None;
    for _ in 0..200 {
        if let Ok(row) = client
            .query_one("SELECT pid FROM writebehind.workers", &[])
            .await
        {
            let pid: i32 = row.get(0);
            if pid != first_pid {
                new_pid = Some(pid);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(new_pid.is_some(), "the worker came back with a new pid");
    flush(&client).await?;
    let sum: i64 = client
        .query_one("SELECT sum(n)::bigint FROM k", &[])
        .await?
        .get(0);
    assert_eq!(sum, 20_000);
    Ok(())
}

#[tokio::test]
async fn registry_changes_are_notified() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let (_listener, mut rx) =
        writebehind_tests::listen(&cluster.conninfo("postgres"), "writebehind_registry").await?;
    let client = cluster.connect("postgres").await?;
    client
        .batch_execute("CREATE TABLE r (id int PRIMARY KEY)")
        .await?;
    let oid = relid(&client, "r").await?;
    client
        .batch_execute("SELECT writebehind.enable('r')")
        .await?;
    client
        .batch_execute("SELECT writebehind.alter('r', read_barrier => false)")
        .await?;
    // DDL on a registered table, and dropping one, are announced too (event triggers).
    client
        .batch_execute("ALTER TABLE r ADD COLUMN x int; CREATE TABLE unrelated (i int)")
        .await?;
    client
        .batch_execute("SELECT writebehind.disable('r')")
        .await?;
    client
        .batch_execute("CREATE TABLE r2 (id int PRIMARY KEY); SELECT writebehind.enable('r2')")
        .await?;
    let oid2 = relid(&client, "r2").await?;
    client.batch_execute("DROP TABLE r2").await?;
    // Every non-temporary DDL also says `schema` (views, functions, keys may have changed).
    let mut got = Vec::new();
    let mut schema = 0;
    while got.last() != Some(&format!("drop {oid2}")) {
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?;
        match n.map(|(_, p)| p).unwrap_or_default() {
            p if p == "schema" => schema += 1,
            p => got.push(p),
        }
    }
    // CREATE TABLE r; ALTER TABLE r … CREATE TABLE unrelated; CREATE TABLE r2 (the DROP's
    // may come after the drop itself).
    assert!(schema >= 3, "{schema} schema notifications");
    assert_eq!(
        got,
        vec![
            format!("enable {oid}"),
            format!("alter {oid}"),
            format!("ddl {oid}"),
            format!("disable {oid}"),
            format!("enable {oid2}"),
            format!("drop {oid2}"),
        ]
    );
    // A dropped table's registration went with it (until 2026-12-03 it stayed, and a table
    // given the same oid later would have been write-behind).
    let registered = writebehind_tests::query_i64(
        &client,
        &format!("SELECT count(*) FROM writebehind.tables WHERE relid = {oid2}"),
    )
    .await?;
    assert_eq!(registered, 0);
    Ok(())
}

#[tokio::test]
async fn flush_times_out_with_57014_on_a_backlog() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, v text);
             SELECT writebehind.enable('big');
             BEGIN;
             SELECT writebehind.begin_batch('backlog', 1);
             INSERT INTO writebehind.inbox (proxy_id, batch_seq, relid, op, key, data)
               SELECT 'backlog', 1, 'big'::regclass, 'I', '[\"' || g || '\"]', '{\"v\": \"x\"}'
               FROM generate_series(1, 300000) g;
             COMMIT;",
        )
        .await?;
    let err = client
        .execute("SELECT writebehind.flush('big', '1 ms')", &[])
        .await
        .expect_err("300,000 rows cannot be applied in 1 ms");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    // Given time, the same backlog drains completely.
    client
        .execute("SELECT writebehind.flush('big', '120 s')", &[])
        .await?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM big", &[])
        .await?
        .get(0);
    assert_eq!(n, 300_000);
    Ok(())
}

/// The worker hands its table statistics to PostgreSQL's cumulative statistics, as a backend
/// does: autovacuum decides from `n_tup_upd`/`n_dead_tup` whether a table needs vacuuming, and
/// a worker that never reported them left write-behind tables and the inbox to bloat forever.
#[tokio::test]
async fn applied_rows_reach_the_statistics_autovacuum_reads() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE s (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO s SELECT g, 0 FROM generate_series(1, 50) g;
             SELECT writebehind.enable('s');",
        )
        .await?;
    let rel = relid(&client, "s").await?;
    let batch: Vec<Change> = (0..500)
        .map(|i| Change {
            op: 'U',
            key: vec![(i % 50 + 1).to_string()],
            data: Some(r#"{"n": {"add": "1"}}"#.into()),
        })
        .collect();
    for seq in 1..=4i64 {
        assert!(ship(&mut client, "stats", seq, rel, &batch).await?);
        flush(&client).await?;
    }
    let sum: i64 = client
        .query_one("SELECT sum(n)::bigint FROM s", &[])
        .await?
        .get(0);
    assert_eq!(sum, 2_000);
    // Each batch folds to one update per key: 4 rounds × 50 rows, and every inbox row deleted.
    // PostgreSQL flushes a process's statistics at most once a second; the worker's rounds
    // come at least every naptime (1 s), so they arrive within a few seconds.
    let mut seen = (0i64, 0i64);
    for _ in 0..100 {
        client
            .execute("SELECT pg_stat_clear_snapshot()", &[])
            .await?;
        let row = client
            .query_one(
                "SELECT (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 's'::regclass),
                        (SELECT n_tup_del FROM pg_stat_user_tables
                          WHERE relid = 'writebehind.inbox'::regclass)",
                &[],
            )
            .await?;
        seen = (row.get(0), row.get(1));
        if seen.0 >= 200 && seen.1 >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen.0 >= 200 && seen.1 >= 4,
        "n_tup_upd of the table and n_tup_del of the inbox after 4 applied batches: {seen:?}"
    );
    Ok(())
}

/// A DELETE that fails takes nothing with it: the key's changes before and after it in the
/// same round still apply, and the DELETE alone is the dead letter. Before 2026-12-03 folding
/// dropped them (an earlier UPDATE, an INSERT, a later increment) with no trace.
#[tokio::test]
async fn a_failed_delete_keeps_the_keys_other_changes() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE par (id int PRIMARY KEY, note text, n int NOT NULL DEFAULT 0);
             INSERT INTO par VALUES (1, 'old', 0);
             CREATE TABLE kid (par_id int REFERENCES par (id));
             INSERT INTO kid VALUES (1);
             CREATE FUNCTION no_delete_of_3() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF OLD.id = 3 THEN RAISE EXCEPTION 'keep 3'; END IF; RETURN OLD; END $$;
             CREATE TRIGGER keep_3 BEFORE DELETE ON par FOR EACH ROW EXECUTE FUNCTION no_delete_of_3();
             SELECT writebehind.enable('par');",
        )
        .await?;
    let rel = relid(&client, "par").await?;
    let change = |op: char, id: i64, data: Option<&str>| Change {
        op,
        key: vec![id.to_string()],
        data: data.map(str::to_string),
    };
    // Key 1: kid references it (23503 on delete); key 3: its trigger refuses (P0001).
    let rows = [
        change('U', 1, Some(r#"{"note": {"set": "renamed"}}"#)),
        change('D', 1, None),
        change('U', 1, Some(r#"{"n": {"add": "7"}}"#)),
        change('I', 3, Some(r#"{"note": "three", "n": "10"}"#)),
        change('D', 3, None),
        change('U', 3, Some(r#"{"n": {"add": "5"}}"#)),
    ];
    assert!(ship(&mut client, "del", 1, rel, &rows).await?);
    flush(&client).await?;
    let got: Vec<(i32, String, i32)> = client
        .query("SELECT id, note, n FROM par ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        vec![(1, "renamed".to_string(), 7), (3, "three".to_string(), 15)],
        "what PostgreSQL gives one statement at a time"
    );
    let dead: Vec<(String, String, String)> = client
        .query(
            "SELECT op::text, key, sqlstate FROM writebehind.dead_letters ORDER BY key",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        dead,
        vec![
            ("D".to_string(), "[\"1\"]".to_string(), "23503".to_string()),
            ("D".to_string(), "[\"3\"]".to_string(), "P0001".to_string()),
        ]
    );
    Ok(())
}
