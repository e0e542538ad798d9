//! Cancel keys: the proxy gives each client its own BackendKeyData (the backend's pid, a
//! secret of the proxy's) and maps a CancelRequest to the upstream backend serving that client.

use crate::protocol::startup::cancel_packet;
use dashmap::DashMap;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// What a cancel request does to a session waiting in the proxy (for a read barrier, or for
/// room in the write-behind queue): it ends the wait, and then PostgreSQL is not told (its backend is idle meanwhile: a cancel sent to it could land on
/// the session's next statement instead).
#[derive(Debug, Default)]
pub struct Interrupt {
    notify: Notify,
    /// Whether a wait is on. Read and written under the lock together with the wake-up, so a
    /// cancel either ends a wait that has begun or goes to PostgreSQL, never both: with the
    /// flag apart from the wake-up, a wait that ended at once on another thread cleared it
    /// before the cancel read it, and the cancel went on to PostgreSQL and hit the session's
    /// next statement.
    waiting: std::sync::Mutex<bool>,
    /// The session's backend's pid (0 until PostgreSQL sent its BackendKeyData).
    backend_pid: std::sync::atomic::AtomicI32,
}

impl Interrupt {
    /// Keeps the pid of the session's backend.
    pub fn set_backend_pid(&self, pid: i32) {
        self.backend_pid
            .store(pid, std::sync::atomic::Ordering::Release);
    }

    /// The pid of the session's backend, once PostgreSQL sent it.
    pub fn backend_pid(&self) -> Option<i32> {
        match self.backend_pid.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Runs the wait `f` makes, given the future that completes at the next cancel request
    /// (registered before the wait starts); meanwhile a cancel request is the proxy's alone.
    pub async fn waiting<'a, F: std::future::Future>(
        &'a self,
        f: impl FnOnce(tokio::sync::futures::Notified<'a>) -> F,
    ) -> F::Output {
        let cancelled = {
            let mut waiting = self.lock();
            *waiting = true;
            self.notify.notified()
        };
        let out = f(cancelled).await;
        *self.lock() = false;
        out
    }

    /// Ends the wait in the proxy, if one is on; whether one was (if not, the cancel is
    /// PostgreSQL's).
    fn cancel(&self) -> bool {
        let waiting = self.lock();
        if *waiting {
            self.notify.notify_waiters();
        }
        *waiting
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a client's cancel request must go.
#[derive(Debug, Clone)]
pub struct UpstreamKey {
    /// The server to tell; `None` for an admin console session (nothing upstream).
    pub addr: Option<String>,
    pub pid: i32,
    pub secret: i32,
    /// The session's read barrier, woken instead of the backend while it waits.
    pub interrupt: Arc<Interrupt>,
}

/// The map from the keys the proxy handed out to upstream keys.
#[derive(Debug, Default)]
pub struct CancelMap {
    keys: DashMap<(i32, i32), UpstreamKey>,
}

impl CancelMap {
    /// Registers an upstream key and returns the proxy's key for the client: the backend's own
    /// pid (what `pg_backend_pid()` and a notification's sender say, which drivers compare)
    /// with a secret of the proxy's.
    pub fn register(&self, upstream: UpstreamKey) -> (i32, i32) {
        loop {
            let key = (upstream.pid, rand::random::<i32>());
            if let dashmap::Entry::Vacant(v) = self.keys.entry(key) {
                v.insert(upstream);
                return key;
            }
        }
    }

    /// Forgets a key when its session ends.
    pub fn remove(&self, key: (i32, i32)) {
        self.keys.remove(&key);
    }

    /// Forwards a cancel request to the right backend; unknown keys are ignored, as
    /// PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let Some(target) = self.keys.get(&(pid, secret)).map(|k| k.clone()) else {
            tracing::debug!(pid, "cancel request with an unknown key ignored");
            return;
        };
        if target.interrupt.cancel() {
            tracing::debug!(pid, "cancel request ended a barrier wait");
            return;
        }
        let Some(addr) = target.addr else {
            return; // an admin console session not waiting: nothing to cancel
        };
        match super::upstream::dial(&addr).await {
            Ok(mut s) => {
                if let Err(error) = s.write_all(&cancel_packet(target.pid, target.secret)).await {
                    tracing::warn!(%error, "forwarding a cancel request failed");
                }
            }
            Err(error) => {
                tracing::warn!(%error, %addr, "cannot reach upstream to cancel")
            }
        }
    }
}

/// Removes the session's key from the map when the session ends.
pub struct KeyGuard<'a> {
    pub map: &'a CancelMap,
    pub key: Option<(i32, i32)>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key {
            self.map.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cancel that ends a wait says so, however quickly the woken wait finishes on another
    /// thread (it used to read the flag after the wake-up, which the wait had already cleared,
    /// and the cancel went on to PostgreSQL as well).
    #[test]
    fn a_cancel_that_ends_a_wait_is_never_also_passed_on() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        for _ in 0..2000 {
            let interrupt = Arc::new(Interrupt::default());
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let waiter = interrupt.clone();
            let wait = runtime.spawn(async move {
                waiter
                    .waiting(|cancelled| async move {
                        let _ = started_tx.send(());
                        cancelled.await;
                    })
                    .await;
            });
            started_rx.recv().expect("the wait began");
            assert!(
                interrupt.cancel(),
                "a cancel that ended a wait was passed on"
            );
            runtime.block_on(wait).expect("the wait ended");
            assert!(!interrupt.cancel(), "no wait is on any more");
        }
    }
}
