//! Relaying one client session to its own upstream connection: the startup and authentication
//! exchange message by message (swapping in the proxy's cancel key), then two byte pipes that
//! forward each read in one write while a frame tracker watches message boundaries.
//!
//! Interception seam: every client message header passes through [`FrameTracker::feed`] in
//! `client_to_upstream`; the write-behind path hooks in there to answer statements locally.

use super::cancel::{KeyGuard, UpstreamKey};
use super::intercept::Intercept;
use super::tls::Stream;
use super::wire::{RelayWire, ReplyCounter, Shared as WireState};
use super::Shared;
use crate::error::ProxyError;
use crate::protocol::frame::{FrameError, FrameTracker};
use crate::protocol::frontend::Assembler;
use crate::protocol::messages;
use crate::stats::DbCounters;
use bytes::BytesMut;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const BUF: usize = 64 * 1024;

/// How a session ended.
enum End {
    /// The client said Terminate or closed its side.
    ClientDone,
    /// PostgreSQL closed the connection (after an error it reported, or unexpectedly).
    UpstreamClosed,
}

/// Runs the session until either side ends it.
pub async fn run(
    mut client: Stream,
    startup: Vec<u8>,
    shared: Arc<Shared>,
    database: String,
    on_upstream: impl FnOnce(&str),
    intercept: Option<Intercept>,
) -> Result<(), ProxyError> {
    let cfg = &shared.config;
    // The TLS negotiation counts as connecting: a server that accepts and never answers the
    // SSLRequest must not hold the client.
    let connecting = async {
        match super::upstream::connect(&cfg.upstream, cfg.connect_timeout).await {
            Ok((tcp, addr, host)) => super::upstream::negotiate_tls(
                tcp,
                &host,
                cfg.upstream.sslmode,
                shared.upstream_tls.as_ref(),
            )
            .await
            .map(|s| (s, addr)),
            Err(e) => Err(e),
        }
    };
    let connected = match tokio::time::timeout(cfg.connect_timeout * 2, connecting).await {
        Ok(c) => c,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no answer to the SSLRequest within connect_timeout",
        )),
    };
    shared
        .stats
        .note_upstream(connected.as_ref().err().map(|e| e.to_string()));
    let (upstream, addr) = match connected {
        Ok(u) => u,
        Err(e) => {
            let err = ProxyError::UpstreamConnect(e.to_string());
            let mut buf = BytesMut::new();
            err.write_to(&mut buf);
            let _ = client.write_all(&buf).await;
            return Err(err);
        }
    };
    on_upstream(&addr);
    let ((cr, cw), (ur, uw)) = (client.into_split(), upstream.into_split());
    pipe(cr, cw, ur, uw, startup, shared, database, addr, intercept).await
}

#[allow(clippy::too_many_arguments)]
async fn pipe<R, W, UR, UW>(
    mut cr: R,
    mut cw: W,
    mut ur: UR,
    mut uw: UW,
    startup: Vec<u8>,
    shared: Arc<Shared>,
    database: String,
    addr: String,
    mut intercept: Option<Intercept>,
) -> Result<(), ProxyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    uw.write_all(&startup)
        .await
        .map_err(|_| ProxyError::UpstreamLost)?;

    let mut guard = KeyGuard {
        map: &shared.cancel,
        key: None,
    };
    // Created before startup: the ParameterStatus messages of startup count too.
    let state = WireState::default();
    // The login is bounded as a client's silence is (login_timeout): a server that accepted
    // the connection and never answers must not hold the client for ever.
    let login_timeout = shared.live.get().login_timeout;
    let ready = match tokio::time::timeout(
        login_timeout,
        startup_phase(
            &mut cr, &mut cw, &mut ur, &mut uw, &shared, &addr, &mut guard, &state,
        ),
    )
    .await
    {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => {
            send_error(&mut cw, &e).await;
            return Err(e);
        }
        Err(_) => {
            let e = ProxyError::UpstreamConnect(format!(
                "the login did not complete within login_timeout ({login_timeout:?})"
            ));
            send_error(&mut cw, &e).await;
            return Err(e);
        }
    };
    if !ready {
        return Ok(());
    }
    // Counted per database once logged in: names of failed logins make no rows.
    let counters = shared.stats.db(&database);

    let terminated = AtomicBool::new(false);
    // Both directions write to the client: replies from PostgreSQL, and local replies.
    let client_out = tokio::sync::Mutex::new(cw);
    let flags = Flags {
        terminated: &terminated,
        state: &state,
        intercepted: intercept.is_some(),
    };
    let mut terminate = shared.terminate.subscribe();
    let end = tokio::select! {
        r = client_to_upstream(&mut cr, &mut uw, &shared, &counters, flags, &client_out, intercept.as_mut()) => r,
        r = upstream_to_client(&mut ur, &client_out, &counters, flags) => r,
        _ = terminate.wait_for(|t| *t) => Err(ProxyError::ShuttingDown),
    };
    let mut cw = client_out.into_inner();
    match end {
        Ok(End::ClientDone) => Ok(()),
        Ok(End::UpstreamClosed) if terminated.load(Ordering::Relaxed) => Ok(()),
        // PostgreSQL said why (its FATAL reached the client): nothing to add.
        Ok(End::UpstreamClosed) if state.fatal_relayed.load(Ordering::Acquire) => {
            let _ = cw.shutdown().await;
            Ok(())
        }
        Ok(End::UpstreamClosed) => {
            send_error(&mut cw, &ProxyError::UpstreamLost).await;
            Ok(())
        }
        Err(e) => {
            send_error(&mut cw, &e).await;
            Err(e)
        }
    }
}

async fn send_error<W: AsyncWrite + Unpin>(cw: &mut W, e: &ProxyError) {
    let mut buf = BytesMut::new();
    e.write_to(&mut buf);
    let _ = cw.write_all(&buf).await;
    let _ = cw.shutdown().await;
}

/// The messages PostgreSQL sends before its first ReadyForQuery: authentication requests,
/// errors, notices, ParameterStatus, BackendKeyData, NegotiateProtocolVersion, ReadyForQuery.
const LOGIN_REPLIES: &[u8] = b"RENSKvZ";

/// The longest message accepted during login (a SASL exchange is a few hundred bytes; a
/// non-PostgreSQL server's reply read as a length is usually far larger).
const MAX_LOGIN_REPLY: usize = 1 << 20;

/// Relays until the first ReadyForQuery, noting the settings PostgreSQL reports in `state`.
/// Returns false if the server ended the session (e.g. authentication failed; its
/// ErrorResponse has been relayed).
#[allow(clippy::too_many_arguments)]
async fn startup_phase<R, W, UR, UW>(
    cr: &mut R,
    cw: &mut W,
    ur: &mut UR,
    uw: &mut UW,
    shared: &Shared,
    addr: &str,
    guard: &mut KeyGuard<'_>,
    state: &WireState,
) -> Result<bool, ProxyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let mut sbuf = BytesMut::with_capacity(8192);
    let mut cbuf = BytesMut::with_capacity(1024);
    let mut out = BytesMut::with_capacity(8192);
    // PostgreSQL ends a failed login with an ErrorResponse: a close without one is told.
    let mut said_error = false;
    loop {
        tokio::select! {
            n = ur.read_buf(&mut sbuf) => {
                let n = n.map_err(|_| ProxyError::UpstreamLost)?;
                if n == 0 {
                    if !said_error {
                        return Err(ProxyError::UpstreamConnect(
                            "the server closed the connection during login without an error message".into(),
                        ));
                    }
                    // The server closed during startup: whatever it said was relayed.
                    let _ = cw.shutdown().await;
                    return Ok(false);
                }
                let mut ready = false;
                while sbuf.len() >= 5 {
                    let len = u32::from_be_bytes([sbuf[1], sbuf[2], sbuf[3], sbuf[4]]) as usize;
                    if !LOGIN_REPLIES.contains(&sbuf[0]) || !(4..=MAX_LOGIN_REPLY).contains(&len) {
                        return Err(ProxyError::UpstreamConnect(format!(
                            "the server's reply to the login is not PostgreSQL's protocol (it begins {:?}): is the upstream a PostgreSQL server?",
                            String::from_utf8_lossy(&sbuf[..sbuf.len().min(16)])
                        )));
                    }
                    if sbuf.len() < len + 1 {
                        break;
                    }
                    let msg = sbuf.split_to(len + 1);
                    match msg[0] {
                        b'K' if len == 12 => {
                            let pid = i32::from_be_bytes([msg[5], msg[6], msg[7], msg[8]]);
                            let secret = i32::from_be_bytes([msg[9], msg[10], msg[11], msg[12]]);
                            state.interrupt.set_backend_pid(pid);
                            let key = shared.cancel.register(UpstreamKey {
                                addr: Some(addr.to_string()),
                                pid,
                                secret,
                                interrupt: state.interrupt.clone(),
                            });
                            guard.key = Some(key);
                            messages::key_data(&mut out, key.0, key.1);
                        }
                        b'Z' => {
                            out.extend_from_slice(&msg);
                            ready = true;
                        }
                        b'S' => {
                            state.on_parameter_status(&msg);
                            out.extend_from_slice(&msg);
                        }
                        // Failed logins (28P01, 3D000, 53300, …) count as any relayed error.
                        b'E' => {
                            said_error = true;
                            crate::telemetry::count_upstream_error(msg.get(5..).unwrap_or_default());
                            out.extend_from_slice(&msg);
                        }
                        b'R' => match crate::protocol::startup::without_channel_binding(&msg) {
                            Some(offer) => out.extend_from_slice(&offer),
                            None => out.extend_from_slice(&msg),
                        },
                        _ => out.extend_from_slice(&msg),
                    }
                }
                cw.write_all(&out).await.map_err(|_| ProxyError::UpstreamLost)?;
                out.clear();
                if ready {
                    // Anything after the first ReadyForQuery is ordinary traffic.
                    if !sbuf.is_empty() {
                        cw.write_all(&sbuf).await.map_err(|_| ProxyError::UpstreamLost)?;
                    }
                    return Ok(true);
                }
            }
            n = cr.read_buf(&mut cbuf) => {
                let n = n.map_err(|_| ProxyError::Truncated)?;
                if n == 0 {
                    return Ok(false);
                }
                uw.write_all(&cbuf).await.map_err(|_| ProxyError::UpstreamLost)?;
                cbuf.clear();
            }
        }
    }
}

/// Session state both directions share (one task: plain atomics, no contention).
#[derive(Clone, Copy)]
struct Flags<'a> {
    /// The client sent Terminate.
    terminated: &'a AtomicBool,
    /// Replies owed, transaction status, which Parses were the proxy's own.
    state: &'a WireState,
    /// The write-behind hook is on: the upstream reader works message by message.
    intercepted: bool,
}

async fn client_to_upstream<R: AsyncRead + Unpin, UW: AsyncWrite + Unpin, W: AsyncWrite + Unpin>(
    cr: &mut R,
    uw: &mut UW,
    shared: &Shared,
    counters: &DbCounters,
    flags: Flags<'_>,
    client_out: &tokio::sync::Mutex<W>,
    mut intercept: Option<&mut Intercept>,
) -> Result<End, ProxyError> {
    let Flags {
        terminated, state, ..
    } = flags;
    let live = shared.live.get();
    let max = live.max_message_size;
    let idle = live.idle_timeout;
    let mut tracker = FrameTracker::new(true, max);
    let mut assembler = Assembler::default();
    let mut counter = ReplyCounter::default();
    // Types of the messages of one read, for the counter (pass-through only).
    let mut sent = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut idle_since = tokio::time::Instant::now();
    let busy = || state.owed.load(Ordering::Relaxed) > 0;
    loop {
        let n = match idle {
            None => cr.read(&mut buf).await,
            Some(t) => loop {
                // Reading is cancel-safe: a timed-out read loses no bytes. The session is idle
                // only between statements: no reply pending and no partial message.
                match tokio::time::timeout(t / 4, cr.read(&mut buf)).await {
                    Ok(r) => break r,
                    Err(_) if busy() || !tracker.at_boundary() => {
                        idle_since = tokio::time::Instant::now();
                    }
                    Err(_) if idle_since.elapsed() >= t => return Err(ProxyError::IdleTimeout),
                    Err(_) => {}
                }
            },
        };
        idle_since = tokio::time::Instant::now();
        let n = match n {
            Ok(0) | Err(_) if !tracker.at_boundary() => return Err(ProxyError::Truncated),
            Ok(0) | Err(_) => return Ok(End::ClientDone),
            Ok(n) => n,
        };
        let mut queries = 0u64;
        let mut term = false;
        let passthrough = intercept.is_none();
        tracker
            .feed(&buf[..n], |ty, _, _| {
                match ty {
                    b'Q' | b'E' => queries += 1,
                    b'X' => term = true,
                    _ => {}
                }
                if passthrough {
                    sent.push(ty);
                }
            })
            .map_err(|e| match e {
                FrameError::TooLarge { len } => ProxyError::MessageTooLarge { len, max },
                FrameError::Invalid { ty } => ProxyError::ProtocolViolation(ty),
            })?;
        if passthrough {
            state.on_sent(&mut counter, sent.drain(..));
        }
        counters.queries.fetch_add(queries, Ordering::Relaxed);
        counters.received.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(icpt) = intercept.as_deref_mut() {
            assembler.push(&buf[..n]);
            let mut wire = RelayWire {
                upstream: &mut *uw,
                client: client_out,
                shared: state,
                counter: &mut counter,
                client_gone: false,
            };
            while let Some(msg) = assembler.next_message() {
                if msg.first() == Some(&b'X') {
                    terminated.store(true, Ordering::Relaxed);
                    let _ = wire.upstream.write_all(&msg).await;
                    return Ok(End::ClientDone);
                }
                match icpt.on_message(msg, &mut wire).await {
                    Ok(()) => {}
                    Err(ProxyError::UpstreamLost) => return Ok(End::UpstreamClosed),
                    Err(e) => return Err(e),
                }
                if wire.client_gone {
                    return Ok(End::ClientDone);
                }
            }
            continue;
        }
        if term {
            terminated.store(true, Ordering::Relaxed);
        }
        if uw.write_all(&buf[..n]).await.is_err() {
            return Ok(End::UpstreamClosed);
        }
        if term {
            return Ok(End::ClientDone);
        }
    }
}

async fn upstream_to_client<UR: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    ur: &mut UR,
    client_out: &tokio::sync::Mutex<W>,
    counters: &DbCounters,
    flags: Flags<'_>,
) -> Result<End, ProxyError> {
    let state = flags.state;
    let mut tracker = FrameTracker::new(false, usize::MAX);
    let mut assembler = Assembler::default();
    let mut buf = BytesMut::with_capacity(BUF);
    let mut out = BytesMut::with_capacity(BUF);
    // A FATAL error PostgreSQL sent while the session was idle: held back until more
    // arrives, since it is what a server that goes away says last.
    let mut held = BytesMut::new();
    loop {
        buf.clear();
        let n = match ur.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let idle = state.idle() && state.status.load(Ordering::Acquire) == b'I';
                // A session that listens for notifications waits for the server, not for
                // its own next statement: it is told at once, as without the proxy.
                let listening = state.listening.load(Ordering::Acquire);
                if flags.intercepted && idle && !listening {
                    // The session outlives its server connection: writes go on being
                    // acknowledged (and ship when PostgreSQL is back); the first statement
                    // that needs PostgreSQL ends the session with 08006.
                    tracing::info!(said = %String::from_utf8_lossy(&held), "PostgreSQL closed an idle session's connection; the session goes on for acknowledged writes");
                    state.lost.store(true, Ordering::Release);
                    state.ready.notify_waiters();
                    std::future::pending::<()>().await;
                }
                if !held.is_empty() && client_out.lock().await.write_all(&held).await.is_ok() {
                    // Only a FATAL error is ever held.
                    state.fatal_relayed.store(true, Ordering::Release);
                }
                return Ok(End::UpstreamClosed);
            }
            Ok(n) => n,
        };
        counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        if flags.intercepted {
            // Message by message: ReadyForQuery settles what is owed, and ParseCompletes of
            // the proxy's own Parses are dropped.
            assembler.push(&buf);
            out.clear();
            out.extend_from_slice(&held);
            held.clear();
            let mut readies = Vec::new();
            while let Some(msg) = assembler.next_message() {
                let ty = msg.first().copied().unwrap_or(0);
                let own_parse = state.on_reply(ty, ty == b'E' && is_fatal(&msg));
                if state.private.load(Ordering::Acquire) {
                    // Replies to the proxy's own query. Notifications, parameter changes,
                    // notices and FATAL errors (the server ends the session) are the client's
                    // all the same.
                    match msg.first() {
                        Some(b'A' | b'S' | b'N') => {}
                        Some(b'E') if is_fatal(&msg) => {}
                        Some(b'Z') => {
                            state.private.store(false, Ordering::Release);
                            readies.push(msg.get(5).copied().unwrap_or(b'?'));
                            continue;
                        }
                        _ => {
                            state.on_private_reply(msg);
                            continue;
                        }
                    }
                }
                let idle = readies.is_empty() && state.idle();
                match msg.first() {
                    Some(b'E') if idle && assembler.is_empty() && is_fatal(&msg) => {
                        held.extend_from_slice(&msg);
                        continue;
                    }
                    Some(b'1') if own_parse => continue,
                    Some(b'Z') => readies.push(msg.get(5).copied().unwrap_or(b'?')),
                    Some(b'G') => state.on_copy_in(),
                    Some(b'S') => state.on_parameter_status(&msg),
                    Some(b'E') => {
                        crate::telemetry::count_upstream_error(msg.get(5..).unwrap_or_default());
                        if is_fatal(&msg) {
                            state.fatal_relayed.store(true, Ordering::Release);
                        }
                    }
                    _ => {}
                }
                out.extend_from_slice(&msg);
            }
            if !out.is_empty() && client_out.lock().await.write_all(&out).await.is_err() {
                return Ok(End::ClientDone);
            }
            // Settled only after the client has the replies, so local answers follow them.
            for st in readies {
                state.on_ready(st);
            }
            continue;
        }
        let mut readies = Vec::new();
        let mut fatal = false;
        let _ = tracker.feed(&buf, |ty, len, at| {
            let mut fatal_here = false;
            match ty {
                b'Z' => readies.push(buf.get(at).copied().unwrap_or(b'?')),
                // The body's beginning, as far as this read holds it (an error comes in one
                // write from PostgreSQL, so nearly always whole).
                b'E' => {
                    let end = (at + len.saturating_sub(4)).min(buf.len());
                    let body = buf.get(at..end).unwrap_or_default();
                    crate::telemetry::count_upstream_error(body);
                    fatal_here = is_fatal_body(body);
                    fatal |= fatal_here;
                }
                _ => {}
            }
            state.on_reply(ty, fatal_here);
        });
        if client_out.lock().await.write_all(&buf).await.is_err() {
            return Ok(End::ClientDone);
        }
        if fatal {
            state.fatal_relayed.store(true, Ordering::Release);
        }
        for st in readies {
            state.on_ready(st);
        }
    }
}

/// Whether an ErrorResponse (whole message) has severity FATAL or PANIC: the server ends the
/// session after it.
fn is_fatal(msg: &[u8]) -> bool {
    is_fatal_body(msg.get(5..).unwrap_or_default())
}

/// As [`is_fatal`], for the body after the 5-byte header (as far as it is at hand).
fn is_fatal_body(body: &[u8]) -> bool {
    // Fields: a type byte, a NUL-terminated value; a 0 ends them.
    let mut fields = body;
    while let Some((&ty, rest)) = fields.split_first() {
        if ty == 0 {
            break;
        }
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if ty == b'V' || ty == b'S' {
            return matches!(&rest[..end], b"FATAL" | b"PANIC");
        }
        fields = rest.get(end + 1..).unwrap_or_default();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::is_fatal;

    fn error(severity: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in [(b'S', severity), (b'V', severity), (b'C', "57P01")] {
            body.push(t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut m = vec![b'E'];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn fatal_errors_are_told_from_errors() {
        assert!(is_fatal(&error("FATAL")));
        assert!(is_fatal(&error("PANIC")));
        assert!(!is_fatal(&error("ERROR")));
        assert!(!is_fatal(b"E\0\0\0\x04"));
    }
}
