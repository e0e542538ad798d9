//! The write-behind hook of a session: a simple-protocol Query that is exactly one recognized
//! write on a write-behind table is answered from memory; anything else passes through after
//! the read barrier (the database's acknowledged writes are shipped and applied first).

use crate::error::ProxyError;
use crate::protocol::messages;
use crate::writebehind::recognize::{OnConflict, Write};
use crate::writebehind::runtime::{DbRuntime, Enqueued};
use crate::writebehind::{lexer, recognize, validate};
use bytes::BytesMut;
use std::sync::Arc;
use std::time::Duration;

/// Session settings after which the proxy no longer acknowledges writes from memory for the
/// session (they change name resolution, identity, literal syntax, or ask for sync writes).
const SESSION_CHANGERS: &[&str] = &[
    "search_path",
    "role",
    "authorization",
    "writebehind",
    "temp",
    "discard",
    "reset",
    "standard_conforming_strings",
    "backslash_quote",
];

/// One session's interception state.
pub struct Intercept {
    rt: Arc<DbRuntime>,
    user: String,
    barrier_timeout: Duration,
    /// Off for good once the session changed something that makes acknowledging uncertain.
    enabled: bool,
}

impl Intercept {
    /// Interception for `user`'s session on the database of `rt`.
    pub fn new(rt: Arc<DbRuntime>, user: String, barrier_timeout: Duration) -> Self {
        Self {
            rt,
            user,
            barrier_timeout,
            enabled: true,
        }
    }

    /// Called with every client chunk before it is forwarded. `idle`: no reply is pending and
    /// the session is outside a transaction block. Returns the local reply when the chunk was
    /// answered from memory (it must then not be forwarded).
    pub async fn on_chunk(
        &mut self,
        chunk: &[u8],
        idle: bool,
    ) -> Result<Option<BytesMut>, ProxyError> {
        if self.enabled {
            let lower = String::from_utf8_lossy(chunk).to_ascii_lowercase();
            if SESSION_CHANGERS.iter().any(|w| lower.contains(w))
                && recognized_query(chunk).is_none()
            {
                self.enabled = false;
            }
        }
        if self.enabled && idle {
            match self.try_ack(chunk).await {
                Ok(Some(tag)) => {
                    let mut out = BytesMut::with_capacity(32);
                    messages::complete(&mut out, &tag);
                    messages::ready(&mut out);
                    return Ok(Some(out));
                }
                Ok(None) => {}
                Err(e) => {
                    // Refused before anything was queued: the client gets the error and the
                    // session goes on, as after any failed statement.
                    let mut out = BytesMut::with_capacity(128);
                    e.write_to(&mut out);
                    messages::ready(&mut out);
                    return Ok(Some(out));
                }
            }
        }
        if !self.rt.catalog.borrow().is_empty() {
            self.rt
                .barrier_all(self.barrier_timeout)
                .await
                .map_err(|e| ProxyError::Barrier(e.to_string()))?;
        }
        Ok(None)
    }

    /// Acknowledges the write in `chunk` if it is one: `Ok(Some(tag))` when queued, `Ok(None)`
    /// when it must pass through, `Err` when it is refused (nothing queued).
    async fn try_ack(&self, chunk: &[u8]) -> Result<Option<String>, ProxyError> {
        let Some(write) = recognized_query(chunk) else {
            return Ok(None);
        };
        let (schema, name) = match &write {
            Write::Insert { table, .. }
            | Write::Update { table, .. }
            | Write::Delete { table, .. } => (table.schema.clone(), table.name.clone()),
        };
        if schema.is_none()
            && (name.starts_with("pg_") || self.rt.user_schema_exists(&self.user).await)
        {
            return Ok(None);
        }
        let catalog = self.rt.catalog.borrow().clone();
        let Some(table) = catalog.resolve(schema.as_deref(), &name) else {
            return Ok(None);
        };
        let Some(changes) = validate::changes(&write, table) else {
            return Ok(None);
        };
        let needed: &[&'static str] = match &write {
            Write::Insert {
                on_conflict: Some(OnConflict::Update { .. }),
                ..
            } => &["INSERT", "UPDATE"],
            Write::Insert { .. } => &["INSERT"],
            Write::Update { .. } => &["UPDATE"],
            Write::Delete { .. } => &["DELETE"],
        };
        for p in needed {
            if !self.rt.allowed(&self.user, table.relid, p).await {
                return Ok(None); // PostgreSQL raises 42501 itself
            }
        }
        let tag = match &write {
            Write::Insert { rows, .. } => format!("INSERT 0 {}", rows.len()),
            Write::Update { .. } => "UPDATE 1".to_string(),
            Write::Delete { .. } => "DELETE 1".to_string(),
        };
        match self.rt.enqueue(changes).await? {
            Enqueued::Acked => Ok(Some(tag)),
            Enqueued::PassThrough => Ok(None),
        }
    }
}

/// The write in `chunk` if it is exactly one complete Query message holding one recognized
/// statement (standard_conforming_strings on: sessions that change it are not intercepted).
fn recognized_query(chunk: &[u8]) -> Option<Write> {
    if chunk.len() < 6 || chunk[0] != b'Q' {
        return None;
    }
    let len = u32::from_be_bytes([chunk[1], chunk[2], chunk[3], chunk[4]]) as usize;
    if len + 1 != chunk.len() || chunk[chunk.len() - 1] != 0 {
        return None;
    }
    let sql = std::str::from_utf8(&chunk[5..chunk.len() - 1]).ok()?;
    let tokens = lexer::lex(sql, true).ok()?;
    let stmts = lexer::statements(&tokens);
    if stmts.len() != 1 {
        return None;
    }
    recognize::recognize(stmts[0])
}
