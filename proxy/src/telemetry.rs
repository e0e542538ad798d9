//! Latency histograms (lock-free bucket counters) and error counts by SQLSTATE — the proxy's
//! own and those PostgreSQL sent through it —, which `/metrics` renders.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Errors the proxy itself sent to clients, by SQLSTATE (errors PostgreSQL raises are relayed
/// as bytes and not counted). Process-wide, like the process it describes.
static ERRORS: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());

/// Counts one error the proxy raised.
pub fn count_error(sqlstate: &'static str) {
    *ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(sqlstate)
        .or_insert(0) += 1;
}

/// Errors the proxy raised so far, by SQLSTATE.
pub fn errors() -> BTreeMap<&'static str, u64> {
    ERRORS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// ErrorResponses PostgreSQL sent to clients through the proxy, by SQLSTATE.
static UPSTREAM_ERRORS: Mutex<BTreeMap<[u8; 5], u64>> = Mutex::new(BTreeMap::new());

/// Counts one ErrorResponse relayed from PostgreSQL; `body` is the message body (or its
/// beginning). A body whose SQLSTATE is cut off or malformed counts as `?????`.
pub fn count_upstream_error(body: &[u8]) {
    let code = sqlstate_of(body).unwrap_or(*b"?????");
    *UPSTREAM_ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(code)
        .or_insert(0) += 1;
}

/// ErrorResponses relayed from PostgreSQL so far, by SQLSTATE.
pub fn upstream_errors() -> BTreeMap<String, u64> {
    UPSTREAM_ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), *v))
        .collect()
}

/// The `C` field of an ErrorResponse body: fields of a type byte and a NUL-terminated string.
fn sqlstate_of(body: &[u8]) -> Option<[u8; 5]> {
    let mut rest = body;
    while let Some((&ty, tail)) = rest.split_first() {
        if ty == 0 {
            return None;
        }
        let end = tail.iter().position(|b| *b == 0)?;
        if ty == b'C' {
            let code: [u8; 5] = tail[..end].try_into().ok()?;
            return code.iter().all(u8::is_ascii_alphanumeric).then_some(code);
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Upper bounds of the buckets, in seconds (the last, `+Inf`, is implied).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram over [`LATENCY_BOUNDS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

/// A consistent-enough copy of a histogram for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// `(upper bound in seconds, cumulative count)`, ending with `(+Inf, count)`.
    pub cumulative: Vec<(f64, u64)>,
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The cumulative buckets, sum and count.
    pub fn snapshot(&self) -> Snapshot {
        let mut total = 0;
        let mut cumulative = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            let bound = LATENCY_BOUNDS.get(i).copied().unwrap_or(f64::INFINITY);
            cumulative.push((bound, total));
        }
        Snapshot {
            cumulative,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_read_from_error_bodies() {
        assert_eq!(
            sqlstate_of(b"SERROR\0VERROR\0C23505\0Mduplicate\0\0"),
            Some(*b"23505")
        );
        assert_eq!(sqlstate_of(b"SERROR\0VERROR\0C235"), None);
        assert_eq!(sqlstate_of(b"SERROR\0C2350\0\0"), None);
        assert_eq!(sqlstate_of(b"\0"), None);
        assert_eq!(sqlstate_of(b""), None);
    }

    #[test]
    fn buckets_are_cumulative_and_end_with_the_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.cumulative.first(), Some(&(0.0005, 1)));
        assert_eq!(s.cumulative[3], (0.005, 3));
        assert_eq!(s.cumulative[LATENCY_BOUNDS.len() - 1], (10.0, 3));
        assert_eq!(s.cumulative.last(), Some(&(f64::INFINITY, 4)));
        assert!((s.sum - 60.0063).abs() < 1e-9);
    }
}
