//! Capped exponential backoff with jitter, for retrying shipments to PostgreSQL.

use std::time::Duration;

/// Exponential backoff: `initial`, doubling up to `max`, with ±25 % jitter; `reset` on success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    attempts: u32,
}

impl Backoff {
    /// A backoff starting at `initial` and never waiting longer than `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            current: initial,
            attempts: 0,
        }
    }

    /// The delay before the next attempt; each call doubles the base delay up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        self.attempts = self.attempts.saturating_add(1);
        let jitter = rand::random::<f64>() * 0.5 + 0.75;
        base.mul_f64(jitter).min(self.max)
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(75) && d[0] <= Duration::from_millis(125));
        assert!(d[2] >= Duration::from_millis(300) && d[2] <= Duration::from_millis(500));
        assert!(d.iter().all(|x| *x <= Duration::from_secs(1)));
        assert!(d[5] >= Duration::from_millis(750));
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }
}
