//! The set-based apply of the inbox: per table and transaction, folded per key, one statement
//! per step and shape, failures isolated into the dead letters, inbox rows removed atomically.

pub mod decimal;
pub mod fold;
pub mod isolate;
pub mod packed;
pub mod packed_sql;
pub mod statements;
pub mod table;
pub mod uniform;
pub mod uniform_sql;
pub mod unpack;

use fold::{Change, ColOp, Conflict, InboxRow, Origin, Step, TableShape};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiResult};
use statements::Shape;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;
use table::TableMeta;

/// What one table's round did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// Inbox rows consumed.
    pub rows: usize,
    /// Folded changes that applied.
    pub applied: usize,
    /// The same by statement kind: insert, update, delete.
    pub applied_by_kind: [usize; 3],
    /// Changes (or malformed rows) moved to the dead letters.
    pub dead: usize,
    /// The keys (or append rows) of those that failed with a transient error (narrowed down,
    /// see [`isolate::narrowing`]), and the first one's SQLSTATE (MAKE_SQLSTATE encoded).
    pub transient_keys: usize,
    pub transient_code: Option<i32>,
}

/// Tables that have inbox rows, parents first (by foreign keys among them).
pub fn pending_tables() -> SpiResult<Vec<pg_sys::Oid>> {
    Spi::connect(|client| {
        let mut relids = Vec::new();
        // A skip scan over inbox_relid_id: one index probe per table, not a full scan.
        for r in client.select(
            "WITH RECURSIVE r(relid) AS (
                 SELECT min(relid) FROM writebehind.inbox
                 UNION ALL
                 SELECT (SELECT min(i.relid) FROM writebehind.inbox i WHERE i.relid > r.relid)
                   FROM r WHERE r.relid IS NOT NULL)
             SELECT relid FROM r WHERE relid IS NOT NULL",
            None,
            &[],
        )? {
            if let Some(oid) = r.get::<pg_sys::Oid>(1)? {
                relids.push(oid);
            }
        }
        if relids.len() < 2 {
            return Ok(relids);
        }
        let edges = table::fk_edges(client, &relids)?;
        Ok(table::parents_first(&relids, &edges))
    })
}

/// One dead letter to write.
struct DeadLetter {
    origin: Origin,
    op: u8,
    key: Option<String>,
    data: Option<String>,
    conflict_set: Option<Vec<String>>,
    sqlstate: String,
    message: String,
}

/// Applies up to `max_rows` of `relid`'s inbox changes in the current transaction: runs of
/// one shape by the fast paths, one statement each (a packed row holds one shape, so a queue of
/// packed rows of alternating shapes is several runs), and the rest of the round by the general
/// path.
pub fn apply_table(relid: pg_sys::Oid, max_rows: i64) -> SpiResult<Outcome> {
    Spi::connect_mut(|client| {
        // Deferred constraints (a DEFERRABLE foreign key or unique constraint, a deferred
        // constraint trigger) are checked at the end of each statement, inside the
        // subtransaction that isolates failures: a violation is one change's dead letter,
        // where at COMMIT it would fail the whole round, every round.
        client.update("SET CONSTRAINTS ALL IMMEDIATE", None, &[])?;
        let meta = table::load(client, relid)?;
        let mut total = Outcome::default();
        // Batches already counted in this round (a batch may span several runs).
        let mut seen: HashSet<String> = HashSet::new();
        while (total.rows as i64) < max_rows {
            let left = max_rows - total.rows as i64;
            let started = Instant::now();
            let fast = match &meta {
                Some(meta) => uniform::try_apply(client, meta, relid, left)?,
                None => None,
            };
            let out = match fast {
                Some(done) if done.outcome.rows > 0 => {
                    let batches = newly_seen(&mut seen, done.batches);
                    record_round(client, relid, &done.outcome, batches, true, started)?;
                    done.outcome
                }
                // The queue was empty when the fast path looked. A batch that committed since
                // is the next round's: the general path (a newer snapshot) would apply a round
                // that fits the fast path row by row.
                Some(_) => break,
                // The general path stops before the next packed row, which may fit the fast
                // path again.
                _ => apply_general(client, meta.as_ref(), relid, left, started, &mut seen)?,
            };
            if out.rows == 0 {
                break;
            }
            total.add(&out);
        }
        Ok(total)
    })
}

/// How many of `batches` were not in `seen` yet (they are now).
fn newly_seen(seen: &mut HashSet<String>, batches: impl IntoIterator<Item = String>) -> i64 {
    batches
        .into_iter()
        .filter(|b| seen.insert(b.clone()))
        .count() as i64
}

impl Outcome {
    fn add(&mut self, o: &Outcome) {
        self.rows += o.rows;
        self.applied += o.applied;
        self.dead += o.dead;
        self.transient_keys += o.transient_keys;
        self.transient_code = self.transient_code.or(o.transient_code);
        for (a, b) in self.applied_by_kind.iter_mut().zip(o.applied_by_kind) {
            *a += b;
        }
    }
}

/// The general path for up to `max_rows` changes: take, fold in Rust, apply step by step as
/// the owner with failures isolated, dead letters, counters.
fn apply_general(
    client: &mut SpiClient<'_>,
    meta: Option<&TableMeta>,
    relid: pg_sys::Oid,
    max_rows: i64,
    started: Instant,
    seen: &mut HashSet<String>,
) -> SpiResult<Outcome> {
    // Taking the rows deletes them; the deletion commits with the apply (exactly once).
    let rows = take_rows(client, relid, max_rows)?;
    if rows.is_empty() {
        return Ok(Outcome::default());
    }
    let distinct: HashSet<(i64, &str)> = rows
        .iter()
        .map(|r| (r.batch_seq, r.proxy_id.as_str()))
        .collect();
    let batches = newly_seen(
        seen,
        distinct.into_iter().map(|(seq, p)| format!("{seq}/{p}")),
    );
    let mut dead = Vec::new();
    let mut applied_by_kind = [0usize; 3];
    let mut table_name = format!("{}", u32::from(relid));
    match meta {
        None => {
            for (i, r) in rows.iter().enumerate() {
                dead.push(DeadLetter {
                    origin: i,
                    op: r.op,
                    key: r.key.clone(),
                    data: r.data.clone(),
                    conflict_set: r.conflict_set.clone(),
                    sqlstate: "42P01".into(),
                    message: format!("relation with OID {} does not exist", u32::from(relid)),
                });
            }
        }
        Some(meta) => {
            table_name = meta.qualified.clone();
            let plan = fold::fold(
                &rows,
                &TableShape {
                    key_columns: &meta.key_columns,
                    append: meta.append,
                    policy: meta.policy.clone(),
                },
            );
            for m in plan.malformed.iter() {
                let r = &rows[m.origin];
                dead.push(DeadLetter {
                    op: r.op,
                    key: r.key.clone(),
                    data: r.data.clone(),
                    conflict_set: r.conflict_set.clone(),
                    origin: m.origin,
                    sqlstate: "22P02".into(),
                    message: format!("malformed inbox row: {}", m.message),
                });
            }
            applied_by_kind = as_owner(meta.owner, || apply_plan(client, meta, &plan, &mut dead));
        }
    }
    write_dead_letters(client, relid, &table_name, &rows, &dead)?;
    let transient: Vec<&DeadLetter> = dead
        .iter()
        .filter(|d| isolate::is_transient(&d.sqlstate))
        .collect();
    // One key's several steps fail together: count it once (append rows have no key).
    let keys: HashSet<(Option<&str>, usize)> = transient
        .iter()
        .map(|d| match d.key.as_deref() {
            Some(k) => (Some(k), 0),
            None => (None, d.origin),
        })
        .collect();
    let out = Outcome {
        rows: rows.len(),
        applied: applied_by_kind.iter().sum(),
        applied_by_kind,
        dead: dead.len(),
        transient_keys: keys.len(),
        transient_code: transient
            .first()
            .map(|d| isolate::sqlstate_code(&d.sqlstate)),
    };
    record_round(client, relid, &out, batches, false, started)?;
    Ok(out)
}

/// Adds a round's counts to the table's statistics.
fn record_round(
    client: &mut SpiClient<'_>,
    relid: pg_sys::Oid,
    out: &Outcome,
    batches: i64,
    uniform: bool,
    started: Instant,
) -> SpiResult<()> {
    let coalesced = out.rows.saturating_sub(out.applied + out.dead) as i64;
    client.update(
            "INSERT INTO writebehind.table_stats AS s
                 (relid, applied, coalesced, batches, dead_letters, rounds, last_round_rows, last_round_secs, last_apply_at,
                  applied_inserts, applied_updates, applied_deletes, uniform_rounds)
             VALUES ($1, $2, $3, $4, $5, 1, $6, $7, now(), $8, $9, $10, $11)
             ON CONFLICT (relid) DO UPDATE SET
                 applied = s.applied + EXCLUDED.applied,
                 applied_inserts = s.applied_inserts + EXCLUDED.applied_inserts,
                 applied_updates = s.applied_updates + EXCLUDED.applied_updates,
                 applied_deletes = s.applied_deletes + EXCLUDED.applied_deletes,
                 coalesced = s.coalesced + EXCLUDED.coalesced,
                 batches = s.batches + EXCLUDED.batches,
                 dead_letters = s.dead_letters + EXCLUDED.dead_letters,
                 rounds = s.rounds + 1,
                 uniform_rounds = s.uniform_rounds + EXCLUDED.uniform_rounds,
                 last_round_rows = EXCLUDED.last_round_rows,
                 last_round_secs = EXCLUDED.last_round_secs,
                 last_apply_at = now()",
            None,
            &[
                relid.into(),
                (out.applied as i64).into(),
                coalesced.into(),
                batches.into(),
                (out.dead as i64).into(),
                (out.rows as i64).into(),
                started.elapsed().as_secs_f64().into(),
                (out.applied_by_kind[0] as i64).into(),
                (out.applied_by_kind[1] as i64).into(),
                (out.applied_by_kind[2] as i64).into(),
                i64::from(uniform).into(),
            ],
        )?;
    Ok(())
}

/// Records a failed round's error on the table's statistics.
pub fn record_table_error(relid: pg_sys::Oid, message: &str) -> SpiResult<()> {
    Spi::connect_mut(|client| {
        client.update(
            "INSERT INTO writebehind.table_stats AS s (relid, last_error, last_error_at) VALUES ($1, $2, now())
             ON CONFLICT (relid) DO UPDATE SET last_error = EXCLUDED.last_error, last_error_at = now()",
            None,
            &[relid.into(), message.into()],
        )?;
        Ok(())
    })
}

fn take_rows(
    client: &mut SpiClient<'_>,
    relid: pg_sys::Oid,
    max_rows: i64,
) -> SpiResult<Vec<InboxRow>> {
    let mut out = Vec::new();
    let mut taken = Vec::new();
    for r in client.update(
        // The cut-off is a scalar subquery (run once), so the delete is one range of the
        // (relid, id) index whatever the planner thinks of the inbox's size: the `id IN
        // (SELECT … LIMIT n)` form could get a nested-loop plan from stale statistics (an
        // inbox analyzed while nearly empty) and take minutes for 100k rows.
        &format!(
            "DELETE FROM writebehind.inbox
              WHERE relid = $1 AND id <= ({CUT_BEFORE_PACKED})
             RETURNING id, proxy_id, batch_seq, op::text, key, data, conflict_set, enqueued_at,
                       columns, vals, array_ndims(vals), array_length(vals, 1), array_length(vals, 2)"
        ),
        None,
        &[relid.into(), max_rows.into()],
    )? {
        let op: Option<String> = r.get(4)?;
        let head = InboxRow {
            id: r.get(1)?.unwrap_or_default(),
            proxy_id: r.get(2)?.unwrap_or_default(),
            batch_seq: r.get(3)?.unwrap_or_default(),
            op: op.and_then(|s| s.bytes().next()).unwrap_or(b'?'),
            key: r.get(5)?,
            data: r.get(6)?,
            conflict_set: r.get(7)?,
            enqueued_at: r.get(8)?,
        };
        let flat: Option<Vec<Option<String>>> = r.get(10)?;
        match flat {
            None => taken.push((head, None)),
            Some(flat) => {
                let dims = (
                    r.get::<i32>(11)?.unwrap_or(0),
                    r.get::<i32>(12)?.unwrap_or(0),
                    r.get::<i32>(13)?.unwrap_or(0),
                );
                let columns: Vec<String> = r.get(9)?.unwrap_or_default();
                taken.push((head, Some((columns, flat, dims))));
            }
        }
    }
    // RETURNING gives no order; the apply order is the id order, then a packed row's own.
    taken.sort_unstable_by_key(|(h, _)| h.id);
    for (head, packed) in taken {
        match packed {
            None => out.push(head),
            Some((columns, flat, dims)) => unpack::unpack(
                unpack::Packed {
                    head,
                    columns,
                    flat,
                    dims,
                },
                &mut out,
            ),
        }
    }
    Ok(out)
}

/// The last inbox id of a table's next round (`$1` the table, `$2` the most changes): the
/// first `$2` rows, cut where their changes (a packed row holds many) pass `$2`, but at least
/// one row; and never past the first packed row after the first row, which the packed fast
/// path may take (the JSON paths then stop there, and go on after it).
pub(crate) const CUT_BEFORE_PACKED: &str =
    "SELECT least(coalesce(max(c.id) FILTER (WHERE c.total <= $2), min(c.id)),
                  min(c.id) FILTER (WHERE c.packed AND c.rn > 1) - 1)
       FROM (SELECT i.id, sum(i.n) OVER (ORDER BY i.id) AS total,
                    row_number() OVER (ORDER BY i.id) AS rn, i.vals IS NOT NULL AS packed
               FROM writebehind.inbox i WHERE i.relid = $1 ORDER BY i.id LIMIT $2) c";

/// Runs `f` as `owner`, the way PostgreSQL runs another role's code in its own maintenance
/// commands (VACUUM, REFRESH MATERIALIZED VIEW): the current user switched, inside a
/// security-restricted operation (no temporary objects, no SET ROLE, no LISTEN), and with every
/// setting `f` changes — session-level ones included (`set_config(…, false)` in a trigger) —
/// undone when it returns. The owner's triggers can leave nothing behind in the worker's
/// session, whose own statements run as a superuser. The owner's code sees the search_path
/// the database's settings gave the session (see [`remember_owners_search_path`]), not the
/// worker's own `pg_catalog, pg_temp`.
pub(crate) fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    as_owner_with_path(owner, OWNERS_SEARCH_PATH.get(), f)
}

/// The search_path the database and role settings gave the worker's session when it started
/// (`"$user", public` unless set): what table owners' code (triggers, defaults, constraints)
/// runs with, as before the worker pinned its own path to `pg_catalog, pg_temp`.
static OWNERS_SEARCH_PATH: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// Notes the session's search_path for [`as_owner`], once (before the worker sets its own).
pub(crate) fn remember_owners_search_path() {
    if OWNERS_SEARCH_PATH.get().is_some() {
        return;
    }
    // SAFETY: reads a built-in setting's current value; the string is copied at once.
    let path = unsafe {
        let value = pg_sys::GetConfigOption(c"search_path".as_ptr(), true, false);
        (!value.is_null()).then(|| std::ffi::CStr::from_ptr(value).to_owned())
    };
    if let Some(path) = path {
        let _ = OWNERS_SEARCH_PATH.set(path);
    }
}

fn as_owner_with_path<R>(
    owner: pg_sys::Oid,
    path: Option<&std::ffi::CString>,
    f: impl FnOnce() -> R,
) -> R {
    let mut saved_uid = pg_sys::InvalidOid;
    let mut saved_ctx = 0;
    // SAFETY: plain calls into the user-id and GUC machinery. An ERROR inside `f` aborts the
    // (sub)transaction around it, which restores the user id, the security context and the
    // settings of the levels it opened itself.
    let nest = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_uid, &mut saved_ctx);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_ctx
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let nest = pg_sys::NewGUCNestLevel();
        if let Some(path) = path {
            // Saved at this level, as a function's SET clause is: undone below.
            pg_sys::set_config_option(
                c"search_path".as_ptr(),
                path.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        nest
    };
    let r = f();
    // SAFETY: as above; `nest` is the level opened above, and nothing in `f` outlives it.
    unsafe {
        pg_sys::AtEOXact_GUC(false, nest);
        pg_sys::SetUserIdAndSecContext(saved_uid, saved_ctx);
    }
    r
}

/// Applies a folded plan step by step, one statement per shape within a step (for an append
/// table, per run of one shape, so that rows keep their arrival order: serial and identity
/// values are drawn in it). A change that fails on an integrity constraint (class 23) as its
/// key's last step gets a second chance at the end of the round, in arrival order: what it
/// needed may be another key's change applied by a later statement (a parent row of the same
/// table, a unique value another key gave up). What still fails is a dead letter.
fn apply_plan(
    client: &mut SpiClient<'_>,
    meta: &TableMeta,
    plan: &fold::Plan,
    dead: &mut Vec<DeadLetter>,
) -> [usize; 3] {
    let mut applied = [0; 3];
    // (key index, step, failure) of changes to retry at the end.
    let mut again: Vec<(usize, usize, isolate::Failure)> = Vec::new();
    let failed = |key: usize, step: usize, f: isolate::Failure| {
        let k = &plan.keys[key];
        dead_letter(meta, &k.key, &k.changes[step], f.sqlstate, f.message)
    };
    for step in 0..plan.depth() {
        let mut runs: Vec<(Shape, Vec<usize>)> = Vec::new();
        let mut by_shape: HashMap<Shape, usize> = HashMap::new();
        for (i, k) in plan.keys.iter().enumerate() {
            let Some(change) = k.changes.get(step) else {
                continue;
            };
            let shape = Shape::of(&change.step);
            let run = if meta.append {
                match runs.last_mut() {
                    Some((s, members)) if *s == shape => {
                        members.push(i);
                        continue;
                    }
                    _ => None,
                }
            } else {
                by_shape.get(&shape).copied()
            };
            match run {
                Some(r) => runs[r].1.push(i),
                None => {
                    by_shape.insert(shape.clone(), runs.len());
                    runs.push((shape, vec![i]));
                }
            }
        }
        for (shape, members) in runs {
            let mut failures = Vec::new();
            applied[kind(&shape)] +=
                apply_members(client, meta, plan, &shape, step, &members, &mut failures);
            for f in failures {
                let key = members[f.index];
                let last = plan.keys[key].changes.len() == step + 1;
                if last && f.sqlstate.starts_with("23") {
                    again.push((key, step, f));
                } else {
                    dead.push(failed(key, step, f));
                }
            }
        }
    }
    again.sort_by_key(|(key, step, _)| plan.keys[*key].changes[*step].origin);
    for (key, step, first) in again {
        let shape = Shape::of(&plan.keys[key].changes[step].step);
        let mut failures = Vec::new();
        let done = apply_members(client, meta, plan, &shape, step, &[key], &mut failures);
        applied[kind(&shape)] += done;
        if done == 0 {
            dead.push(failed(key, step, failures.pop().unwrap_or(first)));
        }
    }
    applied
}

/// Index into the applied counts by kind: inserts, updates, deletes.
fn kind(shape: &Shape) -> usize {
    match shape {
        Shape::Insert { .. } => 0,
        Shape::Update { .. } => 1,
        Shape::Delete => 2,
    }
}

/// Applies step `step` of the keys `members` (indexes into `plan.keys`), all of `shape`, with
/// failures isolated (their `index` is a position in `members`); returns how many applied.
fn apply_members(
    client: &mut SpiClient<'_>,
    meta: &TableMeta,
    plan: &fold::Plan,
    shape: &Shape,
    step: usize,
    members: &[usize],
    failures: &mut Vec<isolate::Failure>,
) -> usize {
    let positions: Vec<usize> = (0..members.len()).collect();
    let mut run = |subset: &[usize]| {
        let changes: Vec<(&[String], &Step)> = subset
            .iter()
            .map(|&p| {
                let k = &plan.keys[members[p]];
                (k.key.as_slice(), &k.changes[step].step)
            })
            .collect();
        let stmt = statements::build(meta, shape, &changes);
        let args: Vec<pgrx::datum::DatumWithOid> =
            stmt.columns.into_iter().map(Into::into).collect();
        if let Err(e) = client.update(stmt.sql.as_str(), None, &args) {
            pgrx::error!("apply statement failed: {e}");
        }
    };
    isolate::apply_isolated(&positions, &mut run, failures)
}

/// Encodes a folded change back into inbox form (docs/inbox.md), so that a retry can re-queue it.
fn dead_letter(
    meta: &TableMeta,
    key: &[String],
    change: &Change,
    sqlstate: String,
    message: String,
) -> DeadLetter {
    let key_json = (!meta.append).then(|| serde_json::to_string(key).unwrap_or_default());
    let (op, data, conflict_set) = match &change.step {
        Step::Delete => (b'D', None, None),
        Step::Insert { conflict, values } => {
            let non_key: BTreeMap<&String, &Option<String>> = values
                .iter()
                .filter(|(c, _)| !meta.key_columns.contains(c))
                .collect();
            let data = serde_json::to_string(&non_key).ok();
            match conflict {
                Conflict::Ignore => (b'N', data, None),
                Conflict::UpdateSet(cols) => (b'X', data, Some(cols.clone())),
                _ => (b'I', data, None),
            }
        }
        Step::Update { ops } => {
            let obj: serde_json::Map<String, serde_json::Value> = ops
                .iter()
                .map(|(c, op)| {
                    let mut m = serde_json::Map::new();
                    match op {
                        ColOp::Set(v) => {
                            m.insert("set".into(), v.clone().into());
                        }
                        ColOp::Add(k) => {
                            m.insert("add".into(), k.clone().into());
                        }
                        ColOp::SetAdd(v, k) => {
                            m.insert("set".into(), v.clone().into());
                            m.insert("add".into(), k.clone().into());
                        }
                    }
                    (c.clone(), serde_json::Value::Object(m))
                })
                .collect();
            (b'U', serde_json::to_string(&obj).ok(), None)
        }
    };
    DeadLetter {
        origin: change.origin,
        op,
        key: key_json,
        data,
        conflict_set,
        sqlstate,
        message,
    }
}

fn write_dead_letters(
    client: &mut SpiClient<'_>,
    relid: pg_sys::Oid,
    table_name: &str,
    rows: &[InboxRow],
    dead: &[DeadLetter],
) -> SpiResult<()> {
    if dead.is_empty() {
        return Ok(());
    }
    let ops: Vec<Option<String>> = dead
        .iter()
        .map(|d| Some((d.op as char).to_string()))
        .collect();
    let keys: Vec<Option<String>> = dead.iter().map(|d| d.key.clone()).collect();
    let data: Vec<Option<String>> = dead.iter().map(|d| d.data.clone()).collect();
    let sets: Vec<Option<String>> = dead
        .iter()
        .map(|d| d.conflict_set.as_ref().map(|c| array_literal(c)))
        .collect();
    let states: Vec<Option<String>> = dead.iter().map(|d| Some(d.sqlstate.clone())).collect();
    let messages: Vec<Option<String>> = dead.iter().map(|d| Some(d.message.clone())).collect();
    let proxies: Vec<Option<String>> = dead
        .iter()
        .map(|d| Some(rows[d.origin].proxy_id.clone()))
        .collect();
    let seqs: Vec<Option<i64>> = dead
        .iter()
        .map(|d| Some(rows[d.origin].batch_seq))
        .collect();
    let enq: Vec<Option<pgrx::datum::TimestampWithTimeZone>> =
        dead.iter().map(|d| rows[d.origin].enqueued_at).collect();
    client.update(
        "INSERT INTO writebehind.dead_letters
             (relid, table_name, op, key, data, conflict_set, sqlstate, message, proxy_id, batch_seq, enqueued_at)
         SELECT $1, $2, d.op::\"char\", d.key, d.data, d.cs::text[], d.st, d.msg, d.pid, d.seq, d.enq
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                       $10::bigint[], $11::timestamptz[]) AS d(op, key, data, cs, st, msg, pid, seq, enq)",
        None,
        &[
            relid.into(),
            table_name.into(),
            ops.into(),
            keys.into(),
            data.into(),
            sets.into(),
            states.into(),
            messages.into(),
            proxies.into(),
            seqs.into(),
            enq.into(),
        ],
    )?;
    Ok(())
}

/// A PostgreSQL array literal of text values.
fn array_literal(items: &[String]) -> String {
    let inner: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", inner.join(","))
}
