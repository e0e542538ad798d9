//! The README's psql walkthrough, run as written: its SQL blocks go through psql to the real
//! proxy in front of a real cluster, so the steps a newcomer follows keep working.

use std::time::Duration;
use writebehind_tests::{psql, run_cmd, Cluster, Proxy};

/// The ```sql blocks of README.md's section `heading`, in order.
fn sql_blocks(heading: &str) -> anyhow::Result<Vec<String>> {
    let readme = std::fs::read_to_string(writebehind_tests::repo_root().join("README.md"))?;
    let section = readme
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .ok_or_else(|| anyhow::anyhow!("README has no section {heading:?}"))?;
    Ok(section
        .split("```sql\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .map(str::to_string)
        .collect())
}

#[tokio::test]
async fn the_readme_walkthrough_works_as_written() -> anyhow::Result<()> {
    let blocks = sql_blocks("## A walkthrough with psql")?;
    anyhow::ensure!(blocks.len() >= 2, "expected two SQL blocks, got {blocks:?}");
    let cluster = Cluster::start()?;
    // As scripts/run starts it.
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--admin-users", "postgres", "--durability", "wal"],
    )?;
    // Up to `writebehind.enable`, then the rest once the proxy has reloaded its catalog (it
    // does on the registry NOTIFY; a person typing never sees the gap, a script can).
    let lines: Vec<&str> = blocks[0].lines().collect();
    let split = lines
        .iter()
        .position(|l| l.contains("writebehind.enable"))
        .ok_or_else(|| anyhow::anyhow!("the walkthrough enables no table"))?
        + 1;
    let (ok, out, err) = run_psql_file(proxy.port, "postgres", &lines[..split].join("\n"))?;
    assert!(ok, "walkthrough failed:\n{out}\n{err}");
    let picked_up = writebehind_tests::wait_until(Duration::from_secs(10), || {
        run_cmd(psql(proxy.port, "postgres", "writebehind").args(["-c", "SHOW TABLES"]))
            .is_ok_and(|(_, out, _)| out.contains("public.scores"))
    });
    assert!(picked_up, "the proxy never listed the enabled table");
    let (ok, out, err) = run_psql_file(proxy.port, "postgres", &lines[split..].join("\n"))?;
    assert!(ok, "walkthrough failed:\n{out}\n{err}");
    // SELECT * FROM scores shows 15 points for ada, read through the barrier.
    assert!(
        out.lines()
            .any(|l| l.split('|').map(str::trim).eq(["ada", "15"])),
        "{out}"
    );
    assert!(out.contains("scores"), "status has the table: {out}");
    // The status identity the README states.
    let direct = cluster.connect("postgres").await?;
    let st = writebehind_tests::settled_status(&direct, "scores", Duration::from_secs(15)).await?;
    // Three writes acknowledged, the increments folded into one.
    assert!(st.adds_up() && st.acked == 3, "{st:?}");
    // The admin console block, one command at a time as psql would send them typed.
    for command in blocks[1]
        .lines()
        .filter(|l| !l.starts_with("--") && !l.trim().is_empty())
    {
        let (ok, out, err) = run_cmd(
            psql(proxy.port, "postgres", "writebehind")
                .args(["-v", "ON_ERROR_STOP=1", "-c"])
                .arg(command),
        )?;
        assert!(ok, "{command}: {out} {err}");
        if command.starts_with("SHOW TABLES") {
            assert!(out.contains("public.scores"), "{out}");
        }
    }
    Ok(())
}

/// Runs `sql` with psql from a file, so each statement is sent on its own, as when typed.
fn run_psql_file(port: u16, db: &str, sql: &str) -> anyhow::Result<(bool, String, String)> {
    let script = std::env::temp_dir().join(format!(
        "wb-readme-{port}-{:08x}.sql",
        rand::random::<u32>()
    ));
    std::fs::write(&script, sql)?;
    let result = run_cmd(
        psql(port, "postgres", db)
            .args(["-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script),
    );
    let _ = std::fs::remove_file(&script);
    result
}
