//! The router and its middleware.

use axum::http::{HeaderName, Request};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::dashboard;
use crate::error::ApiError;
use crate::routes::{health, jobs, kinds, metrics, operations, schedules};
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
    let guard =
        axum::middleware::from_fn_with_state(state.clone(), crate::auth::require_key_beyond_jobs);
    Router::from(routes())
        .fallback(no_such_route)
        .layer(guard)
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(trace)
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
}

/// Every route the API serves, each added with its `#[utoipa::path]` operation
/// (utoipa-axum), so the OpenAPI document ([`crate::openapi::document`]) lists exactly
/// these. Add a route here, never on the plain `Router` in [`app`].
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(jobs::submit))
        .routes(routes!(jobs::submit_batch))
        .routes(routes!(jobs::status))
        .routes(routes!(jobs::replay))
        .routes(routes!(operations::list))
        .routes(routes!(operations::replay_many))
        .routes(routes!(operations::cancel))
        .routes(routes!(schedules::list))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(schedules::trigger))
        .routes(routes!(kinds::list))
        .routes(routes!(kinds::pause))
        .routes(routes!(kinds::resume))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::api))
        .routes(routes!(dashboard::kinds::kinds))
        .routes(routes!(crate::openapi::openapi_json))
}

async fn no_such_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}
