//! Backoff policies, built on `backon` (the maintained successor of the unmaintained
//! `backoff` crate, per RUSTSEC-2025-0012).
//!
//! Two uses: a failing job is retried after an exponentially growing, jittered delay until
//! `max_attempts`, then dead-lettered; a lost broker or database connection is re-opened
//! with [`reconnect`].

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// When and how often a job that failed retryably is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; the job is dead-lettered after the last.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub base_delay: Duration,
    /// Upper bound for any delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Whether a job that just failed its `attempt`-th try may be tried again.
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay before attempt `attempt + 1`, after attempt `attempt` (1-based) failed:
    /// `base × 2^(attempt-1)`, capped, with jitter so retries of a burst spread out.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let steps = attempt.saturating_sub(1) as usize;
        ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(steps)
            .unwrap_or(self.max_delay)
    }
}

/// The backoff for re-opening a lost connection: 100 ms doubling to 5 s, with jitter,
/// giving up after `max_times` tries (the caller reports the service unavailable then).
pub fn reconnect(max_times: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_max_times(max_times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        // Jitter adds up to one extra delay, so the n-th delay lies in [d, 2d].
        let first = policy.delay_after(1);
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let third = policy.delay_after(3);
        assert!(third >= Duration::from_millis(400), "{third:?}");
        assert!(policy.delay_after(30) <= Duration::from_secs(2));
        assert!(policy.allows_another(9));
        assert!(!policy.allows_another(10));
    }
}
