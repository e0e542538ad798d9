//! The two directions of a relayed session as the write-behind hook sees them: send upstream
//! (counting the ReadyForQuery replies owed), wait until every owed reply has arrived, answer
//! the client locally, and ask the session's own connection a question of the proxy's.

use crate::error::ProxyError;
use crate::writebehind::catalog::{Formats, FORMAT_SETTINGS};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

pub use super::ledger::{Ledger, ParseRef, ReplyCounter};

/// Session state the two directions share.
#[derive(Debug)]
pub struct Shared {
    /// ReadyForQuery messages PostgreSQL still owes (one per Sync, Query, FunctionCall sent).
    pub owed: AtomicUsize,
    /// Transaction status of the last ReadyForQuery (`I`, `T`, `E`).
    pub status: AtomicU8,
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
    /// The last TimeZone, DateStyle and IntervalStyle PostgreSQL reported.
    pub formats: std::sync::Mutex<Formats>,
    /// The last `writebehind.sync` PostgreSQL reported (the extension marks it GUC_REPORT, so
    /// role and database defaults, `set_config` and functions count): 0 none yet, 1 off, 2 on.
    pub reported_sync: AtomicU8,
    /// Notified when the client sends a CancelRequest for this session.
    pub interrupt: std::sync::Arc<super::cancel::Interrupt>,
    /// The last messages sent upstream did not end with a Sync, Query or FunctionCall (a
    /// Flush-driven exchange, a pipeline still being sent): the client may be waiting for
    /// replies although no ReadyForQuery is owed.
    pub unsynced: AtomicBool,
    /// The groups sent upstream until PostgreSQL answers them (`ledger.rs`).
    ledger: std::sync::Mutex<Ledger>,
    /// The session ran LISTEN: when its server connection ends, it ends too (it may be
    /// waiting for notifications, never for a reply).
    pub listening: AtomicBool,
    /// A FATAL error of PostgreSQL's reached the client: when the connection then ends, the
    /// proxy adds no error of its own.
    pub fatal_relayed: AtomicBool,
    /// PostgreSQL answered CopyInResponse and no CopyDone or CopyFail was sent since: it
    /// waits for COPY data, and owes no ReadyForQuery until the copy ends.
    pub copy_in: AtomicBool,
}

impl Shared {
    /// Whether the client is owed nothing: no ReadyForQuery, and no reply to messages sent
    /// without a Sync.
    pub fn idle(&self) -> bool {
        self.owed.load(Ordering::Acquire) == 0
            && !self.unsynced.load(Ordering::Acquire)
            && !self.ledger().skipping()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            owed: AtomicUsize::new(0),
            status: AtomicU8::new(b'I'),
            ready: Notify::new(),
            lost: AtomicBool::new(false),
            private: AtomicBool::new(false),
            private_replies: std::sync::Mutex::new(Vec::new()),
            unsafe_setting: AtomicBool::new(false),
            formats: std::sync::Mutex::new(Formats::default()),
            reported_sync: AtomicU8::new(0),
            interrupt: std::sync::Arc::default(),
            unsynced: AtomicBool::new(false),
            ledger: std::sync::Mutex::new(Ledger::default()),
            listening: AtomicBool::new(false),
            fatal_relayed: AtomicBool::new(false),
            copy_in: AtomicBool::new(false),
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
            if let Some(i) = FORMAT_SETTINGS.iter().position(|s| *s == name) {
                let mut formats = self.formats.lock().unwrap_or_else(|e| e.into_inner());
                formats.0[i] = Some(value.to_string());
            }
            if name == "writebehind.sync" {
                // PostgreSQL prints a boolean setting as `on` or `off`.
                let on = value == "on";
                self.reported_sync
                    .store(if on { 2 } else { 1 }, Ordering::Release);
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

    /// The ledger (a poisoned lock is taken over: the ledger stays consistent).
    pub fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes client messages of `types` going upstream, in order.
    pub fn on_sent(&self, counter: &mut ReplyCounter, types: impl IntoIterator<Item = u8>) {
        let mut ledger = self.ledger();
        for ty in types {
            counter.note(ty, &self.owed, &mut ledger);
        }
    }

    /// Notes a reply of PostgreSQL's of type `ty` (`fatal`: an ErrorResponse that ends the
    /// session), in reply order, before it is relayed; the owed ReadyForQuery itself is
    /// settled by [`on_ready`](Self::on_ready) once the client has it. Returns whether it is
    /// the ParseComplete of a Parse the proxy sent on its own.
    pub fn on_reply(&self, ty: u8, fatal: bool) -> bool {
        if !Ledger::follows(ty) {
            return false;
        }
        let reply = self.ledger().on_reply(ty, fatal);
        let skipped = reply.skipped;
        if skipped > 0 {
            let _ = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(skipped))
                });
            self.ready.notify_waiters();
        }
        reply.own_parse
    }

    /// Called by the upstream reader for a CopyInResponse: whoever waits for the session to
    /// drain learns it is copying.
    pub fn on_copy_in(&self) {
        self.copy_in.store(true, Ordering::Release);
        self.ready.notify_waiters();
    }

    /// Called by the upstream reader for each ReadyForQuery.
    pub fn on_ready(&self, status: u8) {
        self.copy_in.store(false, Ordering::Release);
        self.status.store(status, Ordering::Release);
        let _ = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.ready.notify_waiters();
    }
}

/// What the write-behind hook can do with the session.
pub trait Wire {
    /// Sends `bytes` (whole messages) to PostgreSQL. `parses` names the Parse messages among
    /// `bytes`, in order (those beyond it are not followed): the ParseCompletes of the proxy's
    /// own (`injected`) are kept from the client, and which of them PostgreSQL did not
    /// complete comes back through [`failed_parses`](Self::failed_parses).
    fn forward(
        &mut self,
        bytes: BytesMut,
        parses: &[ParseRef],
    ) -> impl std::future::Future<Output = Result<(), ProxyError>>;
    /// The Parses sent upstream that PostgreSQL did not complete, found since the last call
    /// (all of them are known once [`drained`](Self::drained) returns).
    fn failed_parses(&self) -> Vec<ParseRef>;
    /// The session runs LISTEN (see [`Shared::listening`]).
    fn note_listening(&self);
    /// Waits until PostgreSQL has sent every reply owed; returns the transaction status, or
    /// `C` at once while PostgreSQL waits for COPY data (nothing is owed before it ends), or
    /// `E` while it skips messages up to a Sync after an error in an extended-protocol group
    /// (that group's implicit transaction failed, and nothing but a Sync ends it).
    fn drained(&mut self) -> impl std::future::Future<Output = u8>;
    /// Whether PostgreSQL waits for COPY FROM STDIN data (see [`Shared::copy_in`]).
    fn copy_in(&self) -> bool;
    /// Whether the last COPY FROM STDIN began after a Sync PostgreSQL ignored (see
    /// [`ReplyCounter::copy_ignored_sync`]).
    fn copy_ignored_sync(&self) -> bool;
    /// Whether PostgreSQL has reported a setting the write-behind path cannot follow (read
    /// after [`drained`](Self::drained): the report comes before the ReadyForQuery).
    fn settings_unsafe(&self) -> bool;
    /// The last value of `writebehind.sync` PostgreSQL reported, if any (read after
    /// [`drained`](Self::drained)).
    fn reported_sync(&self) -> Option<bool>;
    /// The session's TimeZone, DateStyle and IntervalStyle as PostgreSQL last reported them.
    fn formats(&self) -> Formats;
    /// What a CancelRequest with this session's key does while the session waits in the
    /// proxy (for a barrier, or for room in the queue): see
    /// [`Interrupt::waiting`](super::cancel::Interrupt::waiting).
    fn interrupt(&self) -> std::sync::Arc<super::cancel::Interrupt>;
    /// Sends the proxy's own Parses or Closes (whole messages, then a Sync of the proxy's) once
    /// PostgreSQL owes the client nothing, and waits for their ReadyForQuery; the client sees
    /// none of the replies (but notices and FATAL errors). `refs` names the Parses for the
    /// ledger.
    fn materialize(
        &mut self,
        parses: BytesMut,
        refs: &[ParseRef],
    ) -> impl std::future::Future<Output = Result<(), ProxyError>>;
    /// Sends a locally made reply to the client.
    fn reply(
        &mut self,
        bytes: BytesMut,
    ) -> impl std::future::Future<Output = Result<(), ProxyError>>;
    /// Runs `sql` (one simple Query of the proxy's own) on the session's connection once it is
    /// idle in one of the transaction states `when` (`I`, `T`), and returns PostgreSQL's
    /// replies up to (not including) ReadyForQuery; the client sees none of them (but for
    /// notices and FATAL errors). It replaces the client's unnamed prepared statement and
    /// portal, as any Query does.
    fn ask(
        &mut self,
        sql: &str,
        when: &[u8],
    ) -> impl std::future::Future<Output = Result<Vec<Bytes>, NotAsked>>;
    /// Reads the session's `settings` once its connection is idle, outside or inside a
    /// transaction block: a `SHOW` of each through the extended protocol, under statement and
    /// portal names of the proxy's own that it closes in the same exchange. Unlike
    /// [`ask`](Self::ask) it leaves the unnamed statement and portal alone, and SHOW takes no
    /// snapshot (a REPEATABLE READ transaction's is still to come); inside a transaction block
    /// an error it gets aborts the client's transaction. Returns the replies up to
    /// ReadyForQuery (a DataRow per setting, in order).
    fn show(
        &mut self,
        settings: &[&str],
    ) -> impl std::future::Future<Output = Result<Vec<Bytes>, NotAsked>>;
    /// Sends a lone Sync of the proxy's own once the session's connection is idle (in any
    /// transaction state) and waits for its ReadyForQuery: PostgreSQL does nothing but answer,
    /// and re-arms its idle timeouts from then.
    fn sync(&mut self) -> impl std::future::Future<Output = Result<(), NotAsked>>;
}

/// The text answer among the replies to the proxy's own question: the first column of the
/// first DataRow (`None` for NULL or no row).
pub fn answer_text(replies: &[Bytes]) -> Option<&str> {
    replies
        .iter()
        .find(|m| m.first() == Some(&b'D'))
        .and_then(|m| first_column(m))
}

/// The first column of every DataRow among the replies, in order (`None` for NULL).
pub fn answer_texts(replies: &[Bytes]) -> Vec<Option<&str>> {
    replies
        .iter()
        .filter(|m| m.first() == Some(&b'D'))
        .map(|m| first_column(m))
        .collect()
}

/// The ErrorResponse among the replies to the proxy's own question, if any.
pub fn error_reply(replies: &[Bytes]) -> Option<&Bytes> {
    replies.iter().find(|m| m.first() == Some(&b'E'))
}

/// A DataRow's first column as text: 'D', length (4), column count (2), then the column's
/// length and bytes.
fn first_column(row: &[u8]) -> Option<&str> {
    let len = i32::from_be_bytes(row.get(7..11)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    std::str::from_utf8(row.get(11..11 + len)?).ok()
}

/// Why the proxy's own query could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAsked {
    /// The session is in a transaction state the question does not allow.
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

impl<UW, W> RelayWire<'_, UW, W> {
    /// Waits for the ReadyForQuery that ends the proxy's own exchange.
    async fn private_done(&self) -> Result<(), NotAsked> {
        loop {
            let ready = self.shared.ready.notified();
            if self.shared.lost.load(Ordering::Acquire) {
                return Err(NotAsked::Lost);
            }
            if !self.shared.private.load(Ordering::Acquire) {
                return Ok(());
            }
            ready.await;
        }
    }

    /// Notes the messages of `bytes` going upstream (replies owed, Parses to follow);
    /// returns the type of the last one.
    fn note_sent(&mut self, bytes: &[u8], parses: &[ParseRef]) -> u8 {
        let mut at = 0;
        let mut last = 0;
        let mut parses = parses.iter();
        let mut ledger = self.shared.ledger();
        while let Some(header) = bytes.get(at..at + 5) {
            if header[0] == b'P' {
                ledger.push_parse(parses.next().copied().unwrap_or(ParseRef {
                    serial: 0,
                    injected: false,
                }));
            }
            self.counter.note(header[0], &self.shared.owed, &mut ledger);
            if matches!(header[0], b'c' | b'f') {
                self.shared.copy_in.store(false, Ordering::Release);
            }
            last = header[0];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            at += 1 + len.max(4);
        }
        last
    }
}

impl<UW: AsyncWrite + Unpin, W: AsyncWrite + Unpin> Wire for RelayWire<'_, UW, W> {
    async fn forward(&mut self, bytes: BytesMut, parses: &[ParseRef]) -> Result<(), ProxyError> {
        if self.shared.lost.load(Ordering::Acquire) {
            return Err(ProxyError::UpstreamLost);
        }
        let last = self.note_sent(&bytes, parses);
        // COPY data leaves it as it was: the COPY's own Query or Sync settles it.
        if !matches!(last, b'd' | b'c' | b'f') {
            self.shared
                .unsynced
                .store(!matches!(last, b'S' | b'Q' | b'F'), Ordering::Release);
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
                if self.shared.ledger().skipping() {
                    return b'E';
                }
                return self.shared.status.load(Ordering::Acquire);
            }
            if self.copy_in() {
                return b'C';
            }
            ready.await;
        }
    }

    fn copy_in(&self) -> bool {
        self.shared.copy_in.load(Ordering::Acquire)
    }

    fn copy_ignored_sync(&self) -> bool {
        self.counter.copy_ignored_sync()
    }

    fn interrupt(&self) -> std::sync::Arc<super::cancel::Interrupt> {
        self.shared.interrupt.clone()
    }

    fn failed_parses(&self) -> Vec<ParseRef> {
        self.shared.ledger().take_failed()
    }

    fn note_listening(&self) {
        self.shared.listening.store(true, Ordering::Release);
    }

    fn settings_unsafe(&self) -> bool {
        self.shared.unsafe_setting.load(Ordering::Acquire)
    }

    fn formats(&self) -> Formats {
        self.shared
            .formats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn reported_sync(&self) -> Option<bool> {
        match self.shared.reported_sync.load(Ordering::Acquire) {
            0 => None,
            v => Some(v == 2),
        }
    }

    async fn reply(&mut self, bytes: BytesMut) -> Result<(), ProxyError> {
        if self.client.lock().await.write_all(&bytes).await.is_err() {
            self.client_gone = true;
        }
        Ok(())
    }

    async fn materialize(
        &mut self,
        mut parses: BytesMut,
        refs: &[ParseRef],
    ) -> Result<(), ProxyError> {
        self.drained().await;
        if self.shared.lost.load(Ordering::Acquire) {
            return Err(ProxyError::UpstreamLost);
        }
        crate::protocol::frontend::sync(&mut parses);
        self.shared.private.store(true, Ordering::Release);
        self.note_sent(&parses, refs);
        if self.upstream.write_all(&parses).await.is_err() {
            return Err(ProxyError::UpstreamLost);
        }
        self.private_done()
            .await
            .map_err(|_| ProxyError::UpstreamLost)?;
        // Replies to Parses are ParseCompletes or errors: nothing to keep.
        self.shared
            .private_replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }

    async fn ask(&mut self, sql: &str, when: &[u8]) -> Result<Vec<Bytes>, NotAsked> {
        let mut msg = BytesMut::with_capacity(sql.len() + 6);
        crate::protocol::frontend::query(&mut msg, sql);
        self.private(msg, when).await
    }

    async fn show(&mut self, settings: &[&str]) -> Result<Vec<Bytes>, NotAsked> {
        let mut msgs = BytesMut::with_capacity(128 * settings.len());
        // Random, so that one left behind cannot collide with the next.
        let prefix = format!("writebehind.show.{:016x}", rand::random::<u64>());
        let names: Vec<String> = (0..settings.len())
            .map(|i| format!("{prefix}.{i}"))
            .collect();
        for (name, setting) in names.iter().zip(settings) {
            crate::protocol::frontend::show(&mut msgs, name, setting);
        }
        crate::protocol::frontend::sync(&mut msgs);
        let replies = self.private(msgs, b"IT").await?;
        if error_reply(&replies).is_some() {
            // PostgreSQL skipped the Closes after the error: close what it may have parsed
            // (Close is answered in a failed transaction too, and a missing name is no error).
            let mut closes = BytesMut::with_capacity(64 * names.len());
            for name in &names {
                crate::protocol::frontend::close(&mut closes, b'P', name);
                crate::protocol::frontend::close(&mut closes, b'S', name);
            }
            crate::protocol::frontend::sync(&mut closes);
            self.private(closes, b"ITE").await?;
        }
        Ok(replies)
    }

    async fn sync(&mut self) -> Result<(), NotAsked> {
        let mut sync = BytesMut::with_capacity(5);
        crate::protocol::frontend::sync(&mut sync);
        self.private(sync, b"ITE").await.map(|_| ())
    }
}

impl<UW: AsyncWrite + Unpin, W: AsyncWrite + Unpin> RelayWire<'_, UW, W> {
    /// Sends `msgs` (one Query, or extended-protocol messages up to a Sync, of the proxy's own)
    /// once the session is idle in one of the transaction states `when`, and collects their
    /// replies up to ReadyForQuery. Not to be dropped once begun: a message half written
    /// would leave the session's connection unusable (callers run it to the end, never as a
    /// losing branch of a `select!`).
    async fn private(&mut self, msgs: BytesMut, when: &[u8]) -> Result<Vec<Bytes>, NotAsked> {
        let status = self.drained().await;
        if self.shared.lost.load(Ordering::Acquire) {
            return Err(NotAsked::Lost);
        }
        if !when.contains(&status) {
            return Err(NotAsked::Busy);
        }
        self.shared
            .private_replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.shared.private.store(true, Ordering::Release);
        self.note_sent(&msgs, &[]);
        if self.upstream.write_all(&msgs).await.is_err() {
            return Err(NotAsked::Lost);
        }
        self.private_done().await?;
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
