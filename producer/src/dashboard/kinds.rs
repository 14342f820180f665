//! `GET /api/dashboard/kinds`: how many jobs of each kind have each status, for the
//! dashboard's per-kind table ([`crate::kind_counts`]: one count serves every viewer for
//! [`crate::kind_counts::KINDS_REFRESH`]).

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use axum::Json;

use crate::error::ApiError;
use crate::kind_counts::KindCounts;
use crate::state::AppState;

/// `GET /api/dashboard/kinds`.
#[utoipa::path(get, path = "/api/dashboard/kinds", tag = "dashboard",
    responses(
        (status = 200, description = "Jobs per kind and status (refreshed every 5 s)", body = KindCounts),
        (status = 503, description = "Database unavailable; see Retry-After", body = crate::openapi::ErrorBody),
    ))]
pub async fn kinds(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let counts = state.kind_counts.current(&state.storage).await?;
    Ok(([(CACHE_CONTROL, "no-store")], Json(counts)))
}
