//! SQL-callable functions written in Rust: waking workers and reading their shared-memory state.
//! The rest of the SQL surface (enable, disable, flush, begin_batch, views) is in sql/schema.sql.

use crate::shmem;
use pgrx::callbacks::{register_xact_callback, PgXactCallbackEvent};
use pgrx::prelude::*;

/// Wakes this database's apply worker now.
#[pg_extern(volatile, parallel_unsafe)]
fn _wake() {
    // SAFETY: MyDatabaseId is set in every backend connected to a database.
    shmem::wake(unsafe { pg_sys::MyDatabaseId });
}

/// Wakes this database's apply worker when the current transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
fn _wake_on_commit() {
    // SAFETY: as above.
    let db = unsafe { pg_sys::MyDatabaseId };
    register_xact_callback(PgXactCallbackEvent::Commit, move || shmem::wake(db));
}

/// One row per running apply worker.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::type_complexity)]
fn _worker_status() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(database, Option<String>),
        name!(state, String),
        name!(rounds, i64),
        name!(applied, i64),
        name!(errors, i64),
        name!(last_round_at, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
    ),
> {
    let rows: Vec<_> = shmem::snapshot()
        .into_iter()
        .map(|s| {
            let database = database_name(s.database);
            let last = (s.last_round_at != 0)
                .then(|| TimestampWithTimeZone::try_from(s.last_round_at).ok())
                .flatten();
            (
                s.pid,
                database,
                s.state().name().to_string(),
                s.rounds,
                s.applied,
                s.errors,
                last,
                s.last_error(),
            )
        })
        .collect();
    TableIterator::new(rows)
}

fn database_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: get_database_name returns a palloc'd copy or NULL.
    unsafe {
        let p = pg_sys::get_database_name(oid);
        (!p.is_null()).then(|| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}
