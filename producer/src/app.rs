//! The router and its middleware.

use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;

use crate::dashboard;
use crate::error::ApiError;
use crate::routes::{health, jobs, metrics};
use crate::state::AppState;

/// The request id header, set when the client did not send one and echoed back.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole HTTP API. Every request gets an `X-Request-Id` and one log line with method,
/// path, status and latency.
pub fn app(state: AppState) -> Router {
    surge_common::metrics::install();
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request<_>| {
            let request_id = request
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!(
                "request",
                method = %request.method(),
                path = %request.uri().path(),
                request_id = %request_id,
                trace_id = tracing::field::Empty,
            )
        })
        .on_request(())
        // The response line carries the status; a 503 under overload is the system working
        // as designed, not an ERROR line per request (real failures log their cause).
        .on_failure(())
        .on_response(
            DefaultOnResponse::new()
                .level(Level::INFO)
                .latency_unit(LatencyUnit::Micros),
        );
    Router::new()
        .route("/jobs", post(jobs::submit))
        .route("/jobs/batch", post(jobs::submit_batch))
        .route("/jobs/{id}", get(jobs::status))
        .route("/jobs/{id}/replay", post(jobs::replay))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/", get(dashboard::page))
        .route("/api/dashboard", get(dashboard::api))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .fallback(no_such_route)
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
}

async fn no_such_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}
