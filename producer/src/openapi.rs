//! `GET /openapi.json`: the API description, generated from the handlers' annotations
//! (utoipa), so it cannot drift from the code unnoticed — a test checks every documented
//! route against the real router.

use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::{OpenApi, ToSchema};

use crate::routes::{health, jobs, metrics};

/// A job submission (documentation shape of `surge_common::job::JobRequest`).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"kind": "sleep", "payload": {"ms": 500}}))]
pub struct JobRequestDoc {
    /// One of `sleep`, `hash`, `echo`, `flaky`, `poison`.
    pub kind: String,
    /// The kind's payload, e.g. `{"ms": 500}` for `sleep`; `{}` when absent.
    #[schema(value_type = Object)]
    pub payload: Option<Value>,
    /// Partition / ordering key (1–256 bytes); defaults to the job id.
    pub key: Option<String>,
}

/// `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `invalid_job`, `malformed_json`, `broker_unavailable`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// JSON path of the offending field, e.g. `payload.ms` or `[3].kind`.
    pub field: Option<String>,
}

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Surge",
        description = "Absorb request bursts without losing a job: 202 only once the broker holds the job durably."
    ),
    paths(
        jobs::submit,
        jobs::submit_batch,
        jobs::status,
        jobs::replay,
        health::healthz,
        health::readyz,
        metrics::metrics,
        crate::dashboard::page,
        crate::dashboard::api,
        openapi_json,
    ),
    components(schemas(
        JobRequestDoc,
        ErrorBody,
        ErrorDetail,
        jobs::Accepted,
        jobs::BatchAccepted
    ))
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
