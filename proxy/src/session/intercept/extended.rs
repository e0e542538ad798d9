//! The extended protocol's groups: a Sync group of recognized writes is planned and answered
//! locally (Parse/Bind/Describe/Execute/Close replies, tags, ReadyForQuery) and journaled as
//! one record; a Flush answers what came so far and journals it at Sync; anything else makes
//! the rest of the group pass through.

use super::{formats_hold, leaves_format_default, recognize_all, tag, Intercept, Prepared, Stmt};
use crate::error::ProxyError;
use crate::protocol::frontend::{self, Frontend};
use crate::protocol::messages;
use crate::session::wire::Wire;
use crate::writebehind::catalog::Catalog;
use crate::writebehind::encode::Change;
use crate::writebehind::recognize::Write;
use crate::writebehind::runtime::Enqueued;
use crate::writebehind::template::Template;
use bytes::{Bytes, BytesMut};
use std::borrow::Cow;
use std::sync::Arc;

/// What answering a group locally takes: the replies, the changes to journal, and the
/// statements it creates or closes.
pub(super) struct Plan {
    /// The replies to the group's messages, in order.
    replies: BytesMut,
    /// Where each message's reply ends in `replies`, and whether it answers an Execute.
    pieces: Vec<(usize, bool)>,
    changes: Vec<Change>,
    /// Statements parsed by the group: (index of the reply piece, name, statement).
    parsed: Vec<(usize, String, Stmt)>,
    /// Statements of the session the group closes: (index of the reply piece, name, and
    /// the Close message itself when PostgreSQL has the statement or may have it: one it never
    /// completed, one of SQL `PREPARE`; closing an unknown name is no error). Those messages
    /// go upstream on the proxy's own Sync when the plan is carried out.
    closed: Vec<(usize, String, Option<Bytes>)>,
    /// Earlier statements re-prepared against a newer catalog: kept, so later Binds need
    /// not prepare them again.
    refreshed: Vec<(String, Arc<Prepared>)>,
    /// Statements of the session (not of the group) the group uses.
    used: Vec<String>,
    /// A Bind leaves a default that depends on the session's formats (see
    /// `leaves_format_default`): the catalog they must match once every earlier reply is in.
    formats: Option<Arc<Catalog>>,
    /// The group ends with the unnamed portal bound and not executed: answered at a Flush,
    /// the portal would exist nowhere for the Execute that follows (PostgreSQL never saw the
    /// Bind), so such a group goes to PostgreSQL.
    portal_open: bool,
}

impl Plan {
    /// Whether the group leaves a bound portal for a later Execute (see `portal_open`).
    pub(super) fn leaves_portal(&self) -> bool {
        self.portal_open
    }

    /// Whether the session's formats still match what the plan's defaults need (call after
    /// `wire.drained()`: a SET passed through just before has reported its value by then).
    pub(super) fn formats_hold<W: Wire>(&self, wire: &W) -> bool {
        self.formats.as_ref().is_none_or(|c| formats_hold(c, wire))
    }

    /// Whether carrying the plan out needs nothing of PostgreSQL (no Close to send it): only
    /// such a plan answers a Flush.
    pub(super) fn all_local(&self) -> bool {
        self.closed
            .iter()
            .all(|(_, _, upstream)| upstream.is_none())
    }
}

impl Intercept {
    /// The rest of the current group goes to PostgreSQL as it arrives: what was answered
    /// locally is journaled first (it precedes what follows), then `msgs` pass through.
    pub(super) async fn pass_rest<W: Wire>(
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
    pub(super) async fn journal_open<W: Wire>(&mut self, wire: &mut W) -> Result<bool, ProxyError> {
        let changes = self.open.take().unwrap_or_default();
        if changes.is_empty() {
            return Ok(true);
        }
        let refused = match self.rt.enqueue(changes).await {
            Ok(Enqueued::Acked) => return Ok(true),
            // At the bound with overflow = sync: journaling is the only way left for changes
            // already answered; wait for room as `block` would.
            Ok(Enqueued::PassThrough(changes)) => match self.rt.enqueue_waiting(changes).await {
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
    pub(super) async fn answer_partial<W: Wire>(
        &mut self,
        plan: Plan,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        self.keep_refreshed(&plan);
        for (_, name, mut stmt) in plan.parsed {
            stmt.serial = self.serial();
            self.stmts.insert(name, stmt);
        }
        for (_, name, _) in plan.closed {
            self.stmts.remove(&name);
        }
        self.open.get_or_insert_with(Vec::new).extend(plan.changes);
        wire.reply(plan.replies).await
    }

    /// Whether every statement of the session `plan` uses still exists, once what PostgreSQL
    /// said to the Parses that went upstream is known (call after `wire.drained()`).
    pub(super) fn still_known<W: Wire>(&mut self, plan: &Plan, wire: &W) -> bool {
        self.reconcile(wire);
        plan.used.iter().all(|n| self.stmts.contains_key(n))
    }

    /// Prepares `sql` as a write the proxy may acknowledge, or `None`; its table name is
    /// resolved through `wire` if need be.
    pub(super) async fn prepare<W: Wire>(
        &self,
        sql: &str,
        declared: &[u32],
        wire: &mut W,
    ) -> Option<Arc<Prepared>> {
        self.prepare_writes(recognize_all(sql)?, sql, declared, Some(wire))
            .await
    }

    /// As [`prepare`](Self::prepare), for `sql` already recognized as `writes`; without a
    /// wire, only names resolved before count.
    pub(super) async fn prepare_writes<W: Wire>(
        &self,
        mut writes: Vec<Write>,
        sql: &str,
        declared: &[u32],
        wire: Option<&mut W>,
    ) -> Option<Arc<Prepared>> {
        if writes.len() != 1 {
            return None;
        }
        let write = writes.pop()?;
        let epoch = self.resolver.epoch();
        let privileges = self.rt.privileges.generation();
        let (index, catalog) = self.acceptable(&write, wire).await?;
        let table = catalog.tables.get(index)?;
        let relid = table.relid;
        let template = Template::prepare(write, table, declared)?;
        Some(Arc::new(Prepared {
            template,
            relid,
            catalog,
            declared: declared.to_vec(),
            sql: sql.to_string(),
            epoch,
            privileges,
        }))
    }

    /// The statement `name` as the group sees it: parsed earlier in the group, or before (then
    /// noted in `used`); none once the group `closed` it (PostgreSQL answers 26000).
    pub(super) fn lookup<'a>(
        &'a self,
        parsed: &'a [(usize, String, Stmt)],
        closed: &[(usize, String, Option<Bytes>)],
        used: &mut Vec<String>,
        name: &str,
    ) -> Option<&'a Stmt> {
        if let Some((_, _, s)) = parsed.iter().rev().find(|(_, n, _)| n == name) {
            return Some(s);
        }
        if closed.iter().any(|(_, n, _)| n == name) {
            return None;
        }
        let stmt = self.stmts.get(name)?;
        used.push(name.to_string());
        Some(stmt)
    }

    /// The plan to answer `group` locally, or `None` when any part of it must go to
    /// PostgreSQL.
    pub(super) async fn plan<W: Wire>(&self, group: &[Bytes], wire: &mut W) -> Option<Plan> {
        let mut plan = Plan {
            replies: BytesMut::with_capacity(16 * group.len()),
            pieces: Vec::with_capacity(group.len()),
            changes: Vec::new(),
            parsed: Vec::new(),
            closed: Vec::new(),
            refreshed: Vec::new(),
            used: Vec::new(),
            formats: None,
            portal_open: false,
        };
        // Bound portals of the group (only the unnamed one): changes and tag.
        let mut portal: Option<(Vec<Change>, Cow<'static, str>)> = None;
        for raw in group {
            let out = &mut plan.replies;
            let mut is_execute = false;
            match frontend::decode(raw).ok()? {
                Frontend::Parse {
                    name,
                    sql,
                    param_types,
                } => {
                    // (A name the group closed before passes through too: conservative.)
                    let closed = &[];
                    if !name.is_empty()
                        && self
                            .lookup(&plan.parsed, closed, &mut plan.used, name)
                            .is_some()
                    {
                        return None; // PostgreSQL answers 42P05
                    }
                    let prepared = Box::pin(self.prepare(sql, &param_types, wire)).await?;
                    // PostgreSQL gets this Parse only when something that passes through
                    // uses the statement, maybe after a column's type changed: with the
                    // parameter types the client was told (Describe), as PostgreSQL would
                    // have kept them had it parsed the statement now.
                    let inferred = prepared.template.param_types();
                    let parse = if param_types.as_slice() == inferred {
                        raw.clone()
                    } else {
                        let mut typed = BytesMut::with_capacity(raw.len() + 4 * inferred.len());
                        frontend::parse(&mut typed, name, sql, inferred);
                        typed.freeze()
                    };
                    plan.parsed.push((
                        plan.pieces.len(),
                        name.to_string(),
                        Stmt {
                            parse,
                            prepared: Some(prepared),
                            on_server: false,
                            scope: None,
                            resolution: false,
                            serial: 0, // given when the plan is carried out
                        },
                    ));
                    messages::parse_complete(out);
                }
                Frontend::Bind {
                    portal: p,
                    statement,
                    formats,
                    params,
                    result_formats,
                } => {
                    // PostgreSQL refuses a Bind whose format codes do not match (08P01): it
                    // must see this one.
                    let odd_formats = formats.len() > 1 && formats.len() != params.len();
                    if !p.is_empty() || odd_formats || result_formats > 1 {
                        return None;
                    }
                    let stored = self
                        .lookup(&plan.parsed, &plan.closed, &mut plan.used, statement)?
                        .prepared
                        .clone()?;
                    let prepared = self.current(stored.clone(), wire).await?;
                    if !Arc::ptr_eq(&prepared, &stored) {
                        plan.refreshed
                            .push((statement.to_string(), prepared.clone()));
                    }
                    let table = prepared.catalog.table(prepared.relid)?;
                    if leaves_format_default(prepared.template.write(), table) {
                        if !formats_hold(&prepared.catalog, &*wire) {
                            return None;
                        }
                        plan.formats = Some(prepared.catalog.clone());
                    }
                    let changes = prepared.template.bind(&params, &formats, table)?;
                    portal = Some((changes, tag(prepared.template.write())));
                    messages::bind_complete(out);
                }
                Frontend::Describe { kind: b'S', name } => {
                    let stmt = self.lookup(&plan.parsed, &plan.closed, &mut plan.used, name)?;
                    let prepared = stmt.prepared.as_ref()?;
                    messages::parameter_description(out, prepared.template.param_types());
                    messages::no_data(out);
                }
                Frontend::Describe { name: "", .. } if portal.is_some() => {
                    messages::no_data(out);
                }
                Frontend::Execute { portal: "" } => {
                    let (changes, t) = portal.take()?;
                    if plan.changes.is_empty() {
                        plan.changes = changes;
                    } else {
                        plan.changes.extend(changes);
                    }
                    messages::complete(out, &t);
                    is_execute = true;
                }
                Frontend::Close { kind: b'S', name } => {
                    if let Some(i) = plan.parsed.iter().rposition(|(_, n, _)| n == name) {
                        plan.parsed.remove(i);
                    } else {
                        // pgJDBC closes the statements the application closed on its next
                        // query, and the one whose Parse an error skipped: PostgreSQL closes
                        // them, and the rest of the group can still be answered here.
                        let upstream = self
                            .stmts
                            .get(name)
                            .is_none_or(|s| s.on_server)
                            .then(|| raw.clone());
                        plan.closed
                            .push((plan.pieces.len(), name.to_string(), upstream));
                    }
                    messages::close_complete(out);
                }
                Frontend::Close {
                    kind: b'P',
                    name: "",
                } => {
                    portal = None;
                    messages::close_complete(out);
                }
                Frontend::Sync => messages::ready(out),
                _ => return None,
            }
            plan.pieces.push((plan.replies.len(), is_execute));
        }
        plan.portal_open = portal.is_some();
        Some(plan)
    }

    /// Stores the statements `plan` re-prepared (the same parameter types: replacing them is
    /// invisible to the client).
    fn keep_refreshed(&mut self, plan: &Plan) {
        for (name, prepared) in &plan.refreshed {
            if let Some(stmt) = self.stmts.get_mut(name) {
                stmt.prepared = Some(prepared.clone());
            }
        }
    }

    /// `prepared`, re-prepared if the catalog, the session's name resolution or the cached
    /// privileges changed since (the same parameter types, or `None`).
    pub(super) async fn current<W: Wire>(
        &self,
        prepared: Arc<Prepared>,
        wire: &mut W,
    ) -> Option<Arc<Prepared>> {
        if Arc::ptr_eq(&prepared.catalog, &self.rt.catalog.borrow())
            && prepared.epoch == self.resolver.epoch()
            && prepared.privileges == self.rt.privileges.generation()
        {
            return Some(prepared);
        }
        let again = Box::pin(self.prepare(&prepared.sql, &prepared.declared, wire)).await?;
        (again.template.param_types() == prepared.template.param_types()).then_some(again)
    }

    /// Carries out a local plan: journals its changes, then replies. At the bound with
    /// `overflow = sync` the group passes through instead.
    pub(super) async fn answer<W: Wire>(
        &mut self,
        plan: Plan,
        group: Vec<Bytes>,
        wire: &mut W,
    ) -> Result<(), ProxyError> {
        self.keep_refreshed(&plan);
        let earlier = self.open.take();
        if earlier.is_none()
            && (wire.drained().await != b'I'
                || self.settings_changed(wire)
                || !self.still_known(&plan, wire)
                || !plan.formats_hold(wire))
        {
            return self.forward(group, wire).await;
        }
        let mut failed = None;
        let answered_before = earlier.as_ref().is_some_and(|c| !c.is_empty());
        let mut changes = earlier.unwrap_or_default();
        changes.extend(plan.changes);
        if !changes.is_empty() {
            let enqueued = self.enqueue(changes, wire).await;
            let result = match enqueued {
                Ok(Enqueued::PassThrough(_)) if !answered_before => {
                    return self.forward(group, wire).await
                }
                // Part of the group was answered already: it cannot pass through any more.
                Ok(Enqueued::PassThrough(changes)) => self.rt.enqueue_waiting(changes).await,
                Ok(Enqueued::Acked) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                failed = Some(ProxyError::from(e));
            }
        }
        let mut out = plan.replies;
        let mut cut = plan.pieces.len();
        if let Some(e) = &failed {
            // Replies up to the first Execute, its error, then ReadyForQuery: PostgreSQL
            // skips everything after an error up to Sync.
            cut = plan
                .pieces
                .iter()
                .position(|(_, exec)| *exec)
                .unwrap_or(plan.pieces.len());
            let end = cut.checked_sub(1).map_or(0, |i| plan.pieces[i].0);
            out.truncate(end);
            e.write_to(&mut out);
            messages::ready(&mut out);
        }
        for (at, name, mut stmt) in plan.parsed {
            if at < cut {
                stmt.serial = self.serial();
                self.stmts.insert(name, stmt);
            }
        }
        // Closes take effect up to the error, as in PostgreSQL (a Close is not undone).
        let mut closes = BytesMut::new();
        for (_, name, upstream) in plan.closed.into_iter().filter(|(at, ..)| *at < cut) {
            self.stmts.remove(&name);
            if let Some(msg) = upstream {
                closes.extend_from_slice(&msg);
            }
        }
        if !closes.is_empty() {
            // Idle outside a transaction block (checked above): a Close cannot fail there.
            wire.materialize(closes, &[]).await?;
        }
        wire.reply(out).await
    }
}
