//! The proxy's local WAL under damage and resource faults (issue 5, docs/RELIABILITY.md):
//! a torn last record is cut at start-up and everything before it applies; a damaged record in
//! the middle stops start-up with the segment and offset, skipping nothing; a full WAL disk
//! refuses writes with SQLSTATE 53100 while reads go on; SIGTERM ships everything and leaves
//! nothing to replay; a WAL shorter than what PostgreSQL committed numbers on above it; a page
//! lost in a machine crash ends the WAL only after a reboot.
//!
//! `cargo test --release -p writebehind-tests --test wal_faults -- --nocapture`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use writebehind_tests::{Cluster, Proxy};

const SCHEMA: &str = "CREATE TABLE kv (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0, s text);
    INSERT INTO kv VALUES (1, 0, NULL);
    SELECT writebehind.enable('kv');";

/// A scratch directory (WAL directory, logs), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wb-walfault-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("WRITEBEHIND_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The proxy's log without terminal colour codes.
fn read_log(path: &Path) -> String {
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The WAL segment files of `dir`, in lsn order.
fn segments(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    Ok(v)
}

/// (offset, total length) of every record in a segment (framing of proxy/src/wal/record.rs:
/// A WAL segment: its path, its bytes, and the (offset, length) of each record.
type Segment = (PathBuf, Vec<u8>, Vec<(usize, usize)>);

/// The only WAL segment of `wal` after `n` acknowledged statements (one record each).
fn the_segment(wal: &Path, n: usize) -> anyhow::Result<Segment> {
    let segs = segments(wal)?;
    anyhow::ensure!(segs.len() == 1, "one segment expected: {segs:?}");
    let data = std::fs::read(&segs[0])?;
    let spans = record_spans(&data);
    assert_eq!(spans.len(), n, "one WAL record per acknowledged statement");
    Ok((segs[0].clone(), data, spans))
}

/// `len: u32 LE` of what follows the checksum, `crc: u32 LE`, kind, lsn, payload).
fn record_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= data.len() {
        let len = u32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        if len == 0 {
            // The zeros the writer reserves ahead of its appends: the end of the records.
            break;
        }
        let total = 8 + len as usize;
        if off + total > data.len() {
            break;
        }
        out.push((off, total));
        off += total;
    }
    out
}

async fn read_n(c: &tokio_postgres::Client, id: i32) -> anyhow::Result<i64> {
    for m in c
        .simple_query(&format!("SELECT n FROM kv WHERE id = {id}"))
        .await?
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).unwrap_or("0").parse()?);
        }
    }
    anyhow::bail!("no row {id}")
}

async fn direct_n(c: &tokio_postgres::Client, id: i32) -> anyhow::Result<i64> {
    Ok(c.query_one("SELECT n FROM kv WHERE id = $1", &[&id])
        .await?
        .get(0))
}

/// Runs the proxy binary in the foreground (it is expected to exit), for at most `timeout`;
/// returns (exit code, stderr).
fn run_to_exit(
    url: &str,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<(Option<i32>, String)> {
    let mut child = Command::new(writebehind_tests::proxy_binary())
        .args(["--listen", "127.0.0.1:0", "--upstream", url])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        e.read_to_string(&mut err)?;
    }
    Ok((status.and_then(|s| s.code()), err))
}

/// The proxy's arguments in these tests: durability `wal` in `wal_dir`, and a 1 h flush
/// interval, so nothing ships on its own.
fn unshipped_wal_args(wal_dir: &str) -> [&str; 6] {
    [
        "--durability",
        "wal",
        "--wal-dir",
        wal_dir,
        "--flush-interval",
        "1h",
    ]
}

/// Writes `n` single-statement increments of key 1 through a proxy with a 1 h flush interval
/// (nothing ships), checks nothing reached PostgreSQL, and kills the proxy with SIGKILL.
async fn acked_then_killed(
    cluster: &Cluster,
    args: &[&str],
    n: usize,
) -> anyhow::Result<tokio_postgres::Client> {
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let mut proxy = Proxy::spawn(&cluster.url("postgres"), args)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for _ in 0..n {
        c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
            .await?;
    }
    assert_eq!(
        direct_n(&direct, 1).await?,
        0,
        "nothing shipped before the kill"
    );
    proxy.signal("KILL")?;
    proxy.wait_exit(Duration::from_secs(10)).await?;
    Ok(direct)
}

/// (a) A record torn by the crash at the very end of the WAL: start-up cuts it, logs the cut,
/// and applies every record before it — exactly the acknowledged writes but the last.
#[tokio::test]
async fn torn_last_record_is_cut_and_everything_before_it_applies() -> anyhow::Result<()> {
    let started = Instant::now();
    const N: usize = 300;
    let cluster = Cluster::start()?;
    let scratch = Scratch::new("torn");
    let wal = scratch.path("wal");
    let wal_s = wal.to_string_lossy().to_string();
    let args = unshipped_wal_args(&wal_s);
    let direct = acked_then_killed(&cluster, &args, N).await?;

    let (seg, data, spans) = the_segment(&wal, N)?;
    let seg = &seg;
    let (last_off, last_len) = spans[N - 1];
    assert!(
        data[last_off + last_len..].iter().all(|b| *b == 0),
        "the WAL ends with a whole record (then the zeros reserved ahead of the appends)"
    );
    // Tear the last record in the middle, as a copy into the mapping cut short by a crash
    // leaves it: its second half never written.
    let cut_at = last_off + last_len / 2;
    let mut torn = data.clone();
    torn[cut_at..last_off + last_len].fill(0);
    std::fs::write(seg, &torn)?;

    let log = scratch.path("restart.log");
    let proxy = Proxy::spawn_logged(&cluster.url("postgres"), &args, &log)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let n = read_n(&c, 1).await?;
    let text = read_log(&log);
    eprintln!(
        "torn tail: {N} acknowledged, last record cut at byte {cut_at} of {}, applied {n}, lost {} (the torn record only), {:.1}s",
        data.len(),
        N as i64 - n,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        n,
        N as i64 - 1,
        "every record before the torn one is applied, the torn one is not"
    );
    let seg_name = seg
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    assert!(
        text.lines().any(|l| l.contains("cut a torn WAL tail")
            && l.contains(&seg_name)
            && l.contains(&format!("offset={last_off}"))),
        "the cut is logged with segment and offset:\n{text}"
    );
    assert_eq!(
        std::fs::metadata(seg)?.len(),
        last_off as u64,
        "the torn bytes are removed"
    );
    // The log goes on after the cut: new writes take the torn record's place.
    for _ in 0..10 {
        c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
            .await?;
    }
    assert_eq!(read_n(&c, 1).await?, N as i64 - 1 + 10);
    let dead: i64 = direct
        .query_one("SELECT count(*) FROM writebehind.dead_letters", &[])
        .await?
        .get(0);
    assert_eq!(dead, 0);
    Ok(())
}

/// The highest batch PostgreSQL has committed for any proxy id.
async fn committed_batch(d: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(d.query_one(
        "SELECT coalesce(max(batch_seq), 0)::int8 FROM writebehind.progress",
        &[],
    )
    .await?
    .get(0))
}

/// A machine crash loses the WAL's unsynced tail, which may hold records whose batches had
/// already shipped and committed: the WAL comes back shorter than `writebehind.progress`. The
/// proxy starts, replays nothing twice, and numbers new records above the committed batch, so
/// they are acknowledged and applied (not taken for replays, and not passed through).
#[tokio::test]
async fn a_wal_that_ends_below_the_committed_batch_goes_on_above_it() -> anyhow::Result<()> {
    const N: usize = 20;
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let scratch = Scratch::new("short");
    let wal = scratch.path("wal");
    let wal_s = wal.to_string_lossy().to_string();
    let args = |interval: &'static str| {
        vec![
            "--durability".to_string(),
            "wal".into(),
            "--wal-dir".into(),
            wal_s.clone(),
            "--flush-interval".into(),
            interval.into(),
        ]
    };
    let first = args("50ms");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let mut proxy = Proxy::spawn(&cluster.url("postgres"), &first)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for _ in 0..N {
        c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while direct_n(&direct, 1).await? < N as i64 {
        anyhow::ensure!(Instant::now() < deadline, "the writes never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.signal("KILL")?;
    proxy.wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(committed_batch(&direct).await?, N as i64);
    // The crash: the second half of the records never reached the disk.
    let (seg, mut data, spans) = the_segment(&wal, N)?;
    let lost_from = spans[N / 2].0;
    data[lost_from..].fill(0);
    std::fs::write(&seg, &data)?;

    let second = args("1h");
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let log = scratch.path("restart.log");
    let proxy = Proxy::spawn_logged(&cluster.url("postgres"), &second, &log)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    for _ in 0..5 {
        c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
            .await?;
    }
    assert_eq!(
        direct_n(&direct, 1).await?,
        N as i64,
        "the new writes were acknowledged, not passed through:\n{}",
        read_log(&log)
    );
    // Read through the proxy: the barrier ships them, and they apply.
    assert_eq!(read_n(&c, 1).await?, N as i64 + 5);
    assert!(committed_batch(&direct).await? > N as i64);
    assert!(
        read_log(&log).contains("numbering continues above it"),
        "the jump is logged"
    );
    Ok(())
}

/// (b) A damaged record in the middle of the WAL: start-up fails with the segment and offset
/// (exit code non-zero, message on stderr) and applies nothing; with the byte repaired, every
/// acknowledged write applies — nothing was skipped.
#[tokio::test]
async fn damaged_record_in_the_middle_stops_start_up_and_skips_nothing() -> anyhow::Result<()> {
    let started = Instant::now();
    const N: usize = 300;
    let cluster = Cluster::start()?;
    let scratch = Scratch::new("flip");
    let wal = scratch.path("wal");
    let wal_s = wal.to_string_lossy().to_string();
    let args = unshipped_wal_args(&wal_s);
    let direct = acked_then_killed(&cluster, &args, N).await?;

    let (seg, mut data, spans) = the_segment(&wal, N)?;
    let seg = &seg;
    let (off, len) = spans[N / 2];
    // A byte of the payload (after length, checksum, kind and lsn).
    let at = off + 8 + 9 + (len - 17) / 2;
    let original = data[at];
    data[at] ^= 0x20;
    std::fs::write(seg, &data)?;

    let (code, stderr) = run_to_exit(&cluster.url("postgres"), &args, Duration::from_secs(30))?;
    let seg_s = seg.to_string_lossy().to_string();
    eprintln!(
        "damaged record {} of {N} at offset {off}: proxy exit {code:?}, stderr: {}",
        N / 2 + 1,
        stderr.trim()
    );
    assert!(
        code.is_some_and(|c| c != 0),
        "start-up must fail (exit {code:?})"
    );
    assert!(
        stderr.contains(&seg_s) && stderr.contains(&format!("offset {off}")),
        "the error names the segment and the offset {off}: {stderr}"
    );
    assert_eq!(
        direct_n(&direct, 1).await?,
        0,
        "nothing was applied from a damaged WAL"
    );
    assert_eq!(
        std::fs::read(seg)?,
        data,
        "the damaged segment is left as it was (nothing cut)"
    );

    // Repair the byte: the whole WAL replays.
    data[at] = original;
    std::fs::write(seg, &data)?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &args)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let n = read_n(&c, 1).await?;
    eprintln!(
        "after repair: {N} acknowledged, {n} applied, lost {}, {:.1}s",
        N as i64 - n,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        n, N as i64,
        "every acknowledged write applies, none skipped"
    );
    Ok(())
}

/// (c) A machine crash can lose any page written after the last group fsync, not only the
/// last one: zeros in the middle of the WAL with valid records after them. Without a reboot
/// (the boot id stored in the WAL directory is the kernel's) that cannot happen, and start-up
/// refuses it as corruption; after one, the WAL ends at the hole: every write before it
/// applies, none after it (in durability `wal` a machine crash may lose up to
/// `wal_fsync_interval` of writes; here nothing was fsynced after the first ones).
#[tokio::test]
async fn a_page_lost_in_a_machine_crash_ends_the_wal_after_a_reboot() -> anyhow::Result<()> {
    const N: usize = 400;
    let cluster = Cluster::start()?;
    let scratch = Scratch::new("lostpage");
    let wal = scratch.path("wal");
    let wal_s = wal.to_string_lossy().to_string();
    let args = unshipped_wal_args(&wal_s);
    let direct = acked_then_killed(&cluster, &args, N).await?;
    let boot = std::fs::read_to_string(wal.join("boot_id"))?;
    assert_eq!(
        boot.trim(),
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?.trim(),
        "the proxy stored the kernel's boot id"
    );

    let (seg, mut data, spans) = the_segment(&wal, N)?;
    anyhow::ensure!(data.len() > 4 * 4096, "several pages: {}", data.len());
    data[2 * 4096..3 * 4096].fill(0);
    std::fs::write(&seg, &data)?;
    let kept = spans
        .iter()
        .filter(|(off, len)| off + len <= 2 * 4096)
        .count();

    let (code, stderr) = run_to_exit(&cluster.url("postgres"), &args, Duration::from_secs(30))?;
    assert!(
        code.is_some_and(|c| c != 0) && stderr.contains("corrupt"),
        "same boot: a hole is corruption (exit {code:?}): {stderr}"
    );
    assert_eq!(direct_n(&direct, 1).await?, 0, "nothing applied");

    std::fs::write(
        wal.join("boot_id"),
        "00000000-0000-0000-0000-000000000000\n",
    )?;
    let log = scratch.path("reboot.log");
    let proxy = Proxy::spawn_logged(&cluster.url("postgres"), &args, &log)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let n = read_n(&c, 1).await?;
    eprintln!("{N} acknowledged, hole at byte 8192, {kept} records before it, {n} applied");
    assert_eq!(n, kept as i64, "every write before the hole, none after");
    assert!(
        read_log(&log).contains("pages written after its last fsync were lost"),
        "the cut is logged:\n{}",
        read_log(&log)
    );
    // The log goes on after the hole: new writes are acknowledged and apply.
    c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
        .await?;
    assert_eq!(read_n(&c, 1).await?, kept as i64 + 1);
    Ok(())
}

/// A small tmpfs mounted for the test; unmounted (and its mount point removed) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (ok, _, err) = writebehind_tests::run_cmd(Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            &dir.to_string_lossy(),
        ]))?;
        anyhow::ensure!(ok, "mount -t tmpfs failed (root needed): {err}");
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let d = self.0.to_string_lossy().to_string();
        let ok = Command::new("umount")
            .arg(&d)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").args(["-l", &d]).status();
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the file system of `dir` with a file until write() fails with ENOSPC.
fn fill(path: &Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 4096];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Byte by byte for the last partial page.
    while let Ok(1) = f.write(&[0u8]) {
        n += 1;
    }
    Ok(n)
}

/// The WAL directory's file system is full: a write gets SQLSTATE 53100, nothing of it is
/// acknowledged or applied, reads through the proxy go on, and once space is back writes are
/// acknowledged again. (A 256 kB tmpfs: the test runs as root, as CI does.)
#[tokio::test]
async fn full_wal_disk_refuses_writes_with_53100_and_reads_go_on() -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let scratch = Scratch::new("full");
    let mnt = scratch.path("mnt");
    let tmpfs = Tmpfs::mount(&mnt, "256k")?;
    let wal = mnt.join("wal");
    let wal_s = wal.to_string_lossy().to_string();
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &[
            "--durability",
            "wal",
            "--wal-dir",
            &wal_s,
            "--flush-interval",
            "20ms",
        ],
    )?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let pad = "x".repeat(200);
    // Each statement inserts three rows: ids 3i+10 .. 3i+12.
    let stmt = |i: i32| {
        let b = 3 * i + 10;
        format!(
            "INSERT INTO kv (id, n, s) VALUES ({b}, 1, '{pad}'), ({}, 1, '{pad}'), ({}, 1, '{pad}')",
            b + 1,
            b + 2
        )
    };
    let mut acked: Vec<i32> = Vec::new();
    let mut refused: Vec<i32> = Vec::new();
    let mut i = 0;
    for _ in 0..20 {
        c.simple_query(&stmt(i)).await?;
        acked.push(i);
        i += 1;
    }
    let filler = mnt.join("filler");
    let filled = fill(&filler)?;
    // What is left of the segment's last page may take a record or two; then ENOSPC.
    let mut first_error = None;
    let mut acked_after_full = 0;
    while refused.len() < 10 {
        anyhow::ensure!(
            i < 200,
            "no error after {acked_after_full} writes on a full disk"
        );
        match c.simple_query(&stmt(i)).await {
            Ok(_) if refused.is_empty() => {
                acked.push(i);
                acked_after_full += 1;
            }
            Ok(_) => anyhow::bail!("a write was acknowledged between refusals on a full disk"),
            Err(e) => {
                let code = e.code().map(|c| c.code().to_string());
                anyhow::ensure!(
                    code.as_deref() == Some("53100"),
                    "a write on a full WAL disk gets 53100, not {code:?}: {e}"
                );
                first_error.get_or_insert_with(|| {
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_string())
                });
                refused.push(i);
            }
        }
        i += 1;
        // Reads keep working (the barrier ships and applies what was acknowledged).
        if i % 3 == 0 {
            let rows = c
                .simple_query("SELECT count(*) FROM kv WHERE id >= 10")
                .await?;
            let got = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
            assert_eq!(
                got,
                Some((acked.len() * 3).to_string()),
                "a read on a full disk sees exactly the acknowledged rows"
            );
        }
    }
    // A new session connects and reads too.
    let other = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    other.simple_query("SELECT count(*) FROM kv").await?;
    // Space comes back: writes are acknowledged again, no restart.
    std::fs::remove_file(&filler)?;
    for _ in 0..10 {
        c.simple_query(&stmt(i)).await?;
        acked.push(i);
        i += 1;
    }
    c.simple_query("SELECT count(*) FROM kv").await?;
    let present: Vec<i32> = direct
        .query("SELECT id FROM kv WHERE id >= 10 ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected: Vec<i32> = acked
        .iter()
        .flat_map(|&i| (3 * i + 10)..(3 * i + 13))
        .collect();
    eprintln!(
        "full WAL disk: filler {filled} bytes, {} statements acknowledged ({acked_after_full} after the disk filled), {} refused with 53100 (\"{}\"), rows applied {} = acknowledged {}, lost 0, {:.1}s",
        acked.len(),
        refused.len(),
        first_error.unwrap_or_default(),
        present.len(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        present, expected,
        "exactly the acknowledged rows are applied: nothing of a refused write"
    );
    drop(other);
    drop(c);
    drop(proxy);
    drop(tmpfs);
    Ok(())
}

/// SIGTERM in `wal` mode: the proxy stops accepting, ships everything, exits 0, and leaves
/// nothing to replay: a restart on the same WAL directory replays 0 statements.
#[tokio::test]
async fn sigterm_ships_everything_and_leaves_nothing_to_replay() -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = Cluster::start()?;
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute(SCHEMA).await?;
    let scratch = Scratch::new("term");
    let wal = scratch.path("wal");
    let wal_s = wal.to_string_lossy().to_string();
    std::fs::create_dir_all(&scratch.0)?;
    let args = unshipped_wal_args(&wal_s);
    let log = scratch.path("first.log");
    let mut proxy = Proxy::spawn_logged(&cluster.url("postgres"), &args, &log)?;
    const INCS: usize = 500;
    const ROWS: i32 = 200;
    {
        let a = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
        let b = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
        for k in 0..INCS {
            let c = if k % 2 == 0 { &a } else { &b };
            c.simple_query("UPDATE kv SET n = n + 1 WHERE id = 1")
                .await?;
        }
        for id in 0..ROWS {
            b.simple_query(&format!("INSERT INTO kv (id, n) VALUES ({}, 1)", 100 + id))
                .await?;
        }
    }
    // The clients are gone; nothing has shipped (flush interval 1 h).
    assert_eq!(direct_n(&direct, 1).await?, 0);
    let t = Instant::now();
    proxy.signal("TERM")?;
    let code = proxy.wait_exit(Duration::from_secs(30)).await?;
    let exit_secs = t.elapsed().as_secs_f64();
    assert_eq!(code, Some(0), "SIGTERM: exit 0");
    // Everything is in the inbox; the worker applies it.
    direct
        .batch_execute("SELECT writebehind.flush('kv')")
        .await?;
    let n = direct_n(&direct, 1).await?;
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM kv WHERE id >= 100", &[])
        .await?
        .get(0);
    assert_eq!(
        (n, rows),
        (INCS as i64, i64::from(ROWS)),
        "everything acknowledged was shipped before exit"
    );
    let first = read_log(&log);
    assert!(
        first.contains("flusher drained"),
        "drain not logged:\n{first}"
    );

    // A restart on the same WAL directory finds nothing to replay.
    let log2 = scratch.path("second.log");
    let proxy = Proxy::spawn_logged(&cluster.url("postgres"), &args, &log2)?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let seen = read_n(&c, 1).await?;
    let second = read_log(&log2);
    let replayed: Vec<u64> = second
        .lines()
        .filter(|l| l.contains("replayed the WAL"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("replayed="))
                .and_then(|v| v.parse().ok())
        })
        .collect();
    eprintln!(
        "SIGTERM: {INCS} increments + {ROWS} rows acknowledged, exit 0 after {exit_secs:.2}s, applied {n} + {rows}, lost 0; restart replayed {replayed:?} statements; {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        replayed.iter().all(|&r| r == 0),
        "a restart after a clean shutdown replays nothing: {replayed:?}\n{second}"
    );
    assert_eq!(seen, INCS as i64, "nothing applied twice after the restart");
    Ok(())
}
