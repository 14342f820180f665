//! The router: every route, its middleware, and `GET /openapi.json`, the API description
//! generated from those routes.
//!
//! - The operations come from the router itself: [`routes()`] registers every
//!   handler through utoipa-axum's `OpenApiRouter`, which adds the handler's
//!   `#[utoipa::path]` operation as it adds the route, so a route cannot be served
//!   undocumented, nor documented and not served.
//! - A job request is described per kind the ingress knows
//!   ([`crate::openapi::for_kinds`]).
//! - Path ids are declared `format: uuid`.
//! - Every parameter and header says what the server takes (lengths, patterns, ranges),
//!   and the optional request fields are nullable because the server reads `null` as
//!   absent: a request valid by the document is never refused for its form.
//! - The bounds that come from the configuration (the longest `wait`, the largest batch)
//!   are those of this server ([`served`]).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderName, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthScope, OPEN_WITH_SCOPE_ALL};
use crate::dashboard;
use crate::error::ApiError;
use crate::openapi::{ErrorBody, ErrorDetail, JobRequestDoc};
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
    let guard = axum::middleware::from_fn_with_state(state.clone(), require_key_beyond_jobs);
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

/// Middleware: with keys configured and `--auth-scope all`, every request but those to
/// [`OPEN_WITH_SCOPE_ALL`] must carry a valid key (401 otherwise). The job endpoints check
/// their key themselves whatever the scope.
pub async fn require_key_beyond_jobs(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    let keys = &state.api_keys;
    if keys.enabled()
        && keys.scope() == AuthScope::All
        && !OPEN_WITH_SCOPE_ALL.contains(&request.uri().path())
    {
        if let Err(why) = keys.authenticate(request.headers()) {
            return ApiError::Unauthorized(why).into_response();
        }
    }
    next.run(request).await
}

/// Every route the API serves, each added with its `#[utoipa::path]` operation
/// (utoipa-axum), so the OpenAPI document ([`document`]) lists exactly these. Add a route
/// here, never on the plain `Router` in [`app`].
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
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
        .routes(routes!(openapi_json))
}

async fn no_such_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {method} {}", uri.path()))
}

/// The document's frame: title, description and the shared schemas. The operations are
/// added by [`routes()`], one per route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Surge",
        description = "Absorb request bursts without losing a job: 202 only once the broker holds the job durably."
    ),
    components(schemas(JobRequestDoc, ErrorBody, ErrorDetail, operations::ReplayStatus))
)]
pub struct ApiDoc;

/// The document's operations and shared schemas, built once from the router.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(|| routes().into_openapi())
}

/// The document this server serves: [`crate::openapi::for_kinds`] with its kinds, the
/// longest `wait` it allows (below its connections' idle timeout) and its batch bounds (1
/// to `--max-batch` jobs).
pub fn served(state: &AppState) -> utoipa::openapi::OpenApi {
    let mut doc = crate::openapi::for_kinds(document().clone(), &state.kinds);
    if let Some(operation) = doc
        .paths
        .paths
        .get_mut("/jobs/{id}")
        .and_then(|item| item.get.as_mut())
    {
        for parameter in operation.parameters.iter_mut().flatten() {
            if let (true, Some(RefOr::T(Schema::Object(schema)))) =
                (parameter.name == "wait", parameter.schema.as_mut())
            {
                let secs = usize::try_from(state.max_wait.as_secs()).unwrap_or(usize::MAX);
                schema.maximum = Some(secs.into());
            }
        }
    }
    if let Some(body) = doc
        .paths
        .paths
        .get_mut("/jobs/batch")
        .and_then(|item| item.post.as_mut())
        .and_then(|operation| operation.request_body.as_mut())
    {
        for content in body.content.values_mut() {
            if let Some(RefOr::T(Schema::Array(array))) = content.schema.as_mut() {
                array.min_items = Some(1);
                array.max_items = Some(state.limits.max_batch);
            }
        }
    }
    doc
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi_json(State(state): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    Json(state.openapi.get_or_init(|| served(&state)).clone())
}
