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
//! The backlog is read from the broker at most every 500 ms (one request refreshes it,
//! the others use the last reading), so admission costs no broker round trip per request.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use surge_common::broker::Broker;

/// How often the broker backlog is re-read.
const REFRESH: Duration = Duration::from_millis(500);

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
    clients: Option<DefaultKeyedRateLimiter<String>>,
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
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Admission {
            config,
            accepted: AtomicU64::new(0),
            reading: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            clients,
        }
    }

    /// Decides whether `client` may submit `jobs` more jobs now.
    pub async fn admit(&self, broker: &dyn Broker, client: &str, jobs: u32) -> Result<(), Refusal> {
        if let Some(limiter) = &self.clients {
            let n = NonZeroU32::new(jobs.max(1)).unwrap_or(NonZeroU32::MIN);
            match limiter.check_key_n(&client.to_owned(), n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    return Err(Refusal::RateLimited(wait.max(Duration::from_secs(1))));
                }
                // More jobs at once than the bucket can ever hold.
                Err(_) => return Err(Refusal::RateLimited(Duration::from_secs(1))),
            }
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
