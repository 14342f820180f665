//! The series HTTP kinds export, each labelled `kind` (per process: sum or max them across
//! replicas).

use std::time::Duration;

/// Current adaptive (AIMD) concurrency limit in this process (gauge).
pub const DISPATCH_LIMIT: &str = "surge_dispatch_limit";
/// Requests to the target in flight from this process (gauge).
pub const DISPATCH_IN_FLIGHT: &str = "surge_dispatch_in_flight";
/// 1 while the circuit is open or half-open (jobs are deferred), 0 when closed (gauge).
pub const DISPATCH_BREAKER_OPEN: &str = "surge_dispatch_breaker_open";
/// Answers and failures, by `class` = 2xx | 3xx | 4xx | 408 | 429 | 5xx | timeout |
/// connection (counter).
pub const DISPATCH_RESPONSES: &str = "surge_dispatch_responses_total";
/// Jobs handed back to the broker without an attempt, by `reason` = breaker | concurrency
/// | rate | key_concurrency | key_rate | key_paused | paused | database (counter).
pub const DISPATCH_DEFERRED: &str = "surge_dispatch_deferred_total";
/// Request time, sent until the body is read (histogram, seconds).
pub const DISPATCH_SECONDS: &str = "surge_dispatch_seconds";

/// Describes the series (called by [`crate::metrics::install`]).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        DISPATCH_LIMIT,
        "Adaptive concurrency limit of an HTTP kind."
    );
    describe_gauge!(
        DISPATCH_IN_FLIGHT,
        "Requests in flight to an HTTP kind's target."
    );
    describe_gauge!(
        DISPATCH_BREAKER_OPEN,
        "1 while an HTTP kind's circuit is open (jobs deferred)."
    );
    describe_counter!(DISPATCH_RESPONSES, "HTTP kind answers, by class.");
    describe_counter!(
        DISPATCH_DEFERRED,
        "Jobs deferred without an attempt, by reason."
    );
    describe_histogram!(DISPATCH_SECONDS, Unit::Seconds, "HTTP kind request time.");
}

/// Records the gauges of `kind`.
pub fn gauges(kind: &str, limit: f64, in_flight: u32, breaker_open: bool) {
    let label = [("kind", kind.to_owned())];
    metrics::gauge!(DISPATCH_LIMIT, &label).set(limit);
    metrics::gauge!(DISPATCH_IN_FLIGHT, &label).set(f64::from(in_flight));
    metrics::gauge!(DISPATCH_BREAKER_OPEN, &label).set(if breaker_open { 1.0 } else { 0.0 });
}

/// Counts one answer or failure of `class`.
pub fn response(kind: &str, class: &'static str, took: Duration) {
    metrics::counter!(DISPATCH_RESPONSES, "kind" => kind.to_owned(), "class" => class).increment(1);
    metrics::histogram!(DISPATCH_SECONDS, "kind" => kind.to_owned()).record(took.as_secs_f64());
}

/// Counts one deferral for `reason`.
pub fn deferred(kind: &str, reason: &'static str) {
    metrics::counter!(DISPATCH_DEFERRED, "kind" => kind.to_owned(), "reason" => reason)
        .increment(1);
}
