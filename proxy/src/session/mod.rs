//! One client connection: the startup packet (SSL/GSS negotiation, cancel requests), then
//! either the admin console or a relayed session with its own upstream connection.

pub mod cancel;
pub mod changers;
pub mod intercept;
pub mod ledger;
pub mod own_tls;
pub mod relay;
pub mod tls;
pub mod upstream;
pub mod wire;

use crate::config::Config;
use crate::error::ProxyError;
use crate::protocol::startup::{read_packet, StartupError, StartupPacket};
use crate::stats::{ClientGuard, ClientInfo, Stats};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::SystemTime;
use tls::Stream;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, instrument, warn};

/// State shared by every session.
pub struct Shared {
    /// The configuration the proxy started with (see `live` for the reloadable keys).
    pub config: Config,
    /// The running configuration: read the reloadable keys here.
    pub live: Arc<crate::live_config::LiveConfig>,
    pub stats: Arc<Stats>,
    pub cancel: cancel::CancelMap,
    /// TLS toward clients, when `tls_cert` and `tls_key` are set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS toward PostgreSQL (unless `sslmode=disable`).
    pub upstream_tls: Option<tokio_rustls::TlsConnector>,
    /// The write-behind path.
    pub writebehind: Option<Arc<crate::writebehind::databases::WriteBehind>>,
    /// Set when `shutdown_timeout` has passed: sessions still open end with FATAL 57P01.
    pub terminate: tokio::sync::watch::Sender<bool>,
}

/// Serves one accepted connection (TCP, or the local Unix-domain socket; `peer` names the
/// client) to its end.
#[instrument(skip_all, fields(conn_id, peer = %peer))]
pub async fn handle(sock: Stream, peer: String, shared: Arc<Shared>) {
    let conn_id = shared.stats.next_client_id();
    tracing::Span::current().record("conn_id", conn_id);
    let login = tokio::time::timeout(shared.live.get().login_timeout, read_startup(sock, &shared));
    let Ok(Some((mut sock, raw, params))) = login.await else {
        debug!("no startup message within login_timeout, or none at all: closed");
        return;
    };
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

    let user = param("user").unwrap_or_default();
    let database = param("database").unwrap_or_else(|| user.clone());
    let live = shared.live.get();
    if shared.stats.active() >= live.max_client_conn {
        reject(&mut sock, &ProxyError::TooManyClients(live.max_client_conn)).await;
        return;
    }
    shared
        .stats
        .clients_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    shared.stats.clients.insert(
        conn_id,
        ClientInfo {
            user: user.clone(),
            database: database.clone(),
            addr: peer,
            upstream: None,
            connected_at: SystemTime::now(),
        },
    );
    let _guard = ClientGuard {
        stats: shared.stats.clone(),
        id: conn_id,
    };
    if database == crate::admin::ADMIN_DATABASE {
        crate::admin::serve(sock, &user, &shared).await;
        return;
    }
    debug!(%user, %database, "session starting");
    let stats = shared.stats.clone();
    let on_upstream = move |addr: &str| {
        if let Some(mut c) = stats.clients.get_mut(&conn_id) {
            c.upstream = Some(addr.to_string());
        }
    };
    let intercept = match &shared.writebehind {
        // Settings given at startup that the path relies on: this session passes through.
        Some(_) if changers::startup_changes(&params) => {
            debug!("startup parameters change name resolution or encoding: no write-behind for this session");
            None
        }
        Some(wb) => wb
            .db(&database)
            .await
            .map(|rt| intercept::Intercept::new(rt, user.clone(), live.barrier_timeout)),
        None => None,
    };
    match relay::run(
        sock,
        raw,
        shared.clone(),
        database.clone(),
        on_upstream,
        intercept,
    )
    .await
    {
        Ok(()) => debug!("session ended"),
        Err(ProxyError::UpstreamConnect(error)) => warn!(%error, "upstream connect failed"),
        Err(error) => info!(%error, "session ended with an error"),
    }
}

/// Reads packets up to the StartupMessage: answers SSLRequest (TLS if configured) and
/// GSSENCRequest, forwards a CancelRequest, refuses what is not a startup packet. `None` when
/// the connection ends without a session.
async fn read_startup(
    mut sock: Stream,
    shared: &Shared,
) -> Option<(Stream, Vec<u8>, Vec<(String, String)>)> {
    loop {
        match read_packet(&mut sock).await {
            Ok(StartupPacket::Ssl) => {
                sock = match (sock, &shared.tls) {
                    (Stream::Plain(mut tcp), Some(acceptor)) => {
                        if tcp.write_all(b"S").await.is_err() {
                            return None;
                        }
                        match acceptor.accept(tcp).await {
                            Ok(tls) => Stream::Tls(Box::new(tls.into())),
                            Err(error) => {
                                info!(%error, "TLS handshake failed");
                                return None;
                            }
                        }
                    }
                    // No TLS configured (or a second SSLRequest): the client goes on in
                    // plaintext or leaves.
                    (mut other, _) => {
                        if other.write_all(b"N").await.is_err() {
                            return None;
                        }
                        other
                    }
                };
            }
            Ok(StartupPacket::GssEnc) => {
                if sock.write_all(b"N").await.is_err() {
                    return None;
                }
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                shared.cancel.cancel(pid, secret).await;
                return None;
            }
            Ok(StartupPacket::Startup { raw, params }) => return Some((sock, raw, params)),
            Err(StartupError::Closed) => return None,
            Err(e @ StartupError::UnsupportedProtocol { .. }) => {
                reject(&mut sock, &ProxyError::UnsupportedProtocol(e.to_string())).await;
                return None;
            }
            Err(e) => {
                reject(&mut sock, &ProxyError::BadStartup(e.to_string())).await;
                return None;
            }
        }
    }
}

/// Sends a fatal error during startup and closes.
async fn reject(sock: &mut Stream, e: &ProxyError) {
    let mut buf = BytesMut::new();
    e.write_to(&mut buf);
    let _ = sock.write_all(&buf).await;
    let _ = sock.shutdown().await;
}
