//! Test harness shared by the integration tests: real clusters started with `scripts/cluster`,
//! the real `writebehind-proxy` binary, free ports, and readiness by polling.
//!
//! Layout:
//! - [`Cluster`]: a throw-away PostgreSQL 15 cluster with pg_writebehind preloaded.
//! - [`Proxy`]: the release proxy binary as a child process, killed on drop.
//! - [`free_port`], [`repo_root`], [`wait_until`].
//! - [`fault_load`]: the write load and model check of the PostgreSQL fault tests.
//! - [`inbox`]: hand-made inbox batches for the apply-engine tests.
//! - [`raw`]: a raw protocol client, for messages drivers do not send.

pub mod fault_load;
pub mod inbox;
pub mod raw;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root (the workspace directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// Polls `f` every 20 ms until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn run_script(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(repo_root().join("scripts/cluster"))
        .args(args)
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "scripts/cluster {:?} failed: {}{}",
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A local cluster made by `scripts/cluster` in a fresh directory; stopped and removed on drop.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// Starts a new cluster whose workers serve `postgres` (and any extra `--conf` lines).
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a new cluster with extra `postgresql.conf` lines.
    pub fn start_with(conf: &[&str]) -> anyhow::Result<Self> {
        let base = std::env::var("WRITEBEHIND_TEST_DIR").unwrap_or_else(|_| "/tmp".into());
        let dir = PathBuf::from(base).join(format!(
            "wbtest-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let port = free_port();
        let dir_s = dir.to_string_lossy().into_owned();
        let port_s = port.to_string();
        let mut args = vec!["start", "--dir", &dir_s, "--port", &port_s];
        for c in conf {
            args.push("--conf");
            args.push(c);
        }
        run_script(&args)?;
        Ok(Self { dir, port })
    }

    /// Starts a new cluster, runs `schema` in `postgres`, and returns a direct connection.
    pub async fn start_with_schema(schema: &str) -> anyhow::Result<(Self, tokio_postgres::Client)> {
        let cluster = Self::start()?;
        let direct = cluster.connect("postgres").await?;
        direct.batch_execute(schema).await?;
        Ok((cluster, direct))
    }

    /// libpq/tokio-postgres connection string for `dbname` as the `postgres` superuser.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    /// URL form, as the proxy's `--upstream` takes it.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    /// Connects with tokio-postgres; the connection task is spawned on the current runtime.
    pub async fn connect(&self, dbname: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.conninfo(dbname)).await
    }

    /// Stops the cluster with the given pg_ctl mode (`fast` or `immediate`).
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        run_script(&["stop", "--dir", &self.dir.to_string_lossy(), "--mode", mode]).map(|_| ())
    }

    /// Starts it again on the same port.
    pub fn restart(&self) -> anyhow::Result<()> {
        run_script(&[
            "start",
            "--dir",
            &self.dir.to_string_lossy(),
            "--port",
            &self.port.to_string(),
        ])
        .map(|_| ())
    }
}

impl Cluster {
    /// A streaming standby of this cluster (`pg_basebackup -R`), started on a free port;
    /// stopped and removed on drop like any cluster.
    pub fn standby(&self) -> anyhow::Result<Cluster> {
        use std::io::Write;
        let dir = PathBuf::from(format!("{}-standby", self.dir.display()));
        let port = free_port();
        run_cmd(Command::new("install").args([
            "-d",
            "-o",
            "postgres",
            "-g",
            "postgres",
            &dir.to_string_lossy(),
        ]))?;
        // From here the directory is cleaned up by the guard, whatever fails.
        let standby = Cluster {
            dir: dir.clone(),
            port,
        };
        let data = dir.join("data");
        let (ok, _, err) = run_cmd(Command::new("runuser").args([
            "-u",
            "postgres",
            "--",
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-D",
            &data.to_string_lossy(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ]))?;
        anyhow::ensure!(ok, "pg_basebackup: {err}");
        let mut auto = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.auto.conf"))?;
        writeln!(auto, "unix_socket_directories = '{}'", dir.display())?;
        drop(auto);
        standby.restart()?;
        Ok(standby)
    }

    /// Promotes this standby (`pg_ctl promote -w`).
    pub fn promote(&self) -> anyhow::Result<()> {
        let (ok, _, err) = run_cmd(Command::new("runuser").args([
            "-u",
            "postgres",
            "--",
            "/usr/lib/postgresql/15/bin/pg_ctl",
            "-D",
            &self.dir.join("data").to_string_lossy(),
            "promote",
            "-w",
        ]))?;
        anyhow::ensure!(ok, "promote: {err}");
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        if std::env::var_os("WRITEBEHIND_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Connects with tokio-postgres (no TLS) and spawns the connection task.
pub async fn connect(conninfo: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Path of the release proxy binary that `scripts/setup` builds, or `$WRITEBEHIND_PROXY_BIN`
/// (to run the tests against another build, e.g. a deliberately broken one).
pub fn proxy_binary() -> PathBuf {
    std::env::var_os("WRITEBEHIND_PROXY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/release/writebehind-proxy"))
}

/// The proxy binary running as a child process; killed (SIGKILL) on drop.
pub struct Proxy {
    pub child: Child,
    pub port: u16,
    /// A WAL directory made for this proxy (when the test gave none); removed on drop.
    own_wal_dir: Option<PathBuf>,
}

impl Proxy {
    /// Spawns the proxy listening on a free port in front of `upstream_url`, with extra flags,
    /// and waits until it accepts TCP connections. Without `--wal-dir` among the flags, the
    /// proxy gets a fresh WAL directory of its own (two proxies never share one).
    pub fn spawn(upstream_url: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_inner(upstream_url, extra, None)
    }

    /// As [`spawn`](Self::spawn), with the proxy's stderr (its log) appended to the file `log`
    /// instead of the test's stderr, so a test can look for log lines.
    pub fn spawn_logged(upstream_url: &str, extra: &[&str], log: &Path) -> anyhow::Result<Self> {
        Self::spawn_inner(upstream_url, extra, Some(log))
    }

    fn spawn_inner(upstream_url: &str, extra: &[&str], log: Option<&Path>) -> anyhow::Result<Self> {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(proxy_binary());
        cmd.args(["--listen", &listen, "--upstream", upstream_url])
            .args(extra)
            .stdin(Stdio::null());
        if let Some(log) = log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            cmd.stderr(f);
        }
        let own_wal_dir = (!extra.contains(&"--wal-dir")).then(|| {
            std::env::temp_dir().join(format!(
                "wb-proxy-wal-{}-{port}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ))
        });
        if let Some(dir) = &own_wal_dir {
            cmd.arg("--wal-dir").arg(dir);
        }
        let child = cmd.spawn()?;
        let mut p = Self {
            child,
            port,
            own_wal_dir,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        if !ready {
            let status = p.child.try_wait()?;
            anyhow::bail!("proxy did not start listening on {listen} (exit: {status:?})");
        }
        Ok(p)
    }

    /// Connection string for a client going through the proxy.
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname}",
            self.port
        )
    }

    /// Sends a signal (e.g. "TERM", "KILL") to this proxy process only.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(st.success(), "kill -{sig} failed");
        Ok(())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.own_wal_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs a command to completion and returns (success, stdout, stderr).
pub fn run_cmd(cmd: &mut Command) -> anyhow::Result<(bool, String, String)> {
    let out = cmd.stdin(Stdio::null()).output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A `psql` command against 127.0.0.1:`port` as `user` on `db`, without reading ~/.psqlrc.
pub fn psql(port: u16, user: &str, db: &str) -> Command {
    let mut c = Command::new("psql");
    c.args([
        "-X",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        user,
        "-d",
        db,
    ]);
    c
}

impl Cluster {
    /// Prepends lines to pg_hba.conf and reloads the configuration.
    pub async fn prepend_hba(&self, lines: &[&str]) -> anyhow::Result<()> {
        let path = self.dir.join("data/pg_hba.conf");
        let old = std::fs::read_to_string(&path)?;
        std::fs::write(&path, format!("{}\n{old}", lines.join("\n")))?;
        let c = self.connect("postgres").await?;
        c.execute("SELECT pg_reload_conf()", &[]).await?;
        Ok(())
    }
}

/// Connects, runs `LISTEN channel`, and returns the client (keep it alive) with a receiver of
/// (channel, payload) for every notification that arrives on that connection.
pub async fn listen(
    conninfo: &str,
    channel: &str,
) -> anyhow::Result<(
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
)> {
    use futures::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    Ok((client, rx))
}

/// Makes a self-signed certificate and key (PEM, CN=localhost) with the openssl CLI.
pub fn self_signed_cert(cert: &Path, key: &Path) -> anyhow::Result<()> {
    let (ok, _, err) = run_cmd(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &key.to_string_lossy(),
        "-out",
        &cert.to_string_lossy(),
    ]))?;
    anyhow::ensure!(ok, "openssl: {err}");
    Ok(())
}

impl Proxy {
    /// Waits (asynchronously, so the caller's connection tasks keep running) for the proxy to
    /// exit; returns its exit code, or None if it is still running after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }
}

/// One table's row of `writebehind.status`: where its acknowledged changes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineStatus {
    pub acked: i64,
    pub pending_in_proxies: i64,
    pub inbox_rows: i64,
    pub applied: i64,
    pub coalesced: i64,
    pub dead_letters: i64,
}

impl PipelineStatus {
    /// Whether `acked = pending + inbox + applied + coalesced + dead letters`.
    pub fn adds_up(&self) -> bool {
        self.acked
            == self.pending_in_proxies
                + self.inbox_rows
                + self.applied
                + self.coalesced
                + self.dead_letters
    }
}

/// `writebehind.status` of `table` once nothing is pending in proxies or the inbox (proxies
/// report once a second), or as it is after `timeout`.
pub async fn settled_status(
    client: &tokio_postgres::Client,
    table: &str,
    timeout: Duration,
) -> anyhow::Result<PipelineStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = client
            .query_one(
                "SELECT acked, pending_in_proxies, inbox_rows, applied, coalesced, dead_letters
                 FROM writebehind.status WHERE \"table\" = $1::text::regclass",
                &[&table],
            )
            .await?;
        let s = PipelineStatus {
            acked: r.try_get(0)?,
            pending_in_proxies: r.try_get(1)?,
            inbox_rows: r.try_get(2)?,
            applied: r.try_get(3)?,
            coalesced: r.try_get(4)?,
            dead_letters: r.try_get(5)?,
        };
        if (s.pending_in_proxies == 0 && s.inbox_rows == 0) || Instant::now() > deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The single bigint `sql` returns (e.g. a counter read directly from PostgreSQL).
pub async fn query_i64(client: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(client.query_one(sql, &[]).await?.try_get(0)?)
}

/// A value escaped for COPY's text format.
pub fn copy_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// Ships one hand-made batch the way a proxy does (docs/inbox.md): `BEGIN; begin_batch(proxy,
/// seq); COPY writebehind.inbox …; COMMIT`. `rows` makes the COPY text, and is called only
/// when `begin_batch` says the batch is new. Returns that answer.
pub async fn ship_batch(
    client: &mut tokio_postgres::Client,
    proxy: &str,
    seq: i64,
    rows: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<bool> {
    let copy = "COPY writebehind.inbox (proxy_id, batch_seq, relid, op, key, data, conflict_set) FROM STDIN";
    ship_batch_as(client, proxy, seq, copy, rows).await
}

/// As [`ship_batch`], with the COPY statement given (its column list decides the rows' form).
pub async fn ship_batch_as(
    client: &mut tokio_postgres::Client,
    proxy: &str,
    seq: i64,
    copy: &str,
    rows: impl FnOnce() -> anyhow::Result<String>,
) -> anyhow::Result<bool> {
    use futures::SinkExt;
    let tx = client.transaction().await?;
    let fresh: bool = tx
        .query_one("SELECT writebehind.begin_batch($1, $2)", &[&proxy, &seq])
        .await?
        .get(0);
    if fresh {
        let text = rows()?;
        let sink = tx.copy_in(copy).await?;
        futures::pin_mut!(sink);
        sink.send(bytes::Bytes::from(text)).await?;
        sink.finish().await?;
    }
    tx.commit().await?;
    Ok(fresh)
}

/// The row count in the command tag of a simple-protocol statement (`UPDATE 1` → 1).
pub async fn command_tag(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<u64> {
    let msgs = c.simple_query(sql).await?;
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no command tag"))
}
