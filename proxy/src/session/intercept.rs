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
//! statements may read ([`scope`]): a Query's, a Parse's, or the statement a Bind binds (its
//! scope kept with the statement), or the portal an Execute runs.
//!
//! Statements prepared locally are unknown to PostgreSQL. When a later message that passes
//! through refers to one, its Parse is sent first ("materialized") and the ParseComplete that
//! PostgreSQL answers it with is swallowed by the upstream reader.

use super::changers;
use super::wire::Wire;
use crate::error::ProxyError;
use crate::protocol::frontend::{self, Frontend};
use crate::protocol::messages;
use crate::writebehind::catalog::Catalog;
use crate::writebehind::encode::Change;
use crate::writebehind::recognize::{OnConflict, Write};
use crate::writebehind::runtime::{DbRuntime, Enqueued};
use crate::writebehind::scope::{self, Scope};
use crate::writebehind::template::Template;
use crate::writebehind::{lexer, recognize, validate};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

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
}

/// A recognized write prepared against one catalog.
struct Prepared {
    template: Template,
    relid: u32,
    catalog: Arc<Catalog>,
    /// The Parse message's declared parameter types.
    declared: Vec<u32>,
    sql: String,
}

/// What answering a group locally takes: the replies, the changes to journal, and the
/// statements it creates or closes.
struct Plan {
    /// Reply pieces in order; `true` marks an Execute's reply.
    replies: Vec<(BytesMut, bool)>,
    changes: Vec<Change>,
    /// Statements parsed by the group: (index of the reply piece, name, statement).
    parsed: Vec<(usize, String, Stmt)>,
    closed: Vec<String>,
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
    /// The last messages that passed through did not end with a Sync or Query: what they did
    /// is not committed yet.
    mid_group: bool,
}

/// A Query's tokens, when it was lexed already.
enum Lexed<'a> {
    /// Not a Query: the messages are analysed.
    No,
    Ok(&'a [&'a [lexer::Token]]),
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
            mid_group: false,
        }
    }

    /// Handles one whole client message (not Terminate).
    pub async fn on_message<W: Wire>(
        &mut self,
        msg: Bytes,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        let ty = msg.first().copied().unwrap_or(0);
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
                if !streaming && self.acking() && (group.len() > 1 || self.open.is_some()) {
                    if let Some(plan) = self.plan(&group).await {
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
                if !self.streaming && self.acking() {
                    if let Some(plan) = self.plan(&group).await {
                        if self.open.is_some() || wire.drained().await == b'I' {
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
                    self.streaming = false;
                }
                self.on_query(msg, wire).await
            }
            _ => {
                let mut group = self.take_group();
                group.push(msg);
                self.pass_rest(group, wire).await
            }
        }
    }

    /// The rest of the current group goes to PostgreSQL as it arrives: what was answered
    /// locally is journaled first (it precedes what follows), then `msgs` pass through.
    async fn pass_rest<W: Wire>(
        &mut self,
        msgs: Vec<Bytes>,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        self.streaming = true;
        if self.open.is_some() && !self.journal_open(wire).await? {
            return Ok(());
        }
        self.forward(msgs, wire).await
    }

    /// Journals the changes answered at a Flush. On failure the client gets the error and the
    /// rest of the group is dropped up to Sync; returns whether it succeeded.
    async fn journal_open<W: Wire>(&mut self, wire: &mut W) -> Result<bool, ProxyError> {
        let changes = self.open.take().unwrap_or_default();
        if changes.is_empty() {
            return Ok(true);
        }
        let refused = match self.rt.enqueue(changes.clone()).await {
            Ok(Enqueued::Acked) => return Ok(true),
            // At the bound with overflow = sync: journaling is the only way left for changes
            // already answered; wait for room as `block` would.
            Ok(Enqueued::PassThrough) => match self.rt.enqueue_waiting(changes).await {
                Ok(()) => return Ok(true),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let mut out = BytesMut::with_capacity(128);
        ProxyError::from(refused).write_to(&mut out);
        wire.reply(out).await?;
        self.skip_to_sync = true;
        self.streaming = false;
        Ok(false)
    }

    /// Answers the part of a group before a Flush: its replies now, its changes at Sync.
    async fn answer_partial<W: Wire>(
        &mut self,
        plan: Plan,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        let mut out = BytesMut::with_capacity(64);
        for (piece, _) in &plan.replies {
            out.extend_from_slice(piece);
        }
        for (_, name, stmt) in plan.parsed {
            self.stmts.insert(name, stmt);
        }
        for name in plan.closed {
            self.stmts.remove(&name);
        }
        self.open.get_or_insert_with(Vec::new).extend(plan.changes);
        wire.reply(out).await
    }

    /// Whether writes are acknowledged from memory in this session now.
    fn acking(&self) -> bool {
        self.enabled && !self.sync
    }

    fn take_group(&mut self) -> Vec<Bytes> {
        self.group_bytes = 0;
        std::mem::take(&mut self.group)
    }

    /// Turns interception off for good when `sql` (lexed into `stmts`, or `None` when it
    /// could not be) changes session state it relies on (see `changers`).
    fn watch_session_changes(&mut self, stmts: Option<&[&[lexer::Token]]>, sql: &str) {
        if self.enabled && changers::changes_session(stmts, sql) {
            tracing::debug!("a statement changed session state: writes of this session pass through from now on");
            self.enabled = false;
        }
    }

    async fn on_query<W: Wire>(&mut self, msg: Bytes, wire: &mut W) -> Result<(), ProxyError> {
        let sql = match frontend::decode(&msg) {
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
        if self.acking() {
            if let Some(writes) = writes {
                let mut changes = Vec::new();
                let mut tags = Vec::with_capacity(writes.len());
                let mut all = true;
                for w in &writes {
                    match self.acceptable(w).await {
                        Some((table, catalog)) => {
                            match catalog
                                .tables
                                .get(table)
                                .and_then(|t| validate::changes(w, t))
                            {
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
                if all && wire.drained().await == b'I' {
                    match self.rt.enqueue(changes).await {
                        Ok(Enqueued::Acked) => {
                            let mut out = BytesMut::with_capacity(32 * tags.len());
                            for t in &tags {
                                messages::complete(&mut out, t);
                            }
                            messages::ready(&mut out);
                            return wire.reply(out).await;
                        }
                        Ok(Enqueued::PassThrough) => {}
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

    /// Whether `write` may be acknowledged in this session: its table is write-behind and the
    /// user holds the privileges. Returns the table's index in the catalog.
    async fn acceptable(&self, write: &Write) -> Option<(usize, Arc<Catalog>)> {
        let name = write_table(write);
        if name.schema.is_none()
            && (name.name.starts_with("pg_") || self.rt.user_schema_exists(&self.user).await)
        {
            return None;
        }
        let catalog = self.rt.catalog.borrow().clone();
        let relid = catalog.resolve(name.schema.as_deref(), &name.name)?.relid;
        let index = catalog.tables.iter().position(|t| t.relid == relid)?;
        for p in privileges(write) {
            if !self.rt.allowed(&self.user, relid, p).await {
                return None; // PostgreSQL raises 42501 itself
            }
        }
        Some((index, catalog))
    }

    /// Prepares `sql` as a write the proxy may acknowledge, or `None`.
    async fn prepare(&self, sql: &str, declared: &[u32]) -> Option<Arc<Prepared>> {
        let mut writes = recognize_all(sql)?;
        if writes.len() != 1 {
            return None;
        }
        let write = writes.pop()?;
        let (index, catalog) = self.acceptable(&write).await?;
        let table = catalog.tables.get(index)?;
        let relid = table.relid;
        let template = Template::prepare(write, table, declared)?;
        Some(Arc::new(Prepared {
            template,
            relid,
            catalog,
            declared: declared.to_vec(),
            sql: sql.to_string(),
        }))
    }

    /// The statement `name` as the group sees it: parsed earlier in the group, or before.
    fn lookup<'a>(&'a self, parsed: &'a [(usize, String, Stmt)], name: &str) -> Option<&'a Stmt> {
        parsed
            .iter()
            .rev()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, s)| s)
            .or_else(|| self.stmts.get(name))
    }

    /// The plan to answer `group` locally, or `None` when any part of it must go to
    /// PostgreSQL.
    async fn plan(&self, group: &[Bytes]) -> Option<Plan> {
        let mut plan = Plan {
            replies: Vec::with_capacity(group.len()),
            changes: Vec::new(),
            parsed: Vec::new(),
            closed: Vec::new(),
        };
        // Bound portals of the group (only the unnamed one): changes and tag.
        let mut portal: Option<(Vec<Change>, String)> = None;
        for raw in group {
            let mut out = BytesMut::with_capacity(16);
            let mut is_execute = false;
            match frontend::decode(raw).ok()? {
                Frontend::Parse {
                    name,
                    sql,
                    param_types,
                } => {
                    if !name.is_empty() && self.lookup(&plan.parsed, name).is_some() {
                        return None; // PostgreSQL answers 42P05
                    }
                    let prepared = self.prepare(sql, &param_types).await?;
                    plan.parsed.push((
                        plan.replies.len(),
                        name.to_string(),
                        Stmt {
                            parse: raw.clone(),
                            prepared: Some(prepared),
                            on_server: false,
                            scope: None,
                        },
                    ));
                    messages::parse_complete(&mut out);
                }
                Frontend::Bind {
                    portal: p,
                    statement,
                    formats,
                    params,
                } => {
                    if !p.is_empty() {
                        return None;
                    }
                    let prepared = self.lookup(&plan.parsed, statement)?.prepared.clone()?;
                    let prepared = self.current(prepared).await?;
                    let table = prepared
                        .catalog
                        .tables
                        .iter()
                        .find(|t| t.relid == prepared.relid)?;
                    let changes = prepared.template.bind(&params, &formats, table)?;
                    portal = Some((changes, tag(prepared.template.write())));
                    messages::bind_complete(&mut out);
                }
                Frontend::Describe { kind: b'S', name } => {
                    let stmt = self.lookup(&plan.parsed, name)?;
                    let prepared = stmt.prepared.as_ref()?;
                    messages::parameter_description(&mut out, prepared.template.param_types());
                    messages::no_data(&mut out);
                }
                Frontend::Describe { name: "", .. } if portal.is_some() => {
                    messages::no_data(&mut out);
                }
                Frontend::Execute { portal: "" } => {
                    let (changes, t) = portal.take()?;
                    plan.changes.extend(changes);
                    messages::complete(&mut out, &t);
                    is_execute = true;
                }
                Frontend::Close { kind: b'S', name } => {
                    if let Some(i) = plan.parsed.iter().rposition(|(_, n, _)| n == name) {
                        plan.parsed.remove(i);
                    } else {
                        let stmt = self.stmts.get(name)?;
                        if stmt.on_server {
                            return None;
                        }
                        plan.closed.push(name.to_string());
                    }
                    messages::close_complete(&mut out);
                }
                Frontend::Close {
                    kind: b'P',
                    name: "",
                } => {
                    portal = None;
                    messages::close_complete(&mut out);
                }
                Frontend::Sync => messages::ready(&mut out),
                _ => return None,
            }
            plan.replies.push((out, is_execute));
        }
        Some(plan)
    }

    /// `prepared`, re-prepared if the catalog changed since (the same parameter types, or
    /// `None`).
    async fn current(&self, prepared: Arc<Prepared>) -> Option<Arc<Prepared>> {
        if Arc::ptr_eq(&prepared.catalog, &self.rt.catalog.borrow()) {
            return Some(prepared);
        }
        let again = self.prepare(&prepared.sql, &prepared.declared).await?;
        (again.template.param_types() == prepared.template.param_types()).then_some(again)
    }

    /// Carries out a local plan: journals its changes, then replies. At the bound with
    /// `overflow = sync` the group passes through instead.
    async fn answer<W: Wire>(
        &mut self,
        plan: Plan,
        group: Vec<Bytes>,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        let earlier = self.open.take();
        if earlier.is_none() && wire.drained().await != b'I' {
            return self.forward(group, wire).await;
        }
        let mut failed = None;
        let answered_before = earlier.as_ref().is_some_and(|c| !c.is_empty());
        let mut changes = earlier.unwrap_or_default();
        changes.extend(plan.changes);
        if !changes.is_empty() {
            let result = match self.rt.enqueue(changes.clone()).await {
                Ok(Enqueued::PassThrough) if !answered_before => {
                    return self.forward(group, wire).await
                }
                // Part of the group was answered already: it cannot pass through any more.
                Ok(Enqueued::PassThrough) => self.rt.enqueue_waiting(changes).await,
                Ok(Enqueued::Acked) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                failed = Some(ProxyError::from(e));
            }
        }
        let mut out = BytesMut::with_capacity(64);
        let mut cut = plan.replies.len();
        match &failed {
            None => {
                for (piece, _) in &plan.replies {
                    out.extend_from_slice(piece);
                }
            }
            Some(e) => {
                // Replies up to the first Execute, its error, then ReadyForQuery: PostgreSQL
                // skips everything after an error up to Sync.
                cut = plan
                    .replies
                    .iter()
                    .position(|(_, exec)| *exec)
                    .unwrap_or(plan.replies.len());
                for (piece, _) in &plan.replies[..cut] {
                    out.extend_from_slice(piece);
                }
                e.write_to(&mut out);
                messages::ready(&mut out);
            }
        }
        for (at, name, stmt) in plan.parsed {
            if at < cut {
                self.stmts.insert(name, stmt);
            }
        }
        if failed.is_none() {
            for name in plan.closed {
                self.stmts.remove(&name);
            }
        }
        wire.reply(out).await
    }

    /// Passes `msgs` through after the barrier; statements they use that PostgreSQL does not
    /// know are parsed there first.
    async fn forward<W: Wire>(&mut self, msgs: Vec<Bytes>, wire: &mut W) -> Result<(), ProxyError> {
        self.forward_with(msgs, Lexed::No, wire).await
    }

    /// As [`forward`](Self::forward); `lexed` has the tokens of a Query already lexed.
    async fn forward_with<W: Wire>(
        &mut self,
        msgs: Vec<Bytes>,
        lexed: Lexed<'_>,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let mut inject: Vec<Bytes> = Vec::new();
        let mut parsed_here: Vec<String> = Vec::new();
        for raw in &msgs {
            let m = frontend::decode(raw);
            let used = match &m {
                Ok(Frontend::Bind { statement, .. }) => Some(*statement),
                Ok(Frontend::Describe { kind: b'S', name }) => Some(*name),
                _ => None,
            };
            if let Some(name) = used {
                if !parsed_here.iter().any(|n| n == name) {
                    if let Some(stmt) = self.stmts.get_mut(name) {
                        if !stmt.on_server {
                            inject.push(stmt.parse.clone());
                            stmt.on_server = true;
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
                    self.watch_session_changes(stmts.as_deref().ok(), sql);
                    parsed_here.push(name.to_string());
                    // Remember it, so a later group outside a transaction can be local.
                    let known = !name.is_empty() && self.stmts.contains_key(name);
                    let prepared = if self.enabled && !known {
                        self.prepare(sql, &param_types).await
                    } else {
                        None
                    };
                    self.stmts.insert(
                        name.to_string(),
                        Stmt {
                            parse: raw.clone(),
                            prepared,
                            on_server: true,
                            scope: None,
                        },
                    );
                }
                Ok(Frontend::Close { kind: b'S', name }) => {
                    self.stmts.remove(name);
                }
                _ => {}
            }
        }
        if !self.rt.catalog.borrow().is_empty() {
            let scope = self.scope(&msgs, lexed, wire).await;
            tracing::trace!(?scope, "barrier scope");
            let waited = match &scope {
                Scope::All => self.rt.barrier_all(self.barrier_timeout).await,
                Scope::Tables(t) if t.is_empty() => Ok(()),
                Scope::Tables(t) => self.rt.barrier(t, self.barrier_timeout).await,
            };
            waited.map_err(|e| ProxyError::Barrier(e.to_string()))?;
        }
        self.mid_group = !matches!(msgs.last().and_then(|m| m.first()), Some(b'S' | b'Q'));
        if !inject.is_empty() {
            // The swallowed ParseCompletes must be the first replies that follow.
            wire.drained().await;
        }
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
        wire.forward(out, inject.len()).await
    }
}

impl Intercept {
    /// What the statements of `msgs` (passing through) may read of the write-behind tables.
    /// Notes statements that may change the schema, and reloads the catalog before the first
    /// analysis after one, once it committed.
    async fn scope<W: Wire>(&mut self, msgs: &[Bytes], lexed: Lexed<'_>, wire: &mut W) -> Scope {
        // A session that changed search_path, its role, string syntax, or made temporary
        // objects resolves names in ways the catalog does not know.
        if !self.enabled {
            return Scope::All;
        }
        if self.schema_stale {
            if self.mid_group || wire.drained().await != b'I' {
                return Scope::All; // not committed yet
            }
            if let Err(error) = self.rt.reload_catalog().await {
                tracing::debug!(%error, "reloading the catalog after a schema change failed");
                return Scope::All;
            }
            self.schema_stale = false;
        }
        let catalog = self.rt.catalog.borrow().clone();
        let mut scope = Scope::default();
        // Statements parsed by these messages, by name, in order.
        let mut parsed: HashMap<&str, Scope> = HashMap::new();
        for raw in msgs {
            let part = match frontend::decode(raw) {
                Ok(Frontend::Query(sql)) => match &lexed {
                    Lexed::Ok(stmts) => self.analyse(&catalog, stmts),
                    Lexed::Failed => Scope::All,
                    Lexed::No => self.analyse_sql(&catalog, sql),
                },
                Ok(Frontend::Parse { name, sql, .. }) => {
                    let s = self.analyse_sql(&catalog, sql);
                    if let Some(stmt) = self.stmts.get_mut(name) {
                        if stmt.parse == *raw {
                            stmt.scope = Some((catalog.clone(), s.clone()));
                        }
                    }
                    parsed.insert(name, s.clone());
                    s
                }
                Ok(Frontend::Bind {
                    portal, statement, ..
                }) => {
                    let s = match parsed.get(statement) {
                        Some(s) => s.clone(),
                        None => self.stmt_scope(&catalog, statement),
                    };
                    self.portals.insert(portal.to_string(), s.clone());
                    s
                }
                Ok(Frontend::Execute { portal }) => {
                    self.portals.get(portal).cloned().unwrap_or(Scope::All)
                }
                Ok(Frontend::Close { kind: b'P', name }) => {
                    self.portals.remove(name);
                    Scope::default()
                }
                // Describe, Close, Sync, Flush, COPY data: nothing is read.
                Ok(
                    Frontend::Describe { .. }
                    | Frontend::Close { .. }
                    | Frontend::Sync
                    | Frontend::Other(b'H' | b'd' | b'c' | b'f'),
                ) => Scope::default(),
                // FunctionCall, anything else: anything.
                _ => Scope::All,
            };
            scope.add(&part);
        }
        scope
    }

    /// The scope of lexed statements; notes a possible schema change.
    fn analyse(&mut self, catalog: &Catalog, stmts: &[&[lexer::Token]]) -> Scope {
        if scope::may_change_schema(stmts) {
            self.schema_stale = true;
        }
        catalog.names.scope(stmts)
    }

    /// The scope of `sql` (all when it cannot be lexed with certainty).
    fn analyse_sql(&mut self, catalog: &Catalog, sql: &str) -> Scope {
        match lexer::lex(sql, true) {
            Ok(tokens) => self.analyse(catalog, &lexer::statements(&tokens)),
            Err(_) => Scope::All,
        }
    }

    /// The scope of the prepared statement `name`, computed once per catalog; all for a
    /// statement the session does not know.
    fn stmt_scope(&mut self, catalog: &Arc<Catalog>, name: &str) -> Scope {
        let Some(stmt) = self.stmts.get(name) else {
            return Scope::All;
        };
        if let Some((c, s)) = &stmt.scope {
            if Arc::ptr_eq(c, catalog) {
                return s.clone();
            }
        }
        let parse = stmt.parse.clone();
        let s = match frontend::decode(&parse) {
            Ok(Frontend::Parse { sql, .. }) => self.analyse_sql(catalog, sql),
            _ => Scope::All,
        };
        if let Some(stmt) = self.stmts.get_mut(name) {
            stmt.scope = Some((catalog.clone(), s.clone()));
        }
        s
    }
}

/// A change of `writebehind.sync` the proxy tracks.
#[derive(Debug, PartialEq, Eq)]
enum SyncSetting {
    /// `SET [SESSION] writebehind.sync {=|TO} v` or `RESET writebehind.sync` (= off).
    Session(bool),
    /// `SET LOCAL writebehind.sync …`.
    Local,
}

/// Recognizes the statements of a Query as exactly one change of `writebehind.sync`.
fn sync_setting(stmts: &[&[lexer::Token]]) -> Option<SyncSetting> {
    use lexer::Token::{Number, Op, Punct, Str, Word};
    let [t] = stmts else {
        return None;
    };
    let word = |i: usize, w: &str| matches!(t.get(i), Some(Word(x)) if x == w);
    if word(0, "reset") && t.len() == 4 {
        let name = word(1, "writebehind") && t.get(2) == Some(&Punct('.')) && word(3, "sync");
        return name.then_some(SyncSetting::Session(false));
    }
    if !word(0, "set") {
        return None;
    }
    let (local, at) = match t.get(1) {
        Some(Word(w)) if w == "local" => (true, 2),
        Some(Word(w)) if w == "session" => (false, 2),
        _ => (false, 1),
    };
    let name =
        word(at, "writebehind") && t.get(at + 1) == Some(&Punct('.')) && word(at + 2, "sync");
    let assign = matches!(t.get(at + 3), Some(Op(o)) if o == "=") || word(at + 3, "to");
    if !name || !assign || t.len() != at + 5 {
        return None;
    }
    if local {
        return Some(SyncSetting::Local);
    }
    let value = match t.get(at + 4)? {
        Word(v) | Str(v) | Number(v) => v.to_ascii_lowercase(),
        _ => return None,
    };
    // PostgreSQL's boolean spellings (parse_bool), and DEFAULT (off).
    match value.as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(SyncSetting::Session(true)),
        "off" | "false" | "no" | "0" | "f" | "n" | "default" => Some(SyncSetting::Session(false)),
        _ => None,
    }
}

/// The statements of `sql` if every one of them is a recognized write (standard_conforming_
/// strings on: sessions that change it are not intercepted).
fn recognize_all(sql: &str) -> Option<Vec<Write>> {
    let tokens = lexer::lex(sql, true).ok()?;
    recognize_stmts(&lexer::statements(&tokens))
}

/// As [`recognize_all`], for statements already lexed.
fn recognize_stmts(stmts: &[&[lexer::Token]]) -> Option<Vec<Write>> {
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

/// The privileges PostgreSQL checks for `w`.
fn privileges(w: &Write) -> &'static [&'static str] {
    match w {
        Write::Insert {
            on_conflict: Some(OnConflict::Update { .. }),
            ..
        } => &["INSERT", "UPDATE"],
        Write::Insert { .. } => &["INSERT"],
        Write::Update { .. } => &["UPDATE"],
        Write::Delete { .. } => &["DELETE"],
    }
}

/// The command tag PostgreSQL sends for `w` when every row is written.
fn tag(w: &Write) -> String {
    match w {
        Write::Insert { rows, .. } => format!("INSERT 0 {}", rows.len()),
        Write::Update { .. } => "UPDATE 1".to_string(),
        Write::Delete { .. } => "DELETE 1".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sync_setting(sql: &str) -> Option<SyncSetting> {
        let tokens = lexer::lex(sql, true).ok()?;
        super::sync_setting(&lexer::statements(&tokens))
    }

    #[test]
    fn sync_settings_are_recognized_exactly() {
        let on = Some(SyncSetting::Session(true));
        let off = Some(SyncSetting::Session(false));
        assert_eq!(sync_setting("SET writebehind.sync = on"), on);
        assert_eq!(sync_setting("set session WriteBehind.Sync to 'true';"), on);
        assert_eq!(sync_setting("SET writebehind.sync TO off"), off);
        assert_eq!(sync_setting("SET writebehind.sync = 0"), off);
        assert_eq!(sync_setting("RESET writebehind.sync"), off);
        assert_eq!(sync_setting("SET writebehind.sync = DEFAULT"), off);
        assert_eq!(
            sync_setting("SET LOCAL writebehind.sync = on"),
            Some(SyncSetting::Local)
        );
        for other in [
            "SET writebehind.sync = maybe",
            "SET writebehind.sync = on; SELECT 1",
            "SET \"writebehind.sync\" = on",
            "SET search_path = x",
            "RESET ALL",
        ] {
            assert_eq!(sync_setting(other), None, "{other}");
        }
    }
}
