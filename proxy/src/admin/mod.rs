//! The admin console: the virtual database `writebehind`, for users in `admin_users`, with
//! PgBouncer-shaped `SHOW STATS | CLIENTS | SERVERS | CONFIG | VERSION`, and for write-behind
//! `SHOW TABLES`, `FLUSH [table]`, `PAUSE`, `RESUME` and `RELOAD` (simple protocol).

mod writebehind;

pub use writebehind::reload;

use crate::error::ProxyError;
use crate::protocol::messages::{self, Type::*};
use crate::session::cancel::{Interrupt, KeyGuard, UpstreamKey};
use crate::session::tls::Stream;
use crate::session::Shared;
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The database name that selects the admin console.
pub const ADMIN_DATABASE: &str = "writebehind";

/// Serves an admin console session. Users listed in `admin_users` are let in without a
/// password (bind the proxy to a trusted address); anyone else gets 28000.
pub async fn serve(mut sock: Stream, user: &str, shared: &Shared) {
    let mut out = BytesMut::new();
    if !shared.live.get().admin_users.iter().any(|u| u == user) {
        ProxyError::AdminDenied(user.to_string()).write_to(&mut out);
        let _ = sock.write_all(&out).await;
        return;
    }
    messages::auth_ok(&mut out);
    for (k, v) in [
        ("server_version", "15.0 (writebehind-proxy)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("standard_conforming_strings", "on"),
        ("integer_datetimes", "on"),
    ] {
        messages::parameter(&mut out, k, v);
    }
    // A key of its own, so a cancel request can end a `FLUSH` wait.
    let interrupt = Arc::new(Interrupt::default());
    let key = shared.cancel.register(UpstreamKey {
        addr: None,
        pid: rand::random::<i32>() & i32::MAX,
        secret: 0,
        interrupt: interrupt.clone(),
    });
    let _key = KeyGuard {
        map: &shared.cancel,
        key: Some(key),
    };
    messages::key_data(&mut out, key.0, key.1);
    messages::ready(&mut out);
    if sock.write_all(&out).await.is_err() {
        return;
    }
    loop {
        out.clear();
        let Ok(ty) = sock.read_u8().await else { return };
        let Ok(len) = sock.read_u32().await else {
            return;
        };
        if len < 4 || len as usize > 1 << 20 {
            ProxyError::ProtocolViolation(ty).write_to(&mut out);
            let _ = sock.write_all(&out).await;
            return;
        }
        let mut body = vec![0u8; len as usize - 4];
        if sock.read_exact(&mut body).await.is_err() {
            return;
        }
        match ty {
            b'X' => return,
            b'Q' => {
                let text = String::from_utf8_lossy(&body)
                    .trim_end_matches('\0')
                    .to_string();
                run_command(&text, shared, &interrupt, &mut out).await;
                messages::ready(&mut out);
            }
            _ => {
                messages::error(
                    &mut out,
                    messages::Severity::Error,
                    "0A000",
                    "the admin console supports only the simple query protocol",
                    None,
                );
                if ty == b'S' {
                    messages::ready(&mut out);
                }
            }
        }
        if sock.write_all(&out).await.is_err() {
            return;
        }
    }
}

async fn run_command(text: &str, shared: &Shared, interrupt: &Interrupt, out: &mut BytesMut) {
    let original = text.trim().trim_end_matches(';').trim();
    let cmd = original.to_ascii_uppercase();
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let wb = shared.writebehind.as_deref();
    match words.as_slice() {
        ["SHOW", "TABLES"] => writebehind::show_tables(wb, out),
        ["FLUSH"] => writebehind::flush(wb, None, shared, interrupt, out).await,
        ["FLUSH", _] => {
            let table = original
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string();
            writebehind::flush(wb, Some(&table), shared, interrupt, out).await
        }
        ["PAUSE"] => writebehind::pause(wb, true, out),
        ["RESUME"] => writebehind::pause(wb, false, out),
        ["RELOAD"] => writebehind::reload(wb, shared, out),
        ["SHOW", "STATS"] => show_stats(shared, out),
        ["SHOW", "CLIENTS"] => show_clients(shared, out, false),
        ["SHOW", "SERVERS"] => show_clients(shared, out, true),
        ["SHOW", "CONFIG"] => show_config(shared, out),
        ["SHOW", "VERSION"] => messages::rows(
            out,
            &[("version", Text)],
            &[vec![Some(format!(
                "writebehind-proxy {}",
                env!("CARGO_PKG_VERSION")
            ))]],
        ),
        [] => messages::complete(out, ""),
        _ => ProxyError::UnknownCommand(text.trim().to_string()).write_to(out),
    }
}

fn show_stats(shared: &Shared, out: &mut BytesMut) {
    let mut rows: Vec<Vec<Option<String>>> = shared
        .stats
        .databases
        .iter()
        .map(|e| {
            let c = e.value();
            vec![
                Some(e.key().clone()),
                Some(c.queries.load(Ordering::Relaxed).to_string()),
                Some(c.received.load(Ordering::Relaxed).to_string()),
                Some(c.sent.load(Ordering::Relaxed).to_string()),
            ]
        })
        .collect();
    rows.sort();
    messages::rows(
        out,
        &[
            ("database", Text),
            ("total_query_count", Int8),
            ("total_received", Int8),
            ("total_sent", Int8),
        ],
        &rows,
    );
}

fn show_clients(shared: &Shared, out: &mut BytesMut, servers: bool) {
    let mut rows: Vec<Vec<Option<String>>> = shared
        .stats
        .clients
        .iter()
        .filter(|e| !servers || e.value().upstream.is_some())
        .map(|e| {
            let c = e.value();
            let since = c
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let addr = if servers {
                c.upstream.clone().unwrap_or_default()
            } else {
                c.addr.clone()
            };
            vec![
                Some(if servers { "S" } else { "C" }.to_string()),
                Some(c.user.clone()),
                Some(c.database.clone()),
                Some("active".to_string()),
                Some(addr),
                Some(since.to_string()),
                Some(e.key().to_string()),
            ]
        })
        .collect();
    // By id, as a number.
    rows.sort_by_key(|r| r[6].as_deref().and_then(|id| id.parse::<u64>().ok()));
    messages::rows(
        out,
        &[
            ("type", Text),
            ("user", Text),
            ("database", Text),
            ("state", Text),
            ("addr", Text),
            ("connect_time", Int8),
            ("id", Int8),
        ],
        &rows,
    );
}

fn show_config(shared: &Shared, out: &mut BytesMut) {
    // The proxy id in use (kept in the WAL directory, or generated), not only a configured one.
    let in_use = shared
        .writebehind
        .as_ref()
        .map(|wb| wb.proxy_id().to_string());
    let rows: Vec<Vec<Option<String>>> = config_rows(&shared.live.get())
        .into_iter()
        .map(|(k, v)| match (k, &in_use) {
            ("proxy_id", Some(id)) => (k, id.clone()),
            _ => (k, v),
        })
        .map(|(k, v)| vec![Some(k.to_string()), Some(v)])
        .collect();
    messages::rows(out, &[("key", Text), ("value", Text)], &rows);
}

/// Every configuration key with its value as `SHOW CONFIG` prints it.
pub fn config_rows(c: &crate::config::Config) -> Vec<(&'static str, String)> {
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let rows: Vec<(&'static str, String)> = vec![
        ("listen", c.listen.clone()),
        ("upstream", c.upstream.text.clone()),
        ("durability", format!("{:?}", c.durability).to_lowercase()),
        ("wal_dir", c.wal_dir.display().to_string()),
        ("wal_fsync_interval", d(c.wal_fsync_interval)),
        ("proxy_id", c.proxy_id.clone().unwrap_or_default()),
        ("flush_interval", d(c.flush_interval)),
        ("max_batch_rows", c.max_batch_rows.to_string()),
        ("max_pending_rows", c.max_pending_rows.to_string()),
        ("max_pending_bytes", c.max_pending_bytes.to_string()),
        ("overflow", format!("{:?}", c.overflow).to_lowercase()),
        ("overflow_timeout", d(c.overflow_timeout)),
        ("barrier_timeout", d(c.barrier_timeout)),
        (
            "metrics_listen",
            c.metrics_listen.clone().unwrap_or_default(),
        ),
        ("admin_users", c.admin_users.join(",")),
        ("unix_socket_dir", path(&c.unix_socket_dir)),
        ("max_client_conn", c.max_client_conn.to_string()),
        ("max_message_size", c.max_message_size.to_string()),
        ("connect_timeout", d(c.connect_timeout)),
        ("login_timeout", d(c.login_timeout)),
        (
            "idle_timeout",
            c.idle_timeout.map(d).unwrap_or_else(|| "0s".into()),
        ),
        ("shutdown_timeout", d(c.shutdown_timeout)),
        ("threads", c.threads.to_string()),
        ("tls_cert", path(&c.tls_cert)),
        ("tls_key", path(&c.tls_key)),
        ("log_format", format!("{:?}", c.log_format).to_lowercase()),
    ];
    rows
}
