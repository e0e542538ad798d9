//! The write-behind hook of a session, message by message, for both protocols.
//!
//! Simple protocol: a Query whose statements are all recognized writes on write-behind tables
//! is acknowledged from memory (one journal record for the whole string, as PostgreSQL runs it
//! in one implicit transaction). Extended protocol: messages are collected up to Sync (a
//! "group", again one implicit transaction); a group made only of Parse/Bind/Describe/
//! Execute/Close of recognized writes is answered locally, its Executes journaled as one
//! record. Anything else passes through after the read barrier, in order: local answers are
//! only given once every reply PostgreSQL owes the client has arrived.
//!
//! The barrier before a message passes through covers only the write-behind tables its
//! statements may read (`barrier_scope.rs`): a Query's, a Parse's, or the statement a Bind
//! binds (its scope kept with the statement), or the portal an Execute runs.
//!
//! Statements prepared locally are unknown to PostgreSQL. When a later message that passes
//! through refers to one, its Parse is sent first ("materialized") and the ParseComplete that
//! PostgreSQL answers it with is kept from the client (the ledger, `session/ledger.rs`, knows
//! which Parse each ParseComplete answers).
//!
//! A write is acknowledged only for the table its name denotes in this very session
//! (`resolve.rs`: asked of the session's connection, followed through SET search_path and the
//! session's own DDL).
//!
//! This file holds the session state and simple Queries; `pass_through.rs` passing through;
//! `extended.rs` the
//! extended protocol's groups; `barrier_scope.rs` the barrier's scope (and the catalog reload
//! after the session's own DDL); `statements.rs` the prepared statements as PostgreSQL knows
//! them; `sync_setting.rs` the `writebehind.sync` switch; `resolve.rs` name resolution;
//! `session_timeouts.rs` the session's statement_timeout, which bounds a barrier's wait and
//! a wait for room in the queue, and its idle timeout, kept off meanwhile; `enqueue.rs` a
//! statement's changes offered to the queue; `privileges.rs` the privileges a write needs and
//! whether the session's user holds them.
//!
//! A session's future is moved at every client message, so futures awaited only on rare
//! paths (a Query's handling, the barrier and its wait, the wait for room in the queue, a
//! catalog reload, re-preparing) are boxed: inline they made it 9 kB (docs/BENCHMARKS.md).

mod barrier;
mod barrier_scope;
mod enqueue;
mod extended;
mod pass_through;
mod privileges;
mod resolve;
mod session_timeouts;
mod statements;
mod sync_setting;

use super::changers::{self, Effect};
use super::wire::Wire;
use crate::error::ProxyError;
use crate::protocol::frontend::{self, Frontend};
use crate::protocol::messages;
use crate::writebehind::catalog::Catalog;
use crate::writebehind::encode::Change;
use crate::writebehind::privileges::SessionPrivileges;
use crate::writebehind::recognize::Write;
use crate::writebehind::runtime::{DbRuntime, Enqueued};
use crate::writebehind::scope::Scope;
use crate::writebehind::template::Template;
use crate::writebehind::{lexer, literal, recognize, validate};
use bytes::{Bytes, BytesMut};
use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;
use std::time::Duration;
use sync_setting::{sync_setting, SyncSetting};

/// A group larger than this passes through as it arrives instead of being held until Sync.
const MAX_GROUP_BYTES: usize = 1 << 20;

/// A statement the session prepared.
struct Stmt {
    /// The client's Parse message, sent upstream when the statement must be materialized.
    parse: Bytes,
    /// The write it is, when the proxy may acknowledge it.
    prepared: Option<Arc<Prepared>>,
    /// Whether PostgreSQL knows the statement.
    on_server: bool,
    /// What it may read, against which catalog (computed when first needed).
    scope: Option<(Arc<Catalog>, Scope)>,
    /// Running it may change name resolution (SET search_path, temporary tables).
    resolution: bool,
    /// Tells this statement from an earlier one of the same name (`wire::ParseRef`).
    serial: u64,
}

/// A recognized write prepared against one catalog.
struct Prepared {
    template: Template,
    relid: u32,
    catalog: Arc<Catalog>,
    /// The Parse message's declared parameter types.
    declared: Vec<u32>,
    sql: String,
    /// The session's resolution epoch its table name was resolved in.
    epoch: u64,
    /// The privileges generation its user's privileges were checked in.
    privileges: u64,
}

/// One session's interception state.
pub struct Intercept {
    rt: Arc<DbRuntime>,
    user: String,
    barrier_timeout: Duration,
    /// Off for good once the session changed something that makes acknowledging uncertain.
    enabled: bool,
    /// `SET writebehind.sync = on` in effect: writes pass through (synchronous).
    sync: bool,
    stmts: HashMap<String, Stmt>,
    /// The messages of the current group, held until Sync.
    group: Vec<Bytes>,
    group_bytes: usize,
    /// The current group is passing through as it arrives (after a Flush, or too large).
    streaming: bool,
    /// Changes of the current group already answered locally at a Flush; journaled at its
    /// Sync, all of the group's changes in one record.
    open: Option<Vec<Change>>,
    /// Journaling failed mid-group after replies went out: messages are dropped up to Sync,
    /// as PostgreSQL does after an error.
    skip_to_sync: bool,
    /// Portals bound by messages that passed through: what their statement may read.
    portals: HashMap<String, Scope>,
    /// A statement that may have changed the schema passed through: the catalog's names may
    /// be out of date until reloaded after it committed.
    schema_stale: bool,
    /// Among them, one that may have changed privileges: they are forgotten at that reload.
    privileges_stale: bool,
    /// A REPEATABLE READ or SERIALIZABLE transaction began (or was set) and its snapshot is
    /// not taken yet: the next statement takes it, and waits for every table first.
    snapshot_pending: bool,
    /// The last messages that passed through did not end with a Sync or Query: what they did
    /// is not committed yet.
    mid_group: bool,
    /// What the session's table names denote.
    resolver: resolve::Resolver,
    /// The last statement serial given out.
    serials: u64,
    /// COPY FROM STDIN data is flowing (CopyData sent, no CopyDone or CopyFail yet).
    copying: bool,
    /// The answers on privileges this session used (see `writebehind/privileges.rs`).
    privileges: std::sync::Mutex<SessionPrivileges>,
}

/// A Query's tokens, when it was lexed already.
enum Lexed<'a> {
    /// Not a Query: the messages are analysed.
    No,
    Ok(&'a [&'a [lexer::Token<'a>]]),
    /// The lexer could not be certain.
    Failed,
}

impl Intercept {
    /// Interception for `user`'s session on the database of `rt`.
    pub fn new(rt: Arc<DbRuntime>, user: String, barrier_timeout: Duration) -> Self {
        Self {
            rt,
            user,
            barrier_timeout,
            enabled: true,
            sync: false,
            stmts: HashMap::new(),
            group: Vec::new(),
            group_bytes: 0,
            streaming: false,
            open: None,
            skip_to_sync: false,
            portals: HashMap::new(),
            schema_stale: false,
            snapshot_pending: false,
            mid_group: false,
            resolver: resolve::Resolver::default(),
            serials: 0,
            copying: false,
            privileges_stale: false,
            privileges: Default::default(),
        }
    }

    /// Handles one whole client message (not Terminate).
    pub async fn on_message<W: Wire>(
        &mut self,
        msg: Bytes,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        let ty = msg.first().copied().unwrap_or(0);
        self.reconcile(wire);
        if self.skip_to_sync {
            if ty == b'S' {
                self.skip_to_sync = false;
                let mut out = BytesMut::with_capacity(8);
                messages::ready(&mut out);
                return wire.reply(out).await;
            }
            return Ok(());
        }
        match ty {
            // COPY FROM STDIN data, done, fail: PostgreSQL is in the middle of a COPY it
            // started, which owes its ReadyForQuery until the copy ends. They read nothing and
            // must never wait for that (nor for a barrier): straight upstream.
            b'd' | b'c' | b'f' if self.group.is_empty() => {
                self.copying = ty == b'd';
                wire.forward(BytesMut::from(&msg[..]), &[]).await?;
                // An extended-protocol COPY's Sync came before the data and was ignored: its
                // implicit transaction (and its outcome) stays open until the next Sync, so
                // what follows passes through as the rest of a group does.
                if ty != b'd' && wire.copy_ignored_sync() {
                    self.streaming = true;
                    self.mid_group = true;
                }
                Ok(())
            }
            // PostgreSQL ignores Flush and Sync in the middle of COPY FROM STDIN.
            b'H' | b'S' if (self.copying || wire.copy_in()) && self.group.is_empty() => {
                wire.forward(BytesMut::from(&msg[..]), &[]).await
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                if self.streaming {
                    return self.forward(vec![msg], wire).await;
                }
                self.group_bytes += msg.len();
                self.group.push(msg);
                if self.group_bytes > MAX_GROUP_BYTES {
                    let group = self.take_group();
                    return self.pass_rest(group, wire).await;
                }
                Ok(())
            }
            b'S' => {
                let streaming = std::mem::take(&mut self.streaming);
                self.group.push(msg);
                let group = self.take_group();
                if !streaming
                    && self.acking()
                    && (group.len() > 1 || self.open.is_some())
                    && self.catalog_current(wire).await
                {
                    if let Some(plan) = self.plan(&group, wire).await {
                        return self.answer(plan, group, wire).await;
                    }
                }
                if self.open.is_some() && !self.journal_open(wire).await? {
                    // The error went out instead; the Sync ends the group.
                    self.skip_to_sync = false;
                    let mut out = BytesMut::with_capacity(8);
                    messages::ready(&mut out);
                    return wire.reply(out).await;
                }
                self.forward(group, wire).await
            }
            b'H' => {
                // The client wants the replies so far: answer what is local now (its changes
                // wait for the Sync); otherwise the group goes to PostgreSQL.
                let mut group = self.take_group();
                if !self.streaming
                    && self.acking()
                    && (group.is_empty() || self.catalog_current(wire).await)
                {
                    let plan = self.plan(&group, wire).await;
                    if let Some(plan) = plan.filter(|p| p.all_local() && !p.leaves_portal()) {
                        if self.open.is_some()
                            || (wire.drained().await == b'I'
                                && !self.settings_changed(wire)
                                && self.still_known(&plan, wire)
                                && plan.formats_hold(wire))
                        {
                            return self.answer_partial(plan, wire).await;
                        }
                    }
                }
                group.push(msg);
                self.pass_rest(group, wire).await
            }
            b'Q' => {
                let group = self.take_group();
                if !group.is_empty() || self.open.is_some() {
                    // An unfinished group before a Query: PostgreSQL's business.
                    self.pass_rest(group, wire).await?;
                }
                // The Query ends the group in PostgreSQL (it commits the implicit transaction)
                // whether or not its messages already streamed upstream (asyncpg sends
                // Parse/Describe/Flush, then the Query of a COPY): the next group is a new one.
                self.streaming = false;
                Box::pin(self.on_query(msg, wire)).await // boxed: see the module doc
            }
            _ => {
                let mut group = self.take_group();
                group.push(msg);
                self.pass_rest(group, wire).await
            }
        }
    }

    /// Whether writes are acknowledged from memory in this session now.
    fn acking(&self) -> bool {
        self.enabled && !self.sync
    }

    /// Whether PostgreSQL reported a setting the path cannot follow (ask after
    /// `wire.drained()`); if so, acknowledging ends for good.
    /// Also follows the `writebehind.sync` PostgreSQL reports, however it was set (role or
    /// database default, `set_config`, a function); then answers whether writes pass through.
    fn settings_changed<W: Wire>(&mut self, wire: &W) -> bool {
        if wire.settings_unsafe() && self.enabled {
            tracing::debug!("PostgreSQL reported a setting the write-behind path cannot follow: writes of this session pass through from now on");
            self.enabled = false;
        }
        if let Some(on) = wire.reported_sync() {
            self.sync = on;
        }
        !self.acking()
    }

    fn take_group(&mut self) -> Vec<Bytes> {
        self.group_bytes = 0;
        std::mem::take(&mut self.group)
    }

    /// Follows what `sql` (lexed into `stmts`, or `None` when it could not be) does to
    /// session state interception relies on (see `changers`): table names are resolved again
    /// after it, or interception ends for good. Returns its effect.
    fn watch_session_changes(
        &mut self,
        stmts: Option<&[&[lexer::Token<'_>]]>,
        sql: &str,
    ) -> Effect {
        if !self.enabled {
            return Effect::None;
        }
        let effect = changers::effect(stmts, sql);
        match effect {
            Effect::None => {}
            Effect::Resolution => self.name_resolution_changes(),
            Effect::Disable => {
                tracing::debug!("a statement changed session state: writes of this session pass through from now on");
                self.enabled = false;
            }
        }
        effect
    }

    /// A statement that may change what the session's table names denote is being run.
    fn name_resolution_changes(&mut self) {
        tracing::debug!("name resolution may change: table names are resolved again");
        self.resolver.forget();
    }

    async fn on_query<W: Wire>(&mut self, msg: Bytes, wire: &mut W) -> Result<(), ProxyError> {
        // A Query drops the unnamed statement and portal, whether PostgreSQL or the proxy
        // answers it.
        self.stmts.remove("");
        self.portals.remove("");
        // The tokens borrow the text; `msg` itself goes on to PostgreSQL when not answered.
        let text = msg.clone();
        let sql = match frontend::decode(&text) {
            Ok(Frontend::Query(sql)) => sql,
            _ => return self.forward(vec![msg], wire).await,
        };
        // Lexed once: for the setting, the session-change check, recognition and the scope.
        let lexed = lexer::lex(sql, true);
        let lex_ok = lexed.is_ok();
        let tokens = lexed.unwrap_or_default();
        let stmts = lexer::statements(&tokens);
        let known = if lex_ok {
            Lexed::Ok(&stmts)
        } else {
            Lexed::Failed
        };
        if changers::listens(lex_ok.then_some(stmts.as_slice()), sql) {
            wire.note_listening();
        }
        if let Some(gone) = changers::deallocated(lex_ok.then_some(stmts.as_slice()), sql) {
            // PostgreSQL must have the statements it is asked to drop; whether or not it
            // drops them, the proxy forgets them (a later Bind passes through).
            self.materialize_local(wire).await?;
            self.forget_deallocated(&gone);
        }
        match sync_setting(&stmts) {
            Some(SyncSetting::Session(on)) => {
                // SET is transactional: only a SET outside a transaction block is known to
                // stick. Inside one, stop acknowledging for good (conservative).
                if wire.drained().await == b'I' {
                    self.sync = on;
                } else {
                    self.enabled = false;
                }
                return self.forward_with(vec![msg], known, wire).await;
            }
            // SET LOCAL only lasts until the end of a transaction block, where every
            // statement passes through anyway.
            Some(SyncSetting::Local) => return self.forward_with(vec![msg], known, wire).await,
            None => {}
        }
        let writes = recognize_stmts(&stmts);
        self.watch_session_changes(lex_ok.then_some(stmts.as_slice()), sql);
        if self.acking() && writes.is_some() && self.catalog_current(wire).await {
            if let Some(writes) = writes {
                let mut changes = Vec::new();
                let mut tags = Vec::with_capacity(writes.len());
                let mut all = true;
                // A write leaves a default that depends on the session's formats: compared
                // once PostgreSQL reported what came before (below).
                let mut formats_matter: Option<Arc<Catalog>> = None;
                for w in &writes {
                    match self.acceptable(w, Some(&mut *wire)).await {
                        Some((table, catalog)) => {
                            let t = catalog.tables.get(table);
                            if t.is_some_and(|t| leaves_format_default(w, t)) {
                                formats_matter = Some(catalog.clone());
                            }
                            match t.and_then(|t| validate::changes(w, t)) {
                                Some(c) => {
                                    changes.extend(c);
                                    tags.push(tag(w));
                                }
                                None => all = false,
                            }
                        }
                        None => all = false,
                    }
                    if !all {
                        break;
                    }
                }
                // Not after extended-protocol messages that went upstream without a Sync:
                // their replies come first, and the Query ends their implicit transaction.
                if all
                    && !self.mid_group
                    && wire.drained().await == b'I'
                    && !self.settings_changed(wire)
                    && formats_matter.is_none_or(|c| formats_hold(&c, &*wire))
                {
                    let enqueued = self.enqueue(changes, wire).await;
                    match enqueued {
                        Ok(Enqueued::Acked) => {
                            let mut out = BytesMut::with_capacity(32 * tags.len());
                            for t in &tags {
                                messages::complete(&mut out, t);
                            }
                            messages::ready(&mut out);
                            return wire.reply(out).await;
                        }
                        Ok(Enqueued::PassThrough(_)) => {}
                        Err(e) => {
                            // Refused before anything was queued: the client gets the error
                            // and the session goes on, as after any failed statement.
                            let mut out = BytesMut::with_capacity(128);
                            ProxyError::from(e).write_to(&mut out);
                            messages::ready(&mut out);
                            return wire.reply(out).await;
                        }
                    }
                }
            }
        }
        self.forward_with(vec![msg], known, wire).await
    }

    /// Whether `write` may be acknowledged in this session: its table name denotes a
    /// write-behind table here (asked through `wire` when not known yet, see `resolve.rs`)
    /// and the user holds the privileges. Returns the table's index in the catalog.
    async fn acceptable<W: Wire>(
        &self,
        write: &Write,
        wire: Option<&mut W>,
    ) -> Option<(usize, Arc<Catalog>)> {
        let name = write_table(write);
        let catalog = self.rt.catalog.borrow().clone();
        // A name no write-behind table has cannot denote one: not worth asking.
        if !catalog.tables.iter().any(|t| t.name == name.name) {
            return None;
        }
        // Never in the middle of an extended-protocol group that went upstream unsynced: a
        // Query there would end the group's implicit transaction.
        let mut wire = wire.filter(|_| !self.mid_group);
        let relid = self
            .resolver
            .resolve(name, catalog.ticket, wire.as_deref_mut())
            .await?;
        let index = catalog.tables.iter().position(|t| t.relid == relid)?;
        // `'x'::text` is pg_catalog's text only where the search path puts pg_catalog first.
        if write.any_cast(literal::found_by_search_path)
            && !self.resolver.builtin_types_first(wire).await
        {
            return None;
        }
        let generation = self.rt.privileges.generation();
        for &p in privileges::needed(write, catalog.tables.get(index)?) {
            if !self.allowed(generation, relid, p).await {
                return None; // PostgreSQL raises 42501 itself (or cannot be asked now)
            }
        }
        Some((index, catalog))
    }
}

/// The statements of `sql` if every one of them is a recognized write (standard_conforming_
/// strings on: sessions that change it are not intercepted).
fn recognize_all(sql: &str) -> Option<Vec<Write>> {
    let tokens = lexer::lex(sql, true).ok()?;
    recognize_stmts(&lexer::statements(&tokens))
}

/// As [`recognize_all`], for statements already lexed.
fn recognize_stmts(stmts: &[&[lexer::Token<'_>]]) -> Option<Vec<Write>> {
    if stmts.is_empty() {
        return None;
    }
    stmts.iter().map(|t| recognize::recognize(t)).collect()
}

fn write_table(w: &Write) -> &recognize::TableName {
    match w {
        Write::Insert { table, .. } | Write::Update { table, .. } | Write::Delete { table, .. } => {
            table
        }
    }
}

/// Whether `w` leaves a column to a default that depends on TimeZone, DateStyle or
/// IntervalStyle (see `Column::format_default`). The worker computes it with the catalog's
/// [`formats`](Catalog::formats): a session whose reported settings differ has PostgreSQL
/// compute it, so they are compared once every earlier reply (and ParameterStatus) is in.
fn leaves_format_default(w: &Write, table: &crate::writebehind::catalog::Table) -> bool {
    validate::leaves_default(w, table, |c| c.format_default)
}

/// Whether the session's formats, as PostgreSQL last reported them, are `catalog`'s.
fn formats_hold<W: Wire>(catalog: &Catalog, wire: &W) -> bool {
    wire.formats() == catalog.formats
}

/// The command tag PostgreSQL sends for `w` when every row is written.
fn tag(w: &Write) -> std::borrow::Cow<'static, str> {
    match w {
        Write::Insert { rows, .. } if rows.len() == 1 => "INSERT 0 1".into(),
        Write::Insert { rows, .. } => format!("INSERT 0 {}", rows.len()).into(),
        Write::Update { .. } => "UPDATE 1".into(),
        Write::Delete { .. } => "DELETE 1".into(),
    }
}
