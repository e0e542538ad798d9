//! A statement's changes offered to the write-behind queue: journaled at once when there is
//! room, else after a wait for room that ends, as a statement would, at the client's cancel
//! request or its statement_timeout.

use super::{session_timeouts, Intercept};
use crate::session::wire::Wire;
use crate::writebehind::encode::Change;
use crate::writebehind::runtime::{EnqueueError, Enqueued};

impl Intercept {
    /// Offers a statement's changes to the queue (the session is idle between transactions).
    /// A wait for room ends at the client's cancel request, or when the session's
    /// statement_timeout (asked of it only when the queue is full now) passes; meanwhile the
    /// session's backend is kept from timing out idle.
    pub(super) async fn enqueue<W: Wire>(
        &self,
        changes: Vec<Change>,
        wire: &mut W,
    ) -> Result<Enqueued, EnqueueError> {
        // Room in the queue and no fsync to wait for: nothing below is needed.
        let changes = match self.rt.enqueue_now(changes) {
            Ok(enqueued) => return enqueued,
            Err(changes) => changes,
        };
        let started = tokio::time::Instant::now();
        let limits = if self.rt.would_block() {
            Box::pin(session_timeouts::ask(wire, b'I')).await.limits()
        } else {
            session_timeouts::Limits::default()
        };
        let interrupt = wire.interrupt();
        // Boxed: see the module doc of `intercept`.
        Box::pin(interrupt.waiting(|cancelled| async move {
            let expired = session_timeouts::expiry(started, limits.statement);
            let stop = async move {
                tokio::select! {
                    _ = cancelled => EnqueueError::Cancelled,
                    _ = expired => EnqueueError::StatementTimeout,
                }
            };
            let enqueued = self.rt.enqueue_unless(changes, stop);
            session_timeouts::kept_alive(wire, limits.idle, enqueued).await
        }))
        .await
    }
}
