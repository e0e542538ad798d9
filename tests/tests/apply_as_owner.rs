//! What the apply worker runs on a table owner's behalf: foreign-key parents before children,
//! and triggers, defaults and constraints as the owner, who can neither leave anything behind
//! in the worker's session nor reach its privileges.

use writebehind_tests::inbox::{flush, relid, ship, ship_rows, Change};
use writebehind_tests::Cluster;

#[tokio::test]
async fn fk_parents_first_and_triggers_fire_as_the_owner() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client
        .batch_execute(
            "CREATE ROLE app;
             CREATE TABLE audit (who text, op text, id int);
             GRANT INSERT ON audit TO app;
             -- The child is created first, so its oid sorts before the parent's: only the
             -- foreign-key ordering (not oid order) can apply the parent first.
             CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL);
             CREATE TABLE parent (id int PRIMARY KEY, name text);
             ALTER TABLE child ADD FOREIGN KEY (parent_id) REFERENCES parent(id);
             ALTER TABLE parent OWNER TO app; ALTER TABLE child OWNER TO app;
             CREATE FUNCTION log_change() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.audit VALUES (current_user, TG_OP, NEW.id); RETURN NEW; END $$;
             CREATE TRIGGER parent_audit AFTER INSERT OR UPDATE ON parent FOR EACH ROW EXECUTE FUNCTION log_change();
             SELECT writebehind.enable('parent'); SELECT writebehind.enable('child');",
        )
        .await?;
    let (p, c) = (
        relid(&client, "parent").await?,
        relid(&client, "child").await?,
    );
    let children: Vec<Change> = (1..=20)
        .map(|i| Change {
            op: 'I',
            key: vec![i.to_string()],
            data: Some(format!(r#"{{"parent_id": "{}"}}"#, i % 5 + 1)),
        })
        .collect();
    let parents: Vec<Change> = (1..=5)
        .map(|i| Change {
            op: 'I',
            key: vec![i.to_string()],
            data: Some(format!(r#"{{"name": "p{i}"}}"#)),
        })
        .collect();
    // One batch, children first in COPY order: the round applies the parent table first.
    let rows: Vec<(u32, &Change)> = children
        .iter()
        .map(|ch| (c, ch))
        .chain(parents.iter().map(|pa| (p, pa)))
        .collect();
    assert!(ship_rows(&mut client, "fk", 1, &rows).await?);
    flush(&client).await?;
    let dead: i64 = client
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(
        dead, 0,
        "no foreign-key failures: parents were applied first"
    );
    let n_child: i64 = client
        .query_one("SELECT count(*) FROM child", &[])
        .await?
        .get(0);
    assert_eq!(n_child, 20);
    let who: Vec<(String, String, i64)> = client
        .query("SELECT who, op, count(*) FROM audit GROUP BY 1, 2", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        who,
        vec![("app".to_string(), "INSERT".to_string(), 5)],
        "triggers fired once each, as the owner"
    );
    Ok(())
}

/// Role `alice` with schema `alice`, table `alice.t`, and a view `alice.pg_extension` that
/// makes alice a superuser when a superuser reads it in place of `pg_catalog.pg_extension`.
const ALICE_BAIT: &str = "
    CREATE ROLE alice LOGIN;
    CREATE SCHEMA alice AUTHORIZATION alice;
    SET ROLE alice;
    CREATE TABLE alice.t (id int PRIMARY KEY, v text);
    CREATE FUNCTION alice.pwn() RETURNS name LANGUAGE plpgsql AS $$
    BEGIN
      IF current_user <> 'alice' THEN EXECUTE 'ALTER ROLE alice SUPERUSER'; END IF;
      RETURN 'pg_writebehind';
    END $$;
    CREATE VIEW alice.pg_extension AS SELECT alice.pwn() AS extname, 0::oid AS oid;
    RESET ROLE;";

async fn is_superuser(client: &tokio_postgres::Client, role: &str) -> anyhow::Result<bool> {
    Ok(client
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .await?
        .get(0))
}

/// A table owner's trigger runs inside a security-restricted operation whose settings are
/// undone: it can leave nothing in the worker's session, whose own statements run as a
/// superuser. Before, a trigger's `set_config('search_path', …, false)` made the worker's next
/// catalog query read the owner's view (and so run the owner's function as a superuser), and
/// `default_transaction_read_only` stopped every table's rounds.
#[tokio::test]
async fn an_owners_trigger_leaves_nothing_behind_in_the_worker() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client.batch_execute(ALICE_BAIT).await?;
    client
        .batch_execute(
            "CREATE TABLE other (id int PRIMARY KEY, v text);
             SELECT writebehind.enable('other');
             SET ROLE alice;
             CREATE TABLE alice.t2 (id int PRIMARY KEY, v text);
             CREATE FUNCTION alice.path() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM set_config('search_path', 'alice, pg_catalog', false); RETURN NEW; END $$;
             CREATE TRIGGER t_path BEFORE INSERT ON alice.t FOR EACH ROW EXECUTE FUNCTION alice.path();
             CREATE FUNCTION alice.ro() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM set_config('default_transaction_read_only', 'on', false); RETURN NEW; END $$;
             CREATE TRIGGER t2_ro BEFORE INSERT ON alice.t2 FOR EACH ROW EXECUTE FUNCTION alice.ro();
             SELECT writebehind.enable('alice.t'); SELECT writebehind.enable('alice.t2');
             RESET ROLE;",
        )
        .await?;
    let (t, t2, other) = (
        relid(&client, "alice.t").await?,
        relid(&client, "alice.t2").await?,
        relid(&client, "other").await?,
    );
    let insert = |id: i64| Change {
        op: 'I',
        key: vec![id.to_string()],
        data: Some(r#"{"v": "x"}"#.to_string()),
    };
    assert!(ship(&mut client, "owner", 1, t, &[insert(1)]).await?);
    flush(&client).await?;
    // Later rounds (and their catalog queries) come after the trigger ran.
    for seq in 2..=4 {
        assert!(ship(&mut client, "owner", seq, other, &[insert(seq)]).await?);
        flush(&client).await?;
    }
    assert!(
        !is_superuser(&client, "alice").await?,
        "the owner's code never ran as the worker's superuser"
    );
    assert!(ship(&mut client, "owner", 5, t2, &[insert(1)]).await?);
    flush(&client).await?;
    assert!(ship(&mut client, "owner", 6, other, &[insert(6)]).await?);
    client
        .execute("SELECT writebehind.flush('other', '20 s')", &[])
        .await?;
    let applied: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM other) + (SELECT count(*) FROM alice.t)
                    + (SELECT count(*) FROM alice.t2)",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(applied, 6, "every table goes on applying");
    Ok(())
}

/// A database's `search_path` setting (which its owner may set) reaches the worker's session:
/// its own statements, run as a superuser, use `pg_catalog, pg_temp`, and only the table
/// owners' code runs with the database's path. Before, a schema listed first could hold a view
/// the worker's catalog query read in place of `pg_catalog.pg_extension`.
#[tokio::test]
async fn a_database_search_path_reaches_only_the_owners_code() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut client = cluster.connect("postgres").await?;
    client.batch_execute(ALICE_BAIT).await?;
    client
        .batch_execute(
            "SET ROLE alice;
             CREATE TABLE alice.seen (path text);
             -- Unqualified: found through the database's search_path only.
             CREATE FUNCTION alice.note() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO seen VALUES (current_setting('search_path')); RETURN NEW; END $$;
             CREATE TRIGGER t_note BEFORE INSERT ON alice.t FOR EACH ROW EXECUTE FUNCTION alice.note();
             SELECT writebehind.enable('alice.t');
             RESET ROLE;
             ALTER DATABASE postgres SET search_path = alice, pg_catalog, public;
             SELECT pg_terminate_backend(pid) FROM writebehind.workers;",
        )
        .await?;
    let t = relid(&client, "alice.t").await?;
    for seq in 1..=3i64 {
        let row = Change {
            op: 'I',
            key: vec![seq.to_string()],
            data: Some(r#"{"v": "x"}"#.to_string()),
        };
        assert!(ship(&mut client, "dbpath", seq, t, &[row]).await?);
        flush(&client).await?;
    }
    assert!(
        !is_superuser(&client, "alice").await?,
        "the worker never read the owner's view as a superuser"
    );
    let seen: Vec<String> = client
        .query("SELECT DISTINCT path FROM alice.seen", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        seen,
        vec!["alice, pg_catalog, public".to_string()],
        "the owner's trigger ran with the database's path"
    );
    Ok(())
}
