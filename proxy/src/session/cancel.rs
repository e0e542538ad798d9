//! Cancel keys: the proxy gives each client its own BackendKeyData (the backend's pid, a
//! secret of the proxy's) and maps a CancelRequest to the upstream backend serving that client.

use crate::protocol::startup::cancel_packet;
use dashmap::DashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What a cancel request does to a session waiting in the proxy (for a read barrier, or for
/// room in the write-behind queue): it ends the wait, and then PostgreSQL is not told (its backend is idle meanwhile: a cancel sent to it could land on
/// the session's next statement instead).
#[derive(Debug, Default)]
pub struct Interrupt {
    notify: Notify,
    barrier_waiting: AtomicBool,
}

impl Interrupt {
    /// Runs the wait `f` makes, given the future that completes at the next cancel request
    /// (registered before the wait starts); meanwhile a cancel request is the proxy's alone.
    pub async fn waiting<'a, F: std::future::Future>(
        &'a self,
        f: impl FnOnce(tokio::sync::futures::Notified<'a>) -> F,
    ) -> F::Output {
        let cancelled = self.notify.notified();
        self.barrier_waiting.store(true, Ordering::Release);
        let out = f(cancelled).await;
        self.barrier_waiting.store(false, Ordering::Release);
        out
    }

    /// Wakes a wait in the proxy, if any (no permit is stored for a later one); whether one
    /// was waiting.
    fn cancel(&self) -> bool {
        self.notify.notify_waiters();
        self.barrier_waiting.load(Ordering::Acquire)
    }
}

/// Where a client's cancel request must go.
#[derive(Debug, Clone)]
pub struct UpstreamKey {
    pub addr: String,
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
        match TcpStream::connect(&target.addr).await {
            Ok(mut s) => {
                if let Err(error) = s.write_all(&cancel_packet(target.pid, target.secret)).await {
                    tracing::warn!(%error, "forwarding a cancel request failed");
                }
            }
            Err(error) => {
                tracing::warn!(%error, addr = %target.addr, "cannot reach upstream to cancel")
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
