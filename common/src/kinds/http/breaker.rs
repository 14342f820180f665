//! Circuit breaker for one HTTP kind in one process.
//!
//! Closed: requests flow; `failures` consecutive retryable failures (408, 429, 5xx,
//! timeouts, connection errors) open it. Open: no request is sent, jobs are deferred
//! (handed back to the broker without consuming an attempt) until the cool-down ends.
//! Then half-open: ONE job is let through as a probe while the others keep being deferred;
//! its success (any answer that is not a retryable failure) closes the circuit, its failure
//! opens it for another cool-down. A probe that never got to send (its slot wait timed
//! out, its task was dropped) hands the probe to the next job.
//!
//! State is per kind and per process: one target's outage leaves other kinds alone, and
//! each replica learns on its own (no database round trip on the hot path).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long a job waits in the broker while another job is probing.
pub const PROBE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What the breaker says about sending a request now.
#[derive(Debug)]
pub enum Admission {
    /// Send it; report how it went on the ticket.
    Go(Ticket),
    /// Don't: defer the job for this long.
    Wait(Duration),
}

/// A request the breaker let through. Dropped without [`Ticket::record`] (nothing was
/// sent), it gives a probe's turn back.
#[derive(Debug)]
pub struct Ticket {
    breaker: Breaker,
    probe: bool,
    recorded: bool,
}

/// The breaker. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// Opens after `failures` consecutive retryable failures (0: never) for `cooldown`.
    pub fn new(failures: u32, cooldown: Duration) -> Breaker {
        Breaker {
            inner: Arc::new(Inner {
                failures,
                cooldown,
                state: Mutex::new(State::Closed { failures: 0 }),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether jobs are being held back (open or half-open).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }

    /// May a request go at `now`?
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.state();
        match *state {
            State::Closed { .. } => Admission::Go(self.ticket(false)),
            State::Open { until } if now < until => Admission::Wait(until - now),
            State::Open { .. } => {
                *state = State::HalfOpen;
                Admission::Go(self.ticket(true))
            }
            State::HalfOpen => Admission::Wait(PROBE_WAIT.min(self.inner.cooldown)),
        }
    }

    fn ticket(&self, probe: bool) -> Ticket {
        Ticket {
            breaker: self.clone(),
            probe,
            recorded: false,
        }
    }
}

impl Ticket {
    /// Whether this request is the half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// How the request went (`failed`: a retryable failure), at `now`. Returns whether
    /// this opened the circuit.
    pub fn record(mut self, failed: bool, now: Instant) -> bool {
        self.recorded = true;
        let inner = &self.breaker.inner;
        if inner.failures == 0 {
            return false;
        }
        let mut state = self.breaker.state();
        let open = State::Open {
            until: now + inner.cooldown,
        };
        match (*state, failed) {
            (_, false) => {
                *state = State::Closed { failures: 0 };
                false
            }
            (State::HalfOpen, true) if self.probe => {
                *state = open;
                true
            }
            (State::Closed { failures }, true) => {
                let failures = failures.saturating_add(1);
                if failures >= inner.failures {
                    *state = open;
                    true
                } else {
                    *state = State::Closed { failures };
                    false
                }
            }
            // A request sent before the circuit opened, failing late: already open.
            (_, true) => false,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.breaker.state();
            if *state == State::HalfOpen {
                // Nothing was learned: the next job probes right away.
                *state = State::Open {
                    until: Instant::now(),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(admission: Admission) -> Ticket {
        match admission {
            Admission::Go(ticket) => ticket,
            Admission::Wait(after) => panic!("deferred for {after:?}"),
        }
    }

    #[test]
    fn opens_probes_once_and_closes_or_reopens() {
        let cooldown = Duration::from_secs(10);
        let breaker = Breaker::new(3, cooldown);
        let t0 = Instant::now();
        // A success resets the count: 2 failures, 1 success, 2 failures stay closed.
        for failed in [true, true, false, true, true] {
            assert!(!go(breaker.admit(t0)).record(failed, t0));
        }
        assert!(go(breaker.admit(t0)).record(true, t0));
        assert!(breaker.is_open());
        assert!(matches!(breaker.admit(t0), Admission::Wait(d) if d == cooldown));
        // After the cool-down: one probe, the others wait.
        let t1 = t0 + cooldown;
        let probe = go(breaker.admit(t1));
        assert!(probe.is_probe());
        assert!(matches!(breaker.admit(t1), Admission::Wait(_)));
        // The probe fails: open again for a full cool-down.
        assert!(probe.record(true, t1));
        assert!(matches!(breaker.admit(t1), Admission::Wait(d) if d == cooldown));
        // A probe dropped without sending gives the turn to the next job.
        let t2 = t1 + cooldown;
        drop(go(breaker.admit(t2)));
        let probe = go(breaker.admit(Instant::now().max(t2)));
        assert!(probe.is_probe());
        // The probe succeeds: closed.
        assert!(!probe.record(false, t2));
        assert!(!breaker.is_open());
        assert!(!go(breaker.admit(t2)).is_probe());
    }

    #[test]
    fn zero_failures_means_never_open() {
        let breaker = Breaker::new(0, Duration::from_secs(1));
        let now = Instant::now();
        for _ in 0..100 {
            assert!(!go(breaker.admit(now)).record(true, now));
        }
        assert!(!breaker.is_open());
    }
}
