//! Whether a session's user may write a write-behind table: PostgreSQL's own answer
//! (`has_table_privilege`), cached per database until something that may change it happens.
//!
//! What invalidates the answers (each bumps the [`generation`](Privileges::generation)):
//! - a GRANT or REVOKE in the database (the extension's event trigger notifies `privileges`),
//!   DDL on a registered table and every other registry notification;
//! - a change of role membership or of a role's attributes (superuser, inherit, renames,
//!   drops), or of a registered table's owner or ACL by a command that sends no notification
//!   (`REASSIGN OWNED`, `DROP OWNED`, a REVOKE while the own connection was down): a
//!   fingerprint of them is looked at once a second, and comes with every answer;
//! - DDL of a session through this proxy, once it committed (before the notification comes).
//!
//! Statements prepared as acknowledgeable writes remember the generation they were checked in
//! and are checked again when it changed.

use super::runtime::DbRuntime;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the fingerprint is compared with the last look.
const POLL: Duration = Duration::from_secs(1);

/// A fingerprint (SQL expression) of everything `has_table_privilege` depends on: every role
/// (name, superuser, inherit, …), every membership (whole rows, so the columns later versions
/// add count too), every role and database default setting (see [`ASK`]), and the owner and ACL of every registered table (`REASSIGN OWNED` and
/// `DROP OWNED` fire no event trigger, and a REVOKE made while the own connection was down
/// sends its notification to no one).
macro_rules! fingerprint {
    () => {
        "encode(sha256(convert_to(
            coalesce((SELECT string_agg(r::text, ',' ORDER BY r.oid) FROM pg_catalog.pg_roles r), '')
            || '/' ||
            coalesce((SELECT string_agg(m::text, ',' ORDER BY m::text)
                        FROM pg_catalog.pg_auth_members m), '')
            || '/' ||
            coalesce((SELECT string_agg(s::text, ',' ORDER BY s::text)
                        FROM pg_catalog.pg_db_role_setting s), '')
            || '/' ||
            coalesce((SELECT string_agg(c.oid::text || ':' || c.relowner::text || ':'
                                        || coalesce(c.relacl::text, ''), ',' ORDER BY c.oid)
                        FROM pg_catalog.pg_class c JOIN writebehind.tables t ON t.relid = c.oid), ''),
            'UTF8')), 'hex')"
    };
}

/// The fingerprint alone (the watcher's look).
const FINGERPRINT: &str = concat!("SELECT ", fingerprint!());

/// One answer, and the fingerprint of what it depended on when PostgreSQL gave it. Besides the
/// table privilege, an INSERT needs USAGE (or UPDATE) on every sequence a column default
/// draws from with `nextval` (asked whether or not the write leaves that column to its
/// default). And no answer is yes for a user whose role or database defaults set `role`
/// (the session then runs as another role than the one asked about),
/// `session_authorization` or `session_replication_role` (which decides whether foreign keys
/// and triggers fire): PostgreSQL decides those sessions' writes.
const ASK: &str = concat!(
    "SELECT has_table_privilege($1::text::name, $2::int8::oid, $3)
            AND ($3 <> 'INSERT' OR NOT EXISTS (
                  SELECT 1 FROM pg_catalog.pg_attrdef ad
                    JOIN pg_catalog.pg_depend d
                      ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                     AND d.objid = ad.oid
                     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    JOIN pg_catalog.pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
                   WHERE ad.adrelid = $2::int8::oid
                     -- has_sequence_privilege raises for anything but a sequence, and the
                     -- planner may ask it before it checks relkind.
                     AND CASE WHEN s.relkind = 'S'
                              THEN NOT has_sequence_privilege($1::text::name, s.oid,
                                                              'USAGE, UPDATE')
                         END))
            AND NOT EXISTS (
                  SELECT 1 FROM pg_catalog.pg_db_role_setting rs,
                                unnest(rs.setconfig) AS c(setting)
                   WHERE rs.setrole IN (0, (SELECT r.oid FROM pg_catalog.pg_roles r
                                             WHERE r.rolname = $1::text))
                     AND rs.setdatabase IN (0, (SELECT db.oid FROM pg_catalog.pg_database db
                                                 WHERE db.datname = current_database()))
                     AND c.setting ~* '^(role|session_authorization|session_replication_role)='), ",
    fingerprint!()
);

/// A table privilege PostgreSQL checks for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    Insert,
    Update,
    Delete,
    Select,
}

impl Privilege {
    /// The name `has_table_privilege` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
            Privilege::Select => "SELECT",
        }
    }
}

/// One database's cached answers.
#[derive(Default)]
pub struct Privileges {
    /// Bumped by every invalidation. An answer counts only in the generation it was asked in,
    /// so one that was in flight while something changed is never used.
    generation: AtomicU64,
    /// (user, relid, privilege) → (generation asked in, allowed).
    answers: DashMap<(String, u32, Privilege), (u64, bool)>,
    /// The fingerprint every cached answer was given under. Whoever sees another one (the
    /// watcher, or an answer that came with it) forgets them all and takes it, so a change
    /// undone between two looks cannot leave an answer of the changed state behind.
    baseline: std::sync::Mutex<Option<String>>,
}

impl Privileges {
    /// The current generation: answers and prepared statements checked in an earlier one are
    /// out of date.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets every answer: the next check of each asks PostgreSQL again.
    pub fn forget(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.answers.clear();
    }

    /// Takes `seen` as the fingerprint of what the answers depend on; when it differs from
    /// the one they were given under, forgets them all and returns true.
    pub fn observe(&self, seen: String) -> bool {
        let mut baseline = self.baseline.lock().unwrap_or_else(|e| e.into_inner());
        if baseline.as_deref() == Some(seen.as_str()) {
            return false;
        }
        *baseline = Some(seen);
        self.forget();
        true
    }

    /// Whether `user` holds `privilege` on the whole table `relid`, and the generation the
    /// answer belongs to; asked through `own` (called only then) when no answer of the
    /// current generation is cached. `None`: not known (PostgreSQL unreachable), not cached.
    pub async fn allowed(
        &self,
        own: impl FnOnce() -> Arc<tokio_postgres::Client>,
        user: &str,
        relid: u32,
        privilege: Privilege,
    ) -> Option<Answer> {
        let generation = self.generation();
        let key = (user.to_string(), relid, privilege);
        if let Some(entry) = self.answers.get(&key) {
            let (asked_in, allowed) = *entry;
            if asked_in == generation {
                return Some(Answer {
                    generation,
                    allowed,
                });
            }
        }
        let row = own()
            .query_one(ASK, &[&user, &i64::from(relid), &privilege.as_str()])
            .await
            .ok()?;
        let allowed: bool = row.try_get(0).ok()?;
        // Given under another fingerprint: used for this write only, and every answer given
        // under the old one is forgotten.
        if !self.observe(row.try_get(1).ok()?) {
            self.answers.insert(key, (generation, allowed));
        }
        Some(Answer {
            generation,
            allowed,
        })
    }
}

/// PostgreSQL's answer on one privilege, and the [`generation`](Privileges::generation) it
/// was asked in.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub generation: u64,
    pub allowed: bool,
}

/// One session's copy of the answers it used, so that its writes look them up without
/// allocating or touching the shared map; dropped as a whole when the generation moves on.
#[derive(Debug, Default)]
pub struct SessionPrivileges {
    generation: u64,
    answers: foldhash::HashMap<(u32, Privilege), bool>,
}

impl SessionPrivileges {
    /// The answer for `relid` and `privilege` in `generation`, if this session has it.
    pub fn get(&mut self, generation: u64, relid: u32, privilege: Privilege) -> Option<bool> {
        if self.generation != generation {
            self.answers.clear();
            self.generation = generation;
            return None;
        }
        self.answers.get(&(relid, privilege)).copied()
    }

    /// Keeps `answer` if it belongs to the generation this session is in.
    pub fn keep(&mut self, relid: u32, privilege: Privilege, answer: Answer) {
        if answer.generation == self.generation {
            self.answers.insert((relid, privilege), answer.allowed);
        }
    }
}

/// The fingerprint now (see `fingerprint!`; the query always returns one row).
pub async fn fingerprint(
    own: &tokio_postgres::Client,
) -> Result<Option<String>, tokio_postgres::Error> {
    // One round trip, no named statement: asked once a second.
    let rows = own.query_typed(FINGERPRINT, &[]).await?;
    rows.first().map(|r| r.try_get(0)).transpose()
}

/// Looks at the fingerprint of `rt`'s database once a second and forgets every answer when it
/// changed (see [`Privileges::observe`]). Ends when the runtime is dropped; a failed look
/// (PostgreSQL away) is tried again a second later.
pub fn watch(rt: Weak<DbRuntime>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(rt) = rt.upgrade() else { return };
            match fingerprint(&rt.own()).await {
                Ok(None) => {}
                Ok(Some(seen)) => {
                    if rt.privileges.observe(seen) {
                        tracing::info!(
                            "roles or table privileges changed: cached answers forgotten"
                        );
                    }
                }
                Err(error) => tracing::debug!(%error, "looking at roles and privileges failed"),
            }
        }
    })
}
