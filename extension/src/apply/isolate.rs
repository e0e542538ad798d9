//! Running a statement over a group of changes in a subtransaction; on failure, retrying by
//! halves down to single changes, so one bad row never costs the rest of the round. Errors that
//! say nothing about the changes (a lock wait timed out, a deadlock, a cancel, a full disk)
//! abort the whole round instead, to be retried, unless the table has failed with them for
//! `writebehind.transient_error_timeout` ([`narrowing`]).

use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::PgTryBuilder;
use std::cell::Cell;
use std::panic::AssertUnwindSafe;

thread_local! {
    /// The transient SQLSTATE a table's round narrows down (see [`narrowing`]).
    static NARROWING: Cell<Option<[u8; 5]>> = const { Cell::new(None) };
}

/// Runs `f` with the transient error `sqlstate` (a table's rounds have failed with it for
/// `writebehind.transient_error_timeout`) narrowed down to the changes that raise it, like
/// any other error: a change that always fails with it (a trigger raising
/// `serialization_failure`) becomes a dead letter instead of failing its table's every round.
/// Other transient errors, and lock timeouts always, still abort the round.
pub fn narrowing<R>(sqlstate: Option<[u8; 5]>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<[u8; 5]>);
    impl Drop for Reset {
        fn drop(&mut self) {
            NARROWING.with(|n| n.set(self.0));
        }
    }
    let _reset = Reset(NARROWING.with(|n| n.replace(sqlstate)));
    f()
}

/// Whether a round failing with `sqlstate` may be narrowed down once it has failed so for
/// long enough: a transient error other than a lock timeout (a lock wait always waits).
pub fn may_narrow(sqlstate: &str) -> bool {
    is_transient(sqlstate) && sqlstate != "55P03"
}

/// Why one change could not apply.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Index of the change in the caller's list.
    pub index: usize,
    pub sqlstate: String,
    pub message: String,
}

/// Runs `f` in an internal subtransaction; an ERROR rolls the subtransaction back and is
/// returned as (SQLSTATE, message) instead of aborting the whole transaction. A
/// [transient](is_transient) error is raised again after the rollback: it aborts the round,
/// whose changes stay in the inbox for the next one.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> Result<R, (String, String)> {
    // SAFETY: the standard PL/pgSQL exception-block pattern: remember the memory context and
    // resource owner, begin a subtransaction, and on error roll it back and restore both.
    let result = unsafe {
        let ctx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let result = PgTryBuilder::new(AssertUnwindSafe(|| Ok(f())))
            .catch_others(|e| Err(Box::new(e)))
            .execute();
        match result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => pg_sys::RollbackAndReleaseCurrentSubTransaction(),
        }
        pg_sys::MemoryContextSwitchTo(ctx);
        pg_sys::CurrentResourceOwner = owner;
        result
    };
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            let (sqlstate, message) = describe(&e);
            let narrowed = NARROWING
                .with(|n| n.get())
                .is_some_and(|n| n == sqlstate.as_bytes());
            if is_transient(&sqlstate) && !(narrowed && may_narrow(&sqlstate)) {
                (*e).rethrow();
            }
            Err((sqlstate, message))
        }
    }
}

/// Whether an error with this SQLSTATE is about the moment, not about the changes: applying
/// them again later may well succeed, so they do not become dead letters (unless
/// [`narrowing`]). Transaction
/// rollback (40: serialization failure, deadlock), insufficient resources (53: disk full, out
/// of memory), lock not available (55P03: `lock_timeout`), operator intervention (57: cancel,
/// shutdown), system errors (58: I/O), and a read-only transaction (25006: the server went
/// read-only).
pub fn is_transient(sqlstate: &str) -> bool {
    matches!(sqlstate.get(..2), Some("40" | "53" | "57" | "58"))
        || matches!(sqlstate, "55P03" | "25006")
}

/// SQLSTATE and message of a caught error.
pub fn describe(e: &CaughtError) -> (String, String) {
    let report = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
        CaughtError::RustPanic { ereport, .. } => ereport,
    };
    (
        sqlstate(report.sql_error_code() as i32),
        report.message().to_string(),
    )
}

/// Unpacks PostgreSQL's MAKE_SQLSTATE encoding into the five-character code.
pub fn sqlstate(code: i32) -> String {
    (0..5)
        .map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char)
        .collect()
}

/// PostgreSQL's MAKE_SQLSTATE encoding of the five-character `code` (the inverse of
/// [`sqlstate`]).
pub fn sqlstate_code(code: &str) -> i32 {
    code.bytes()
        .take(5)
        .enumerate()
        .map(|(i, c)| (i32::from(c.wrapping_sub(b'0')) & 0x3F) << (6 * i))
        .sum()
}

/// Applies `run` to `items` (indexes into the caller's changes); whatever fails is narrowed
/// down by halves and returned as single failures. Returns how many items applied.
pub fn apply_isolated(
    items: &[usize],
    run: &mut dyn FnMut(&[usize]),
    failures: &mut Vec<Failure>,
) -> usize {
    if items.is_empty() {
        return 0;
    }
    match in_subtransaction(|| run(items)) {
        Ok(()) => items.len(),
        Err((sqlstate, message)) if items.len() == 1 => {
            failures.push(Failure {
                index: items[0],
                sqlstate,
                message,
            });
            0
        }
        Err(_) => {
            let (a, b) = items.split_at(items.len() / 2);
            apply_isolated(a, run, failures) + apply_isolated(b, run, failures)
        }
    }
}
