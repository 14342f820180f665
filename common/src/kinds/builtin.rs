//! The five built-in kinds: examples, demos and the benchmark's workloads. They are
//! registered like any other kind (see [`super::KindRegistryBuilder::with_builtins`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{JobError, Kind};
use crate::job::{InvalidJob, Job};

/// Longest accepted `sleep` job, in milliseconds (ten minutes).
pub const MAX_SLEEP_MS: u64 = 600_000;
/// Most rounds accepted for a `hash` job.
pub const MAX_HASH_ROUNDS: u32 = 10_000_000;
/// Most failures a `flaky` job may ask for.
pub const MAX_FLAKY_FAILURES: u32 = 100;

/// The built-in kinds' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinKind {
    /// Simulated I/O: waits `ms` milliseconds.
    Sleep,
    /// CPU work: `rounds` iterations of SHA-256.
    Hash,
    /// Returns its payload unchanged.
    Echo,
    /// Fails (retryably) on its first `failures` attempts, then succeeds; for retry demos.
    Flaky,
    /// Always fails permanently; for dead-letter demos. With `{"panic": true}` its
    /// handler panics instead (a handler bug on demand), which also ends the job `dead`.
    Poison,
}

impl BuiltinKind {
    /// Every built-in kind.
    pub const ALL: [BuiltinKind; 5] = [
        BuiltinKind::Sleep,
        BuiltinKind::Hash,
        BuiltinKind::Echo,
        BuiltinKind::Flaky,
        BuiltinKind::Poison,
    ];

    /// The kind's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinKind::Sleep => "sleep",
            BuiltinKind::Hash => "hash",
            BuiltinKind::Echo => "echo",
            BuiltinKind::Flaky => "flaky",
            BuiltinKind::Poison => "poison",
        }
    }
}

impl std::fmt::Display for BuiltinKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<BuiltinKind> for String {
    fn from(kind: BuiltinKind) -> String {
        kind.as_str().to_owned()
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

/// The built-in kinds, for [`super::KindRegistryBuilder::with_builtins`].
pub fn kinds() -> Vec<(&'static str, Arc<dyn Kind>)> {
    BuiltinKind::ALL
        .into_iter()
        .map(|kind| (kind.as_str(), Arc::new(Builtin(kind)) as Arc<dyn Kind>))
        .collect()
}

/// One built-in kind as a [`Kind`].
struct Builtin(BuiltinKind);

fn typed<T: serde::de::DeserializeOwned>(payload: &Value) -> Result<T, InvalidJob> {
    // serde would also read a struct from an array (`[5]` as `{"ms": 5}`): not for us.
    if !payload.is_object() {
        return Err(InvalidJob::new("payload", "must be a JSON object"));
    }
    T::deserialize(payload).map_err(|e| InvalidJob::new("payload", e.to_string()))
}

fn sleep_payload(payload: &Value) -> Result<SleepPayload, InvalidJob> {
    let p: SleepPayload = typed(payload)?;
    if p.ms > MAX_SLEEP_MS {
        return Err(InvalidJob::new(
            "payload.ms",
            format!("must be at most {MAX_SLEEP_MS}"),
        ));
    }
    Ok(p)
}

fn hash_payload(payload: &Value) -> Result<HashPayload, InvalidJob> {
    let p: HashPayload = typed(payload)?;
    if p.rounds == 0 || p.rounds > MAX_HASH_ROUNDS {
        return Err(InvalidJob::new(
            "payload.rounds",
            format!("must be between 1 and {MAX_HASH_ROUNDS}"),
        ));
    }
    Ok(p)
}

fn flaky_payload(payload: &Value) -> Result<FlakyPayload, InvalidJob> {
    let p: FlakyPayload = typed(payload)?;
    if p.failures > MAX_FLAKY_FAILURES {
        return Err(InvalidJob::new(
            "payload.failures",
            format!("must be at most {MAX_FLAKY_FAILURES}"),
        ));
    }
    Ok(p)
}

fn invalid(e: InvalidJob) -> JobError {
    JobError::permanent(format!("invalid payload: {e}"))
}

#[async_trait]
impl Kind for Builtin {
    fn validate(&self, payload: &Value) -> Result<(), InvalidJob> {
        match self.0 {
            BuiltinKind::Sleep => sleep_payload(payload).map(drop),
            BuiltinKind::Hash => hash_payload(payload).map(drop),
            BuiltinKind::Flaky => flaky_payload(payload).map(drop),
            BuiltinKind::Echo | BuiltinKind::Poison => Ok(()),
        }
    }

    async fn run(&self, job: &Job, attempt: u32) -> Result<Value, JobError> {
        match self.0 {
            BuiltinKind::Sleep => {
                let p = sleep_payload(&job.payload).map_err(invalid)?;
                tokio::time::sleep(Duration::from_millis(p.ms)).await;
                Ok(json!({ "slept_ms": p.ms }))
            }
            BuiltinKind::Hash => {
                let p = hash_payload(&job.payload).map_err(invalid)?;
                // CPU-bound: keep it off the async executor's threads. A panic in the
                // blocking task is resumed here, so the runner records it like any other.
                let digest = tokio::task::spawn_blocking(move || hash_rounds(&p.data, p.rounds))
                    .await
                    .map_err(|e| match e.try_into_panic() {
                        Ok(panic) => std::panic::resume_unwind(panic),
                        Err(e) => JobError::retryable(format!("hash task failed: {e}")),
                    })?;
                Ok(json!({ "rounds": p.rounds, "sha256": digest }))
            }
            BuiltinKind::Echo => Ok(job.payload.clone()),
            BuiltinKind::Flaky => {
                let p = flaky_payload(&job.payload).map_err(invalid)?;
                if attempt <= p.failures {
                    Err(JobError::retryable(format!(
                        "flaky job failing on purpose (attempt {attempt} of {} planned failures)",
                        p.failures
                    )))
                } else {
                    Ok(json!({ "succeeded_on_attempt": attempt }))
                }
            }
            BuiltinKind::Poison if job.payload.get("panic") == Some(&Value::Bool(true)) => {
                // A handler bug on demand, to show (and test) that a panic ends the job dead.
                panic!("poison job panicking on purpose")
            }
            BuiltinKind::Poison => Err(JobError::permanent("poison job always fails")),
        }
    }

    fn kind_type(&self) -> &'static str {
        "builtin"
    }

    fn description(&self) -> String {
        match self.0 {
            BuiltinKind::Sleep => "Simulated I/O: waits `ms` milliseconds.",
            BuiltinKind::Hash => "CPU work: `rounds` iterations of SHA-256 over `data`.",
            BuiltinKind::Echo => "Returns its payload (any JSON value) unchanged.",
            BuiltinKind::Flaky => {
                "Fails retryably on its first `failures` attempts, then succeeds."
            }
            BuiltinKind::Poison => {
                "Always fails permanently (dead-letter demos); `{\"panic\": true}` makes its \
                 handler panic instead."
            }
        }
        .to_owned()
    }

    fn example(&self) -> Option<Value> {
        Some(match self.0 {
            BuiltinKind::Sleep => json!({"ms": 500}),
            BuiltinKind::Hash => json!({"rounds": 1000, "data": "surge"}),
            BuiltinKind::Echo => json!({"hello": "world"}),
            BuiltinKind::Flaky => json!({"failures": 2}),
            BuiltinKind::Poison => json!({}),
        })
    }

    fn payload_schema(&self) -> Value {
        match self.0 {
            BuiltinKind::Sleep => json!({
                "type": "object",
                "required": ["ms"],
                "additionalProperties": false,
                "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": MAX_SLEEP_MS}}
            }),
            BuiltinKind::Hash => json!({
                "type": "object",
                "required": ["rounds"],
                "additionalProperties": false,
                "properties": {
                    "rounds": {"type": "integer", "minimum": 1, "maximum": MAX_HASH_ROUNDS},
                    "data": {"type": "string", "default": ""}
                }
            }),
            BuiltinKind::Flaky => json!({
                "type": "object",
                "required": ["failures"],
                "additionalProperties": false,
                "properties": {
                    "failures": {"type": "integer", "minimum": 0, "maximum": MAX_FLAKY_FAILURES}
                }
            }),
            BuiltinKind::Echo | BuiltinKind::Poison => json!({}),
        }
    }
}

/// `rounds` iterations of SHA-256 over `data`, hex-encoded.
pub fn hash_rounds(data: &str, rounds: u32) -> String {
    let mut digest = Sha256::digest(data.as_bytes());
    for _ in 1..rounds {
        digest = Sha256::digest(digest);
    }
    hex::encode(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::KindRegistry;

    async fn run(kind: BuiltinKind, payload: Value, attempt: u32) -> Result<Value, JobError> {
        let registry = KindRegistry::builtin();
        let job = Job::new(kind, payload, None);
        registry
            .get(kind.as_str())
            .unwrap()
            .run(&job, attempt)
            .await
    }

    #[tokio::test]
    async fn kinds_do_what_they_say() {
        assert_eq!(
            run(BuiltinKind::Echo, json!({"a": 1}), 1).await,
            Ok(json!({"a": 1}))
        );
        let hash = run(BuiltinKind::Hash, json!({"rounds": 1, "data": "abc"}), 1).await;
        assert_eq!(
            hash.unwrap()["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let flaky = json!({"failures": 2});
        assert!(matches!(
            run(BuiltinKind::Flaky, flaky.clone(), 2).await,
            Err(JobError::Retryable { .. })
        ));
        assert_eq!(
            run(BuiltinKind::Flaky, flaky, 3).await,
            Ok(json!({"succeeded_on_attempt": 3}))
        );
        let poison = run(BuiltinKind::Poison, json!({}), 1).await;
        assert!(matches!(poison, Err(JobError::Permanent(_))));
        let calm = run(BuiltinKind::Poison, json!({"panic": "no"}), 1).await;
        assert!(matches!(calm, Err(JobError::Permanent(_))));
        // A message someone else wrote with a bad payload is permanent, not a panic.
        let bad = run(BuiltinKind::Sleep, json!({"ms": "soon"}), 1).await;
        assert!(matches!(bad, Err(JobError::Permanent(_))));
    }

    #[test]
    fn invalid_payloads_name_the_field() {
        let registry = KindRegistry::builtin();
        let cases = [
            ("sleep", json!({}), "payload"),
            ("sleep", json!({"ms": "5"}), "payload"),
            ("sleep", json!({"ms": MAX_SLEEP_MS + 1}), "payload.ms"),
            ("hash", json!({"rounds": 0}), "payload.rounds"),
            ("flaky", json!({"failures": 1000}), "payload.failures"),
            ("sleep", json!({"ms": 1, "extra": 1}), "payload"),
            ("sleep", json!([1]), "payload"),
            ("nope", json!({}), "kind"),
        ];
        for (kind, payload, field) in cases {
            let err = registry.validate(kind, &payload).unwrap_err();
            assert_eq!(err.field, field, "{kind} {payload} → {err}");
        }
    }

    #[test]
    fn schemas_compile() {
        for (name, kind) in kinds() {
            crate::kinds::schema::PayloadSchema::compile(name, kind.payload_schema())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
