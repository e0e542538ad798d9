//! The proxy's shipping code against the real extension: encoded changes shipped exactly once,
//! the flusher draining a source in order, and the read barrier (ship + wait until applied).

use std::sync::Arc;
use std::time::Duration;
use writebehind_proxy::ship::{Barrier, Delivery, FlushSettings, Flusher, InboxShipper};
use writebehind_proxy::writebehind::encode::{copy_row, Change, ColumnChange};
use writebehind_proxy::writebehind::pack::encode_batch;
use writebehind_proxy::writebehind::queue::Queue;
use writebehind_tests::Cluster;

fn pg_config(cluster: &Cluster) -> tokio_postgres::Config {
    cluster
        .conninfo("postgres")
        .parse()
        .expect("conninfo parses")
}

fn increment(relid: u32, id: i32) -> Change {
    Change::Update {
        relid,
        key: vec![id.to_string()],
        columns: vec![("n".into(), ColumnChange::Add("1".into()))],
    }
}

/// Values that COPY text and an array literal inside it both have to escape, and NULL.
const AWKWARD: [Option<&str>; 9] = [
    Some("quote \" and back\\slash"),
    Some("tab\there\nnewline\rreturn"),
    Some("{braces},comma"),
    Some("NULL"),
    Some(""),
    Some("  spaces  "),
    Some("ünïcødé ✓"),
    Some("\\N"),
    None,
];

#[tokio::test]
async fn packed_batches_arrive_as_they_were_acknowledged() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE k (id text PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text);
             INSERT INTO k SELECT 'hot' || g, 0, NULL FROM generate_series(1, 4) g;
             CREATE TABLE e (seq serial, note text, d int DEFAULT 7);
             SELECT writebehind.enable('k');
             SELECT writebehind.enable('e', mode => 'append');",
        )
        .await?;
    let oid = |t: &str| format!("SELECT '{t}'::regclass::oid");
    let k: u32 = client.query_one(&oid("k"), &[]).await?.get(0);
    let e: u32 = client.query_one(&oid("e"), &[]).await?.get(0);
    let mut changes = Vec::new();
    for (i, v) in AWKWARD.iter().enumerate() {
        // The key is awkward too (never NULL): the i-th string, or "null-key".
        let key = v.map_or("null-key".to_string(), |s| format!("k{i}:{s}"));
        changes.push(Change::Insert {
            relid: k,
            key: Some(vec![key.clone()]),
            values: vec![
                ("id".into(), Some(key)),
                ("note".into(), v.map(str::to_string)),
            ],
            op: b'I',
            conflict_set: None,
        });
        changes.push(Change::Insert {
            relid: e,
            key: None,
            values: vec![("note".into(), v.map(str::to_string))],
            op: b'I',
            conflict_set: None,
        });
    }
    for h in 1..=4 {
        changes.push(Change::Update {
            relid: k,
            key: vec![format!("hot{h}")],
            columns: vec![("n".into(), ColumnChange::Add(format!("{}", h * 10)))],
        });
    }
    // All-default inserts into the append table cannot be packed (no value at all): rows.
    for _ in 0..2 {
        changes.push(Change::Insert {
            relid: e,
            key: None,
            values: vec![],
            op: b'I',
            conflict_set: None,
        });
    }
    changes.push(Change::Delete {
        relid: k,
        key: vec!["hot3".into()],
    });
    changes.push(Change::Delete {
        relid: k,
        key: vec!["hot2".into()],
    });
    let mut rows = Vec::new();
    let packed = encode_batch(&mut rows, "packer", 1, &changes);
    // k's inserts, the increments of hot1 and hot4 (hot2 and hot3 have two changes each: rows),
    // e's run of inserts.
    assert_eq!(packed, 3);
    let mut shipper = InboxShipper::new(pg_config(&cluster), "packer");
    assert_eq!(
        shipper.ship(1, bytes::Bytes::from(rows)).await?,
        Delivery::Committed
    );
    shipper.flush(None, Duration::from_secs(30)).await?;
    for (i, v) in AWKWARD.iter().enumerate() {
        let key = v.map_or("null-key".to_string(), |s| format!("k{i}:{s}"));
        let note: Option<String> = client
            .query_one("SELECT note FROM k WHERE id = $1", &[&key])
            .await?
            .get(0);
        assert_eq!(note.as_deref(), *v, "k's note for {key:?}");
    }
    let notes: Vec<Option<String>> = client
        .query("SELECT note FROM e WHERE d = 7 ORDER BY seq", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: Vec<Option<String>> = AWKWARD.iter().map(|v| v.map(str::to_string)).collect();
    expected.extend([None, None]);
    assert_eq!(
        notes, expected,
        "append rows in order, then the two all-default rows"
    );
    let hot: Vec<(String, i64)> = client
        .query("SELECT id, n FROM k WHERE id LIKE 'hot%' ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        hot,
        vec![("hot1".to_string(), 10), ("hot4".to_string(), 40)]
    );
    let dead: i64 = client
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(dead, 0);
    Ok(())
}

#[tokio::test]
async fn encoded_batches_ship_exactly_once() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE s (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text);
             SELECT writebehind.enable('s');",
        )
        .await?;
    let relid: u32 = client
        .query_one("SELECT 's'::regclass::oid", &[])
        .await?
        .get(0);
    let mut shipper = InboxShipper::new(pg_config(&cluster), "shipper-test");
    assert_eq!(shipper.committed_seq().await?, 0);
    let mut rows = Vec::new();
    copy_row(
        &mut rows,
        "shipper-test",
        1,
        &Change::Insert {
            relid,
            key: Some(vec!["1".into()]),
            values: vec![(
                "note".into(),
                Some("tab\there, newline\nthere, back\\slash".into()),
            )],
            op: b'I',
            conflict_set: None,
        },
    );
    for _ in 0..10 {
        copy_row(&mut rows, "shipper-test", 1, &increment(relid, 1));
    }
    let rows = bytes::Bytes::from(rows);
    assert_eq!(shipper.ship(1, rows.clone()).await?, Delivery::Committed);
    assert_eq!(
        shipper.ship(1, rows.clone()).await?,
        Delivery::AlreadyDelivered
    );
    assert_eq!(shipper.committed_seq().await?, 1);
    shipper.flush(Some(relid), Duration::from_secs(30)).await?;
    let row = client
        .query_one("SELECT n, note FROM s WHERE id = 1", &[])
        .await?;
    assert_eq!(row.get::<_, i64>(0), 10);
    assert_eq!(
        row.get::<_, String>(1),
        "tab\there, newline\nthere, back\\slash"
    );
    Ok(())
}

#[tokio::test]
async fn flusher_and_barrier_give_read_your_writes() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE TABLE c (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             INSERT INTO c SELECT g, 0 FROM generate_series(1, 50) g;
             SELECT writebehind.enable('c');",
        )
        .await?;
    let relid: u32 = client
        .query_one("SELECT 'c'::regclass::oid", &[])
        .await?
        .get(0);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let settings = FlushSettings {
        flush_interval: Duration::from_secs(3600), // only barriers make it ship
        max_batch_rows: 300,
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_secs(1),
    };
    let mut shipper = InboxShipper::new(pg_config(&cluster), "flusher-test");
    let committed = shipper.committed_seq().await?;
    // The proxy's own queue, without a WAL: statements numbered after the committed batch.
    let queue = Arc::new(Queue::new(
        "flusher-test".into(),
        None,
        committed as u64 + 1,
    ));
    let (flusher, _task) = Flusher::spawn(queue.clone(), shipper, settings, committed, stop_rx);
    let barrier = Barrier::new(
        queue.clone(),
        flusher,
        InboxShipper::new(pg_config(&cluster), "flusher-test"),
    );
    let mut expected = 0i64;
    for round in 0..5 {
        for i in 0..1000 {
            queue.push(vec![increment(relid, i % 50 + 1)])?;
            expected += 1;
        }
        barrier.wait(&[relid], Duration::from_secs(60)).await?;
        let sum: i64 = client
            .query_one("SELECT sum(n)::bigint FROM c", &[])
            .await?
            .get(0);
        assert_eq!(
            sum, expected,
            "after the barrier of round {round}, every acknowledged write is visible"
        );
    }
    // A barrier with nothing new passes at once: it neither ships nor calls flush(), so it is
    // not timed (the latency histogram counts only barriers that shipped or waited).
    let waited_before = barrier.latency().snapshot().count;
    assert_eq!(
        waited_before, 5,
        "each round's barrier shipped and was timed"
    );
    barrier.wait(&[relid], Duration::from_secs(60)).await?;
    assert_eq!(
        barrier.latency().snapshot().count,
        waited_before,
        "a barrier with nothing new to ship or apply passes without waiting"
    );
    let seq: i64 = client
        .query_one("SELECT writebehind.committed_seq('flusher-test')", &[])
        .await?
        .get(0);
    assert_eq!(
        seq, 5000,
        "batches are numbered by their last statement: 5000 statements were queued"
    );
    Ok(())
}
