//! [`ApiError`]: every error a handler returns, and its one HTTP mapping.
//!
//! Body: `{"error": {"code": "...", "message": "...", "field": "..."?}}`. Client errors
//! say exactly what is wrong; server errors are opaque to the client and logged once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use surge_common::broker::BrokerError;
use surge_common::job::InvalidJob;
use surge_common::storage::StorageError;

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON (syntax error, truncated, not UTF-8): 400.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The request is well-formed JSON but not a valid job: 422, naming the field.
    #[error(transparent)]
    Invalid(#[from] InvalidJob),
    /// The body is larger than allowed: 413.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The batch has more jobs than allowed: 413.
    #[error("batch of {size} jobs is larger than the limit of {limit}")]
    BatchTooLarge {
        /// Jobs in the request.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body is not declared as JSON: 415.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// A path parameter is malformed: 400.
    #[error("{field}: {message}")]
    BadPath {
        /// The parameter.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Too many requests wait for results already: 503 with `Retry-After`.
    #[error(transparent)]
    TooManyWaiters(#[from] crate::waiters::TooManyWaiters),
    /// Nothing stored under this id: 404.
    #[error("{0}")]
    NotFound(String),
    /// No schedule by this name in the config file: 404, naming the path's `name`.
    #[error("no schedule {name:?}; configured: {configured}")]
    UnknownSchedule {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated (`none` when there is none).
        configured: String,
    },
    /// No kind by this name: 404, naming the path's `name`.
    #[error("no kind {name:?}; known: {known}")]
    UnknownKind {
        /// The name asked for.
        name: String,
        /// The known names, comma-separated (`none` when there is none).
        known: String,
    },
    /// A well-formed request body (not a job) with a field out of range, mistyped or
    /// unknown: 422, naming the field.
    #[error("{}", .0.message)]
    InvalidRequest(InvalidJob),
    /// A header is malformed: 400, naming it.
    #[error("{field}: {message}")]
    BadHeader {
        /// The header.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No or a wrong API key: 401.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// This client is over its rate: 429 with `Retry-After`.
    #[error("too many jobs from this client; retry after {} s", .0.as_secs())]
    RateLimited(std::time::Duration),
    /// The backlog bound is reached: 503 with `Retry-After` from the drain rate.
    #[error("backlog is full; retry after {} s", .0.as_secs())]
    Overloaded(std::time::Duration),
    /// The ingress is shutting down: 503.
    #[error("shutting down; retry against another instance")]
    ShuttingDown,
    /// The Idempotency-Key was used with a different request: 422.
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    /// A request with this Idempotency-Key is still being published: 409.
    #[error("a request with this Idempotency-Key is in progress; retry shortly")]
    IdempotencyKeyInProgress,
    /// The job is not dead, so it cannot be replayed: 409.
    #[error("{0}")]
    NotDead(String),
    /// A query parameter is malformed, out of range or unknown: 400, naming it.
    #[error("{field}: {message}")]
    BadQuery {
        /// The parameter.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The job finished (succeeded or dead) before it could be cancelled: 409.
    #[error("{0}")]
    AlreadyFinished(String),
    /// Another replay of this dead job is publishing it right now: 409.
    #[error("{0}")]
    ReplayInProgress(String),
    /// The broker cannot take jobs right now: 503 with `Retry-After`.
    #[error("the broker is unavailable; retry shortly")]
    BrokerUnavailable(#[source] BrokerError),
    /// The database is out of reach (connection lost, restarting, pool exhausted): 503 with
    /// `Retry-After`; the cause is logged, not returned.
    #[error("the database is unavailable; retry shortly")]
    DatabaseUnavailable(String),
    /// Anything else: 500, logged, opaque to the client.
    #[error("internal error")]
    Internal(String),
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable(_) | BrokerError::Rejected(_) => {
                ApiError::BrokerUnavailable(e)
            }
            BrokerError::Config(message) => ApiError::Internal(format!("broker config: {message}")),
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if e.is_unavailable() {
            ApiError::DatabaseUnavailable(e.to_string())
        } else {
            ApiError::Internal(format!("storage: {e}"))
        }
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_job"),
            ApiError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::BatchTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::BadPath { .. } => (StatusCode::BAD_REQUEST, "bad_path"),
            ApiError::TooManyWaiters(_) => (StatusCode::SERVICE_UNAVAILABLE, "too_many_waiters"),
            ApiError::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            ApiError::NotFound(_)
            | ApiError::UnknownSchedule { .. }
            | ApiError::UnknownKind { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadHeader { .. } => (StatusCode::BAD_REQUEST, "bad_header"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
            ApiError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            ApiError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::IdempotencyKeyInProgress => {
                (StatusCode::CONFLICT, "idempotency_key_in_progress")
            }
            ApiError::NotDead(_) => (StatusCode::CONFLICT, "not_dead"),
            ApiError::BadQuery { .. } => (StatusCode::BAD_REQUEST, "bad_query"),
            ApiError::AlreadyFinished(_) => (StatusCode::CONFLICT, "already_finished"),
            ApiError::ReplayInProgress(_) => (StatusCode::CONFLICT, "replay_in_progress"),
            ApiError::BrokerUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable")
            }
            ApiError::DatabaseUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    fn field(&self) -> Option<String> {
        match self {
            ApiError::Invalid(e) | ApiError::InvalidRequest(e) => Some(e.field.clone()),
            ApiError::BadPath { field, .. } | ApiError::BadHeader { field, .. } => {
                Some((*field).to_owned())
            }
            ApiError::BadQuery { field, .. } => Some(field.clone()),
            ApiError::UnknownSchedule { .. } | ApiError::UnknownKind { .. } => {
                Some("name".to_owned())
            }
            ApiError::IdempotencyKeyReused | ApiError::IdempotencyKeyInProgress => {
                Some("Idempotency-Key".to_owned())
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        metrics::counter!(surge_common::metrics::JOBS_REJECTED, "reason" => code).increment(1);
        match &self {
            ApiError::Internal(detail) => tracing::error!(%detail, "internal error"),
            ApiError::BrokerUnavailable(source) => {
                tracing::warn!(error = %source, "publish failed: broker unavailable")
            }
            ApiError::DatabaseUnavailable(detail) => {
                tracing::warn!(%detail, "database unavailable")
            }
            _ => {}
        }
        let mut error = json!({ "code": code, "message": self.to_string() });
        if let Some(field) = self.field() {
            error["field"] = json!(field);
        }
        let mut response = (status, Json(json!({ "error": error }))).into_response();
        let retry_after = match &self {
            ApiError::RateLimited(wait) | ApiError::Overloaded(wait) => Some(wait.as_secs().max(1)),
            ApiError::BrokerUnavailable(_)
            | ApiError::DatabaseUnavailable(_)
            | ApiError::ShuttingDown
            | ApiError::TooManyWaiters(_)
            | ApiError::IdempotencyKeyInProgress => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
