//! The pass-through proxy with real clients: psql, pgbench (simple, extended, prepared),
//! tokio-postgres (prepared statements, binary parameters, COPY, cancel, LISTEN/NOTIFY).

use futures::{SinkExt, TryStreamExt};
use std::time::Duration;
use writebehind_tests::{psql, raw, run_cmd, Cluster, Proxy};

fn setup() -> anyhow::Result<(Cluster, Proxy)> {
    let cluster = Cluster::start()?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--admin-users", "admin"])?;
    Ok((cluster, proxy))
}

/// Cancels a long `pg_sleep` of `client` through the proxy's cancel key; the session goes on.
async fn cancel_a_sleep(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = std::time::Instant::now();
    let err = client
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("the query is cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await??;
    Ok(())
}

/// Logs in through `proxy`, which must fail with FATAL 08006 (the upstream cannot be reached
/// as configured); returns the message the client got.
async fn login_fails_with_08006(proxy: &Proxy) -> anyhow::Result<String> {
    let err = tokio_postgres::connect(
        &proxy.conninfo("postgres", "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("the login fails");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::CONNECTION_FAILURE),
        "{err}"
    );
    Ok(err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default())
}

/// Writes `table (id, n) = (1, 5)` through `client` (write-behind), reads it back through the
/// barrier, and checks that the proxy acknowledged and shipped it.
async fn write_behind_round_trip(
    client: &tokio_postgres::Client,
    admin: &tokio_postgres::Client,
    table: &str,
) -> anyhow::Result<()> {
    client
        .simple_query(&format!("INSERT INTO {table} (id, n) VALUES (1, 5)"))
        .await?;
    let n: i64 = client
        .query_one(&format!("SELECT n FROM {table} WHERE id = 1"), &[])
        .await?
        .get(0);
    assert_eq!(n, 5, "read through the barrier");
    let st = writebehind_tests::settled_status(admin, table, Duration::from_secs(15)).await?;
    assert_eq!(
        (st.acked, st.applied),
        (1, 1),
        "acknowledged and shipped by the proxy: {st:?}"
    );
    Ok(())
}

#[tokio::test]
async fn psql_multi_statement_describe_copy_and_errors_in_transactions() -> anyhow::Result<()> {
    let (cluster, proxy) = setup()?;
    let (ok, out, err) = run_cmd(psql(proxy.port, "postgres", "postgres").args([
        "-qAt",
        "-c",
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT count(*) FROM t",
    ]))?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2");

    let (ok, out, _) = run_cmd(psql(proxy.port, "postgres", "postgres").args(["-c", "\\d t"]))?;
    assert!(ok);
    assert!(
        out.contains("Table \"public.t\"") && out.contains("t_pkey"),
        "{out}"
    );

    // \copy in and out through the proxy.
    let dir = std::env::temp_dir().join(format!("wbcopy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("in.csv");
    std::fs::write(
        &input,
        (3..=1002)
            .map(|i| format!("{i},row {i}\n"))
            .collect::<String>(),
    )?;
    let (ok, out, err) = run_cmd(psql(proxy.port, "postgres", "postgres").args([
        "-c",
        &format!("\\copy t FROM '{}' WITH (FORMAT csv)", input.display()),
    ]))?;
    assert!(ok, "{err}");
    assert!(out.contains("COPY 1000"), "{out}");
    let output = dir.join("out.csv");
    let (ok, out, err) = run_cmd(psql(proxy.port, "postgres", "postgres").args([
        "-c",
        &format!(
            "\\copy (SELECT * FROM t ORDER BY id) TO '{}' WITH (FORMAT csv)",
            output.display()
        ),
    ]))?;
    assert!(ok, "{err}");
    assert!(out.contains("COPY 1002"), "{out}");
    let lines: Vec<String> = std::fs::read_to_string(&output)?
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 1002);
    assert_eq!(lines[1001], "1002,row 1002");

    // An error inside a transaction: the rest of the block fails until ROLLBACK, as in PostgreSQL.
    let (_, out, err) = run_cmd(psql(proxy.port, "postgres", "postgres").args([
        "-At",
        "-c",
        "BEGIN",
        "-c",
        "SELECT 1/0",
        "-c",
        "SELECT 42",
        "-c",
        "ROLLBACK",
        "-c",
        "SELECT 43",
    ]))?;
    assert!(err.contains("division by zero"), "{err}");
    assert!(err.contains("current transaction is aborted"), "{err}");
    assert!(out.contains("43") && !out.contains("42"), "{out}");

    // The rows really are in PostgreSQL.
    let direct = cluster.connect("postgres").await?;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    assert_eq!(n, 1002);
    Ok(())
}

#[tokio::test]
async fn pgbench_in_every_protocol_mode() -> anyhow::Result<()> {
    let (_cluster, proxy) = setup()?;
    let port = proxy.port.to_string();
    let (ok, _, err) = run_cmd(std::process::Command::new("pgbench").args([
        "-i",
        "-s",
        "1",
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        "postgres",
        "postgres",
    ]))?;
    assert!(ok, "pgbench -i: {err}");
    for mode in ["simple", "extended", "prepared"] {
        for select_only in [false, true] {
            let mut cmd = std::process::Command::new("pgbench");
            cmd.args([
                "-n",
                "-M",
                mode,
                "-c",
                "4",
                "-j",
                "2",
                "-t",
                "200",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "postgres",
            ]);
            if select_only {
                cmd.arg("-S");
            }
            let (ok, out, err) = run_cmd(&mut cmd)?;
            assert!(ok, "pgbench -M {mode}: {out}{err}");
            assert!(
                out.contains("number of transactions actually processed: 800/800"),
                "pgbench -M {mode}: {out}"
            );
            assert!(out.contains("number of failed transactions: 0"), "{out}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn tokio_postgres_prepared_binary_copy_cancel_and_notify() -> anyhow::Result<()> {
    let (cluster, proxy) = setup()?;
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    client
        .batch_execute(
            "CREATE TABLE b (id bigint PRIMARY KEY, name text, payload bytea, score float8)",
        )
        .await?;

    // Prepared statements with binary parameters and results.
    let insert = client
        .prepare("INSERT INTO b VALUES ($1, $2, $3, $4)")
        .await?;
    for i in 0..50i64 {
        let payload: Vec<u8> = (0..=255u8).cycle().skip(i as usize).take(300).collect();
        client
            .execute(
                &insert,
                &[&i, &format!("name-{i}"), &payload, &(i as f64 / 4.0)],
            )
            .await?;
    }
    let row = client
        .query_one("SELECT name, payload, score FROM b WHERE id = $1", &[&7i64])
        .await?;
    assert_eq!(row.get::<_, String>(0), "name-7");
    assert_eq!(row.get::<_, Vec<u8>>(1)[0], 7u8);
    assert_eq!(row.get::<_, f64>(2), 1.75);

    // COPY FROM STDIN and TO STDOUT.
    let sink = client.copy_in("COPY b (id, name) FROM STDIN").await?;
    futures::pin_mut!(sink);
    let data: String = (1000..3000).map(|i| format!("{i}\tcopied {i}\n")).collect();
    sink.send(bytes::Bytes::from(data)).await?;
    assert_eq!(sink.finish().await?, 2000);
    let stream = client
        .copy_out("COPY (SELECT id FROM b ORDER BY id) TO STDOUT")
        .await?;
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 2050);

    // Cancel a long query through the proxy's own cancel key.
    cancel_a_sleep(&client).await?;
    // The session is still usable.
    let n: i64 = client
        .query_one("SELECT count(*) FROM b", &[])
        .await?
        .get(0);
    assert_eq!(n, 2050);

    // LISTEN through the proxy, NOTIFY from a direct connection.
    let (_listener, mut rx) =
        writebehind_tests::listen(&proxy.conninfo("postgres", "postgres"), "wbchan").await?;
    let direct = cluster.connect("postgres").await?;
    direct
        .execute("SELECT pg_notify('wbchan', 'hello through the proxy')", &[])
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?;
    assert_eq!(
        got,
        Some(("wbchan".to_string(), "hello through the proxy".to_string()))
    );
    Ok(())
}

#[tokio::test]
async fn admin_console_for_listed_users_only() -> anyhow::Result<()> {
    let (_cluster, proxy) = setup()?;
    let _client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    // A failed login makes no statistics row (each database name tried used to stay for good).
    let refused = writebehind_tests::connect(&proxy.conninfo("postgres", "no_such_db")).await;
    assert!(refused.is_err());
    let (ok, out, err) = run_cmd(psql(proxy.port, "admin", "writebehind").args([
        "-c",
        "SHOW CLIENTS",
        "-c",
        "SHOW SERVERS",
        "-c",
        "SHOW STATS",
        "-c",
        "SHOW CONFIG",
        "-c",
        "SHOW VERSION",
    ]))?;
    assert!(ok, "{err}");
    assert!(
        out.contains("| postgres | postgres |"),
        "SHOW CLIENTS lists the session: {out}"
    );
    assert!(out.contains("total_query_count"), "{out}");
    assert!(!out.contains("no_such_db"), "{out}");
    assert!(out.contains("max_client_conn"), "{out}");
    // Every key, and the proxy id in use (generated and kept in the WAL directory here).
    for key in ["tls_cert", "tls_key", "log_format", "login_timeout"] {
        assert!(
            out.contains(&format!(" {key} ")),
            "SHOW CONFIG lists {key}: {out}"
        );
    }
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("proxy_id ") && l.contains("| proxy-")),
        "{out}"
    );
    assert!(out.contains("writebehind-proxy"), "{out}");
    // Counters are bigint and names text, as PgBouncer's console types them.
    let mut s = raw::session(proxy.port, "admin", "writebehind")?;
    for (command, want) in [
        (
            "SHOW STATS",
            vec![("database", 25), ("total_query_count", 20)],
        ),
        (
            "SHOW CLIENTS",
            vec![("user", 25), ("connect_time", 20), ("id", 20)],
        ),
    ] {
        std::io::Write::write_all(&mut s, &raw::query(command))?;
        let replies = raw::read_to_ready(&mut s)?;
        let columns = replies
            .iter()
            .find(|(ty, _)| *ty == b'T')
            .map(|(_, body)| raw::columns(body))
            .unwrap_or_default();
        for (name, oid) in want {
            assert!(
                columns.iter().any(|(n, o)| n == name && *o == oid),
                "{command}: {name} has type oid {oid}: {columns:?}"
            );
        }
    }
    let (ok, _, err) =
        run_cmd(psql(proxy.port, "admin", "writebehind").args(["-c", "SHOW NONSENSE"]))?;
    assert!(!ok && err.contains("unknown admin command"), "{err}");
    let (ok, _, err) =
        run_cmd(psql(proxy.port, "mallory", "writebehind").args(["-c", "SHOW STATS"]))?;
    assert!(!ok);
    assert!(err.contains("not allowed on the admin console"), "{err}");
    let denied = tokio_postgres::connect(
        &proxy.conninfo("mallory", "writebehind"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .and_then(|e| e.code().cloned());
    assert_eq!(
        denied,
        Some(tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    );
    Ok(())
}

#[tokio::test]
async fn psycopg3_server_side_binding_pipeline_and_copy() -> anyhow::Result<()> {
    let (_cluster, proxy) = setup()?;
    let python = writebehind_tests::repo_root().join(".venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} missing: run scripts/setup",
        python.display()
    );
    let script = writebehind_tests::repo_root().join("tests/python/psycopg_through_proxy.py");
    let (ok, out, err) = run_cmd(
        std::process::Command::new(python)
            .arg(script)
            .arg(proxy.port.to_string()),
    )?;
    assert!(ok, "psycopg checks failed:\n{out}\n{err}");
    assert!(out.contains("all checks passed"), "{out}");
    Ok(())
}

#[tokio::test]
async fn tls_toward_clients_with_a_certificate_made_at_test_time() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let dir = std::env::temp_dir().join(format!(
        "wbtls-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    writebehind_tests::self_signed_cert(&cert, &key)?;
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &[
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
        ],
    )?;
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
        proxy.port
    );
    let (ok, out, err) = run_cmd(std::process::Command::new("psql").args([
        "-X",
        &conninfo,
        "-c",
        "\\conninfo",
        "-c",
        "SELECT 'over tls' AS v",
    ]))?;
    assert!(ok, "{err}");
    assert!(out.contains("SSL connection (protocol: TLSv1.3"), "{out}");
    assert!(out.contains("over tls"), "{out}");
    // Plaintext clients are still served.
    let plain = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable",
        proxy.port
    );
    let (ok, out, err) =
        run_cmd(std::process::Command::new("psql").args(["-X", "-At", &plain, "-c", "SELECT 1"]))?;
    assert!(ok && out.trim() == "1", "{out}{err}");
    // Without TLS configured, sslmode=require is refused by the client (the proxy says 'N').
    let bare = Proxy::spawn(&cluster.url("postgres"), &[])?;
    let req = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
        bare.port
    );
    let (ok, _, err) =
        run_cmd(std::process::Command::new("psql").args(["-X", &req, "-c", "SELECT 1"]))?;
    assert!(!ok && err.contains("does not support SSL"), "{err}");
    Ok(())
}

#[tokio::test]
async fn tls_toward_postgres_per_sslmode() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let data = cluster.dir.join("data");
    let (cert, key) = (data.join("server.crt"), data.join("server.key"));
    writebehind_tests::self_signed_cert(&cert, &key)?;
    for f in [&cert, &key] {
        run_cmd(
            std::process::Command::new("chown").args(["postgres:postgres", &f.to_string_lossy()]),
        )?;
        run_cmd(std::process::Command::new("chmod").args(["600", &f.to_string_lossy()]))?;
    }
    let admin = cluster.connect("postgres").await?;
    admin.simple_query("ALTER SYSTEM SET ssl = on").await?;
    admin.simple_query("SELECT pg_reload_conf()").await?;
    let ssl_of = |c: tokio_postgres::Client| async move {
        let row = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        anyhow::Ok(row.get::<_, bool>(0))
    };
    // require and the default (prefer) both encrypt the hop to PostgreSQL.
    for mode in ["?sslmode=require", ""] {
        let proxy = Proxy::spawn(&format!("{}{mode}", cluster.url("postgres")), &[])?;
        let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
        assert!(
            ssl_of(client).await?,
            "upstream hop encrypted with {mode:?}"
        );
    }
    let proxy = Proxy::spawn(&format!("{}?sslmode=disable", cluster.url("postgres")), &[])?;
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    assert!(!ssl_of(client).await?, "sslmode=disable stays plaintext");
    drop(proxy);

    // SCRAM over an encrypted hop: PostgreSQL offers channel binding (SCRAM-SHA-256-PLUS),
    // which binds to a TLS session the client does not share; the proxy does not pass that
    // offer on, so psql logs in (libpq refused the offer over its plaintext connection).
    admin
        .batch_execute("CREATE ROLE scrammy LOGIN PASSWORD 'sekret'")
        .await?;
    cluster
        .prepend_hba(&["host all scrammy 127.0.0.1/32 scram-sha-256"])
        .await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &[])?;
    let (ok, out, err) = run_cmd(
        writebehind_tests::psql(proxy.port, "scrammy", "postgres")
            .env("PGPASSWORD", "sekret")
            .args([
                "-Atc",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ]),
    )?;
    assert!(
        ok && out.trim() == "t",
        "SCRAM through the proxy: {out} {err}"
    );
    drop(proxy);

    // The proxy's own connections (catalog, notifications, shipping, reports) follow sslmode
    // too: with plaintext TCP refused by pg_hba, write-behind works with sslmode=require.
    admin
        .batch_execute(
            "CREATE TABLE tls_c (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             SELECT writebehind.enable('tls_c');",
        )
        .await?;
    cluster
        .prepend_hba(&["hostnossl all all 127.0.0.1/32 reject"])
        .await?;
    let proxy = Proxy::spawn(
        &format!("{}?sslmode=require", cluster.url("postgres")),
        &["--flush-interval", "1h"],
    )?;
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    write_behind_round_trip(&client, &admin, "tls_c").await?;
    let (own, encrypted): (i64, i64) = admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
             WHERE a.application_name = 'writebehind-proxy'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))?;
    // (The sslmode=disable proxy above may still hold plaintext ones; pg_hba refuses new ones.)
    assert!(
        encrypted >= 2,
        "own connections: {own}, encrypted: {encrypted}"
    );
    drop(proxy);

    // require against a server without SSL: the client gets 08006.
    admin.simple_query("ALTER SYSTEM SET ssl = off").await?;
    admin.simple_query("SELECT pg_reload_conf()").await?;
    let proxy = Proxy::spawn(&format!("{}?sslmode=require", cluster.url("postgres")), &[])?;
    login_fails_with_08006(&proxy).await?;
    Ok(())
}

/// An upstream given as a Unix-socket directory (libpq's `?host=/dir`): client sessions, cancel
/// requests and the proxy's own connections (catalog, shipping) all use PostgreSQL's socket, with
/// every TCP login refused by pg_hba.
#[tokio::test]
async fn a_unix_socket_upstream_serves_sessions_cancels_and_write_behind() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let admin = cluster.connect("postgres").await?;
    admin
        .batch_execute(
            "CREATE TABLE unix_c (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
             SELECT writebehind.enable('unix_c');",
        )
        .await?;
    cluster
        .prepend_hba(&["host all all 127.0.0.1/32 reject"])
        .await?;
    let url = format!(
        "postgresql://postgres@/postgres?host={}&port={}",
        cluster.dir.display(),
        cluster.port
    );
    let proxy = Proxy::spawn(&url, &["--flush-interval", "1h"])?;
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let local: bool = client
        .query_one(
            "SELECT client_addr IS NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    assert!(local, "the session's backend was reached over the socket");

    // A cancel request reaches the backend through the socket too.
    cancel_a_sleep(&client).await?;
    // Write-behind, shipped by the proxy's own connections (which TCP would not let in).
    write_behind_round_trip(&client, &admin, "unix_c").await?;
    drop(proxy);

    // A socket directory where PostgreSQL does not listen: the client gets 08006 naming it.
    let proxy = Proxy::spawn(
        &format!(
            "postgresql://postgres@/postgres?host=/nonexistent&port={}",
            cluster.port
        ),
        &[],
    )?;
    let message = login_fails_with_08006(&proxy).await?;
    assert!(message.contains("/nonexistent/.s.PGSQL."), "{message}");
    Ok(())
}

/// `unix_socket_dir`: local clients reach the proxy through `DIR/.s.PGSQL.<port>` as they reach
/// PostgreSQL (psql -h DIR, libpq's host=DIR), a cancel request too; the admin console names
/// them `unix`; the file is gone after a graceful exit.
#[tokio::test]
async fn local_clients_through_the_unix_socket_dir() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let dir = std::env::temp_dir().join(format!("wb-sock-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let dir_text = dir.to_string_lossy().into_owned();
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--unix-socket-dir", &dir_text, "--admin-users", "postgres"],
    )?;
    let socket = dir.join(format!(".s.PGSQL.{}", proxy.port));
    // The socket is bound just after the TCP listener the spawn waited for.
    let bound = writebehind_tests::wait_until(Duration::from_secs(10), || socket.exists());
    assert!(bound, "{}", socket.display());

    let (ok, out, err) = run_cmd(std::process::Command::new("psql").args([
        "-h",
        &dir_text,
        "-p",
        &proxy.port.to_string(),
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-Atc",
        "SELECT 6 * 7",
    ]))?;
    assert!(
        ok && out.trim() == "42",
        "psql through the socket: {out} {err}"
    );

    let local = format!(
        "host={dir_text} port={} user=postgres dbname=postgres",
        proxy.port
    );
    let client = writebehind_tests::connect(&local).await?;
    cancel_a_sleep(&client).await?;
    let admin = writebehind_tests::connect(&format!(
        "host={dir_text} port={} user=postgres dbname=writebehind",
        proxy.port
    ))
    .await?;
    let clients = admin.simple_query("SHOW CLIENTS").await?;
    let unix = clients
        .iter()
        .filter(|m| {
            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
                if r.columns().iter().position(|c| c.name() == "addr").and_then(|i| r.get(i)) == Some("unix"))
        })
        .count();
    assert!(unix >= 2, "the socket's clients are named unix: {unix}");
    drop((client, admin));

    proxy.signal("TERM")?;
    let gone = writebehind_tests::wait_until(Duration::from_secs(20), || !socket.exists());
    assert!(gone, "the socket file is removed at exit");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
