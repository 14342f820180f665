//! The live dashboard: `GET /` serves one self-contained HTML page (no build step, no
//! external URLs) that polls `GET /api/dashboard` every 500 ms.
//!
//! Where each figure comes from:
//! - accepted total, accepted rate, accept latency: this ingress's [`crate::live::Live`]
//!   counters;
//! - backlog: the broker's stats (1 s timeout);
//! - processed totals and rate, end-to-end latency, workers (in flight, capacity, status):
//!   the database — finished `jobs` rows and the heartbeats every worker writes each second — so
//!   they are right whichever process the workers run in.
//!
//! The page also lists dead jobs (from `GET /jobs?status=dead`, with a replay button per
//! job and one for the current filter, which call the replay routes) and jobs per kind and
//! status ([`kinds`]).
//!
//! The broker and database part ([`crate::observed`]) is shared by concurrent viewers
//! for [`crate::observed::REFRESH`], so many open dashboards cost the database no more
//! than one.

pub mod kinds;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use surge_common::clock::now_micros;
use surge_common::storage::heartbeat::KeyLoad;

use crate::live::Sample;
use crate::observed::WorkerView;
use crate::state::AppState;

/// The page, embedded at build time.
pub const PAGE: &str = include_str!("../../assets/dashboard.html");

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
    let observed = state
        .observed
        .latest(state.broker.as_ref(), &state.storage, &state.live)
        .await;
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
    /// them, busiest first (at most [`crate::observed::MAX_BUSIEST_KEYS`]).
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
