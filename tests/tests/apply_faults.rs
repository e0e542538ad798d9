//! Faults around the apply worker: repeated terminations while two proxies keep shipping,
//! replays of already-shipped batches after each restart; counters must come out exact.

use std::time::Duration;
use tokio_postgres::Client;
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
