//! Live counters of one worker, shared with progress displays and reports, and mirrored
//! into the Prometheus series of `surge_common::metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use surge_common::metrics as m;

use crate::busy_keys::BusyKeys;

/// Counters updated by the runner as jobs move through it.
#[derive(Debug, Default)]
pub struct WorkerStats {
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    succeeded: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    duplicates: AtomicU64,
    deferred: AtomicU64,
    cancelled: AtomicU64,
    keys: BusyKeys,
}

/// A point-in-time copy of [`WorkerStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Jobs being handled right now.
    pub in_flight: u64,
    /// The most jobs ever handled at once.
    pub peak_in_flight: u64,
    /// Jobs whose result was committed and acked.
    pub succeeded: u64,
    /// Attempts that failed retryably and were scheduled again.
    pub retried: u64,
    /// Jobs dead-lettered.
    pub dead: u64,
    /// Redelivered jobs that already had a stored result.
    pub duplicates: u64,
    /// Jobs handed back to the broker without an attempt (unknown kind, open circuit,
    /// target at its cap).
    pub deferred: u64,
}

/// Marks one job in flight until dropped.
pub struct InFlight<'a>(&'a WorkerStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(m::JOBS_IN_FLIGHT).decrement(1.0);
    }
}

impl WorkerStats {
    /// Jobs started per fairness key lately (for the heartbeat's busiest keys).
    pub fn keys(&self) -> &BusyKeys {
        &self.keys
    }

    /// Counts a job as in flight for as long as the guard lives.
    pub fn start(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        metrics::gauge!(m::JOBS_IN_FLIGHT).increment(1.0);
        InFlight(self)
    }

    pub(crate) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::JOBS_PROCESSED, "outcome" => "succeeded").increment(1);
    }

    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::JOBS_PROCESSED, "outcome" => "retried").increment(1);
    }

    pub(crate) fn dead(&self) {
        self.dead.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::JOBS_PROCESSED, "outcome" => "dead").increment(1);
    }

    pub(crate) fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::JOBS_DUPLICATE).increment(1);
    }

    pub(crate) fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries of cancelled jobs (by an operator, or refused at the ingress) acked
    /// without a result. Kept out of [`StatsSnapshot`] so that reports summing snapshots
    /// field by field are unaffected.
    pub fn cancelled_total(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub(crate) fn deferred(&self) {
        self.deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            in_flight: self.in_flight.load(Ordering::SeqCst),
            peak_in_flight: self.peak_in_flight.load(Ordering::SeqCst),
            succeeded: self.succeeded.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
        }
    }
}
