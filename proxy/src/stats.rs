//! Process-wide counters and the registry of connected clients, for the admin console.

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// Counters of one database.
#[derive(Debug, Default)]
pub struct DbCounters {
    /// Query and Execute messages sent by clients.
    pub queries: AtomicU64,
    /// Bytes received from clients.
    pub received: AtomicU64,
    /// Bytes sent to clients.
    pub sent: AtomicU64,
}

/// One connected client.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub user: String,
    pub database: String,
    pub addr: String,
    pub upstream: Option<String>,
    pub connected_at: SystemTime,
}

/// Everything the admin console shows.
#[derive(Debug, Default)]
pub struct Stats {
    pub clients_total: AtomicU64,
    pub clients: DashMap<u64, ClientInfo>,
    pub databases: DashMap<String, Arc<DbCounters>>,
    next_id: AtomicU64,
    /// Why the last client session could not reach PostgreSQL, until one does (`/health`).
    upstream_down: std::sync::Mutex<Option<String>>,
}

impl Stats {
    /// A new client id.
    pub fn next_client_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Notes whether a client session's connection to PostgreSQL succeeded (`None`) or why
    /// it failed.
    pub fn note_upstream(&self, failure: Option<String>) {
        *self.upstream_down.lock().unwrap_or_else(|e| e.into_inner()) = failure;
    }

    /// Why the last client session could not reach PostgreSQL, if it could not.
    pub fn upstream_down(&self) -> Option<String> {
        self.upstream_down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The counters of `database` (created on first use).
    pub fn db(&self, database: &str) -> Arc<DbCounters> {
        if let Some(c) = self.databases.get(database) {
            return c.clone();
        }
        self.databases
            .entry(database.to_string())
            .or_default()
            .clone()
    }

    /// Clients connected now.
    pub fn active(&self) -> usize {
        self.clients.len()
    }
}

/// Removes a client from the registry when its session ends.
pub struct ClientGuard {
    pub stats: Arc<Stats>,
    pub id: u64,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.stats.clients.remove(&self.id);
    }
}
