//! Admission control: shed load honestly instead of collapsing.
//!
//! - **Backlog bound.** With `max_backlog` set, a POST that would push the backlog (the
//!   broker's queue depth / consumer lag, plus what this ingress accepted since it last
//!   looked) past the bound is answered `503` with a `Retry-After` computed from the
//!   measured drain rate. Below the bound every burst is absorbed.
//! - **Per-client token bucket.** With `client_rate` set, each client (its API key, else
//!   its address) may submit that many jobs per second with bursts of `client_burst`; past
//!   it, `429` with `Retry-After`.
//!
//! Clients are remembered only while their bucket is not full again: every
//! [`SWEEP_EVERY`] checks the limiter forgets clients whose bucket has refilled (their
//! state is the same as a new client's), so memory follows the number of clients active
//! within one refill period, not every address ever seen.
//!
//! The backlog is read from the broker at most every 500 ms (one request refreshes it,
//! the others use the last reading), so admission costs no broker round trip per request.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use surge_common::broker::Broker;

/// How often the broker backlog is re-read.
const REFRESH: Duration = Duration::from_millis(500);

/// The per-client limiter forgets idle clients once every this many checks (so at most
/// this many new clients are added between two sweeps).
pub const SWEEP_EVERY: u64 = 1024;

/// Per-client token buckets that forget idle clients (see the module docs).
struct ClientLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<String, DefaultKeyedStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    checks: AtomicU64,
}

impl<C: Clock + Clone> ClientLimiter<C> {
    fn new(quota: Quota, clock: C) -> ClientLimiter<C> {
        ClientLimiter {
            limiter: RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone()),
            clock,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes `n` tokens from `client`'s bucket, or says how long to wait.
    fn check(&self, client: &str, n: NonZeroU32) -> Result<(), Duration> {
        let checked = match self.limiter.check_key_n(&client.to_owned(), n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until
                .wait_time_from(self.clock.now())
                .max(Duration::from_secs(1))),
            // More jobs at once than the bucket can ever hold.
            Err(_) => Err(Duration::from_secs(1)),
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.sweep();
        }
        checked
    }

    /// Forgets clients whose bucket is full again and releases the memory they held.
    fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// How many clients are remembered.
    fn len(&self) -> usize {
        self.limiter.len()
    }
}

/// Admission settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmissionConfig {
    /// Refuse jobs beyond this backlog (jobs waiting in the broker). `None`: no bound.
    pub max_backlog: Option<u64>,
    /// Jobs per second per client. `None`: no per-client limit.
    pub client_rate: Option<NonZeroU32>,
    /// Burst size of the per-client bucket (defaults to the rate).
    pub client_burst: Option<NonZeroU32>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The backlog bound is reached: 503, retry after this long.
    Overloaded(Duration),
    /// This client is over its rate: 429, retry after this long.
    RateLimited(Duration),
}

#[derive(Debug)]
struct Reading {
    at: Instant,
    backlog: u64,
    accepted_at_reading: u64,
    /// Jobs drained per second (smoothed), once two readings exist.
    drain_rate: Option<f64>,
}

/// The admission controller of one ingress.
pub struct Admission {
    config: AdmissionConfig,
    accepted: AtomicU64,
    reading: Mutex<Option<Reading>>,
    refreshing: tokio::sync::Mutex<()>,
    clients: Option<ClientLimiter>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("config", &self.config)
            .finish()
    }
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(AdmissionConfig::default())
    }
}

impl Admission {
    /// A controller with `config`.
    pub fn new(config: AdmissionConfig) -> Admission {
        let clients = config.client_rate.map(|rate| {
            let burst = config.client_burst.unwrap_or(rate);
            ClientLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                DefaultClock::default(),
            )
        });
        Admission {
            config,
            accepted: AtomicU64::new(0),
            reading: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            clients,
        }
    }

    /// Takes one job's worth of `client`'s rate: the check a request passes before its
    /// body is read, so a client over its rate is refused without costing a parse.
    pub fn admit_client(&self, client: &str) -> Result<(), Refusal> {
        match &self.clients {
            Some(limiter) => limiter
                .check(client, NonZeroU32::MIN)
                .map_err(Refusal::RateLimited),
            None => Ok(()),
        }
    }

    /// Decides whether `client`, already admitted by [`Admission::admit_client`], may
    /// submit `jobs` jobs now: takes the rest of their rate (`jobs - 1`) and checks the
    /// backlog bound.
    pub async fn admit(&self, broker: &dyn Broker, client: &str, jobs: u32) -> Result<(), Refusal> {
        if let (Some(limiter), Some(more)) =
            (&self.clients, NonZeroU32::new(jobs.saturating_sub(1)))
        {
            let burst = self
                .config
                .client_burst
                .or(self.config.client_rate)
                .map_or(u32::MAX, NonZeroU32::get);
            if jobs > burst {
                // More jobs at once than the bucket can ever hold.
                return Err(Refusal::RateLimited(Duration::from_secs(1)));
            }
            limiter.check(client, more).map_err(Refusal::RateLimited)?;
        }
        let Some(max_backlog) = self.config.max_backlog else {
            return Ok(());
        };
        self.refresh(broker).await;
        let guard = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        let Some(reading) = guard.as_ref() else {
            // The broker has not answered yet: publishing will tell.
            return Ok(());
        };
        let since = self
            .accepted
            .load(Ordering::Relaxed)
            .saturating_sub(reading.accepted_at_reading);
        let estimate = reading.backlog + since + u64::from(jobs);
        if estimate <= max_backlog {
            return Ok(());
        }
        let excess = (estimate - max_backlog) as f64;
        let wait = match reading.drain_rate {
            Some(rate) if rate > 0.0 => excess / rate,
            _ => 5.0,
        };
        Err(Refusal::Overloaded(Duration::from_secs_f64(
            wait.clamp(1.0, 60.0).ceil(),
        )))
    }

    /// How many clients the per-client limiter remembers (0 without a limit).
    pub fn tracked_clients(&self) -> usize {
        self.clients.as_ref().map_or(0, ClientLimiter::len)
    }

    /// Counts jobs the broker confirmed.
    pub fn accepted(&self, jobs: u64) {
        self.accepted.fetch_add(jobs, Ordering::Relaxed);
    }

    async fn refresh(&self, broker: &dyn Broker) {
        let fresh = {
            let guard = self.reading.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().is_some_and(|r| r.at.elapsed() < REFRESH)
        };
        if fresh {
            return;
        }
        // One refresher at a time; the others use the previous reading.
        let Ok(_refreshing) = self.refreshing.try_lock() else {
            return;
        };
        let stats = tokio::time::timeout(Duration::from_secs(1), broker.stats()).await;
        let Some(backlog) = stats.ok().and_then(Result::ok).and_then(|s| s.backlog) else {
            return;
        };
        let accepted_now = self.accepted.load(Ordering::Relaxed);
        let mut guard = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        let drain_rate = guard.as_ref().and_then(|previous| {
            let seconds = previous.at.elapsed().as_secs_f64();
            let arrived = accepted_now.saturating_sub(previous.accepted_at_reading);
            let drained = (previous.backlog + arrived).saturating_sub(backlog) as f64 / seconds;
            let smoothed = match previous.drain_rate {
                Some(before) => 0.7 * before + 0.3 * drained,
                None => drained,
            };
            (seconds > 0.0).then_some(smoothed)
        });
        *guard = Some(Reading {
            at: Instant::now(),
            backlog,
            accepted_at_reading: accepted_now,
            drain_rate,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn idle_clients_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_second(NonZeroU32::new(10).unwrap());
        let limiter = ClientLimiter::new(quota, clock.clone());
        let one = NonZeroU32::MIN;
        let distinct = 20 * SWEEP_EVERY;
        for client in 0..distinct {
            assert_eq!(limiter.check(&format!("10.0.{client}"), one), Ok(()));
        }
        // Every client was seen within the refill period: all are remembered.
        assert!(
            limiter.len() as u64 >= distinct - SWEEP_EVERY,
            "{}",
            limiter.len()
        );

        // Once their buckets are full again, a sweep forgets them.
        clock.advance(Duration::from_secs(2));
        for _ in 0..SWEEP_EVERY {
            limiter.check("busy", one).ok();
        }
        assert!(limiter.len() <= 1, "{} clients remembered", limiter.len());

        // New clients keep coming: the map never holds more than one sweep's worth of
        // clients plus those active within the refill period.
        for client in 0..distinct {
            limiter.check(&format!("10.1.{client}"), one).ok();
            clock.advance(Duration::from_millis(1));
            assert!(
                limiter.len() as u64 <= SWEEP_EVERY + 1_100,
                "{}",
                limiter.len()
            );
        }
    }

    #[test]
    fn a_remembered_client_keeps_its_limit_across_sweeps() {
        let clock = FakeRelativeClock::default();
        let quota = Quota::per_second(NonZeroU32::new(1).unwrap());
        let limiter = ClientLimiter::new(quota, clock.clone());
        let one = NonZeroU32::MIN;
        assert_eq!(limiter.check("greedy", one), Ok(()));
        for client in 0..2 * SWEEP_EVERY {
            limiter.check(&format!("other-{client}"), one).ok();
        }
        assert!(
            limiter.check("greedy", one).is_err(),
            "a sweep reset its bucket"
        );
    }
}
