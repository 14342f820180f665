//! `GET /api/dashboard/kinds`: how many jobs of each kind have each status, for the
//! dashboard's per-kind table.
//!
//! Counting reads every row's index entry (about 1.5 s at a million results, see
//! `/work/notes/ops.md`), so one count serves every viewer for [`KINDS_REFRESH`], and
//! concurrent viewers wait for the same count rather than each starting one.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use surge_common::storage::listing::StatusFilter;
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::state::AppState;

/// How long one count serves every viewer.
pub const KINDS_REFRESH: Duration = Duration::from_secs(5);

/// The latest count and when it was taken. One per ingress state.
#[derive(Debug, Default)]
pub struct KindCountsCache {
    latest: Mutex<Option<(Instant, KindCounts)>>,
}

/// The JSON of `GET /api/dashboard/kinds`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KindCounts {
    /// Every status, in lifecycle order (the table's columns).
    pub statuses: Vec<String>,
    /// One row per kind that has jobs, by name.
    pub kinds: Vec<KindRow>,
}

/// One kind's jobs by status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KindRow {
    /// The kind.
    pub kind: String,
    /// Jobs per status (statuses with none are left out).
    pub counts: BTreeMap<String, u64>,
}

/// `GET /api/dashboard/kinds`.
#[utoipa::path(get, path = "/api/dashboard/kinds", tag = "dashboard",
    responses(
        (status = 200, description = "Jobs per kind and status (refreshed every 5 s)", body = KindCounts),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn kinds(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut latest = state.kind_counts.latest.lock().await;
    let fresh = latest
        .as_ref()
        .filter(|(at, _)| at.elapsed() < KINDS_REFRESH)
        .map(|(_, counts)| counts.clone());
    let counts = match fresh {
        Some(counts) => counts,
        None => {
            let mut rows: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for count in state.storage.counts_by_kind().await? {
                *rows
                    .entry(count.kind)
                    .or_default()
                    .entry(count.status)
                    .or_default() += count.count;
            }
            let counts = KindCounts {
                statuses: StatusFilter::NAMES
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                kinds: rows
                    .into_iter()
                    .map(|(kind, counts)| KindRow { kind, counts })
                    .collect(),
            };
            *latest = Some((Instant::now(), counts.clone()));
            counts
        }
    };
    Ok(([(CACHE_CONTROL, "no-store")], Json(counts)))
}
