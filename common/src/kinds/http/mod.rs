//! HTTP kinds: each job POSTed to an existing service, its payload as the JSON body.
//!
//! Declared in the configuration file ([`config`]). The response decides the outcome:
//! 2xx → succeeded (the body, size-capped, is the result); 408, 429, 5xx, connection
//! errors and timeouts → retryable (after `Retry-After` when the target sends one); other
//! 4xx → permanent (dead, with the status and a body excerpt).

pub mod config;

use async_trait::async_trait;
use serde_json::Value;

use self::config::HttpKindConfig;
use crate::job::{InvalidJob, Job};
use crate::kinds::{JobError, Kind};
use crate::retry::RetryPolicy;
use crate::storage::Storage;

/// An HTTP kind, ready to dispatch.
pub struct HttpKind {
    config: HttpKindConfig,
    client: reqwest::Client,
}

/// An HTTP kind could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("kinds.{kind}: {message}")]
pub struct HttpKindError {
    /// The kind.
    pub kind: String,
    /// Why.
    pub message: String,
}

impl HttpKind {
    /// A dispatcher for `config`. `storage` is the results database, shared by every
    /// replica: it holds the cross-replica concurrency and rate state.
    pub fn new(config: HttpKindConfig, storage: Storage) -> Result<HttpKind, HttpKindError> {
        let _ = storage;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| HttpKindError {
                kind: config.name.clone(),
                message: format!("building the HTTP client: {e}"),
            })?;
        Ok(HttpKind { config, client })
    }

    /// The checked configuration.
    pub fn config(&self) -> &HttpKindConfig {
        &self.config
    }
}

#[async_trait]
impl Kind for HttpKind {
    fn validate(&self, payload: &Value) -> Result<(), InvalidJob> {
        match &self.config.schema {
            Some(schema) => schema.validate(payload),
            None => Ok(()),
        }
    }

    async fn run(&self, job: &Job, attempt: u32) -> Result<Value, JobError> {
        let mut request = self
            .client
            .post(self.config.url.clone())
            .json(&job.payload)
            .header("Idempotency-Key", job.id.to_string())
            .header("Surge-Attempt", attempt.to_string());
        if let Some(traceparent) = &job.traceparent {
            request = request.header("traceparent", traceparent);
        }
        for (name, value) in &self.config.headers {
            request = request.header(name, &value.0);
        }
        let response = request
            .send()
            .await
            .map_err(|e| JobError::retryable(format!("request failed: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| JobError::retryable(format!("reading the response failed: {e}")))?;
        if status.is_success() {
            Ok(serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())))
        } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(JobError::retryable(format!("target answered {status}")))
        } else {
            Err(JobError::permanent(format!("target answered {status}")))
        }
    }

    fn description(&self) -> String {
        self.config
            .description
            .clone()
            .unwrap_or_else(|| format!("POSTs the payload to {}", self.config.url))
    }

    fn payload_schema(&self) -> Value {
        self.config
            .schema
            .as_ref()
            .map(|s| s.document().clone())
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    fn retry_policy(&self, worker: RetryPolicy) -> RetryPolicy {
        self.config.retry_policy(worker)
    }
}
