//! The two directions of a relayed session as the write-behind hook sees them: send upstream
//! (counting the ReadyForQuery replies owed), wait until every owed reply has arrived, answer
//! the client locally, and ask the session's own connection a question of the proxy's.

use crate::error::ProxyError;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// Session state the two directions share.
#[derive(Debug)]
pub struct Shared {
    /// ReadyForQuery messages PostgreSQL still owes (one per Sync, Query, FunctionCall sent).
    pub owed: AtomicUsize,
    /// Transaction status of the last ReadyForQuery (`I`, `T`, `E`).
    pub status: AtomicU8,
    /// ParseComplete replies to drop: answers to Parses the proxy sent on its own.
    pub swallow: AtomicUsize,
    /// Signalled at every ReadyForQuery.
    pub ready: Notify,
    /// PostgreSQL closed the connection while the session was idle: the session goes on
    /// acknowledging writes; anything that must pass through ends it (08006).
    pub lost: AtomicBool,
    /// A query of the proxy's own is running on the connection: its replies, up to its
    /// ReadyForQuery, go to `private_replies` instead of the client.
    pub private: AtomicBool,
    /// The replies of the proxy's own query (ReadyForQuery excluded).
    pub private_replies: std::sync::Mutex<Vec<Bytes>>,
    /// PostgreSQL reported a setting the write-behind path cannot follow
    /// (`changers::reported_setting_unsafe`); it stays set.
    pub unsafe_setting: AtomicBool,
    /// Notified when the client sends a CancelRequest for this session.
    pub interrupt: std::sync::Arc<Notify>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            owed: AtomicUsize::new(0),
            status: AtomicU8::new(b'I'),
            swallow: AtomicUsize::new(0),
            ready: Notify::new(),
            lost: AtomicBool::new(false),
            private: AtomicBool::new(false),
            private_replies: std::sync::Mutex::new(Vec::new()),
            unsafe_setting: AtomicBool::new(false),
            interrupt: std::sync::Arc::new(Notify::new()),
        }
    }
}

impl Shared {
    /// Called by the upstream reader for each ParameterStatus (whole message).
    pub fn on_parameter_status(&self, msg: &[u8]) {
        if let Some((name, value)) = super::changers::parameter_status(msg) {
            if super::changers::reported_setting_unsafe(name, value) {
                self.unsafe_setting.store(true, Ordering::Release);
            }
        }
    }

    /// Called by the upstream reader for a reply to the proxy's own query (not
    /// ReadyForQuery).
    pub fn on_private_reply(&self, msg: Bytes) {
        self.private_replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
    }

    /// Called by the upstream reader for each ReadyForQuery.
    pub fn on_ready(&self, status: u8) {
        self.status.store(status, Ordering::Release);
        let _ = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        // A failed Parse of the proxy's own never gets its ParseComplete.
        self.swallow.store(0, Ordering::Release);
        self.ready.notify_waiters();
    }
}

/// Counts the ReadyForQuery replies owed for client messages as they are sent: one per Sync,
/// Query and FunctionCall, except Syncs PostgreSQL ignores during COPY FROM STDIN in the
/// extended protocol (drivers send Bind/Execute/Sync before the copy data).
#[derive(Debug, Default)]
pub struct ReplyCounter {
    syncs_since_execute: usize,
    in_copy: bool,
}

impl ReplyCounter {
    /// Notes one client message of type `ty` going upstream.
    pub fn note(&mut self, ty: u8, owed: &AtomicUsize) {
        match ty {
            b'S' if self.in_copy => {}
            b'S' => {
                self.syncs_since_execute += 1;
                owed.fetch_add(1, Ordering::AcqRel);
            }
            b'Q' | b'F' => {
                self.syncs_since_execute = 0;
                owed.fetch_add(1, Ordering::AcqRel);
            }
            b'E' => self.syncs_since_execute = 0,
            b'd' | b'c' | b'f' => {
                if !self.in_copy {
                    // The Syncs sent since the Execute that started the COPY were ignored.
                    let ignored = std::mem::take(&mut self.syncs_since_execute);
                    let _ = owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        Some(n.saturating_sub(ignored))
                    });
                    self.in_copy = true;
                }
                if ty != b'd' {
                    self.in_copy = false;
                }
            }
            _ => {}
        }
    }
}

/// What the write-behind hook can do with the session.
pub trait Wire {
    /// Sends `bytes` (whole messages) to PostgreSQL; the first `swallow` ParseComplete replies
    /// are answers to the proxy's own Parses.
    fn forward(
        &mut self,
        bytes: BytesMut,
        swallow: usize,
    ) -> impl std::future::Future<Output = Result<(), ProxyError>>;
    /// Waits until PostgreSQL has sent every reply owed; returns the transaction status.
    fn drained(&mut self) -> impl std::future::Future<Output = u8>;
    /// Whether PostgreSQL has reported a setting the write-behind path cannot follow (read
    /// after [`drained`](Self::drained): the report comes before the ReadyForQuery).
    fn settings_unsafe(&self) -> bool;
    /// Completes when the client asks to cancel (a CancelRequest with this session's key).
    fn interrupted(&self) -> tokio::sync::futures::Notified<'_>;
    /// Sends a locally made reply to the client.
    fn reply(
        &mut self,
        bytes: BytesMut,
    ) -> impl std::future::Future<Output = Result<(), ProxyError>>;
    /// Runs `sql` (one simple Query of the proxy's own) on the session's connection once it is
    /// idle outside a transaction block, and returns PostgreSQL's replies up to (not
    /// including) ReadyForQuery; the client sees none of them (but for notices and FATAL
    /// errors). It replaces the client's unnamed prepared statement, as any Query does.
    fn ask(&mut self, sql: &str)
        -> impl std::future::Future<Output = Result<Vec<Bytes>, NotAsked>>;
}

/// Why the proxy's own query could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAsked {
    /// The session is inside a transaction block.
    Busy,
    /// The connection to PostgreSQL is gone.
    Lost,
}

/// The relay's implementation: the upstream writer and the shared client writer.
pub struct RelayWire<'a, UW, W> {
    pub upstream: &'a mut UW,
    pub client: &'a tokio::sync::Mutex<W>,
    pub shared: &'a Shared,
    pub counter: &'a mut ReplyCounter,
    /// Set when the client went away while the proxy answered it.
    pub client_gone: bool,
}

impl<UW: AsyncWrite + Unpin, W: AsyncWrite + Unpin> Wire for RelayWire<'_, UW, W> {
    async fn forward(&mut self, bytes: BytesMut, swallow: usize) -> Result<(), ProxyError> {
        if self.shared.lost.load(Ordering::Acquire) {
            return Err(ProxyError::UpstreamLost);
        }
        self.shared.swallow.fetch_add(swallow, Ordering::AcqRel);
        let mut at = 0;
        while let Some(header) = bytes.get(at..at + 5) {
            self.counter.note(header[0], &self.shared.owed);
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            at += 1 + len.max(4);
        }
        self.upstream
            .write_all(&bytes)
            .await
            .map_err(|_| ProxyError::UpstreamLost)
    }

    async fn drained(&mut self) -> u8 {
        loop {
            let ready = self.shared.ready.notified();
            if self.shared.owed.load(Ordering::Acquire) == 0
                || self.shared.lost.load(Ordering::Acquire)
            {
                return self.shared.status.load(Ordering::Acquire);
            }
            ready.await;
        }
    }

    fn interrupted(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.interrupt.notified()
    }

    fn settings_unsafe(&self) -> bool {
        self.shared.unsafe_setting.load(Ordering::Acquire)
    }

    async fn reply(&mut self, bytes: BytesMut) -> Result<(), ProxyError> {
        if self.client.lock().await.write_all(&bytes).await.is_err() {
            self.client_gone = true;
        }
        Ok(())
    }

    async fn ask(&mut self, sql: &str) -> Result<Vec<Bytes>, NotAsked> {
        let status = self.drained().await;
        if self.shared.lost.load(Ordering::Acquire) {
            return Err(NotAsked::Lost);
        }
        if status != b'I' {
            return Err(NotAsked::Busy);
        }
        let mut msg = BytesMut::with_capacity(sql.len() + 6);
        msg.put_u8(b'Q');
        msg.put_u32((sql.len() + 5) as u32);
        msg.put_slice(sql.as_bytes());
        msg.put_u8(0);
        self.shared
            .private_replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.shared.private.store(true, Ordering::Release);
        self.counter.note(b'Q', &self.shared.owed);
        if self.upstream.write_all(&msg).await.is_err() {
            return Err(NotAsked::Lost);
        }
        loop {
            let ready = self.shared.ready.notified();
            if self.shared.lost.load(Ordering::Acquire) {
                return Err(NotAsked::Lost);
            }
            if !self.shared.private.load(Ordering::Acquire) {
                break;
            }
            ready.await;
        }
        let replies = std::mem::take(
            &mut *self
                .shared
                .private_replies
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        Ok(replies)
    }
}
