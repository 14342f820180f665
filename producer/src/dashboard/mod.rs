//! The live dashboard: `GET /` serves one self-contained HTML page (no build step, no
//! external URLs) that polls `GET /api/dashboard` every 500 ms.
//!
//! Where each figure comes from:
//! - accepted total, accepted rate, accept latency: this ingress's [`live::Live`] counters;
//! - backlog: the broker's stats (1 s timeout);
//! - processed totals and rate, end-to-end latency, workers (in flight, capacity, status):
//!   the database — finished `jobs` rows and the heartbeats every worker writes each second — so
//!   they are right whichever process the workers run in.
//!
//! The page also lists dead jobs (from `GET /jobs?status=dead`, with a replay button per
//! job and one for the current filter, which call the replay routes) and jobs per kind and
//! status ([`kinds`]).
//!
//! The broker and database part is shared by concurrent viewers for [`REFRESH`], so many
//! open dashboards cost the database no more than one.

pub mod kinds;
pub mod live;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use surge_common::clock::{micros, now_micros};
use surge_common::storage::heartbeat::{Heartbeat, KeyLoad, RecentLatency, ResultTotals};
use tokio::sync::Mutex;

use crate::state::AppState;
use live::Sample;

/// The page, embedded at build time.
pub const PAGE: &str = include_str!("../../assets/dashboard.html");

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

/// `GET /`: the dashboard page.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "The live dashboard (HTML)", content_type = "text/html")))]
pub async fn page() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (
                CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
            ),
        ],
        PAGE,
    )
}

/// `GET /api/dashboard`: everything the page shows, as JSON (see [`Dashboard`]).
#[utoipa::path(get, path = "/api/dashboard", tag = "dashboard",
    responses((status = 200, description = "Rates, backlog, in flight, latencies, workers", content_type = "application/json")))]
pub async fn api(State(state): State<AppState>) -> impl IntoResponse {
    let observed = observe(&state).await;
    let live = state.live.snapshot();
    let view = Dashboard {
        now_us: now_micros(),
        broker: state.broker.name().to_owned(),
        accepted: Accepted {
            total: live.accepted_total,
            per_second: live.accepted_per_second,
            latency: Latency::of(live.accept_samples, live.accept_p50_us, live.accept_p99_us),
        },
        processed: observed.totals.map(|t| Processed {
            total: t.succeeded + t.dead,
            succeeded: t.succeeded,
            dead: t.dead,
            per_second: observed.processed_per_second,
        }),
        end_to_end: observed
            .end_to_end
            .map(|l| Latency::of(l.samples, l.p50_us, l.p99_us)),
        backlog: observed.backlog,
        in_flight: observed.in_flight,
        capacity: observed.capacity,
        workers: observed.workers.clone(),
        busiest_keys: observed.busiest_keys.clone(),
        history: live.history,
        errors: observed.errors.clone(),
    };
    ([(CACHE_CONTROL, "no-store")], Json(view))
}

/// The JSON of `GET /api/dashboard`. `null` where the source did not answer (see `errors`).
#[derive(Debug, Clone, Serialize)]
pub struct Dashboard {
    /// When this was computed (µs since the epoch).
    pub now_us: i64,
    /// The broker kind (`memory`, `rabbitmq`, `kafka`).
    pub broker: String,
    /// Jobs accepted by this ingress process.
    pub accepted: Accepted,
    /// Stored results (all processes' workers).
    pub processed: Option<Processed>,
    /// Accepted → handler finished, over the last minute's latest results.
    pub end_to_end: Option<Latency>,
    /// Jobs waiting in the broker.
    pub backlog: Option<u64>,
    /// Jobs running on live workers (from their heartbeats).
    pub in_flight: Option<u64>,
    /// Live workers' total capacity.
    pub capacity: Option<u64>,
    /// Workers seen in the last ten minutes, most recently seen first.
    pub workers: Option<Vec<WorkerView>>,
    /// The fairness keys live workers started most jobs of in the last 10 s, summed over
    /// them, busiest first (at most [`MAX_BUSIEST_KEYS`]).
    pub busiest_keys: Option<Vec<KeyLoad>>,
    /// Per-second samples of the last minute, oldest first.
    pub history: Vec<Sample>,
    /// What could not be read just now (e.g. `database did not answer`).
    pub errors: Vec<String>,
}

/// Accepted jobs.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    /// Since this process started.
    pub total: u64,
    /// Per second, over the last five seconds.
    pub per_second: f64,
    /// Publish until the broker's confirm, per request, over the last minute.
    pub latency: Latency,
}

/// Processed jobs, from the results table.
#[derive(Debug, Clone, Serialize)]
pub struct Processed {
    /// `succeeded` + `dead`.
    pub total: u64,
    /// Results with status succeeded.
    pub succeeded: u64,
    /// Results with status dead.
    pub dead: u64,
    /// Results finished per second over the last five seconds.
    pub per_second: Option<f64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// How many measurements.
    pub samples: usize,
    /// Median, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
}

impl Latency {
    fn of(samples: usize, p50_us: Option<i64>, p99_us: Option<i64>) -> Latency {
        let ms = |us: i64| us as f64 / 1000.0;
        Latency {
            samples,
            p50_ms: p50_us.map(ms),
            p99_ms: p99_us.map(ms),
        }
    }
}

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
    backlog: Option<u64>,
    in_flight: Option<u64>,
    capacity: Option<u64>,
    totals: Option<ResultTotals>,
    processed_per_second: Option<f64>,
    end_to_end: Option<RecentLatency>,
    workers: Option<Vec<WorkerView>>,
    busiest_keys: Option<Vec<KeyLoad>>,
    errors: Vec<String>,
}

/// The latest [`Observed`] and when it was taken; one refresh at a time.
#[derive(Debug, Default)]
pub(crate) struct ObservedCache(Mutex<Option<(Instant, Arc<Observed>)>>);

async fn observe(state: &AppState) -> Arc<Observed> {
    // Holding the lock while refreshing makes concurrent viewers wait for one refresh
    // instead of each querying the database.
    let mut cached = state.live.observed.0.lock().await;
    if let Some((at, observed)) = cached.as_ref() {
        if at.elapsed() < REFRESH {
            return observed.clone();
        }
    }
    let observed = Arc::new(refresh(state).await);
    state
        .live
        .observe(observed.backlog, observed.in_flight, observed.capacity);
    *cached = Some((Instant::now(), observed.clone()));
    observed
}

async fn refresh(state: &AppState) -> Observed {
    let now_us = now_micros();
    let storage = &state.storage;
    let (broker, totals, finished, end_to_end, beats) = tokio::join!(
        tokio::time::timeout(BROKER_TIMEOUT, state.broker.stats()),
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
