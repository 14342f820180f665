//! Jobs: what a client submits, how it is validated, and how it travels through a broker.
//!
//! A request names a `kind` and a `payload`. The ingress validates the payload with the
//! kind's handler from the [`crate::kinds::KindRegistry`] *before* anything is published,
//! so a job on the broker is one a worker can run; the worker validates it again (a message
//! could have been written by someone else) and dead-letters what does not pass.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::kinds::KindRegistry;

/// Longest accepted `key` (partition / ordering key), in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// A request that does not describe a runnable job; names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidJob {
    /// JSON path of the offending field, e.g. `payload.ms` or `[3].kind`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidJob {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidJob {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, with its field path placed under `prefix` (e.g. a batch index).
    pub fn under(self, prefix: &str) -> Self {
        InvalidJob {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}

/// What a client POSTs: `{"kind": "...", "payload": {...}, "key"?: "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// A registered kind's name.
    pub kind: String,
    /// The kind's payload; `{}` when absent.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// Partition / ordering key; defaults to the job id.
    #[serde(default)]
    pub key: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl JobRequest {
    /// Validates the request against the kinds in `kinds` and turns it into a [`Job`]
    /// with a fresh id.
    pub fn into_job(self, kinds: &KindRegistry) -> Result<Job, InvalidJob> {
        kinds.validate(&self.kind, &self.payload)?;
        if let Some(key) = &self.key {
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(InvalidJob::new(
                    "key",
                    format!("must be 1 to {MAX_KEY_LEN} bytes long"),
                ));
            }
        }
        Ok(Job::new(self.kind, self.payload, self.key))
    }
}

/// A validated job as it travels through a broker (JSON-encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id (UUIDv7: time-ordered), assigned by the ingress.
    pub id: Uuid,
    /// The name of its kind in the [`KindRegistry`].
    pub kind: String,
    /// The kind's payload, already validated once at the ingress.
    pub payload: Value,
    /// Partition / ordering key, when the client gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When the ingress accepted the job (µs since the epoch).
    pub enqueued_at_us: i64,
    /// W3C trace context of the request that submitted the job (see [`crate::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Set by the ingress: whether the job stands is decided after its publish (a publish
    /// can fail with the message stored), so its result commits only once the ingress
    /// recorded it accepted (see [`crate::storage::acceptance`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaits_acceptance: bool,
}

impl Job {
    /// A new job with a fresh UUIDv7 id, stamped now.
    pub fn new(kind: impl Into<String>, payload: Value, key: Option<String>) -> Job {
        Job {
            id: Uuid::now_v7(),
            kind: kind.into(),
            payload,
            key,
            enqueued_at_us: crate::clock::now_micros(),
            traceparent: None,
            awaits_acceptance: false,
        }
    }

    /// The trace id of the job's trace context, when it has a valid one.
    pub fn trace_id(&self) -> Option<String> {
        self.traceparent
            .as_deref()
            .and_then(crate::trace::TraceContext::parse)
            .map(|ctx| ctx.trace_id())
    }

    /// The key that picks a partition: the client's key, else the job id.
    pub fn partition_key(&self) -> String {
        self.key.clone().unwrap_or_else(|| self.id.to_string())
    }

    /// The job's wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of plain fields into a Vec cannot fail.
        serde_json::to_vec(self).expect("a Job always serialises")
    }

    /// Decodes a job from its wire encoding.
    pub fn decode(bytes: &[u8]) -> Result<Job, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(kind: &str, payload: Value) -> JobRequest {
        JobRequest {
            kind: kind.into(),
            payload,
            key: None,
        }
    }

    #[test]
    fn valid_requests_become_jobs_that_round_trip() {
        let kinds = KindRegistry::builtin();
        let job = request("sleep", json!({"ms": 5})).into_job(&kinds).unwrap();
        assert_eq!(job.kind, "sleep");
        assert_eq!(Job::decode(&job.encode()).unwrap(), job);
        assert_eq!(job.partition_key(), job.id.to_string());
        // The wire format of the closed-enum days still decodes.
        let old = br#"{"id":"0190a6b4-0000-7000-8000-000000000000","kind":"echo","payload":{},"enqueued_at_us":1}"#;
        assert_eq!(Job::decode(old).unwrap().kind, "echo");
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let kinds = KindRegistry::builtin();
        assert_eq!(
            request("nope", json!({}))
                .into_job(&kinds)
                .unwrap_err()
                .field,
            "kind"
        );
        assert_eq!(
            request("sleep", json!({}))
                .into_job(&kinds)
                .unwrap_err()
                .field,
            "payload"
        );
        let mut keyed = request("echo", json!(null));
        keyed.key = Some(String::new());
        assert_eq!(keyed.into_job(&kinds).unwrap_err().field, "key");
    }
}
