//! The README's psql walkthrough, run as written: its SQL blocks go through psql to the real
//! proxy in front of a real cluster, so the steps a newcomer follows keep working.

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
    // From a file, so psql sends each statement on its own, as when typed.
    let script = std::env::temp_dir().join(format!("wb-readme-{}.sql", proxy.port));
    std::fs::write(&script, &blocks[0])?;
    let result = run_cmd(
        psql(proxy.port, "postgres", "postgres")
            .args(["-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script),
    );
    let _ = std::fs::remove_file(&script);
    let (ok, out, err) = result?;
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
    let ok: bool = direct
        .query_one(
            "SELECT acked = pending_in_proxies + inbox_rows + applied + coalesced + dead_letters
             FROM writebehind.status WHERE \"table\" = 'scores'::regclass",
            &[],
        )
        .await?
        .get(0);
    assert!(ok, "acked does not add up");
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
