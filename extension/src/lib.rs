//! pg_writebehind: the server half of write-behind for PostgreSQL (skeleton).
use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'pg_writebehind'"]
    }
}
