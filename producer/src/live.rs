//! The ingress's own live counters for the dashboard.
//!
//! The Prometheus recorder cannot be read back cheaply, so the ingress keeps these small
//! ones as well: jobs accepted (an atomic total), recent accept latencies (publish until
//! the broker's confirm), and a ring of per-second [`Sample`]s over the last minute —
//! accepted per second, plus the backlog / in-flight / capacity figures the dashboard saw
//! in that second (for its chart). Everything is bounded: [`HISTORY_SECONDS`] samples and
//! [`LATENCY_SAMPLES`] latencies.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use surge_common::clock::now_micros;
use surge_common::storage::heartbeat::percentile;

/// How many per-second samples are kept (one minute).
pub const HISTORY_SECONDS: i64 = 60;
/// How many recent accept latencies are kept for the percentiles.
pub const LATENCY_SAMPLES: usize = 4096;
/// The accepted rate is averaged over this many seconds.
pub const RATE_WINDOW_SECONDS: i64 = 5;

const MICROS: i64 = 1_000_000;

/// One second of the ingress's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// The second (Unix time, seconds).
    pub t: i64,
    /// Jobs accepted during that second.
    pub accepted: u64,
    /// The broker's backlog last seen during that second, if the dashboard looked.
    pub backlog: Option<u64>,
    /// Jobs in flight on live workers, last seen during that second, if the dashboard looked.
    pub in_flight: Option<u64>,
    /// Live workers' total capacity, last seen during that second, if the dashboard looked.
    pub capacity: Option<u64>,
}

/// Accept-side figures at one moment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LiveSnapshot {
    /// Jobs accepted since this process started.
    pub accepted_total: u64,
    /// Jobs accepted per second over the last [`RATE_WINDOW_SECONDS`].
    pub accepted_per_second: f64,
    /// Median publish-to-confirm latency of the last minute's accepts, in µs.
    pub accept_p50_us: Option<i64>,
    /// 99th percentile publish-to-confirm latency of the last minute's accepts, in µs.
    pub accept_p99_us: Option<i64>,
    /// How many accepts (requests) those percentiles come from.
    pub accept_samples: usize,
    /// Per-second samples of the last minute, oldest first (seconds with nothing are absent).
    pub history: Vec<Sample>,
}

/// The ingress's live counters. Cheap to update from every request; shared via `Arc`.
#[derive(Debug)]
pub struct Live {
    accepted_total: AtomicU64,
    started_at_us: i64,
    ring: Mutex<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    seconds: VecDeque<Sample>,
    /// (when, latency) in µs, oldest first.
    latencies: VecDeque<(i64, i64)>,
}

impl Default for Live {
    fn default() -> Self {
        Live::new()
    }
}

impl Live {
    /// Counters starting now, at zero.
    pub fn new() -> Live {
        Live::started_at(now_micros())
    }

    fn started_at(started_at_us: i64) -> Live {
        Live {
            accepted_total: AtomicU64::new(0),
            started_at_us,
            ring: Mutex::new(Ring::default()),
        }
    }

    /// Counts `jobs` accepted by one request whose publish took `publish`.
    pub fn accepted(&self, jobs: usize, publish: Duration) {
        self.accepted_at(now_micros(), jobs, publish);
    }

    fn accepted_at(&self, now_us: i64, jobs: usize, publish: Duration) {
        let jobs = u64::try_from(jobs).unwrap_or(u64::MAX);
        self.accepted_total.fetch_add(jobs, Ordering::Relaxed);
        let latency = i64::try_from(publish.as_micros()).unwrap_or(i64::MAX);
        let mut ring = self.ring();
        ring.slot(now_us).accepted += jobs;
        if ring.latencies.len() == LATENCY_SAMPLES {
            ring.latencies.pop_front();
        }
        ring.latencies.push_back((now_us, latency));
    }

    /// Records what the dashboard saw just now (for the chart of the last minute).
    pub fn observe(&self, backlog: Option<u64>, in_flight: Option<u64>, capacity: Option<u64>) {
        self.observe_at(now_micros(), backlog, in_flight, capacity);
    }

    fn observe_at(
        &self,
        now_us: i64,
        backlog: Option<u64>,
        in_flight: Option<u64>,
        capacity: Option<u64>,
    ) {
        let mut ring = self.ring();
        let slot = ring.slot(now_us);
        slot.backlog = backlog.or(slot.backlog);
        slot.in_flight = in_flight.or(slot.in_flight);
        slot.capacity = capacity.or(slot.capacity);
    }

    /// The figures now.
    pub fn snapshot(&self) -> LiveSnapshot {
        self.snapshot_at(now_micros())
    }

    fn snapshot_at(&self, now_us: i64) -> LiveSnapshot {
        let now_s = now_us.div_euclid(MICROS);
        let mut ring = self.ring();
        ring.forget(now_s);
        let window_start_s = now_s - (RATE_WINDOW_SECONDS - 1);
        let in_window: u64 = ring
            .seconds
            .iter()
            .filter(|s| s.t >= window_start_s)
            .map(|s| s.accepted)
            .sum();
        // The window is the last RATE_WINDOW_SECONDS - 1 whole seconds plus the current
        // partial one, cut at this process's start; at least a second, so a fresh
        // process does not report a burst of one request as a huge rate.
        let from_us = (window_start_s * MICROS).max(self.started_at_us);
        let elapsed = ((now_us - from_us) as f64 / MICROS as f64).max(1.0);
        let minute_ago = now_us - HISTORY_SECONDS * MICROS;
        let mut latencies: Vec<i64> = ring
            .latencies
            .iter()
            .filter(|(at, _)| *at > minute_ago)
            .map(|(_, latency)| *latency)
            .collect();
        latencies.sort_unstable();
        LiveSnapshot {
            accepted_total: self.accepted_total.load(Ordering::Relaxed),
            accepted_per_second: in_window as f64 / elapsed,
            accept_p50_us: percentile(&latencies, 0.50),
            accept_p99_us: percentile(&latencies, 0.99),
            accept_samples: latencies.len(),
            history: ring.seconds.iter().copied().collect(),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Ring {
    /// The sample of the second containing `now_us`, created if needed. A clock that
    /// stepped back lands in the latest sample.
    fn slot(&mut self, now_us: i64) -> &mut Sample {
        let t = now_us.div_euclid(MICROS);
        self.forget(t);
        let latest = self.seconds.back().map(|s| s.t);
        if latest.is_none_or(|latest| latest < t) {
            self.seconds.push_back(Sample {
                t,
                ..Sample::default()
            });
        }
        self.seconds
            .back_mut()
            .expect("a sample was just ensured to exist")
    }

    /// Drops samples older than a minute before second `now_s`.
    fn forget(&mut self, now_s: i64) {
        while self
            .seconds
            .front()
            .is_some_and(|s| s.t <= now_s - HISTORY_SECONDS)
        {
            self.seconds.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000 * MICROS;

    #[test]
    fn counts_accepts_and_rates() {
        let live = Live::started_at(T0 - 60 * MICROS);
        for i in 0..10 {
            live.accepted_at(
                T0 + i * MICROS / 10,
                3,
                Duration::from_micros(100 + i as u64),
            );
        }
        let snap = live.snapshot_at(T0 + MICROS);
        assert_eq!(snap.accepted_total, 30);
        assert_eq!(snap.accept_samples, 10);
        assert_eq!(snap.accept_p50_us, Some(104));
        assert_eq!(snap.accept_p99_us, Some(109));
        // 30 jobs over the window: the 4 whole seconds before plus 0 s of the current one.
        assert!((snap.accepted_per_second - 7.5).abs() < 1e-9, "{snap:?}");
        assert_eq!(snap.history.len(), 1);
        assert_eq!(snap.history[0].accepted, 30);
    }

    #[test]
    fn a_fresh_process_reports_no_inflated_rate() {
        let live = Live::started_at(T0);
        live.accepted_at(T0 + 1000, 1, Duration::from_micros(5));
        let snap = live.snapshot_at(T0 + 2000);
        assert!((snap.accepted_per_second - 1.0).abs() < 1e-9);
    }

    #[test]
    fn keeps_one_minute_and_tolerates_clock_steps() {
        let live = Live::started_at(T0);
        for s in 0..120 {
            live.observe_at(T0 + s * MICROS, Some(s as u64), Some(1), Some(2));
        }
        // The clock steps back: the latest sample takes it.
        live.accepted_at(T0, 1, Duration::ZERO);
        let snap = live.snapshot_at(T0 + 119 * MICROS);
        assert_eq!(snap.history.len(), 60);
        assert_eq!(snap.history.first().map(|s| s.t), Some(T0 / MICROS + 60));
        let last = snap.history.last().copied().unwrap_or_default();
        assert_eq!((last.backlog, last.accepted), (Some(119), 1));
        // Long after, everything but the total is forgotten.
        let later = live.snapshot_at(T0 + 1000 * MICROS);
        assert!(later.history.is_empty());
        assert_eq!(later.accept_samples, 0);
        assert_eq!(later.accepted_total, 1);
    }

    #[test]
    fn latencies_are_bounded() {
        let live = Live::started_at(T0);
        for i in 0..(LATENCY_SAMPLES + 10) {
            live.accepted_at(T0, 1, Duration::from_micros(i as u64));
        }
        assert_eq!(live.snapshot_at(T0).accept_samples, LATENCY_SAMPLES);
    }
}
