//! The apply workers: one background worker per database in `writebehind.databases`, woken by
//! committed batches (and every naptime), applying each pending table in its own transaction.

use crate::{apply, gucs, shmem};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::ffi::CString;
use std::time::{Duration, Instant};

/// Registers one worker per configured database; called from `_PG_init`.
pub fn register() {
    for db in gucs::databases().into_iter().take(shmem::MAX_WORKERS) {
        BackgroundWorkerBuilder::new(&format!("pg_writebehind apply worker for {db}"))
            .set_type("pg_writebehind apply worker")
            .set_function("writebehind_worker_main")
            .set_library("pg_writebehind")
            .set_extra(&db)
            .enable_spi_access()
            .set_restart_time(Some(Duration::from_secs(1)))
            .load();
    }
}

/// Entry point of an apply worker.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn writebehind_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db = BackgroundWorker::get_extra().to_string();
    BackgroundWorker::connect_worker_to_spi(Some(&db), None);
    // SAFETY: set once connected to a database.
    let db_oid = unsafe { pg_sys::MyDatabaseId };
    let Some(slot) = shmem::claim(db_oid) else {
        log!("pg_writebehind: no free worker slot for database {db}");
        return;
    };
    log!("pg_writebehind apply worker started for database {db}");
    own_settings();
    let mut failing: HashMap<pg_sys::Oid, Failing> = HashMap::new();
    loop {
        if BackgroundWorker::sighup_received() {
            // SAFETY: reloading the configuration file is what a SIGHUP asks for.
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            own_settings();
        }
        let busy = run_round(slot, &mut failing);
        report_stats();
        // After a full round, go again at once; otherwise sleep until woken or the naptime.
        let nap = if busy { Duration::ZERO } else { naptime() };
        if !BackgroundWorker::wait_latch(Some(nap.max(Duration::from_millis(1)))) {
            break;
        }
    }
    shmem::release(slot);
    // Exit with 1 so the postmaster restarts the worker after bgw_restart_time, whether it was
    // terminated by an administrator or crashed; at shutdown nothing is restarted anyway.
    // SAFETY: ending the process is always allowed here.
    unsafe { pg_sys::proc_exit(1) };
}

/// The worker's session settings, over the database's and role's defaults (`ALTER DATABASE …
/// SET`), which are meant for user sessions: a `statement_timeout` would cancel large rounds,
/// `default_transaction_read_only` would fail every one, a serializable default would add
/// serialization failures, and the lock wait is bounded by `writebehind.lock_timeout`. What
/// still fails for such reasons is retried, not dead-lettered (`apply::isolate`; but see
/// `writebehind.transient_error_timeout`).
fn own_settings() {
    // Kept for the table owners' code before the worker's own path replaces it.
    apply::remember_owners_search_path();
    let lock_timeout = format!("{}ms", gucs::LOCK_TIMEOUT_MS.get());
    let settings = [
        // The worker's own statements run as a superuser: no schema a database owner puts
        // first (`ALTER DATABASE … SET search_path`) may hold a relation, function or operator
        // they would take for the catalog's.
        ("search_path", "pg_catalog, pg_temp"),
        ("statement_timeout", "0"),
        ("lock_timeout", lock_timeout.as_str()),
        ("default_transaction_read_only", "off"),
        ("default_transaction_isolation", "read committed"),
    ];
    for (name, value) in settings {
        let (Ok(name), Ok(value)) = (CString::new(name), CString::new(value)) else {
            continue;
        };
        // SAFETY: plain settings without catalog access, set between transactions with the
        // priority PostgreSQL's own autovacuum workers use for theirs.
        unsafe {
            pg_sys::SetConfigOption(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SUSET,
                pg_sys::GucSource::PGC_S_OVERRIDE,
            )
        };
    }
}

/// Hands the table statistics of the rounds so far (rows inserted, updated, deleted, HOT
/// updates) to the cumulative statistics system, as a backend does before it goes idle.
/// Without it autovacuum never learns of the applied rows, and write-behind tables and the
/// inbox are never vacuumed. PostgreSQL flushes at most once a second and keeps the rest for a
/// later call; the worker calls it after every round, and rounds come at least every naptime.
fn report_stats() {
    // SAFETY: called between transactions at the worker's top level, as PostgreSQL's own
    // backends call it before going idle.
    unsafe { pg_sys::pgstat_report_stat(false) };
}

fn naptime() -> Duration {
    Duration::from_millis(gucs::NAPTIME_MS.get().max(10) as u64)
}

/// A table whose rounds fail with an error that may be narrowed down
/// (`apply::isolate::may_narrow`); forgotten when one of its rounds commits.
struct Failing {
    since: Instant,
    rounds: u32,
    /// The latest round's SQLSTATE.
    sqlstate: [u8; 5],
    /// Whether narrowing it down was logged.
    logged: bool,
}

/// How many rounds in a row must have failed, besides `writebehind.transient_error_timeout`,
/// before a table's round is narrowed down: one long pass over other tables is not enough.
const NARROW_AFTER_ROUNDS: u32 = 3;

impl Failing {
    /// The SQLSTATE the table's next round narrows down, if it is due.
    fn due(&mut self, relid: pg_sys::Oid, patience: Option<Duration>) -> Option<[u8; 5]> {
        let p = patience?;
        if self.since.elapsed() < p || self.rounds < NARROW_AFTER_ROUNDS {
            return None;
        }
        if !self.logged {
            self.logged = true;
            warning!(
                "pg_writebehind: table {} has failed with {} for {} ms: narrowing it down to \
                 the changes that raise it (they become dead letters)",
                u32::from(relid),
                String::from_utf8_lossy(&self.sqlstate),
                p.as_millis()
            );
        }
        Some(self.sqlstate)
    }
}

/// One round over every pending table. Returns whether some table hit its row limit.
fn run_round(slot: usize, failing: &mut HashMap<pg_sys::Oid, Failing>) -> bool {
    let max_rows = i64::from(gucs::MAX_APPLY_ROWS.get());
    let tables = guarded(|| {
        BackgroundWorker::transaction(|| {
            let installed = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_writebehind')",
            );
            match installed {
                Ok(Some(true)) => apply::pending_tables().map(Some).map_err(|e| e.to_string()),
                Ok(_) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    });
    let tables = match tables {
        Ok(Some(t)) => t,
        Ok(None) => {
            shmem::set_state(slot, shmem::WorkerState::NoExtension);
            return false;
        }
        Err(message) => {
            shmem::record_error(slot, &message);
            warning!("pg_writebehind: listing pending tables failed: {message}");
            return false;
        }
    };
    // A table no longer pending (its rows were deleted) starts afresh.
    failing.retain(|relid, _| tables.contains(relid));
    if tables.is_empty() {
        shmem::set_state(slot, shmem::WorkerState::Idle);
        return false;
    }
    shmem::set_state(slot, shmem::WorkerState::Applying);
    let mut applied = 0i64;
    let mut full = false;
    let patience = match gucs::TRANSIENT_ERROR_TIMEOUT_MS.get() {
        0 => None,
        ms => Some(Duration::from_millis(ms as u64)),
    };
    for relid in tables {
        let narrow = failing.get_mut(&relid).and_then(|f| f.due(relid, patience));
        let result = guarded(|| {
            BackgroundWorker::transaction(|| {
                // An error must abort the transaction: the round's inbox rows are deleted
                // when taken, and a commit would lose them.
                match apply::isolate::narrowing(narrow, || apply::apply_table(relid, max_rows)) {
                    Ok(out) => {
                        refuse_if_all_failed(&out);
                        Ok(out)
                    }
                    Err(e) => error!("pg_writebehind: applying table {}: {e}", u32::from(relid)),
                }
            })
        });
        match result {
            Ok(out) => {
                failing.remove(&relid);
                applied += out.applied as i64;
                full |= out.rows as i64 >= max_rows;
            }
            Err(message) => {
                let code = message.get(..5).filter(|c| apply::isolate::may_narrow(c));
                if let Some(code) = code.and_then(|c| <[u8; 5]>::try_from(c.as_bytes()).ok()) {
                    let f = failing.entry(relid).or_insert_with(|| Failing {
                        since: Instant::now(),
                        rounds: 0,
                        sqlstate: code,
                        logged: false,
                    });
                    f.rounds += 1;
                    f.sqlstate = code;
                }
                shmem::record_error(slot, &message);
                warning!(
                    "pg_writebehind: applying table {} failed: {message}",
                    u32::from(relid)
                );
                let _ = guarded(|| {
                    BackgroundWorker::transaction(|| {
                        apply::record_table_error(relid, &message).map_err(|e| e.to_string())
                    })
                });
            }
        }
    }
    shmem::round_done(slot, applied);
    shmem::set_state(slot, shmem::WorkerState::Idle);
    full
}

/// A narrowed round in which several changes failed with transient errors and none applied
/// says nothing about the changes (the disk is full, the server is read-only): it raises the
/// first one's error again, aborting the round, so that none becomes a dead letter.
fn refuse_if_all_failed(out: &apply::Outcome) {
    if out.transient_keys > 1 && out.applied == 0 {
        if let Some(code) = out.transient_code {
            // pgrx knows PostgreSQL's own codes; another (a trigger's own) is raised as its
            // class (its first two characters, the low twelve bits), which is transient too.
            let errcode = match PgSqlErrorCode::from(code) {
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR => PgSqlErrorCode::from(code & 0xFFF),
                known => known,
            };
            ereport!(
                ERROR,
                errcode,
                format!(
                    "the changes of {} keys failed with retried errors and none applied: \
                     retried later",
                    out.transient_keys
                )
            );
        }
    }
}

/// Runs `f`; an ERROR inside it aborts the open transaction and comes back as a message,
/// so that no error ever ends the worker's loop.
fn guarded<R>(f: impl FnOnce() -> Result<R, String> + std::panic::UnwindSafe) -> Result<R, String> {
    PgTryBuilder::new(f)
        .catch_others(|e| {
            // SAFETY: we are at top level of the worker with a failed transaction open (or none):
            // aborting it is exactly what PostgreSQL's own error recovery would do.
            unsafe {
                pg_sys::AbortCurrentTransaction();
            }
            let (sqlstate, message) = apply::isolate::describe(&e);
            Err(format!("{sqlstate}: {message}"))
        })
        .execute()
}
