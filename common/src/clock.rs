//! Wall-clock timestamps in microseconds since the Unix epoch.
//!
//! Jobs cross processes (ingress → broker → worker), so their timestamps must come from the
//! shared wall clock, not from a process-local `Instant`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, from the system clock.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `d` in whole microseconds, saturating (to compare with [`now_micros`] timestamps).
pub fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
