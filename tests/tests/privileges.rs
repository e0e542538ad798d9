//! Privileges on the write-behind path: a write is acknowledged only for a role PostgreSQL would
//! let write it, and what the proxy knows of privileges follows GRANT, REVOKE and role
//! membership, including changes no notification announces.

use std::time::Duration;
use tokio_postgres::error::SqlState;
use writebehind_tests::{query_i64, Cluster, Proxy};

const SCHEMA: &str =
    "CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note varchar(5));
    SELECT writebehind.enable('counters');";

/// A proxy that ships nothing on its own (an hour's flush interval): an acknowledged write is
/// not in the table yet.
fn wb_proxy(cluster: &Cluster) -> anyhow::Result<Proxy> {
    Proxy::spawn(
        &cluster.url("postgres"),
        &["--durability", "memory", "--flush-interval", "1h"],
    )
}

/// What became of one write through the proxy.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Acknowledged from memory: not in the table yet (the flush interval is an hour).
    Acked,
    /// Sent to PostgreSQL, which wrote it.
    PassedThrough,
    /// Sent to PostgreSQL, which refused it for lack of privilege.
    Denied,
}

/// Inserts row `id` through `w` (the prepared statement when given, else a simple Query) and
/// tells what became of it by looking at the table directly.
async fn insert_outcome(
    w: &tokio_postgres::Client,
    prepared: Option<&tokio_postgres::Statement>,
    direct: &tokio_postgres::Client,
    id: i32,
) -> anyhow::Result<Outcome> {
    let done = match prepared {
        Some(stmt) => w.execute(stmt, &[&id]).await.map(|_| ()),
        None => w
            .simple_query(&format!("INSERT INTO counters (id) VALUES ({id})"))
            .await
            .map(|_| ()),
    };
    match done {
        Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(Outcome::Denied),
        Err(e) => Err(e.into()),
        Ok(()) => {
            let there: i64 = direct
                .query_one("SELECT count(*) FROM counters WHERE id = $1", &[&id])
                .await?
                .get(0);
            Ok(if there == 1 {
                Outcome::PassedThrough
            } else {
                Outcome::Acked
            })
        }
    }
}

/// Inserts new rows through `w` (prepared and simple in turn) until one has `want`, for at
/// most 10 s; returns how long that took. Every row and its outcome go into `done`.
async fn until_outcome(
    w: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    direct: &tokio_postgres::Client,
    done: &mut Vec<(i32, Outcome)>,
    want: Outcome,
) -> anyhow::Result<Duration> {
    let start = std::time::Instant::now();
    let next = |done: &Vec<(i32, Outcome)>| done.last().map_or(1001, |(id, _)| id + 1);
    while start.elapsed() < Duration::from_secs(10) {
        for prepared in [Some(stmt), None] {
            let id = next(done);
            let got = insert_outcome(w, prepared, direct, id).await?;
            let hit = got == want;
            done.push((id, got));
            if hit {
                // Both protocols agree, not just the one that happened to ask again.
                let other = if prepared.is_some() { None } else { Some(stmt) };
                let id = next(done);
                let again = insert_outcome(w, other, direct, id).await?;
                let agree = again == want;
                done.push((id, again));
                anyhow::ensure!(agree, "{want:?} for one protocol, not the other: {done:?}");
                return Ok(start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("still not {want:?} after 10 s: {done:?}")
}

#[tokio::test]
async fn privileges_follow_grant_revoke_and_role_membership() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct
        .batch_execute(
            "CREATE ROLE writer LOGIN; CREATE ROLE team NOLOGIN;
             GRANT SELECT, INSERT, UPDATE ON counters TO writer;
             GRANT USAGE ON SCHEMA writebehind TO writer;",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let w = writebehind_tests::connect(&proxy.conninfo("writer", "postgres")).await?;
    let stmt = w.prepare("INSERT INTO counters (id) VALUES ($1)").await?;
    let mut done = Vec::new();

    // Granted: acknowledged, and the answer is cached for the session's prepared statement.
    until_outcome(&w, &stmt, &direct, &mut done, Outcome::Acked).await?;
    // A REVOKE is noticed (the extension's 'privileges' notification): PostgreSQL's 42501.
    direct
        .batch_execute("REVOKE INSERT ON counters FROM writer")
        .await?;
    let revoke = until_outcome(&w, &stmt, &direct, &mut done, Outcome::Denied).await?;
    // A GRANT too: acknowledged again, not passed through for good.
    direct
        .batch_execute("GRANT INSERT ON counters TO writer")
        .await?;
    let grant = until_outcome(&w, &stmt, &direct, &mut done, Outcome::Acked).await?;

    // Membership fires no event trigger: the proxy looks at the roles each second. The
    // privilege now comes only through `team`: granting it is noticed that way, and so is
    // revoking it.
    direct
        .batch_execute("REVOKE INSERT ON counters FROM writer; GRANT INSERT ON counters TO team")
        .await?;
    until_outcome(&w, &stmt, &direct, &mut done, Outcome::Denied).await?;
    direct.batch_execute("GRANT team TO writer").await?;
    let member = until_outcome(&w, &stmt, &direct, &mut done, Outcome::Acked).await?;
    direct.batch_execute("REVOKE team FROM writer").await?;
    let membership = until_outcome(&w, &stmt, &direct, &mut done, Outcome::Denied).await?;
    let superuser_at = done.len();
    // A role made superuser may write: noticed the same way.
    direct.batch_execute("ALTER ROLE writer SUPERUSER").await?;
    let superuser = until_outcome(&w, &stmt, &direct, &mut done, Outcome::Acked).await?;
    eprintln!(
        "noticed after: REVOKE {revoke:?}, GRANT {grant:?}, GRANT team {member:?}, \
         REVOKE team {membership:?}, \
         superuser {superuser:?}: {:?}",
        &done[superuser_at..]
    );

    // Whatever was acknowledged applies (a read through the proxy ships it); nothing refused
    // is there.
    w.query("SELECT count(*) FROM counters", &[]).await?;
    direct.execute("SELECT writebehind.flush()", &[]).await?;
    let written: Vec<i32> = done
        .iter()
        .filter(|(_, o)| *o != Outcome::Denied)
        .map(|(id, _)| *id)
        .collect();
    let there: Vec<i32> = direct
        .query("SELECT id FROM counters WHERE id > 1000 ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(there, written, "outcomes: {done:?}");
    assert_eq!(
        query_i64(&direct, "SELECT count(*) FROM writebehind.dead_letters").await?,
        0
    );
    Ok(())
}

/// A privilege that comes and goes between two looks at the roles (about a second apart) is
/// not kept for good: the answer given while `w2` was superuser came with another fingerprint
/// than the one the proxy's answers were given under, so the proxy took that one and the next
/// look sees the change back. `DROP OWNED`, which
/// revokes without a notification, is seen through the fingerprint of the tables' ACLs.
#[tokio::test]
async fn privileges_that_change_without_a_notification_are_not_kept() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    direct
        .batch_execute(
            "CREATE ROLE w2 LOGIN; CREATE ROLE w3 LOGIN;
             GRANT USAGE ON SCHEMA writebehind TO w2, w3;
             GRANT SELECT, INSERT, UPDATE ON counters TO w3;",
        )
        .await?;
    let proxy = wb_proxy(&cluster)?;
    let w2 = writebehind_tests::connect(&proxy.conninfo("w2", "postgres")).await?;
    let w3 = writebehind_tests::connect(&proxy.conninfo("w3", "postgres")).await?;
    let mut done = Vec::new();

    // w2's first question comes while it is superuser.
    direct.batch_execute("ALTER ROLE w2 SUPERUSER").await?;
    assert_eq!(
        insert_outcome(&w2, None, &direct, 5001).await?,
        Outcome::Acked,
        "a superuser may write"
    );
    // Taken back before the next look, which then sees the fingerprint it started from: the
    // write above must not have left its answer behind.
    direct.batch_execute("ALTER ROLE w2 NOSUPERUSER").await?;
    let stmt2 = w2.prepare("INSERT INTO counters (id) VALUES ($1)").await?;
    until_outcome(&w2, &stmt2, &direct, &mut done, Outcome::Denied).await?;

    let stmt3 = w3.prepare("INSERT INTO counters (id) VALUES ($1)").await?;
    until_outcome(&w3, &stmt3, &direct, &mut done, Outcome::Acked).await?;
    direct.batch_execute("DROP OWNED BY w3").await?;
    until_outcome(&w3, &stmt3, &direct, &mut done, Outcome::Denied).await?;
    Ok(())
}
