//! Passing messages through to PostgreSQL: after the read barrier, with the Parses of the
//! statements they use that only the proxy knew sent first, and the session's prepared
//! statements and name-resolution state kept in step with what PostgreSQL will know.

use super::barrier::AfterBarrier;
use super::{recognize_stmts, Intercept, Lexed, Stmt};
use crate::error::ProxyError;
use crate::protocol::frontend::{self, Frontend};
use crate::session::changers::{self, Deallocated, Effect};
use crate::session::wire::{ParseRef, Wire};
use crate::writebehind::lexer;
use bytes::{Bytes, BytesMut};

impl Intercept {
    /// Passes `msgs` through after the barrier; statements they use that PostgreSQL does not
    /// know are parsed there first.
    pub(super) async fn forward<W: Wire>(
        &mut self,
        msgs: Vec<Bytes>,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        self.forward_with(msgs, Lexed::No, wire).await
    }

    /// As [`forward`](Self::forward); `lexed` has the tokens of a Query already lexed.
    pub(super) async fn forward_with<W: Wire>(
        &mut self,
        msgs: Vec<Bytes>,
        lexed: Lexed<'_>,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        if msgs.is_empty() {
            return Ok(());
        }
        if msgs.first().and_then(|m| m.first()) == Some(&b'Q') {
            self.materialize_local(wire).await?;
        }
        let mut inject: Vec<Bytes> = Vec::new();
        let mut parsed_here: Vec<String> = Vec::new();
        // Statements whose Parse goes upstream with these messages (injected or the client's).
        let mut injected: Vec<String> = Vec::new();
        // The Parse messages going upstream, the proxy's own first, as the ledger follows them.
        let mut inject_refs: Vec<ParseRef> = Vec::new();
        let mut client_refs: Vec<ParseRef> = Vec::new();
        // Names are resolved by asking the session only while what it says is what the
        // messages before the one at hand leave behind: not in the middle of a group that went
        // upstream unsynced (the proxy's Query would end its implicit transaction).
        let mut may_ask = !self.mid_group;
        // What Parses of DEALLOCATE drop (forgotten once the loop is done).
        let mut gone: Vec<Deallocated> = Vec::new();
        for raw in &msgs {
            if self.resolver.take_asked() {
                // The proxy's own Query replaced the session's unnamed statement upstream.
                if let Some(stmt) = self.stmts.get_mut("") {
                    stmt.on_server = false;
                }
            }
            // A FunctionCall may call anything by oid, set_config included.
            if raw.first() == Some(&b'F') && self.enabled {
                tracing::debug!("a FunctionCall: writes of this session pass through from now on");
                self.enabled = false;
            }
            let m = frontend::decode(raw);
            let used = match &m {
                Ok(Frontend::Bind { statement, .. }) => Some(*statement),
                Ok(Frontend::Describe { kind: b'S', name }) => Some(*name),
                _ => None,
            };
            if let Ok(Frontend::Bind { statement, .. }) = &m {
                if self.enabled && self.stmts.get(*statement).is_some_and(|s| s.resolution) {
                    self.name_resolution_changes();
                    may_ask = false;
                }
            }
            // The proxy's own Query would replace the unnamed statement these messages use.
            if used == Some("") {
                may_ask = false;
            }
            // A Parse of a name the session has: PostgreSQL refuses it (42P05) if it knows the
            // statement, so it must know it.
            let reparsed = match &m {
                Ok(Frontend::Parse { name, .. }) if !name.is_empty() => Some(*name),
                _ => None,
            };
            if let Some(name) = used.or(reparsed) {
                if !parsed_here.iter().any(|n| n == name) {
                    if let Some(stmt) = self.stmts.get_mut(name) {
                        if !stmt.on_server {
                            inject.push(stmt.parse.clone());
                            inject_refs.push(ParseRef {
                                serial: stmt.serial,
                                injected: true,
                            });
                            stmt.on_server = true;
                            injected.push(name.to_string());
                        }
                    }
                }
            }
            match m {
                Ok(Frontend::Parse {
                    name,
                    sql,
                    param_types,
                }) => {
                    let lexed = lexer::lex(sql, true);
                    let stmts = lexed.as_deref().map(lexer::statements);
                    let effect = self.watch_session_changes(stmts.as_deref().ok(), sql);
                    if changers::listens(stmts.as_deref().ok(), sql) {
                        wire.note_listening();
                    }
                    if let Some(g) = changers::deallocated(stmts.as_deref().ok(), sql) {
                        Box::pin(self.materialize_local(wire)).await?;
                        gone.push(g);
                    }
                    // Remember it, so a later group outside a transaction can be local.
                    let known = !name.is_empty() && self.stmts.contains_key(name);
                    if known {
                        // PostgreSQL answers 42P05 and keeps the statement it has.
                        client_refs.push(ParseRef {
                            serial: 0,
                            injected: false,
                        });
                        continue;
                    }
                    parsed_here.push(name.to_string());
                    // Lexed once, for the session-change check and recognition.
                    let writes = stmts.as_ref().ok().and_then(|s| recognize_stmts(s));
                    let prepared = match writes {
                        Some(writes) if self.enabled => {
                            let asking = may_ask.then_some(&mut *wire);
                            Box::pin(self.prepare_writes(writes, sql, &param_types, asking)).await
                        }
                        _ => None,
                    };
                    // A statement that changes name resolution changes it when it runs,
                    // again at every execution.
                    let resolution = effect == Effect::Resolution;
                    may_ask &= !resolution;
                    let serial = self.serial();
                    client_refs.push(ParseRef {
                        serial,
                        injected: false,
                    });
                    self.stmts.insert(
                        name.to_string(),
                        Stmt {
                            parse: raw.clone(),
                            prepared,
                            on_server: true,
                            scope: None,
                            resolution,
                            serial,
                        },
                    );
                }
                Ok(Frontend::Close { kind: b'S', name }) => {
                    self.stmts.remove(name);
                }
                _ => {}
            }
        }
        for g in gone {
            self.forget_deallocated(&g);
        }
        if self
            .barrier_before(&msgs, lexed, wire, &parsed_here, &injected)
            .await?
            == AfterBarrier::Answered
        {
            return Ok(());
        }
        self.mid_group = !matches!(
            msgs.last().and_then(|m| m.first()),
            Some(b'S' | b'Q' | b'F')
        );
        if tracing::enabled!(tracing::Level::TRACE) {
            let types: String = msgs
                .iter()
                .filter_map(|m| m.first().map(|t| *t as char))
                .collect();
            tracing::trace!(%types, injected = inject.len(), "passing through");
        }
        let len = inject.iter().chain(&msgs).map(Bytes::len).sum();
        let mut out = BytesMut::with_capacity(len);
        for m in inject.iter().chain(&msgs) {
            out.extend_from_slice(m);
        }
        inject_refs.append(&mut client_refs);
        wire.forward(out, &inject_refs).await
    }
}
