//! What the dashboard shows of the broker and the database: the backlog, the processed
//! totals and rate, the end-to-end latency, and the workers with their busiest keys (from
//! the heartbeats every worker writes each second, so they are right whichever process the
//! workers run in).
//!
//! One look (`Observed`) is shared by concurrent viewers for [`REFRESH`]
//! (`ObservedCache`), so many open dashboards cost the database no more than one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use surge_common::broker::Broker;
use surge_common::clock::{micros, now_micros};
use surge_common::storage::heartbeat::{Heartbeat, KeyLoad, RecentLatency, ResultTotals};
use surge_common::storage::Storage;
use tokio::sync::Mutex;

use crate::live::Live;

/// How long one look at the broker and database serves every viewer.
pub const REFRESH: Duration = Duration::from_millis(250);
/// A worker whose last heartbeat is older than this is shown stale and not counted.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// Workers not seen for this long are no longer listed.
pub const LIST_WORKERS_SEEN_WITHIN: Duration = Duration::from_secs(10 * 60);
/// Most workers listed.
pub const MAX_WORKERS: u32 = 200;
/// Most keys in the busiest keys.
pub const MAX_BUSIEST_KEYS: usize = 10;
/// End-to-end latency and the processed rate look at results finished this recently…
pub const RESULT_WINDOW: Duration = Duration::from_secs(60);
/// …and the percentiles at no more than this many of them (the latest).
pub const MAX_LATENCY_ROWS: u32 = 2000;
/// The processed rate is averaged over this long.
pub const PROCESSED_RATE_WINDOW: Duration = Duration::from_secs(5);

const BROKER_TIMEOUT: Duration = Duration::from_secs(1);
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// One worker, from its latest heartbeat.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerView {
    /// Its name.
    pub id: String,
    /// Most jobs it runs at once.
    pub capacity: u64,
    /// Jobs it was running at its last heartbeat.
    pub in_flight: u64,
    /// Jobs it settled (succeeded + dead) since it started.
    pub processed: u64,
    /// Of which dead-lettered.
    pub dead: u64,
    /// When it started (µs since the epoch).
    pub started_at_us: i64,
    /// Its last heartbeat (µs since the epoch).
    pub last_seen_us: i64,
    /// Seconds since its last heartbeat.
    pub seen_ago_s: f64,
    /// `up`, or `stale` when its last heartbeat is older than [`STALE_AFTER`].
    pub status: &'static str,
}

impl WorkerView {
    fn of(beat: Heartbeat, now_us: i64) -> WorkerView {
        let ago_us = now_us.saturating_sub(beat.last_seen_us).max(0);
        let stale = ago_us > micros(STALE_AFTER);
        WorkerView {
            id: beat.worker_id,
            capacity: beat.capacity,
            in_flight: beat.in_flight,
            processed: beat.succeeded + beat.dead,
            dead: beat.dead,
            started_at_us: beat.started_at_us,
            last_seen_us: beat.last_seen_us,
            seen_ago_s: ago_us as f64 / 1e6,
            status: if stale { "stale" } else { "up" },
        }
    }
}

/// What the broker and the database said at one moment, shared by viewers for [`REFRESH`].
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// Jobs waiting in the broker.
    pub(crate) backlog: Option<u64>,
    /// Jobs running on live workers.
    pub(crate) in_flight: Option<u64>,
    /// Live workers' total capacity.
    pub(crate) capacity: Option<u64>,
    /// Stored results per final status.
    pub(crate) totals: Option<ResultTotals>,
    /// Results finished per second over [`PROCESSED_RATE_WINDOW`].
    pub(crate) processed_per_second: Option<f64>,
    /// Accepted → finished, over [`RESULT_WINDOW`]'s latest results.
    pub(crate) end_to_end: Option<RecentLatency>,
    /// Workers seen within [`LIST_WORKERS_SEEN_WITHIN`], most recently seen first.
    pub(crate) workers: Option<Vec<WorkerView>>,
    /// The keys live workers started most jobs of ([`MAX_BUSIEST_KEYS`] at most).
    pub(crate) busiest_keys: Option<Vec<KeyLoad>>,
    /// What could not be read.
    pub(crate) errors: Vec<String>,
}

/// The latest [`Observed`] and when it was taken; one refresh at a time. One per ingress
/// state.
#[derive(Debug, Default)]
pub(crate) struct ObservedCache(Mutex<Option<(Instant, Arc<Observed>)>>);

impl ObservedCache {
    /// The latest look, or a new one when that is older than [`REFRESH`]; a new look is
    /// also recorded in `live`'s history (the dashboard's chart).
    pub(crate) async fn latest(
        &self,
        broker: &dyn Broker,
        storage: &Storage,
        live: &Live,
    ) -> Arc<Observed> {
        // Holding the lock while refreshing makes concurrent viewers wait for one refresh
        // instead of each querying the database.
        let mut cached = self.0.lock().await;
        if let Some((at, observed)) = cached.as_ref() {
            if at.elapsed() < REFRESH {
                return observed.clone();
            }
        }
        let observed = Arc::new(refresh(broker, storage).await);
        live.observe(observed.backlog, observed.in_flight, observed.capacity);
        *cached = Some((Instant::now(), observed.clone()));
        observed
    }
}

async fn refresh(broker: &dyn Broker, storage: &Storage) -> Observed {
    let now_us = now_micros();
    let (broker, totals, finished, end_to_end, beats) = tokio::join!(
        tokio::time::timeout(BROKER_TIMEOUT, broker.stats()),
        within(storage.result_totals()),
        within(storage.finished_since(now_us - micros(PROCESSED_RATE_WINDOW))),
        within(storage.recent_latency(now_us - micros(RESULT_WINDOW), MAX_LATENCY_ROWS)),
        within(storage.heartbeats(now_us - micros(LIST_WORKERS_SEEN_WITHIN), MAX_WORKERS)),
    );
    let mut observed = Observed::default();
    match broker {
        Ok(Ok(stats)) => observed.backlog = stats.backlog,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "dashboard: broker stats failed");
            observed.errors.push("broker did not answer".into());
        }
        Err(_) => observed
            .errors
            .push("broker did not answer within 1 s".into()),
    }
    let mut database_failed = false;
    let mut note = |what: &str, e: String| {
        tracing::debug!(error = %e, "dashboard: {what} failed");
        database_failed = true;
    };
    match totals {
        Ok(t) => observed.totals = Some(t),
        Err(e) => note("result totals", e),
    }
    match finished {
        Ok(n) => {
            observed.processed_per_second = Some(n as f64 / PROCESSED_RATE_WINDOW.as_secs_f64())
        }
        Err(e) => note("processed rate", e),
    }
    match end_to_end {
        Ok(l) => observed.end_to_end = Some(l),
        Err(e) => note("end-to-end latency", e),
    }
    match beats {
        Ok(beats) => {
            observed.busiest_keys = Some(busiest_keys(&beats, now_us));
            let workers: Vec<WorkerView> = beats
                .into_iter()
                .map(|b| WorkerView::of(b, now_us))
                .collect();
            let up = workers.iter().filter(|w| w.status == "up");
            observed.in_flight = Some(up.clone().map(|w| w.in_flight).sum());
            observed.capacity = Some(up.map(|w| w.capacity).sum());
            observed.workers = Some(workers);
        }
        Err(e) => note("heartbeats", e),
    }
    if database_failed {
        observed.errors.push("database did not answer".into());
    }
    observed
}

/// The keys live workers (heartbeat within [`STALE_AFTER`]) started most jobs of, summed
/// over them, busiest first, at most [`MAX_BUSIEST_KEYS`].
fn busiest_keys(beats: &[Heartbeat], now_us: i64) -> Vec<KeyLoad> {
    let counts = beats
        .iter()
        .filter(|b| now_us.saturating_sub(b.last_seen_us) <= micros(STALE_AFTER))
        .flat_map(|b| b.busy_keys.iter().map(|l| (l.key.as_str(), l.started)));
    KeyLoad::busiest(counts, MAX_BUSIEST_KEYS)
}

/// Runs a storage query with [`DATABASE_TIMEOUT`]; the error as text.
async fn within<T>(
    query: impl std::future::Future<Output = Result<T, surge_common::storage::StorageError>>,
) -> Result<T, String> {
    match tokio::time::timeout(DATABASE_TIMEOUT, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {DATABASE_TIMEOUT:?}")),
    }
}
