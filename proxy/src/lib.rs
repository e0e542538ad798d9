//! writebehind-proxy: a PostgreSQL wire-protocol proxy; the write-behind half of pg_writebehind.
//!
//! Layout:
//! - [`config`]: file + flags + env, validated into [`config::Config`].
//! - [`recovery`]: start-up: the WAL directory, reading the WAL back, replay.
//! - [`server`]: accept loop and graceful shutdown (`run(config, listener, shutdown)`).
//! - [`session`]: one client connection: startup, upstream connect, relay, cancel keys.
//! - [`protocol`]: framing, the startup packet, messages the proxy builds (pgwire codecs).
//! - [`admin`]: the admin console (virtual database `writebehind`).
//! - [`signals`]: SIGHUP (reload), SIGUSR1/SIGUSR2 (pause, resume shipping).
//! - [`metrics`]: `/metrics` (Prometheus text) and `/health` on `metrics_listen`.
//! - [`error`]: the proxy's errors and their one SQLSTATE mapping.
//! - [`stats`]: counters and the client registry.
//! - [`ship`]: shipping batches into the extension's inbox exactly once; read barriers.
//! - [`wal`]: the local write-ahead log of acknowledged writes.
//! - [`writebehind`]: the write-behind path: recognition, validation, the queue, the runtime.

pub mod admin;
pub mod config;
pub mod error;
pub mod event_loops;
pub mod live_config;
pub mod local_socket;
pub mod metrics;
pub mod protocol;
pub mod recovery;
pub mod server;
pub mod session;
pub mod ship;
pub mod signals;
pub mod stats;
pub mod telemetry;
pub mod wal;
pub mod writebehind;

pub use server::run;
