//! pg_writebehind: the server half of write-behind for PostgreSQL.
//!
//! Layout:
//! - [`gucs`]: the `writebehind.*` configuration parameters.
//! - [`shmem`]: worker slots in shared memory (state, counters, latches to wake).
//! - [`api`]: SQL-callable Rust functions (wake-ups, worker status); the rest of the SQL surface
//!   (registry, inbox, `enable`, `flush`, views) is hand-written in `sql/schema.sql`.
//! - [`worker`]: the apply background workers.
//! - [`apply`]: reading, folding and applying a table's inbox rows set-wise.

use pgrx::prelude::*;

mod api;
mod apply;
mod gucs;
mod shmem;
mod worker;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!(
    "../../sql/schema.sql",
    name = "schema",
    requires = [api::_wake, api::_wake_on_commit, api::_worker_status]
);

/// Library load: refuses to run unless preloaded, then registers GUCs, shared memory, workers.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // SAFETY: reading a backend global.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_writebehind must be loaded via shared_preload_libraries",
            "Add pg_writebehind to shared_preload_libraries in postgresql.conf and restart the server."
        );
    }
    gucs::init();
    shmem::init();
    worker::register();
}

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_writebehind'"]
    }
}
