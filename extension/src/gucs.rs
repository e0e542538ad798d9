//! The extension's configuration parameters (`writebehind.*`), one documented static each.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Databases whose apply workers run (comma-separated). Read once at server start.
pub static DATABASES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// How long a worker sleeps when nobody wakes it, in milliseconds.
pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// The most inbox changes one table's apply round takes (a packed row counts its changes).
pub static MAX_APPLY_ROWS: GucSetting<i32> = GucSetting::<i32>::new(50_000);

/// How long the worker waits for a lock a user's transaction holds before it leaves the
/// table for the next round (`lock_timeout` of its own session), in milliseconds; 0 waits for
/// ever. Bounds how long one locked table holds up every other table of the database.
pub static LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// How long a table's rounds may keep failing with an error the worker retries (a deadlock,
/// a serialization failure, an I/O error: `apply::isolate::is_transient`) before the next round
/// narrows the failure down as it does any other error, in milliseconds; 0 retries for ever.
/// A change that fails alone (or while others of its round apply) then becomes a dead letter
/// with its SQLSTATE instead of holding up its table for good. Lock timeouts never do.
pub static TRANSIENT_ERROR_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);

/// Whether rounds of one shape are applied by one statement (`apply/uniform.rs`).
pub static UNIFORM_APPLY: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Per session: make writes through the proxy synchronous. Reported to the client
/// (GUC_REPORT) like `client_encoding`, so the proxy follows it however it is set (SET, role
/// and database defaults, `set_config`, functions); the extension itself ignores it.
pub static SYNC: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Registers every parameter; called once from `_PG_init`.
pub fn init() {
    GucRegistry::define_string_guc(
        c"writebehind.databases",
        c"Databases whose write-behind apply workers run.",
        c"A comma-separated list of database names; one background worker applies each one's inbox.",
        &DATABASES,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"writebehind.naptime",
        c"How long an apply worker sleeps when it is not woken.",
        c"Workers are woken when a batch commits; this is the fallback polling interval.",
        &NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"writebehind.max_apply_rows",
        c"The most inbox changes one apply round takes per table (a packed row counts its changes).",
        c"Larger rounds amortise statement overhead; smaller rounds hold locks for less time.",
        &MAX_APPLY_ROWS,
        1,
        10_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"writebehind.lock_timeout",
        c"How long an apply worker waits for a lock before it retries the table in a later round.",
        c"The worker's own lock_timeout; its changes stay queued (they never become dead letters for it). 0 waits for ever.",
        &LOCK_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"writebehind.transient_error_timeout",
        c"How long a table may keep failing with a retried error before its failing changes become dead letters.",
        c"Deadlocks, serialization failures, cancels, resource and I/O errors are retried; a table failing with one this long (and 3 rounds in a row) has it narrowed down in its next round like any other error. Lock timeouts are always retried. 0 retries for ever.",
        &TRANSIENT_ERROR_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"writebehind.uniform_apply",
        c"Apply rounds whose rows all have one shape with one statement.",
        c"Uniform INSERT and increment rounds are decoded and applied by PostgreSQL in one statement; off sends every round through the general path (same result, slower).",
        &UNIFORM_APPLY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"writebehind.sync",
        c"Make this session's writes through writebehind-proxy synchronous.",
        c"Tracked by the proxy per session; has no effect on direct connections.",
        &SYNC,
        GucContext::Userset,
        GucFlags::REPORT,
    );
}

/// The database names listed in `writebehind.databases`.
pub fn databases() -> Vec<String> {
    DATABASES
        .get()
        .and_then(|s| s.into_string().ok())
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}
