//! Adaptive concurrency (AIMD) for one HTTP kind in one process: a semaphore whose size
//! moves between 1 and the kind's `concurrency`.
//!
//! - Overload (429, 503, a timeout): the limit halves — at most once per "window": a
//!   signal from a request that started before the last decrease is ignored, since it was
//!   sent under the old limit (like TCP, which halves once per round trip, not once per
//!   lost packet). Without that, 20 requests in flight answered 429 together would cut the
//!   limit by 2^20.
//! - Success: the limit grows by `1 / limit`, i.e. by one per window of `limit` successes.
//!
//! A permit is taken before the cross-replica slot, so a process the target is pushing
//! back on polls the shared database less, and the other replicas get the slots.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio::time::Instant;

/// Factor applied to the limit on an overload signal.
pub const DECREASE_FACTOR: f64 = 0.5;

#[derive(Debug)]
struct State {
    limit: f64,
    in_flight: u32,
    /// Bumped by each decrease; permits remember the epoch they started in.
    epoch: u64,
}

/// The limiter. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: u32,
    adaptive: bool,
    state: Mutex<State>,
    changed: Notify,
}

/// One request's place under the limit; dropping it gives the place back.
#[derive(Debug)]
pub struct Permit {
    limit: AdaptiveLimit,
    epoch: u64,
}

/// What an attempt told the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The target coped (any answer but the overload ones).
    Success,
    /// The target is overloaded (429, 503, a timeout).
    Overload,
    /// Nothing to learn (a connection error: the breaker deals with those).
    Neutral,
}

impl AdaptiveLimit {
    /// A limiter starting at `max` (≥ 1). When `adaptive` is false it stays at `max`.
    pub fn new(max: u32, adaptive: bool) -> AdaptiveLimit {
        let max = max.max(1);
        AdaptiveLimit {
            inner: Arc::new(Inner {
                max,
                adaptive,
                state: Mutex::new(State {
                    limit: f64::from(max),
                    in_flight: 0,
                    epoch: 0,
                }),
                changed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under any panic (plain field writes).
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current limit (1..=max).
    pub fn limit(&self) -> f64 {
        self.state().limit
    }

    /// Permits held now.
    pub fn in_flight(&self) -> u32 {
        self.state().in_flight
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut state = self.state();
        // The integer part counts: 1.9 allows one request.
        if f64::from(state.in_flight) < state.limit.floor() {
            state.in_flight += 1;
            Some(Permit {
                limit: self.clone(),
                epoch: state.epoch,
            })
        } else {
            None
        }
    }

    /// A permit, waiting until one is free or `deadline` passes (`None`).
    pub async fn acquire(&self, deadline: Instant) -> Option<Permit> {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a release in between is not missed.
            changed.as_mut().enable();
            if let Some(permit) = self.try_acquire() {
                return Some(permit);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Tells the limiter how the request under `permit` went.
    pub fn record(&self, permit: &Permit, signal: Signal) {
        if !self.inner.adaptive {
            return;
        }
        let max = f64::from(self.inner.max);
        let mut state = self.state();
        match signal {
            Signal::Success => {
                state.limit = (state.limit + 1.0 / state.limit).min(max);
            }
            Signal::Overload if permit.epoch == state.epoch => {
                state.limit = (state.limit * DECREASE_FACTOR).max(1.0);
                state.epoch += 1;
            }
            Signal::Overload | Signal::Neutral => return,
        }
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.limit.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        drop(state);
        self.limit.inner.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn halves_once_per_window_and_grows_back_additively() {
        let limit = AdaptiveLimit::new(20, true);
        let permits: Vec<Permit> = (0..20).map(|_| limit.try_acquire().unwrap()).collect();
        assert!(limit.try_acquire().is_none());
        // Twenty 429s from one window: one halving, not twenty.
        for permit in &permits {
            limit.record(permit, Signal::Overload);
        }
        assert_eq!(limit.limit(), 10.0);
        drop(permits);
        assert_eq!(limit.in_flight(), 0);
        // A request of the new window halves again.
        let permit = limit.try_acquire().unwrap();
        limit.record(&permit, Signal::Overload);
        assert_eq!(limit.limit(), 5.0);
        drop(permit);
        // Never below one.
        for _ in 0..10 {
            let p = limit.try_acquire().unwrap();
            limit.record(&p, Signal::Overload);
        }
        assert_eq!(limit.limit(), 1.0);
        let only = limit.try_acquire().unwrap();
        assert!(limit.try_acquire().is_none());
        // Additive increase: +1 per window of successes, capped at max.
        limit.record(&only, Signal::Success);
        assert_eq!(limit.limit(), 2.0);
        for _ in 0..1000 {
            limit.record(&only, Signal::Success);
        }
        assert_eq!(limit.limit(), 20.0);
        limit.record(&only, Signal::Neutral);
        assert_eq!(limit.limit(), 20.0);
    }

    #[test]
    fn fixed_when_not_adaptive() {
        let limit = AdaptiveLimit::new(3, false);
        let p = limit.try_acquire().unwrap();
        limit.record(&p, Signal::Overload);
        assert_eq!(limit.limit(), 3.0);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_released_permit_or_gives_up_at_its_deadline() {
        let limit = AdaptiveLimit::new(1, true);
        let held = limit.try_acquire().unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(limit.acquire(soon).await.is_none());
        let waiter = {
            let limit = limit.clone();
            tokio::spawn(async move {
                limit
                    .acquire(Instant::now() + Duration::from_secs(60))
                    .await
                    .is_some()
            })
        };
        drop(held);
        assert!(waiter.await.unwrap());
    }
}
