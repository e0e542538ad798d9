//! The accept loop and graceful shutdown: stop accepting, let sessions finish up to
//! `shutdown_timeout`, return.

use crate::config::Config;
use crate::event_loops::EventLoops;
use crate::session::{self, cancel::CancelMap, Shared};
use std::sync::Arc;
use tokio::net::TcpListener;
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
    let mut tasks = tokio::task::JoinSet::new();
    info!(listen = %listener.local_addr()?, upstream = %shared.config.upstream.text, event_loops = loops.count(), "writebehind-proxy ready");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((sock, peer)) => match loops.take_turn() {
                    None => {
                        tasks.spawn(session::handle(sock, peer, shared.clone()));
                    }
                    // The socket moves to the other loop's I/O driver.
                    Some(event_loop) => match sock.into_std() {
                        Ok(sock) => {
                            let shared = shared.clone();
                            tasks.spawn_on(
                                async move {
                                    match tokio::net::TcpStream::from_std(sock) {
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
