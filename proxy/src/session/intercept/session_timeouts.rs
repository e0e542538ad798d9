//! The session's own timeouts around a wait in the proxy (a read barrier that has to wait, a
//! write waiting for room in a full queue): `statement_timeout`, asked of the session's
//! connection so that SET, SET LOCAL, role and database defaults and `set_config` all count as
//! they do for the statement itself; and the idle timeout PostgreSQL would apply to the
//! backend, idle meanwhile (`idle_in_transaction_session_timeout` inside a transaction block,
//! `idle_session_timeout` outside), which a Sync every third of it keeps from firing: to the
//! client the statement is running, and PostgreSQL does not end a session mid-statement.

use crate::session::wire::{answer_texts, error_reply, NotAsked, Wire};
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

/// What the session said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Asked {
    /// Its timeouts; none known when it could not be asked (its connection is gone, or it is
    /// in a failed transaction).
    Limits(Limits),
    /// The question itself failed (a cancel or timeout meanwhile): PostgreSQL's ErrorResponse.
    /// Inside a transaction block it aborted the transaction, so the client must have it.
    Failed(Bytes),
}

impl Asked {
    /// The limits; none when the question failed (between transactions that changes nothing).
    pub(super) fn limits(self) -> Limits {
        match self {
            Asked::Limits(limits) => limits,
            Asked::Failed(_) => Limits::default(),
        }
    }
}

/// The session's timeouts that matter while it waits in the proxy (`None`: off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Limits {
    /// `statement_timeout`: the wait fails with 57014 when it passes.
    pub statement: Option<Duration>,
    /// The idle timeout PostgreSQL applies to the backend meanwhile.
    pub idle: Option<Duration>,
}

/// The setting PostgreSQL times an idle backend by in transaction state `status`.
fn idle_setting(status: u8) -> &'static str {
    if status == b'T' {
        "idle_in_transaction_session_timeout"
    } else {
        "idle_session_timeout"
    }
}

/// Asks the session, idle in transaction state `status`, for its timeouts (SHOWs that leave
/// the unnamed statement and portal and the transaction's snapshot alone); a failed
/// transaction is not asked.
pub(super) async fn ask<W: Wire>(wire: &mut W, status: u8) -> Asked {
    if !matches!(status, b'I' | b'T') {
        return Asked::Limits(Limits::default());
    }
    let both = wire
        .show(&["statement_timeout", idle_setting(status)])
        .await;
    let replies = match both {
        // PostgreSQL before 14 has no idle_session_timeout; between transactions the error
        // aborted nothing, and statement_timeout alone is asked again.
        Ok(replies) if status == b'I' && error_reply(&replies).is_some() => {
            wire.show(&["statement_timeout"]).await
        }
        other => other,
    };
    match replies {
        Ok(replies) => {
            if let Some(error) = error_reply(&replies) {
                return Asked::Failed(error.clone());
            }
            let shown = answer_texts(&replies);
            let at = |i: usize| shown.get(i).copied().flatten().and_then(parse);
            Asked::Limits(Limits {
                statement: at(0),
                idle: at(1),
            })
        }
        Err(NotAsked::Busy | NotAsked::Lost) => Asked::Limits(Limits::default()),
    }
}

/// Completes when `limit` (if any) has passed since `started`.
pub(super) async fn expiry(started: Instant, limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep_until(started + limit).await,
        None => std::future::pending().await,
    }
}

/// Runs `wait` while the session's backend idles upstream under idle timeout `idle`, keeping
/// it from timing out: a lone Sync (which PostgreSQL only answers) every third of the timeout
/// (at most every 5 ms; never without a timeout). The Sync goes between polls of `wait`, never
/// inside it, so however `wait` ends no exchange is left half sent.
pub(super) async fn kept_alive<W: Wire, T>(
    wire: &mut W,
    idle: Option<Duration>,
    wait: impl std::future::Future<Output = T>,
) -> T {
    let mut wait = std::pin::pin!(wait);
    let Some(idle) = idle else {
        return wait.await;
    };
    let every = (idle / 3).max(Duration::from_millis(5));
    loop {
        tokio::select! {
            out = &mut wait => return out,
            _ = tokio::time::sleep(every) => {
                // It cannot fail; a session gone or busy learns it when its statement goes on.
                let _ = wire.sync().await;
            }
        }
    }
}

/// A time setting as PostgreSQL shows it (`0`, `250ms`, `5s`, `2min`, `1h`, `1d`; a bare
/// number is milliseconds): `None` for 0 (no timeout) or anything else.
fn parse(shown: &str) -> Option<Duration> {
    let digits = shown
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(shown.len());
    let (number, unit) = shown.split_at(digits);
    let n: u64 = number.parse().ok()?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "min" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    (ms > 0).then(|| Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_show_prints() {
        assert_eq!(parse("0"), None);
        assert_eq!(parse("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse("1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse("2min"), Some(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("3d"), Some(Duration::from_secs(3 * 86_400)));
        assert_eq!(parse("ms"), None);
        assert_eq!(parse("5 s"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn reads_each_show_in_order() {
        let row = |text: &str| {
            let mut row = vec![b'D', 0, 0, 0, 0, 0, 1];
            row.extend_from_slice(&(text.len() as i32).to_be_bytes());
            row.extend_from_slice(text.as_bytes());
            let len = (row.len() - 1) as u32;
            row[1..5].copy_from_slice(&len.to_be_bytes());
            Bytes::from(row)
        };
        let done = Bytes::from_static(b"C\0\0\0\x09SHOW\0");
        let replies = [row("0"), done.clone(), row("250ms"), done];
        assert_eq!(answer_texts(&replies), vec![Some("0"), Some("250ms")]);
        assert_eq!(
            answer_texts(&replies[..2])
                .into_iter()
                .map(|t| t.and_then(parse))
                .collect::<Vec<_>>(),
            vec![None]
        );
    }
}
