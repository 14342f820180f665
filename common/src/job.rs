//! Jobs: what a client submits, how it is validated, and how it travels through a broker.
//!
//! A request names a `kind` and a `payload`. The ingress validates the payload against the
//! kind's typed shape *before* anything is published, so a job on the broker is always one a
//! worker can run; the worker decodes the same typed payload again (a message could have
//! been written by someone else) and dead-letters what does not decode.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Longest accepted `key` (partition / ordering key), in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest accepted `sleep` job, in milliseconds (ten minutes).
pub const MAX_SLEEP_MS: u64 = 600_000;
/// Most rounds accepted for a `hash` job.
pub const MAX_HASH_ROUNDS: u32 = 10_000_000;
/// Most failures a `flaky` job may ask for.
pub const MAX_FLAKY_FAILURES: u32 = 100;

/// The built-in job kinds. Unknown kinds are rejected at the ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Simulated I/O: waits `ms` milliseconds.
    Sleep,
    /// CPU work: `rounds` iterations of SHA-256.
    Hash,
    /// Returns its payload unchanged.
    Echo,
    /// Fails (retryably) on its first `failures` attempts, then succeeds; for retry demos.
    Flaky,
    /// Always fails permanently; for dead-letter demos.
    Poison,
}

impl JobKind {
    /// Every kind, for error messages and docs.
    pub const ALL: [JobKind; 5] = [
        JobKind::Sleep,
        JobKind::Hash,
        JobKind::Echo,
        JobKind::Flaky,
        JobKind::Poison,
    ];

    /// The kind's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Sleep => "sleep",
            JobKind::Hash => "hash",
            JobKind::Echo => "echo",
            JobKind::Flaky => "flaky",
            JobKind::Poison => "poison",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Payload of a `sleep` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepPayload {
    /// How long to wait, in milliseconds (0..=[`MAX_SLEEP_MS`]).
    pub ms: u64,
}

/// Payload of a `hash` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HashPayload {
    /// SHA-256 rounds (1..=[`MAX_HASH_ROUNDS`]).
    pub rounds: u32,
    /// Seed text hashed in the first round.
    #[serde(default)]
    pub data: String,
}

/// Payload of a `flaky` job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlakyPayload {
    /// How many attempts fail before one succeeds (0..=[`MAX_FLAKY_FAILURES`]).
    pub failures: u32,
}

/// A payload decoded into its kind's typed shape.
#[derive(Debug, Clone)]
pub enum TypedPayload {
    /// See [`SleepPayload`].
    Sleep(SleepPayload),
    /// See [`HashPayload`].
    Hash(HashPayload),
    /// Any JSON value.
    Echo(Value),
    /// See [`FlakyPayload`].
    Flaky(FlakyPayload),
    /// Any JSON value; the job always fails. With `{"panic": true}` its handler panics
    /// instead (a handler bug on demand), which also ends the job `dead`.
    Poison(Value),
}

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

fn typed<T: serde::de::DeserializeOwned>(payload: &Value) -> Result<T, InvalidJob> {
    // serde would also read a struct from an array (`[5]` as `{"ms": 5}`): not for us.
    if !payload.is_object() {
        return Err(InvalidJob::new("payload", "must be a JSON object"));
    }
    T::deserialize(payload).map_err(|e| InvalidJob::new("payload", e.to_string()))
}

impl TypedPayload {
    /// Decodes and range-checks `payload` for `kind`.
    pub fn decode(kind: JobKind, payload: &Value) -> Result<TypedPayload, InvalidJob> {
        let decoded = match kind {
            JobKind::Sleep => {
                let p: SleepPayload = typed(payload)?;
                if p.ms > MAX_SLEEP_MS {
                    return Err(InvalidJob::new(
                        "payload.ms",
                        format!("must be at most {MAX_SLEEP_MS}"),
                    ));
                }
                TypedPayload::Sleep(p)
            }
            JobKind::Hash => {
                let p: HashPayload = typed(payload)?;
                if p.rounds == 0 || p.rounds > MAX_HASH_ROUNDS {
                    return Err(InvalidJob::new(
                        "payload.rounds",
                        format!("must be between 1 and {MAX_HASH_ROUNDS}"),
                    ));
                }
                TypedPayload::Hash(p)
            }
            JobKind::Echo => TypedPayload::Echo(payload.clone()),
            JobKind::Flaky => {
                let p: FlakyPayload = typed(payload)?;
                if p.failures > MAX_FLAKY_FAILURES {
                    return Err(InvalidJob::new(
                        "payload.failures",
                        format!("must be at most {MAX_FLAKY_FAILURES}"),
                    ));
                }
                TypedPayload::Flaky(p)
            }
            JobKind::Poison => TypedPayload::Poison(payload.clone()),
        };
        Ok(decoded)
    }
}

/// What a client POSTs: `{"kind": "...", "payload": {...}, "key"?: "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// One of [`JobKind`]'s wire names.
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
    /// Validates the request and turns it into a [`Job`] with a fresh id.
    pub fn into_job(self) -> Result<Job, InvalidJob> {
        let kind = JobKind::parse(&self.kind).ok_or_else(|| {
            let known: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
            InvalidJob::new(
                "kind",
                format!(
                    "unknown job kind {:?}; expected one of {}",
                    self.kind,
                    known.join(", ")
                ),
            )
        })?;
        TypedPayload::decode(kind, &self.payload)?;
        if let Some(key) = &self.key {
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(InvalidJob::new(
                    "key",
                    format!("must be 1 to {MAX_KEY_LEN} bytes long"),
                ));
            }
        }
        Ok(Job::new(kind, self.payload, self.key))
    }
}

/// A validated job as it travels through a broker (JSON-encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id (UUIDv7: time-ordered), assigned by the ingress.
    pub id: Uuid,
    /// What to run.
    pub kind: JobKind,
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
    pub fn new(kind: JobKind, payload: Value, key: Option<String>) -> Job {
        Job {
            id: Uuid::now_v7(),
            kind,
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
        let job = request("sleep", json!({"ms": 5})).into_job().unwrap();
        assert_eq!(job.kind, JobKind::Sleep);
        assert_eq!(Job::decode(&job.encode()).unwrap(), job);
        assert_eq!(job.partition_key(), job.id.to_string());
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let cases = [
            (request("nope", json!({})), "kind"),
            (request("sleep", json!({})), "payload"),
            (request("sleep", json!({"ms": "5"})), "payload"),
            (
                request("sleep", json!({"ms": MAX_SLEEP_MS + 1})),
                "payload.ms",
            ),
            (request("hash", json!({"rounds": 0})), "payload.rounds"),
            (
                request("flaky", json!({"failures": 1000})),
                "payload.failures",
            ),
            (request("sleep", json!({"ms": 1, "extra": 1})), "payload"),
            (request("sleep", json!([1])), "payload"),
        ];
        for (req, field) in cases {
            let err = req.clone().into_job().unwrap_err();
            assert_eq!(err.field, field, "{req:?} → {err}");
        }
        let mut keyed = request("echo", json!(null));
        keyed.key = Some(String::new());
        assert_eq!(keyed.into_job().unwrap_err().field, "key");
    }
}
