//! The accept loop (the TCP address, and the local Unix-domain socket if configured) and
//! graceful shutdown: stop accepting, let sessions finish up to `shutdown_timeout`, return.

use crate::config::Config;
use crate::event_loops::EventLoops;
use crate::local_socket::LocalSocket;
use crate::session::tls::Stream;
use crate::session::{self, cancel::CancelMap, Shared};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tracing::{info, warn};

/// Serves clients on `listener` until `shutdown` becomes true, then drains. Sessions run on
/// the calling thread's runtime and on `loops`, in turn.
pub async fn run(
    config: Config,
    listener: TcpListener,
    mut loops: EventLoops,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            Some(crate::session::tls::acceptor(cert, key).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?)
        }
        _ => None,
    };
    // Start-up replay waits for PostgreSQL as long as it takes; a SIGTERM meanwhile stops it
    // (the WAL keeps every acknowledged write for the next start).
    let writebehind = tokio::select! {
        wb = crate::recovery::start(&config) => wb?,
        _ = shutdown.wait_for(|stop| *stop) => {
            tracing::info!("stopped during start-up replay: the WAL keeps every acknowledged write");
            return Ok(());
        }
    };
    let stats = writebehind.stats().clone();
    let live = writebehind.live().clone();
    let shared =
        Arc::new(Shared {
            writebehind: Some(writebehind),
            config,
            live,
            stats,
            cancel: CancelMap::default(),
            tls,
            upstream_tls: Some(crate::session::tls::connector().map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?),
            terminate: tokio::sync::watch::channel(false).0,
        });
    let metrics = match &shared.config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr).await?;
            info!(metrics = %l.local_addr()?, "serving /metrics and /health");
            Some(tokio::spawn(crate::metrics::serve(l, shared.clone())))
        }
        None => None,
    };
    let signals = tokio::spawn(crate::signals::serve(shared.clone()));
    let local = match &shared.config.unix_socket_dir {
        Some(dir) => Some(LocalSocket::bind(dir, listener.local_addr()?.port()).await?),
        None => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    info!(listen = %listener.local_addr()?, unix_socket = ?local.as_ref().map(|l| l.path().display().to_string()), upstream = %shared.config.upstream.text, event_loops = loops.count(), "writebehind-proxy ready");
    loop {
        tokio::select! {
            accepted = accept(&listener, local.as_ref()) => match accepted {
                Ok((sock, peer)) => match loops.take_turn() {
                    None => match sock.into_stream() {
                        Ok(sock) => {
                            tasks.spawn(session::handle(sock, peer, shared.clone()));
                        }
                        Err(error) => warn!(%error, %peer, "cannot take an accepted connection"),
                    },
                    // The socket moves to the other loop's I/O driver.
                    Some(event_loop) => match sock.into_std() {
                        Ok(sock) => {
                            let shared = shared.clone();
                            tasks.spawn_on(
                                async move {
                                    match sock.into_stream() {
                                        Ok(sock) => session::handle(sock, peer, shared).await,
                                        Err(error) => warn!(%error, %peer, "cannot take over an accepted connection"),
                                    }
                                },
                                event_loop,
                            );
                        }
                        Err(error) => warn!(%error, %peer, "cannot hand an accepted connection over"),
                    },
                },
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(local);
    let active = tasks.len();
    let shutdown_timeout = shared.live.get().shutdown_timeout;
    info!(active, timeout = ?shutdown_timeout, "shutting down: no new clients, waiting for sessions");
    let drained = tokio::time::timeout(shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = tasks.len(),
            "shutdown timeout reached; closing the remaining sessions"
        );
        // As PostgreSQL's fast shutdown: each session is told (FATAL 57P01), then closed.
        let _ = shared.terminate.send(true);
        let told = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if told.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
    if let Some(wb) = &shared.writebehind {
        info!("shipping every acknowledged write before exit");
        wb.shutdown().await;
    }
    signals.abort();
    if let Some(m) = metrics {
        m.abort();
    }
    drop(loops);
    Ok(())
}

/// An accepted connection, on the accepting thread's I/O driver.
enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// An accepted connection between I/O drivers.
enum Handed {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// The next connection on either listener, with a name for its client.
async fn accept(
    tcp: &TcpListener,
    local: Option<&LocalSocket>,
) -> std::io::Result<(Accepted, String)> {
    let unix = async {
        match local {
            Some(l) => l.listener.accept().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tcp.accept() => r.map(|(s, peer)| (Accepted::Tcp(s), peer.to_string())),
        r = unix => r.map(|(s, _)| (Accepted::Unix(s), "unix".to_string())),
    }
}

impl Accepted {
    /// A session's stream on this thread (TCP without Nagle's delay).
    fn into_stream(self) -> std::io::Result<Stream> {
        match self {
            Accepted::Tcp(s) => {
                s.set_nodelay(true)?;
                Ok(Stream::Plain(s))
            }
            Accepted::Unix(s) => Ok(Stream::Unix(s)),
        }
    }

    /// Detached from this thread's I/O driver, for another event loop.
    fn into_std(self) -> std::io::Result<Handed> {
        match self {
            Accepted::Tcp(s) => s.into_std().map(Handed::Tcp),
            Accepted::Unix(s) => s.into_std().map(Handed::Unix),
        }
    }
}

impl Handed {
    /// A session's stream on the event loop it was handed to.
    fn into_stream(self) -> std::io::Result<Stream> {
        match self {
            Handed::Tcp(s) => Accepted::Tcp(TcpStream::from_std(s)?).into_stream(),
            Handed::Unix(s) => Ok(Stream::Unix(UnixStream::from_std(s)?)),
        }
    }
}
