//! When a retried job is due: the `x-surge-not-before-ms` header of a `T.retry` record.
//!
//! The header comes from the message, so anything may be in it. The wait is clamped to
//! `0..=`[`MAX_RETRY_DELAY`]:
//! - far future (or a clock far behind the writer's): held at most [`MAX_RETRY_DELAY`],
//!   then delivered. A held retry pauses its whole `T.retry` partition, so an unbounded
//!   value would stop every retry behind it for good.
//! - in the past, or absent: due now.
//! - malformed (not a decimal integer, not UTF-8): due now, with a warning. The job itself
//!   decoded fine and its attempt header still bounds how often it is retried, so running
//!   it early is harmless, while dead-lettering would drop a valid job over a scheduling
//!   hint.
//!
//! Retries are written with the same bound ([`not_before_ms`]), so a caller's huge delay
//! cannot produce a header that another consumer holds for longer.

use std::time::Duration;

/// The longest a retry is held. Far above any sane backoff (the worker's default maximum
/// is 30 s), far below "forever".
pub(super) const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// How long to hold a retry whose not-before header is `value`, at `now_ms` (milliseconds
/// since the Unix epoch).
pub(super) fn retry_wait(value: Option<&str>, now_ms: i64) -> Duration {
    let Some(value) = value else {
        return Duration::ZERO;
    };
    let Ok(not_before) = value.parse::<i64>() else {
        tracing::warn!(
            value,
            "malformed kafka retry not-before header; delivering the retry now"
        );
        return Duration::ZERO;
    };
    let wait_ms = u64::try_from(not_before.saturating_sub(now_ms)).unwrap_or(0);
    Duration::from_millis(wait_ms).min(MAX_RETRY_DELAY)
}

/// The not-before time (ms since the epoch) of a retry sent at `now_ms` with delay `after`,
/// which is capped at [`MAX_RETRY_DELAY`].
pub(super) fn not_before_ms(now_ms: i64, after: Duration) -> i64 {
    let after_ms = i64::try_from(after.min(MAX_RETRY_DELAY).as_millis()).unwrap_or(0);
    now_ms.saturating_add(after_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn a_plain_delay_is_honoured() {
        let value = (NOW + 1500).to_string();
        assert_eq!(retry_wait(Some(&value), NOW), Duration::from_millis(1500));
        assert_eq!(
            retry_wait(Some(&(NOW - 5).to_string()), NOW),
            Duration::ZERO
        );
        assert_eq!(retry_wait(None, NOW), Duration::ZERO);
    }

    #[test]
    fn far_future_or_extreme_values_are_clamped_without_overflow() {
        for value in [i64::MAX, NOW + 365 * 24 * 3_600_000] {
            assert_eq!(
                retry_wait(Some(&value.to_string()), NOW),
                MAX_RETRY_DELAY,
                "{value}"
            );
        }
        assert_eq!(retry_wait(Some(&i64::MIN.to_string()), NOW), Duration::ZERO);
        assert_eq!(retry_wait(Some("0"), i64::MAX), Duration::ZERO);
        assert_eq!(retry_wait(Some("0"), i64::MIN), MAX_RETRY_DELAY);
        assert_eq!(
            retry_wait(Some(&i64::MAX.to_string()), i64::MIN),
            MAX_RETRY_DELAY
        );
    }

    #[test]
    fn malformed_values_mean_due_now() {
        for value in ["", "soon", " 12", "1e9", "99999999999999999999999", "-"] {
            assert_eq!(retry_wait(Some(value), NOW), Duration::ZERO, "{value:?}");
        }
    }

    #[test]
    fn written_delays_are_capped_too() {
        assert_eq!(not_before_ms(NOW, Duration::from_millis(250)), NOW + 250);
        let capped = NOW + i64::try_from(MAX_RETRY_DELAY.as_millis()).unwrap();
        assert_eq!(not_before_ms(NOW, Duration::MAX), capped);
    }
}
