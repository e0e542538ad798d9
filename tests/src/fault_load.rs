//! The write load of the PostgreSQL fault tests (tests/pg_faults.rs): sessions that increment
//! hot keys and insert fresh ones through the proxy, reconnecting whenever their connection is
//! gone, each tallying what was acknowledged, refused or left in doubt; and the check of the
//! table against that model (acknowledged ≤ n ≤ acknowledged + in doubt, every acknowledged
//! insert present, no refused one).

use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The table the load writes: 10 hot keys and fresh inserts, write-behind.
pub const SCHEMA: &str = "CREATE TABLE kv (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
    INSERT INTO kv SELECT g, 0 FROM generate_series(1, 10) g;
    SELECT writebehind.enable('kv');";

/// Hot keys 1..=10, incremented by every session.
pub const HOT: usize = 10;

/// A number from the environment (a heavier run's knob), or `default`.
pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the sessions share: where to connect, when to stop, whether PostgreSQL is down.
#[derive(Default)]
pub struct Load {
    pub target: Mutex<String>,
    pub stop: AtomicBool,
    pub down: AtomicBool,
    pub acked: AtomicU64,
}

/// What one session saw.
#[derive(Default)]
pub struct Tally {
    pub acked: u64,
    /// Acknowledged while PostgreSQL was down.
    pub acked_down: u64,
    /// No reply, or an error that does not say the write was refused.
    pub in_doubt: u64,
    /// Refused with 53400/53100/58030: nothing of the write was queued.
    pub refused: u64,
    /// Longest and shortest wait before a refusal.
    pub refusal_wait: Option<(Duration, Duration)>,
    pub hot_acked: Vec<i64>,
    pub hot_doubt: Vec<i64>,
    pub ids_acked: Vec<i32>,
    pub ids_doubt: Vec<i32>,
    pub ids_refused: Vec<i32>,
    /// SQLSTATEs (or "no reply") of the in-doubt writes.
    pub doubt_codes: BTreeMap<String, u64>,
}

/// SQLSTATEs that say a write was refused before anything of it was queued.
pub const REFUSED: [&str; 3] = ["53400", "53100", "58030"];

/// One writing session: 60 % increments of a hot key, 40 % inserts of a fresh key of its own.
/// It reconnects whenever its connection is gone, until `stop`.
pub async fn session(w: i32, load: Arc<Load>) -> anyhow::Result<Tally> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xfa17 + w as u64);
    let mut t = Tally {
        hot_acked: vec![0; HOT],
        hot_doubt: vec![0; HOT],
        ..Tally::default()
    };
    let mut next_id = 1_000_000 * (w + 1);
    let mut client: Option<tokio_postgres::Client> = None;
    while !load.stop.load(Ordering::Relaxed) {
        let c = match &client {
            Some(c) if !c.is_closed() => c,
            _ => {
                let conninfo = load
                    .target
                    .lock()
                    .map_err(|_| anyhow::anyhow!("lock"))?
                    .clone();
                match tokio::time::timeout(Duration::from_secs(5), crate::connect(&conninfo)).await
                {
                    Ok(Ok(c)) => client.insert(c),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        let (sql, hot, id) = if rng.random_bool(0.6) {
            let h = rng.random_range(0..HOT);
            let d = rng.random_range(1..=3i64);
            (
                format!("UPDATE kv SET n = n + {d} WHERE id = {}", h + 1),
                Some((h, d)),
                None,
            )
        } else {
            next_id += 1;
            (
                format!("INSERT INTO kv (id, n) VALUES ({next_id}, 1)"),
                None,
                Some(next_id),
            )
        };
        let was_down = load.down.load(Ordering::Relaxed);
        let start = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(60), c.simple_query(&sql)).await;
        let code = match outcome {
            Ok(Ok(_)) => {
                t.acked += 1;
                load.acked.fetch_add(1, Ordering::Relaxed);
                if was_down && load.down.load(Ordering::Relaxed) {
                    t.acked_down += 1;
                }
                if let Some((h, d)) = hot {
                    t.hot_acked[h] += d;
                }
                t.ids_acked.extend(id);
                continue;
            }
            Ok(Err(e)) => e
                .code()
                .map_or_else(|| "no reply".to_string(), |c| c.code().to_string()),
            Err(_) => "hung 60 s".to_string(),
        };
        if REFUSED.contains(&code.as_str()) {
            t.refused += 1;
            let waited = start.elapsed();
            t.refusal_wait = Some(match t.refusal_wait {
                None => (waited, waited),
                Some((max, min)) => (max.max(waited), min.min(waited)),
            });
            t.ids_refused.extend(id);
        } else {
            t.in_doubt += 1;
            *t.doubt_codes.entry(code).or_insert(0) += 1;
            if let Some((h, d)) = hot {
                t.hot_doubt[h] += d;
            }
            t.ids_doubt.extend(id);
            if client.as_ref().is_some_and(|c| c.is_closed()) {
                client = None;
            }
        }
    }
    Ok(t)
}

/// Starts `n` writing sessions on `load`.
pub fn spawn_sessions(
    n: i32,
    load: &Arc<Load>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<Tally>>> {
    (0..n)
        .map(|w| tokio::spawn(session(w, load.clone())))
        .collect()
}

/// Waits for the sessions and returns what each saw.
pub async fn join(
    handles: Vec<tokio::task::JoinHandle<anyhow::Result<Tally>>>,
) -> anyhow::Result<Vec<Tally>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await??);
    }
    Ok(out)
}

/// Reads the table through the proxy until it succeeds: the barrier ships and applies every
/// acknowledged write.
pub async fn barrier_through(proxy_conninfo: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        match crate::connect(proxy_conninfo).await {
            Ok(c) => match c.simple_query("SELECT count(*) FROM kv").await {
                Ok(_) => return Ok(start.elapsed()),
                Err(e) => last = format!("{e:?}"),
            },
            Err(e) => last = format!("{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("no barrier through the proxy within 90 s: {last}")
}

/// The figures of a run.
#[derive(Debug, Default)]
pub struct Figures {
    pub acked: u64,
    pub acked_down: u64,
    pub in_doubt: u64,
    pub refused: u64,
}

/// Compares the table (read directly) with the model of the acknowledged writes.
pub async fn verify(direct: &tokio_postgres::Client, tallies: &[Tally]) -> anyhow::Result<Figures> {
    let mut f = Figures::default();
    let mut lo = [0i64; HOT];
    let mut hi = [0i64; HOT];
    let (mut acked, mut doubt, mut refused) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for t in tallies {
        f.acked += t.acked;
        f.acked_down += t.acked_down;
        f.in_doubt += t.in_doubt;
        f.refused += t.refused;
        for h in 0..HOT {
            lo[h] += t.hot_acked[h];
            hi[h] += t.hot_acked[h] + t.hot_doubt[h];
        }
        acked.extend(t.ids_acked.iter().copied());
        doubt.extend(t.ids_doubt.iter().copied());
        refused.extend(t.ids_refused.iter().copied());
    }
    let dead: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(dead, 0, "no write was dead-lettered");
    for row in direct
        .query("SELECT id, n FROM kv WHERE id <= 10 ORDER BY id", &[])
        .await?
    {
        let (id, n): (i32, i64) = (row.get(0), row.get(1));
        let h = (id - 1) as usize;
        assert!(
            n >= lo[h],
            "hot key {id}: {n} < {} acknowledged: acknowledged increments were lost",
            lo[h]
        );
        assert!(
            n <= hi[h],
            "hot key {id}: {n} > {} acknowledged + in doubt: an increment was applied twice",
            hi[h]
        );
    }
    let present: BTreeSet<i32> = direct
        .query("SELECT id FROM kv WHERE id > 10", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<_> = acked.difference(&present).take(10).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged inserts are missing, e.g. {lost:?}",
        acked.difference(&present).count()
    );
    let wrongly: Vec<_> = refused.intersection(&present).take(10).collect();
    assert!(
        wrongly.is_empty(),
        "refused inserts were applied: {wrongly:?}"
    );
    let stray: Vec<_> = present
        .iter()
        .filter(|i| !acked.contains(i) && !doubt.contains(i))
        .take(10)
        .collect();
    assert!(stray.is_empty(), "rows nobody wrote: {stray:?}");
    Ok(f)
}

/// The in-doubt outcomes of all sessions, by SQLSTATE (or "no reply").
pub fn doubt_codes(tallies: &[Tally]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for t in tallies {
        for (k, v) in &t.doubt_codes {
            *m.entry(k.clone()).or_insert(0) += v;
        }
    }
    m
}
