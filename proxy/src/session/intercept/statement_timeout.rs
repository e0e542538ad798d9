//! The session's `statement_timeout`, for a read barrier that has to wait and a write that
//! waits for room in a full queue: asked of the session's own connection, so that SET, SET
//! LOCAL, role and database defaults and `set_config` all count as they do for the statement
//! itself.

use crate::session::wire::{answer_text, NotAsked, Wire};
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

/// What the session said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StatementTimeout {
    /// The timeout, `None` when it is off (0), or when the session could not be asked (its
    /// connection is gone, or it is in a failed transaction).
    Limit(Option<Duration>),
    /// The question itself failed (a cancel or timeout meanwhile): PostgreSQL's ErrorResponse.
    /// Inside a transaction block it aborted the transaction, so the client must have it.
    Failed(Bytes),
}

impl StatementTimeout {
    /// The limit; none when the question failed (between transactions that changes nothing).
    pub(super) fn limit(self) -> Option<Duration> {
        match self {
            StatementTimeout::Limit(limit) => limit,
            StatementTimeout::Failed(_) => None,
        }
    }
}

/// Completes when `limit` (if any) has passed since `started`.
pub(super) async fn expiry(started: Instant, limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep_until(started + limit).await,
        None => std::future::pending().await,
    }
}

/// Asks the session, idle in transaction state `status`, for its `statement_timeout` (a SHOW
/// that leaves the unnamed statement and portal and the transaction's snapshot alone); a
/// failed transaction is not asked.
pub(super) async fn ask<W: Wire>(wire: &mut W, status: u8) -> StatementTimeout {
    if !matches!(status, b'I' | b'T') {
        return StatementTimeout::Limit(None);
    }
    match wire.show("statement_timeout").await {
        Ok(replies) => {
            if let Some(error) = replies.iter().find(|m| m.first() == Some(&b'E')) {
                return StatementTimeout::Failed(error.clone());
            }
            StatementTimeout::Limit(answer_text(&replies).and_then(parse))
        }
        Err(NotAsked::Busy | NotAsked::Lost) => StatementTimeout::Limit(None),
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
    fn reads_a_function_result_and_a_row() {
        let mut value = vec![b'V', 0, 0, 0, 13];
        value.extend_from_slice(&5i32.to_be_bytes());
        value.extend_from_slice(b"250ms");
        assert_eq!(answer_text(&[Bytes::from(value)]), Some("250ms"));
        let null = Bytes::from_static(&[b'V', 0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(answer_text(&[null]), None);
        let mut row = vec![b'D', 0, 0, 0, 12, 0, 1];
        row.extend_from_slice(&1i32.to_be_bytes());
        row.push(b'0');
        let done = Bytes::from_static(b"C\0\0\0\x09SHOW\0");
        assert_eq!(answer_text(&[Bytes::from(row), done]), Some("0"));
    }
}
