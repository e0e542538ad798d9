//! The read barrier before messages pass through: ships the pending changes of the tables in
//! their scope and waits until they are applied; a wait that times out or is cancelled fails
//! only the statement (or, inside a transaction block, the transaction, as PostgreSQL would).

use super::session_timeouts::{self, Asked};
use super::{Intercept, Lexed};
use crate::error::ProxyError;
use crate::protocol::frontend;
use crate::protocol::messages;
use crate::session::wire::Wire;
use crate::writebehind::runtime::DbRuntime;
use crate::writebehind::scope::Scope;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::time::Instant;

/// What is left to do after the barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterBarrier {
    /// The messages go upstream.
    Pass,
    /// The barrier failed and the client has its answer: nothing goes upstream.
    Answered,
}

impl Intercept {
    /// Waits at the barrier before `msgs` pass through. `parsed_here` are the statements
    /// their Parses create and `injected` those the proxy would parse upstream with them:
    /// when the wait fails, PostgreSQL sees none of it.
    pub(super) async fn barrier_before<W: Wire>(
        &mut self,
        msgs: &[Bytes],
        lexed: Lexed<'_>,
        wire: &mut W,
        parsed_here: &[String],
        injected: &[String],
    ) -> Result<AfterBarrier, ProxyError> {
        // Tables no longer registered may still have acknowledged writes pending: then
        // everything waits for them (`writebehind::retired`).
        let retired = self.rt.has_retired();
        if self.rt.catalog.borrow().is_empty() && !retired {
            return Ok(AfterBarrier::Pass);
        }
        let scope = self.scope(msgs, lexed, wire).await;
        tracing::trace!(?scope, "barrier scope");
        if scope.is_empty() && !retired {
            return Ok(AfterBarrier::Pass);
        }
        // With whole groups in hand, the statement can fail as if PostgreSQL had refused
        // its first message: nothing of it ran. Then a barrier that times out or is
        // cancelled fails only the statement: between transactions the proxy answers the
        // error itself; inside a transaction block PostgreSQL raises it, so that the
        // transaction fails as PostgreSQL fails it. Mid-group (or in a failed
        // transaction) a timeout ends the session, and a cancel is not heeded.
        let whole = matches!(msgs.last().and_then(|m| m.first()), Some(b'S' | b'Q'));
        let status = if whole && !self.mid_group {
            wire.drained().await
        } else {
            0
        };
        let failable = matches!(status, b'I' | b'T');
        // Only asked when it matters: some table skips the wait for reads.
        let writes = self.rt.some_without_read_barrier() && self.group_may_write(msgs);
        let started = tokio::time::Instant::now();
        let failed = {
            let barrier = async {
                match &scope {
                    Scope::All => self.rt.barrier_all(writes, self.barrier_timeout).await,
                    Scope::Tables(t) => self.rt.barrier(t, writes, self.barrier_timeout).await,
                }
            };
            // Boxed, as the wait below: see the module doc of `intercept`.
            let mut barrier = Box::pin(barrier);
            if failable {
                // Nothing to wait for passes at once; only a real wait asks the session for
                // its statement_timeout.
                let first = std::future::poll_fn(|cx| Poll::Ready(barrier.as_mut().poll(cx))).await;
                match first {
                    Poll::Ready(r) => r.err().map(|e| Failed::Error(statement_barrier(e))),
                    Poll::Pending => {
                        let blocked = blocked_by_own_transaction(&self.rt, wire, status);
                        Box::pin(wait_bounded(
                            barrier.as_mut(),
                            blocked,
                            wire,
                            status,
                            started,
                        ))
                        .await
                    }
                }
            } else {
                match barrier.await {
                    Ok(()) => None,
                    Err(e) => return Err(ProxyError::Barrier(e.to_string())),
                }
            }
        };
        if let Some(failed) = failed {
            // PostgreSQL saw none of it: the group's own statements do not exist, and
            // those the proxy would have materialized are still its alone.
            for name in parsed_here {
                self.stmts.remove(name);
            }
            for name in injected {
                if let Some(stmt) = self.stmts.get_mut(name) {
                    stmt.on_server = false;
                }
            }
            let error = match failed {
                Failed::Error(error) => error,
                Failed::Reply(reply) => {
                    // The proxy's question failed (its own statement timeout): that error is
                    // the statement's, and inside a transaction block it aborted it.
                    let status = wire.drained().await;
                    let mut out = BytesMut::with_capacity(reply.len() + 6);
                    out.extend_from_slice(&reply);
                    messages::ready_in(&mut out, status);
                    return wire.reply(out).await.map(|()| AfterBarrier::Answered);
                }
            };
            if status == b'T' {
                // The proxy's Query drops the unnamed statement and portal upstream.
                self.stmts.remove("");
                self.portals.remove("");
                let sql = error.raise_sql();
                let mut out = BytesMut::with_capacity(sql.len() + 6);
                frontend::query(&mut out, &sql);
                return wire
                    .forward(out, &[])
                    .await
                    .map(|()| AfterBarrier::Answered);
            }
            let mut out = BytesMut::with_capacity(128);
            error.write_to(&mut out);
            messages::ready(&mut out);
            return wire.reply(out).await.map(|()| AfterBarrier::Answered);
        }
        Ok(AfterBarrier::Pass)
    }
}

/// How a failable barrier failed.
enum Failed {
    /// The proxy's error.
    Error(ProxyError),
    /// PostgreSQL's ErrorResponse to the proxy's question.
    Reply(Bytes),
}

fn statement_barrier(e: impl std::fmt::Display) -> ProxyError {
    ProxyError::StatementBarrier(e.to_string())
}

/// Completes when the apply worker waits for a lock the session's own transaction holds
/// (looked at every 250 ms; never outside a transaction block, where the session holds no
/// lock). The barrier cannot end before the transaction does: in PostgreSQL the other
/// sessions' writes it waits for would be the ones waiting, unseen by this transaction.
fn blocked_by_own_transaction<W: Wire>(
    rt: &Arc<DbRuntime>,
    wire: &W,
    status: u8,
) -> impl Future<Output = ()> + use<W> {
    let rt = rt.clone();
    let pid = wire.interrupt().backend_pid().filter(|_| status == b'T');
    async move {
        let Some(pid) = pid else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if rt.worker_blocked_by(pid).await {
                tracing::debug!(
                    pid,
                    "the worker waits for this session's transaction: passing without the barrier"
                );
                return;
            }
        }
    }
}

/// Waits for `barrier` until it is done, the client cancels, the session's
/// `statement_timeout` (counted from `started`) passes, or `blocked` completes (then the
/// statement passes without it); a cancel meanwhile is the proxy's alone, and the session's
/// backend is kept from timing out idle. Returns the failure.
async fn wait_bounded<W: Wire, E: std::fmt::Display>(
    mut barrier: Pin<&mut impl Future<Output = Result<(), E>>>,
    blocked: impl Future<Output = ()>,
    wire: &mut W,
    status: u8,
    started: Instant,
) -> Option<Failed> {
    let interrupt = wire.interrupt();
    interrupt
        .waiting(|cancelled| async move {
            let mut cancelled = std::pin::pin!(cancelled);
            // The question and the barrier go on together: the barrier may be done first.
            let mut done = None;
            let asked = {
                let ask = session_timeouts::ask(wire, status);
                let mut ask = std::pin::pin!(ask);
                loop {
                    tokio::select! {
                        biased;
                        asked = &mut ask => break asked,
                        r = &mut barrier, if done.is_none() => done = Some(r),
                    }
                }
            };
            let limits = match asked {
                Asked::Failed(error) => return Some(Failed::Reply(error)),
                Asked::Limits(limits) => limits,
            };
            if let Some(r) = done {
                return r.err().map(|e| Failed::Error(statement_barrier(e)));
            }
            let expired = session_timeouts::expiry(started, limits.statement);
            let failed = session_timeouts::kept_alive(wire, limits.idle, async {
                tokio::select! {
                    biased;
                    r = &mut barrier => r.err().map(statement_barrier),
                    _ = &mut cancelled => Some(ProxyError::BarrierCancelled),
                    _ = expired => Some(ProxyError::StatementTimeout),
                    () = blocked => None,
                }
            })
            .await;
            failed.map(Failed::Error)
        })
        .await
}
