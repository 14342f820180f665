//! `GET /metrics`: Prometheus text format, with the broker backlog refreshed at scrape time.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use surge_common::metrics as m;

use crate::state::AppState;

/// Renders every Surge series of this process.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    if let Ok(Ok(stats)) = tokio::time::timeout(Duration::from_secs(1), state.broker.stats()).await
    {
        if let Some(backlog) = stats.backlog {
            metrics::gauge!(m::BACKLOG).set(backlog as f64);
        }
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        m::render(),
    )
}
