//! The pass-through proxy under bad input and failures: authentication relayed to PostgreSQL,
//! garbage, truncated and oversized messages, unsupported protocol versions, an unreachable or
//! dying upstream, SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use writebehind_tests::{free_port, raw, wait_until, Cluster, Proxy};

/// The SQLSTATE field of an ErrorResponse body.
fn sqlstate(body: &[u8]) -> Option<String> {
    body.split(|&b| b == 0)
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

/// Reads messages until an ErrorResponse; returns its SQLSTATE.
fn expect_error(s: &mut TcpStream) -> anyhow::Result<String> {
    loop {
        let (ty, body) = raw::read_message(s)?;
        if ty == b'E' {
            return sqlstate(&body).ok_or_else(|| anyhow::anyhow!("no SQLSTATE"));
        }
    }
}

fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[tokio::test]
async fn wrong_passwords_are_rejected_by_postgres_through_the_proxy() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let admin = cluster.connect("postgres").await?;
    admin
        .batch_execute(
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'right-md5';
             SET password_encryption = 'scram-sha-256'; CREATE ROLE scramuser LOGIN PASSWORD 'right-scram';",
        )
        .await?;
    cluster
        .prepend_hba(&[
            "host all md5user 127.0.0.1/32 md5",
            "host all scramuser 127.0.0.1/32 scram-sha-256",
        ])
        .await?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &[])?;
    for (user, good) in [("md5user", "right-md5"), ("scramuser", "right-scram")] {
        let bad = format!("{} password=wrong", proxy.conninfo(user, "postgres"));
        let err = tokio_postgres::connect(&bad, tokio_postgres::NoTls)
            .await
            .err()
            .expect("a wrong password is refused");
        assert_eq!(
            err.code(),
            Some(&SqlState::INVALID_PASSWORD),
            "{user}: {err}"
        );
        let ok = format!("{} password={good}", proxy.conninfo(user, "postgres"));
        let client = writebehind_tests::connect(&ok).await?;
        let who: String = client
            .query_one("SELECT current_user::text", &[])
            .await?
            .get(0);
        assert_eq!(who, user);
    }
    Ok(())
}

#[tokio::test]
async fn garbage_truncated_and_oversized_messages_close_only_that_client() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &["--max-message-size", "10000"])?;
    let bystander = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;

    // Garbage: a type byte the protocol does not have.
    let mut s = raw::session(proxy.port, "postgres", "postgres")?;
    s.write_all(b"\x01\x00\x00\x00\x08garbage!")?;
    assert_eq!(expect_error(&mut s)?, "08P01");
    assert!(closed(&mut s));

    // Truncated: a Query that announces 100 bytes, sends 10, and the client stops sending.
    let mut s = raw::session(proxy.port, "postgres", "postgres")?;
    s.write_all(b"Q\x00\x00\x00\x64SELECT 1")?;
    s.shutdown(std::net::Shutdown::Write)?;
    assert_eq!(expect_error(&mut s)?, "08P01");
    assert!(closed(&mut s));

    // Oversized: over max_message_size.
    let big = format!("SELECT '{}'", "x".repeat(20_000));
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let err = client.simple_query(&big).await.expect_err("too large");
    assert_eq!(err.code(), Some(&SqlState::PROGRAM_LIMIT_EXCEEDED), "{err}");
    assert!(client.is_closed() || client.simple_query("SELECT 1").await.is_err());

    // A startup packet asking for protocol 4.0 (or 2.0): PostgreSQL's 0A000, then closed.
    for version in [4i32 << 16, 2 << 16] {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut packet = 8i32.to_be_bytes().to_vec();
        packet.extend_from_slice(&version.to_be_bytes());
        s.write_all(&packet)?;
        assert_eq!(expect_error(&mut s)?, "0A000", "protocol {}", version >> 16);
        assert!(closed(&mut s));
    }

    // The proxy keeps serving everyone else.
    let n: i32 = bystander.query_one("SELECT 41 + 1", &[]).await?.get(0);
    assert_eq!(n, 42);
    Ok(())
}

#[tokio::test]
async fn upstream_unreachable_or_dying_gives_08006_never_a_hang() -> anyhow::Result<()> {
    // Nothing listens on the upstream port.
    let dead = free_port();
    let metrics = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics}");
    let proxy = Proxy::spawn(
        &format!("postgresql://postgres@127.0.0.1:{dead}/postgres"),
        &[
            "--connect-timeout",
            "2s",
            "--metrics-listen",
            &metrics_listen,
        ],
    )?;
    let err = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_postgres::connect(
            &proxy.conninfo("postgres", "postgres"),
            tokio_postgres::NoTls,
        ),
    )
    .await?
    .err()
    .expect("no upstream");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    // /health says so, although no database's write-behind ever started.
    let mut http = TcpStream::connect(("127.0.0.1", metrics))?;
    http.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    http.read_to_string(&mut answer)?;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("PostgreSQL unreachable"),
        "{answer}"
    );

    // An upstream that accepts connections and never answers: the proxy's own login and the
    // client's are both bounded (they waited for ever).
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_port = silent.local_addr()?.port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(4).flatten() {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
        drop(conns);
    });
    let proxy = Proxy::spawn(
        &format!("postgresql://postgres@127.0.0.1:{silent_port}/postgres"),
        &["--connect-timeout", "1s", "--login-timeout", "2s"],
    )?;
    let started = std::time::Instant::now();
    let err = failed_login(&proxy, "a silent upstream").await?;
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // A client that never sends its startup message is closed after login_timeout.
    let mut quiet = TcpStream::connect(("127.0.0.1", proxy.port))?;
    quiet.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut b = [0u8; 1];
    assert!(
        matches!(quiet.read(&mut b), Ok(0)),
        "a silent client is closed after login_timeout"
    );
    drop(proxy);
    drop(held);

    // The upstream goes away in the middle of a session.
    let cluster = Cluster::start()?;
    let proxy = Proxy::spawn(&cluster.url("postgres"), &[])?;
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    client.simple_query("SELECT 1").await?;
    cluster.stop("immediate")?;
    let r = tokio::time::timeout(Duration::from_secs(15), client.simple_query("SELECT 1")).await?;
    let err = r.expect_err("a query after the upstream died fails");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    // The session ends (checked asynchronously: the connection task must run to notice).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !client.is_closed() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(client.is_closed());
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_accepting_lets_sessions_finish_and_exits_zero() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let mut proxy = Proxy::spawn(&cluster.url("postgres"), &["--shutdown-timeout", "20s"])?;
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    client.simple_query("SELECT 1").await?;
    proxy.signal("TERM")?;
    let port = proxy.port;
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_err()),
        "no new connections after SIGTERM"
    );
    // The open session still works until its client leaves.
    let v: i32 = client.query_one("SELECT 7", &[]).await?.get(0);
    assert_eq!(v, 7);
    assert!(
        proxy.child.try_wait()?.is_none(),
        "the proxy waits for the session"
    );
    drop(client);
    // Wait asynchronously: the dropped client's connection task must run to close its socket.
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).await?, Some(0));

    // A session still busy when shutdown_timeout ends is told why, as PostgreSQL's fast
    // shutdown tells it (it was cut without a word).
    let mut proxy = Proxy::spawn(&cluster.url("postgres"), &["--shutdown-timeout", "1s"])?;
    let client = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    let sleeping = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(20)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal("TERM")?;
    let err = tokio::time::timeout(Duration::from_secs(10), sleeping)
        .await??
        .expect_err("ended by the shutdown");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err}");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).await?, Some(0));
    Ok(())
}

#[tokio::test]
async fn max_client_conn_and_idle_timeout_are_enforced() -> anyhow::Result<()> {
    let cluster = Cluster::start()?;
    let proxy = Proxy::spawn(
        &cluster.url("postgres"),
        &["--max-client-conn", "2", "--idle-timeout", "1s"],
    )?;
    let conninfo = proxy.conninfo("postgres", "postgres");
    let a = writebehind_tests::connect(&conninfo).await?;
    let b = writebehind_tests::connect(&conninfo).await?;
    let third = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .err()
        .expect("over the limit");
    assert_eq!(
        third.code(),
        Some(&SqlState::TOO_MANY_CONNECTIONS),
        "{third}"
    );
    // Idle inside a transaction block counts too: the transaction is rolled back.
    let direct = cluster.connect("postgres").await?;
    direct.batch_execute("CREATE TABLE idle_t (a int)").await?;
    b.batch_execute("BEGIN; INSERT INTO idle_t VALUES (1)")
        .await?;
    // A long statement is not "idle": pg_sleep(2) outlasts the 1 s idle timeout.
    a.simple_query("SELECT pg_sleep(2)").await?;
    // Idle sessions are closed after the timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        a.simple_query("SELECT 1").await.is_err(),
        "idle session closed"
    );
    assert!(
        b.simple_query("SELECT 1").await.is_err(),
        "idle session closed"
    );
    // Their slots are free again.
    let c = writebehind_tests::connect(&conninfo).await?;
    c.simple_query("SELECT 1").await?;
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM idle_t", &[])
        .await?
        .get(0);
    assert_eq!(rows, 0, "the idle transaction was rolled back");
    Ok(())
}

#[tokio::test]
async fn multi_host_upstream_follows_the_primary_after_promotion() -> anyhow::Result<()> {
    let primary = Cluster::start()?;
    let standby = primary.standby()?;

    let url = format!(
        "postgresql://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        standby.port, primary.port
    );
    let proxy = Proxy::spawn(&url, &["--connect-timeout", "3s"])?;
    let server_port = |c: tokio_postgres::Client| async move {
        let row = c
            .query_one(
                "SELECT current_setting('port')::int, pg_is_in_recovery()",
                &[],
            )
            .await?;
        anyhow::Ok((row.get::<_, i32>(0), row.get::<_, bool>(1)))
    };
    // The standby is listed first, but sessions go to the primary.
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    assert_eq!(server_port(c).await?, (i32::from(primary.port), false));

    // Fail over: stop the primary, promote the standby; new sessions follow.
    primary.stop("immediate")?;
    standby.promote()?;
    let c = writebehind_tests::connect(&proxy.conninfo("postgres", "postgres")).await?;
    assert_eq!(server_port(c).await?, (i32::from(standby.port), false));
    Ok(())
}

/// The error of a login through `proxy` that must fail within 20 s (`upstream` says why).
async fn failed_login(proxy: &Proxy, upstream: &str) -> anyhow::Result<tokio_postgres::Error> {
    let login = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_postgres::connect(
            &proxy.conninfo("postgres", "postgres"),
            tokio_postgres::NoTls,
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the login through {upstream} hung"))?;
    match login {
        Ok(_) => anyhow::bail!("a login through {upstream} succeeded"),
        Err(e) => Ok(e),
    }
}

/// An upstream that is not PostgreSQL: answers whatever it is sent with `reply`, then closes.
/// Serves up to eight connections; returns its port.
fn impostor(reply: &'static [u8]) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().take(8).flatten() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 512];
            let _ = conn.read(&mut b);
            let _ = conn.write_all(reply);
        }
    });
    Ok(port)
}

/// A client through a proxy whose upstream is not a PostgreSQL server (an HTTP server, a
/// server that closes at once) gets FATAL 08006 saying so, where it used to be disconnected
/// without a word.
#[tokio::test]
async fn an_upstream_that_is_not_postgres_is_reported_to_the_client() -> anyhow::Result<()> {
    let http = impostor(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")?;
    let mute = impostor(b"")?;
    for (port, sslmode, says) in [
        (http, "prefer", "not S or N"),
        (http, "disable", "not PostgreSQL's protocol"),
        (mute, "disable", "without an error message"),
    ] {
        let proxy = Proxy::spawn(
            &format!("postgresql://postgres@127.0.0.1:{port}/postgres?sslmode={sslmode}"),
            &["--connect-timeout", "2s"],
        )?;
        let err = failed_login(&proxy, "an impostor upstream").await?;
        let db = err
            .as_db_error()
            .ok_or_else(|| anyhow::anyhow!("no error message from the proxy ({sslmode}): {err}"))?;
        assert_eq!(db.code(), &SqlState::CONNECTION_FAILURE, "{db:?}");
        assert!(db.message().contains(says), "{sslmode}: {}", db.message());
    }
    Ok(())
}
