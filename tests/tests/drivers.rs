//! Real drivers through the real proxy: asyncpg (tests/python/asyncpg_driver.py),
//! node-postgres (tests/node/driver.js) and pgJDBC (tests/java/JdbcDriver.java). Each script
//! runs twice: straight against PostgreSQL on a twin table (the reference: its expectations are
//! what PostgreSQL does, and nothing may be acknowledged), then through the proxy, where its
//! single-row writes must be acknowledged from memory (checked before any barrier, and counted
//! in `writebehind.status`) and everything it reads, every error and every value must be what
//! PostgreSQL gave it directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use writebehind_tests::{psql, repo_root, run_cmd, Cluster, Proxy};

/// The write-behind table each script writes to: `counters` through the proxy,
/// `counters_direct` straight to PostgreSQL.
const SCHEMA: &str = "
    CREATE TABLE counters (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, note text, tag varchar(8));
    CREATE TABLE counters_direct (LIKE counters INCLUDING ALL);
    SELECT writebehind.enable('counters');
    SELECT writebehind.enable('counters_direct');";

/// A cluster with [`SCHEMA`] and a proxy in front of it that ships only at read barriers
/// (so what PostgreSQL holds before a read shows what was acknowledged from memory).
fn setup() -> anyhow::Result<(Cluster, Proxy)> {
    let cluster = Cluster::start()?;
    let (ok, out, err) = run_cmd(psql(cluster.port, "postgres", "postgres").args([
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        SCHEMA,
    ]))?;
    anyhow::ensure!(ok, "schema: {out}{err}");
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--flush-interval", "1h"])?;
    Ok((cluster, proxy))
}

/// Runs `program args… PORT DIRECT_PORT TABLE` on a fresh [`setup`], straight against
/// PostgreSQL, then through the proxy; returns the number of changes the proxy acknowledged,
/// as the script counted and found them in `writebehind.status` (its last line:
/// `ok: <driver> <version>, <mode>, acked N`).
fn run_both(program: &Path, args: &[&str]) -> anyhow::Result<u64> {
    let (cluster, proxy) = setup()?;
    let run = |port: u16, table: &str| -> anyhow::Result<String> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(port.to_string())
            .arg(cluster.port.to_string())
            .arg(table)
            .current_dir(repo_root());
        let (ok, out, err) = run_cmd(&mut cmd)?;
        let mode = if port == cluster.port {
            "direct"
        } else {
            "proxy"
        };
        anyhow::ensure!(
            ok,
            "{} {args:?} ({mode}) failed:\n{out}\n{err}",
            program.display()
        );
        eprint!("{out}");
        Ok(out)
    };
    let direct = run(cluster.port, "counters_direct")?;
    anyhow::ensure!(direct.contains(", direct, acked 0"), "direct run: {direct}");
    let through = run(proxy.port, "counters")?;
    let acked = through
        .lines()
        .filter_map(|l| l.strip_prefix("ok: "))
        .filter_map(|l| l.split(", proxy, acked ").nth(1))
        .find_map(|n| n.trim().parse::<u64>().ok());
    anyhow::ensure!(
        acked.is_some_and(|n| n > 0),
        "through the proxy nothing was acknowledged: {through}"
    );
    Ok(acked.unwrap_or(0))
}

fn need(path: &Path, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        path.exists(),
        "{} missing ({what}): run scripts/setup",
        path.display()
    );
    Ok(())
}

#[test]
fn asyncpg_prepared_binary_executemany_copy_listen_and_write_behind() -> anyhow::Result<()> {
    let python = repo_root().join(".venv/bin/python");
    need(&python, "the project's venv")?;
    let acked = run_both(&python, &["tests/python/asyncpg_driver.py"])?;
    assert!(acked > 3000, "acked {acked}");
    Ok(())
}

#[test]
fn node_postgres_unnamed_named_cursor_and_write_behind() -> anyhow::Result<()> {
    need(
        &repo_root().join("tests/node/node_modules/pg"),
        "npm ci in tests/node",
    )?;
    let acked = run_both(Path::new("node"), &["tests/node/driver.js"])?;
    assert!(acked > 3000, "acked {acked}");
    Ok(())
}

#[test]
fn pgjdbc_thresholds_binary_batches_and_write_behind() -> anyhow::Result<()> {
    let jar = PathBuf::from("/usr/share/java/postgresql.jar");
    need(&jar, "Debian's libpostgresql-jdbc-java")?;
    let classes = std::env::temp_dir().join(format!(
        "wb-jdbc-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&classes)?;
    let (ok, out, err) = run_cmd(
        Command::new("javac").args([
            "-d",
            &classes.to_string_lossy(),
            "-cp",
            &jar.to_string_lossy(),
            &repo_root()
                .join("tests/java/JdbcDriver.java")
                .to_string_lossy(),
        ]),
    )?;
    anyhow::ensure!(ok, "javac: {out}{err}");
    let cp = format!("{}:{}", jar.display(), classes.display());
    let result = run_both(Path::new("java"), &["-cp", &cp, "JdbcDriver"]);
    let _ = std::fs::remove_dir_all(&classes);
    let acked = result?;
    assert!(acked > 3 * 1500, "acked {acked}");
    Ok(())
}
