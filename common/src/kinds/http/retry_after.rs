//! The `Retry-After` response header (RFC 9110 §10.2.3): delta-seconds or an HTTP-date.

use std::time::{Duration, SystemTime};

/// Longest wait honoured when the kind sets no `max_backoff_ms`.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The wait `value` asks for, seen at `now`, clamped to `[0, max]`; `None` when it is
/// neither delta-seconds nor an HTTP-date (garbage is ignored, never an error).
pub fn parse(value: &[u8], now: SystemTime, max: Duration) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    let wait = if text.bytes().all(|b| b.is_ascii_digit()) {
        // Any number of digits: one too large for u64 is simply "very long".
        Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(text).ok()?;
        // A date in the past means "now".
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn both_forms_and_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse(b"120", now, HOUR), Some(Duration::from_secs(120)));
        assert_eq!(parse(b" 0 ", now, HOUR), Some(Duration::ZERO));
        assert_eq!(parse(b"99999999999999999999999", now, HOUR), Some(HOUR));
        assert_eq!(parse(b"7200", now, HOUR), Some(HOUR));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse(later.as_bytes(), now, HOUR),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse(earlier.as_bytes(), now, HOUR), Some(Duration::ZERO));
        for bad in [
            &b""[..],
            b"-5",
            b"1.5",
            b"soon",
            b"\xff\xfe",
            b"Wed, 99 Foo 2026",
        ] {
            assert_eq!(parse(bad, now, HOUR), None, "{bad:?}");
        }
    }
}
