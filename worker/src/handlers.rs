//! What each job kind does.
//!
//! A handler returns the job's result, or a [`JobError`] saying whether another attempt
//! could succeed. To add a kind: add it to `surge_common::job::JobKind` (with a typed
//! payload validated at the ingress) and a match arm here.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use surge_common::job::{Job, TypedPayload};

/// Why a job did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Another attempt may succeed (a timeout, a busy dependency): retry with backoff.
    #[error("retryable: {0}")]
    Retryable(String),
    /// No attempt will succeed (bad payload, a poison job): dead-letter now.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// Runs `job`'s `attempt`-th attempt (1-based).
pub async fn handle(job: &Job, attempt: u32) -> Result<Value, JobError> {
    let payload = TypedPayload::decode(job.kind, &job.payload)
        .map_err(|e| JobError::Permanent(format!("invalid payload: {e}")))?;
    match payload {
        TypedPayload::Sleep(p) => {
            tokio::time::sleep(Duration::from_millis(p.ms)).await;
            Ok(json!({ "slept_ms": p.ms }))
        }
        TypedPayload::Hash(p) => {
            // CPU-bound: keep it off the async executor's threads.
            let digest = tokio::task::spawn_blocking(move || hash_rounds(&p.data, p.rounds))
                .await
                .map_err(|e| match e.try_into_panic() {
                    Ok(panic) => JobError::Permanent(panicked(panic.as_ref())),
                    Err(e) => JobError::Retryable(format!("hash task failed: {e}")),
                })?;
            Ok(json!({ "rounds": p.rounds, "sha256": digest }))
        }
        TypedPayload::Echo(value) => Ok(value),
        TypedPayload::Flaky(p) => {
            if attempt <= p.failures {
                Err(JobError::Retryable(format!(
                    "flaky job failing on purpose (attempt {attempt} of {} planned failures)",
                    p.failures
                )))
            } else {
                Ok(json!({ "succeeded_on_attempt": attempt }))
            }
        }
        TypedPayload::Poison(p) if p.get("panic") == Some(&Value::Bool(true)) => {
            // A handler bug on demand, to show (and test) that a panic ends the job dead.
            panic!("poison job panicking on purpose")
        }
        TypedPayload::Poison(_) => Err(JobError::Permanent("poison job always fails".into())),
    }
}

/// The message of a handler panic, as stored on the job's `dead` row.
pub fn panicked(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("handler panicked: {message}")
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
    use surge_common::job::JobKind;

    fn job(kind: JobKind, payload: Value) -> Job {
        Job::new(kind, payload, None)
    }

    #[tokio::test]
    async fn kinds_do_what_they_say() {
        let echo = handle(&job(JobKind::Echo, json!({"a": 1})), 1).await;
        assert_eq!(echo, Ok(json!({"a": 1})));

        let hash = handle(&job(JobKind::Hash, json!({"rounds": 1, "data": "abc"})), 1).await;
        assert_eq!(
            hash.unwrap()["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );

        let flaky = job(JobKind::Flaky, json!({"failures": 2}));
        assert!(matches!(
            handle(&flaky, 2).await,
            Err(JobError::Retryable(_))
        ));
        assert_eq!(
            handle(&flaky, 3).await,
            Ok(json!({"succeeded_on_attempt": 3}))
        );

        let poison = handle(&job(JobKind::Poison, json!({})), 1).await;
        assert!(matches!(poison, Err(JobError::Permanent(_))));
        let calm = handle(&job(JobKind::Poison, json!({"panic": "no"})), 1).await;
        assert!(matches!(calm, Err(JobError::Permanent(_))));

        // A message someone else wrote with a bad payload is permanent, not a panic.
        let bad = handle(&job(JobKind::Sleep, json!({"ms": "soon"})), 1).await;
        assert!(matches!(bad, Err(JobError::Permanent(_))));
    }
}
