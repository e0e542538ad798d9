//! Faults around the apply worker: repeated terminations while two proxies keep shipping,
//! replays of already-shipped batches after each restart; counters must come out exact. Locks
//! held by users and database defaults meant for user sessions delay changes, never lose them;
//! a change that always fails with a retried error becomes a dead letter in time.

use std::time::Duration;
use tokio_postgres::Client;
use writebehind_tests::inbox::{dead_letters, relid, ship, ship_rows, Change};
use writebehind_tests::Cluster;

/// Ships one batch of increments of `n` by 1 on keys 1..=50, `rows` rows.
async fn ship_adds(
    client: &mut Client,
    proxy: &str,
    seq: i64,
    relid: u32,
    rows: usize,
) -> anyhow::Result<bool> {
    writebehind_tests::ship_batch(client, proxy, seq, || {
        let mut text = String::new();
        for i in 0..rows {
            text.push_str(&format!(
                "{proxy}\t{seq}\t{relid}\tU\t[\"{}\"]\t{{\"n\": {{\"add\": \"1\"}}}}\t\\N\n",
                i % 50 + 1
            ));
        }
        Ok(text)
    })
    .await
}

async fn worker_pid(client: &Client) -> Option<i32> {
    client
        .query_opt("SELECT pid FROM writebehind.workers LIMIT 1", &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

#[tokio::test]
async fn repeated_worker_kills_with_two_proxies_and_replays_apply_everything_once(
) -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut a = cluster.connect("postgres").await?;
    let mut b = cluster.connect("postgres").await?;
    a.batch_execute(
        "CREATE TABLE f (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
         INSERT INTO f SELECT g, 0 FROM generate_series(1, 50) g;
         SELECT writebehind.enable('f');",
    )
    .await?;
    let rel: u32 = a.query_one("SELECT 'f'::regclass::oid", &[]).await?.get(0);
    let mut expected = 0i64;
    let mut seq = 0i64;
    for _round in 0..3 {
        let before = worker_pid(&a).await.expect("a worker runs");
        for _ in 0..4 {
            seq += 1;
            assert!(ship_adds(&mut a, "pa", seq, rel, 1500).await?);
            assert!(ship_adds(&mut b, "pb", seq, rel, 700).await?);
            expected += 2200;
        }
        a.execute(
            "SELECT pg_terminate_backend(pid) FROM writebehind.workers",
            &[],
        )
        .await?;
        // Replays of every batch shipped so far are refused, before and after the restart.
        for s in 1..=seq {
            assert!(
                !ship_adds(&mut a, "pa", s, rel, 1500).await?,
                "replay pa {s}"
            );
        }
        let mut back = false;
        for _ in 0..200 {
            if worker_pid(&a).await.is_some_and(|p| p != before) {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(back, "the worker came back with a new pid");
        for s in 1..=seq {
            assert!(
                !ship_adds(&mut b, "pb", s, rel, 700).await?,
                "replay pb {s}"
            );
        }
    }
    a.execute("SELECT writebehind.flush(NULL, '60 s')", &[])
        .await?;
    let (sum, min, max): (i64, i64, i64) = a
        .query_one("SELECT sum(n)::bigint, min(n), max(n) FROM f", &[])
        .await
        .map(|r| (r.get(0), r.get(1), r.get(2)))?;
    assert_eq!(sum, expected);
    assert_eq!((min, max), (expected / 50, expected / 50));
    let dead: i64 = a
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(dead, 0);
    Ok(())
}

/// `n = n + 1` on keys 1..=10 of `table`, once each.
fn one_add_per_key() -> Vec<Change> {
    (1..=10)
        .map(|k| Change {
            op: 'U',
            key: vec![k.to_string()],
            data: Some(r#"{"n": {"add": "1"}}"#.into()),
        })
        .collect()
}

async fn sum_and_dead(client: &Client, table: &str) -> anyhow::Result<(i64, i64)> {
    let row = client
        .query_one(
            &format!(
                "SELECT (SELECT sum(n)::bigint FROM {table}),
                        (SELECT count(*) FROM writebehind.dead_letters)"
            ),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// `writebehind.table_stats.last_error` of `table`.
async fn last_error(client: &Client, table: &str) -> anyhow::Result<Option<String>> {
    Ok(client
        .query_one(
            "SELECT last_error FROM writebehind.table_stats WHERE relid = $1::text::regclass",
            &[&table],
        )
        .await?
        .get(0))
}

/// A user's transaction holds a row lock longer than the worker's `writebehind.lock_timeout`:
/// the locked table's round fails with 55P03 and is retried (its changes never become dead
/// letters, as they did before), and the other table of the database is applied meanwhile
/// instead of waiting behind the lock.
#[tokio::test]
async fn a_locked_row_delays_its_table_only_and_makes_no_dead_letter() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(&["writebehind.lock_timeout = '200ms'"])?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE la (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             CREATE TABLE lb (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO la SELECT g, 0 FROM generate_series(1, 10) g;
             INSERT INTO lb SELECT g, 0 FROM generate_series(1, 10) g;
             SELECT writebehind.enable('la'); SELECT writebehind.enable('lb');",
        )
        .await?;
    let (ra, rb) = (relid(&client, "la").await?, relid(&client, "lb").await?);
    let locker = cluster.connect("postgres").await?;
    locker
        .batch_execute("BEGIN; SELECT * FROM la WHERE id = 3 FOR UPDATE")
        .await?;
    let la: Vec<(u32, Change)> = one_add_per_key().into_iter().map(|c| (ra, c)).collect();
    let lb: Vec<(u32, Change)> = one_add_per_key().into_iter().map(|c| (rb, c)).collect();
    // la first in the batch: a worker stuck on its lock would never reach lb.
    let rows: Vec<(u32, &Change)> = la.iter().chain(&lb).map(|(r, c)| (*r, c)).collect();
    assert!(ship_rows(&mut client, "locks", 1, &rows).await?);
    client
        .execute("SELECT writebehind.flush('lb', '20 s')", &[])
        .await?;
    assert_eq!(sum_and_dead(&client, "lb").await?, (10, 0));
    // Several rounds of la have failed on the lock meanwhile; none applied anything.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (sum_a, dead) = sum_and_dead(&client, "la").await?;
    assert_eq!((sum_a, dead), (0, 0), "la waits for the lock, whole");
    let error = last_error(&client, "la").await?;
    assert!(
        error.as_deref().is_some_and(|e| e.starts_with("55P03")),
        "the lock timeout is the table's last error: {error:?}"
    );
    locker.batch_execute("COMMIT").await?;
    client
        .execute("SELECT writebehind.flush('la', '20 s')", &[])
        .await?;
    assert_eq!(sum_and_dead(&client, "la").await?, (10, 0));
    Ok(())
}

/// Database defaults meant for user sessions do not reach the worker: with
/// `default_transaction_read_only = on` every round failed with 25006 and each change became a
/// dead letter; with a tiny `statement_timeout` large rounds were cancelled.
#[tokio::test]
async fn database_defaults_for_user_sessions_do_not_stop_the_worker() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE dd (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO dd SELECT g, 0 FROM generate_series(1, 10) g;
             SELECT writebehind.enable('dd');
             ALTER DATABASE postgres SET default_transaction_read_only = on;
             ALTER DATABASE postgres SET statement_timeout = '1ms';",
        )
        .await?;
    // A worker started now reads the new defaults (this session keeps the old ones).
    let old = worker_pid(&client).await;
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM writebehind.workers",
            &[],
        )
        .await?;
    let mut restarted = false;
    for _ in 0..200 {
        let now = worker_pid(&client).await;
        if now.is_some() && now != old {
            restarted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(restarted, "the worker came back");
    let rel = relid(&client, "dd").await?;
    for seq in 1..=3 {
        assert!(ship(&mut client, "defaults", seq, rel, &one_add_per_key()).await?);
    }
    client
        .execute("SELECT writebehind.flush('dd', '20 s')", &[])
        .await?;
    assert_eq!(sum_and_dead(&client, "dd").await?, (30, 0));
    Ok(())
}

/// A change that always fails with an error the worker retries (a trigger raising
/// `serialization_failure` for one key) held up its table for good until 2026-12-03: every
/// round failed with 40001, nothing of the table applied, and its barriers timed out. After
/// `writebehind.transient_error_timeout` the table's round is narrowed down like any other
/// error: that change becomes a dead letter with 40001 and the rest applies. When every change
/// of a round fails so (the condition is the server's, not the changes'), none becomes a dead
/// letter: the round is retried as before.
#[tokio::test]
async fn a_change_that_always_fails_with_a_retried_error_becomes_a_dead_letter(
) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(&["writebehind.transient_error_timeout = '1s'"])?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF TG_TABLE_NAME = 'every' OR NEW.id = 3 THEN
                     RAISE EXCEPTION 'refused' USING ERRCODE = 'serialization_failure';
                 END IF;
                 RETURN NEW;
             END $$;
             CREATE TABLE one (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             CREATE TABLE every (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO one SELECT g, 0 FROM generate_series(1, 10) g;
             INSERT INTO every SELECT g, 0 FROM generate_series(1, 10) g;
             CREATE TRIGGER refuse BEFORE UPDATE ON one FOR EACH ROW EXECUTE FUNCTION refuse();
             CREATE TRIGGER refuse BEFORE UPDATE ON every FOR EACH ROW EXECUTE FUNCTION refuse();
             SELECT writebehind.enable('one'); SELECT writebehind.enable('every');",
        )
        .await?;
    let (one, every) = (relid(&client, "one").await?, relid(&client, "every").await?);
    assert!(ship(&mut client, "poison", 1, one, &one_add_per_key()).await?);
    assert!(ship(&mut client, "poison", 2, every, &one_add_per_key()).await?);
    client
        .execute("SELECT writebehind.flush('one', '30 s')", &[])
        .await?;
    assert_eq!(
        dead_letters(&client).await?,
        vec![(r#"["3"]"#.to_string(), "40001".to_string())]
    );
    let sum: i64 = client
        .query_one("SELECT sum(n)::bigint FROM one", &[])
        .await?
        .get(0);
    assert_eq!(sum, 9, "every other key applied");
    // `every` has been failing for as long, every change of it each round: its rounds are
    // narrowed down too, and refused whole (the refusal is its last error).
    let mut refused = None;
    for _ in 0..150 {
        let error = last_error(&client, "every").await?;
        if error.as_deref().is_some_and(|e| e.contains("none applied")) {
            refused = error;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused.as_deref().is_some_and(|e| e.starts_with("40001")),
        "a narrowed round of `every` was refused with 40001: {refused:?}"
    );
    let (sum, dead) = sum_and_dead(&client, "every").await?;
    assert_eq!(
        (sum, dead),
        (0, 1),
        "nothing of `every` applied or dead-lettered"
    );
    let queued = writebehind_tests::query_i64(
        &client,
        &format!("SELECT count(*) FROM writebehind.inbox WHERE relid = {every}"),
    )
    .await?;
    assert!(queued > 0, "its changes stay in the inbox");
    client.batch_execute("DROP TRIGGER refuse ON every").await?;
    client
        .execute("SELECT writebehind.flush('every', '30 s')", &[])
        .await?;
    assert_eq!(sum_and_dead(&client, "every").await?, (10, 1));
    Ok(())
}
