//! The configuration a running proxy can change: admin `RELOAD` reads the configuration
//! again and applies the keys in [`RELOADABLE`]; the others keep their start-up values until
//! the next start.

use crate::config::Config;
use std::sync::{Arc, RwLock};

/// Keys `RELOAD` applies at once. Session-level ones (`max_message_size`, `idle_timeout`,
/// `barrier_timeout`) apply to sessions that start afterwards.
pub const RELOADABLE: &[&str] = &[
    "admin_users",
    "max_client_conn",
    "max_message_size",
    "idle_timeout",
    "barrier_timeout",
    "flush_interval",
    "max_batch_rows",
    "max_pending_rows",
    "max_pending_bytes",
    "overflow",
    "overflow_timeout",
    "shutdown_timeout",
];

/// The running configuration: start-up values, with the reloadable keys as last reloaded.
#[derive(Debug)]
pub struct LiveConfig(RwLock<Arc<Config>>);

impl LiveConfig {
    /// The configuration the proxy started with.
    pub fn new(config: Config) -> Self {
        Self(RwLock::new(Arc::new(config)))
    }

    /// The configuration now.
    pub fn get(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes the [`RELOADABLE`] keys from `new` and returns the configuration now in force.
    pub fn reload(&self, new: &Config) -> Arc<Config> {
        let mut guard = self.0.write().unwrap_or_else(|e| e.into_inner());
        let merged = Arc::new(with_reloadable(&guard, new));
        *guard = merged.clone();
        merged
    }
}

/// `running` with the [`RELOADABLE`] keys of `new`.
fn with_reloadable(running: &Config, new: &Config) -> Config {
    let mut c = running.clone();
    c.admin_users = new.admin_users.clone();
    c.max_client_conn = new.max_client_conn;
    c.max_message_size = new.max_message_size;
    c.idle_timeout = new.idle_timeout;
    c.barrier_timeout = new.barrier_timeout;
    c.flush_interval = new.flush_interval;
    c.max_batch_rows = new.max_batch_rows;
    c.max_pending_rows = new.max_pending_rows;
    c.max_pending_bytes = new.max_pending_bytes;
    c.overflow = new.overflow;
    c.overflow_timeout = new.overflow_timeout;
    c.shutdown_timeout = new.shutdown_timeout;
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::config_rows;
    use crate::config::Settings;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["writebehind-proxy", "--upstream", "postgresql://u@h:5432/d"];
        argv.extend_from_slice(args);
        Settings::parse_from(argv)
            .merged()
            .and_then(Settings::validate)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every key RELOAD takes is in RELOADABLE and every other key keeps its running value.
    #[test]
    fn reload_takes_exactly_the_reloadable_keys() {
        let running = config(&[]);
        let new = config(&[
            "--admin-users",
            "ops",
            "--max-client-conn",
            "7",
            "--max-message-size",
            "4096",
            "--idle-timeout",
            "9s",
            "--barrier-timeout",
            "3s",
            "--flush-interval",
            "1h",
            "--max-batch-rows",
            "5",
            "--max-pending-rows",
            "6",
            "--max-pending-bytes",
            "8000",
            "--overflow",
            "error",
            "--overflow-timeout",
            "2s",
            "--shutdown-timeout",
            "4s",
            "--listen",
            "0.0.0.0:1",
            "--durability",
            "memory",
            "--wal-fsync-interval",
            "2s",
        ]);
        let live = LiveConfig::new(running.clone());
        let now = live.reload(&new);
        let (before, after, wanted) = (config_rows(&running), config_rows(&now), config_rows(&new));
        for ((key, b), ((_, a), (_, w))) in before.iter().zip(after.iter().zip(wanted.iter())) {
            if RELOADABLE.contains(key) {
                assert_eq!(a, w, "{key} reloaded");
                assert_ne!(b, w, "{key}: the test changes it");
            } else {
                assert_eq!(a, b, "{key} kept");
            }
        }
        assert_eq!(
            live.get().flush_interval,
            std::time::Duration::from_secs(3600)
        );
    }
}
