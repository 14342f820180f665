//! Liveness and readiness.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process runs", content_type = "application/json")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 when the broker and the database answer within 2 s and the ingress
/// is not shutting down, else 503.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses(
        (status = 200, description = "Broker and database reachable", content_type = "application/json"),
        (status = 503, description = "Not ready: broker or database unreachable", content_type = "application/json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let broker = tokio::time::timeout(PROBE_TIMEOUT, state.broker.stats()).await;
    let database = tokio::time::timeout(PROBE_TIMEOUT, state.storage.count()).await;
    let broker_ok = matches!(broker, Ok(Ok(_)));
    let database_ok = matches!(database, Ok(Ok(_)));
    let backlog = match &broker {
        Ok(Ok(stats)) => json!(stats.backlog),
        _ => Value::Null,
    };
    let draining = state.draining.load(std::sync::atomic::Ordering::Relaxed);
    let status = if broker_ok && database_ok && !draining {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "not ready" },
        "broker": { "kind": state.broker.name(), "reachable": broker_ok, "backlog": backlog },
        "database": { "reachable": database_ok },
        "draining": draining,
    });
    (status, Json(body))
}
