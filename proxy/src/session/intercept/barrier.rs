//! The read barrier before messages pass through: ships the pending changes of the tables in
//! their scope and waits until they are applied; a wait that times out or is cancelled fails
//! only the statement (or, inside a transaction block, the transaction, as PostgreSQL would).

use super::{Intercept, Lexed};
use crate::error::ProxyError;
use crate::protocol::{frontend, messages};
use crate::session::wire::Wire;
use crate::writebehind::scope::Scope;
use bytes::{Bytes, BytesMut};

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
        if self.rt.catalog.borrow().is_empty() {
            return Ok(AfterBarrier::Pass);
        }
        let scope = self.scope(msgs, lexed, wire).await;
        tracing::trace!(?scope, "barrier scope");
        // With whole groups in hand, the statement can fail as if PostgreSQL had refused
        // its first message: nothing of it ran. Then a barrier that times out or is
        // cancelled fails only the statement: between transactions the proxy answers the
        // error itself; inside a transaction block PostgreSQL raises it, so that the
        // transaction fails as PostgreSQL fails it. Mid-group (or in a failed
        // transaction) a timeout ends the session, and a cancel is not heeded.
        let whole = matches!(msgs.last().and_then(|m| m.first()), Some(b'S' | b'Q'));
        let status = if !scope.is_empty() && whole && !self.mid_group {
            wire.drained().await
        } else {
            0
        };
        let failable = matches!(status, b'I' | b'T');
        // Only asked when it matters: some table skips the wait for reads.
        let writes =
            !scope.is_empty() && self.rt.some_without_read_barrier() && self.group_may_write(msgs);
        let barrier = async {
            match &scope {
                Scope::All => self.rt.barrier_all(writes, self.barrier_timeout).await,
                Scope::Tables(t) if t.is_empty() => Ok(()),
                Scope::Tables(t) => self.rt.barrier(t, writes, self.barrier_timeout).await,
            }
        };
        let failed = if failable {
            wire.interrupt()
                .waiting(|cancelled| async {
                    tokio::select! {
                        r = barrier => r.err().map(|e| ProxyError::StatementBarrier(e.to_string())),
                        _ = cancelled => Some(ProxyError::BarrierCancelled),
                    }
                })
                .await
        } else {
            match barrier.await {
                Ok(()) => None,
                Err(e) => return Err(ProxyError::Barrier(e.to_string())),
            }
        };
        if let Some(error) = failed {
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
