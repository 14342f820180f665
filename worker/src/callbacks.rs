//! Delivers outcome callbacks: when a job with a `callback_url` succeeds or dies, its
//! outcome is POSTed there, signed, retried with backoff, at least once.
//!
//! The runner queues a callback in the database (`surge_common::storage::callbacks`)
//! before it acks the job; this sender, a task of its own, claims due callbacks and POSTs
//! them, so a slow or dead receiver never holds up the next job.
//!
//! Each POST carries:
//! - `Surge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed with
//!   `--callback-secret` (`SURGE_CALLBACK_SECRET`): the receiver recomputes it, compares in
//!   constant time, and refuses a `t` more than 5 minutes from its clock (a replayed
//!   request);
//! - `Idempotency-Key: <job id>`: a callback may arrive more than once; dedupe on it.
//!
//! A 2xx answer delivers it; anything else, or no answer within [`TIMEOUT`], is tried again
//! after a doubling delay (1 s up to 1 h), [`MAX_TRIES`] times in all (about a day), then
//! left undelivered with its last error.

use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use surge_common::clock::now_micros;
use surge_common::config::Secret;
use surge_common::storage::callbacks::PendingCallback;
use surge_common::storage::{JobResult, Storage};
use tokio::task::JoinHandle;

/// How long one POST may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Tries in all before a callback is given up.
pub const MAX_TRIES: u32 = 30;
/// How long a claim keeps other senders off a callback.
const LEASE: Duration = Duration::from_secs(60);
/// Pause when nothing is due.
const IDLE: Duration = Duration::from_millis(250);
/// Most callbacks claimed, and sent concurrently, at once.
const BATCH: u32 = 32;

/// The JSON POSTed for a finished job.
pub fn body(row: &JobResult) -> Value {
    json!({
        "id": row.job_id,
        "kind": row.kind,
        "status": row.status.as_str(),
        "result": row.result,
        "error": row.error,
        "attempts": row.attempts,
        "finished_at_us": row.finished_at_us,
    })
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &Secret, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Starts the sender. Abort the handle to stop it.
pub fn spawn(storage: Storage, secret: Option<Secret>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = match reqwest::Client::builder().timeout(TIMEOUT).build() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot build the callback HTTP client; callbacks wait undelivered");
                return;
            }
        };
        let mut warned = false;
        loop {
            let sent = send_due(&storage, &client, secret.as_ref(), &mut warned).await;
            if sent < BATCH as usize {
                tokio::time::sleep(IDLE).await;
            }
        }
    })
}

/// Claims due callbacks and sends them; returns how many were claimed.
async fn send_due(
    storage: &Storage,
    client: &reqwest::Client,
    secret: Option<&Secret>,
    warned: &mut bool,
) -> usize {
    let Some(secret) = secret else {
        // Nothing is signed without the key: leave the callbacks to a worker that has it.
        if !*warned && matches!(storage.callbacks_due().await, Ok(true)) {
            tracing::error!("jobs with a callback_url finished but this worker has no --callback-secret (SURGE_CALLBACK_SECRET): their callbacks wait undelivered");
            *warned = true;
        }
        return 0;
    };
    let lease_us = i64::try_from(LEASE.as_micros()).unwrap_or(i64::MAX);
    let due = match storage.claim_callbacks(lease_us, BATCH).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "reading due callbacks failed");
            return 0;
        }
    };
    let claimed = due.len();
    futures::stream::iter(due)
        .for_each_concurrent(None, |callback| async move {
            let outcome = deliver(client, secret, &callback).await;
            let settled = match outcome {
                Ok(()) => storage.callback_delivered(callback.job_id).await,
                Err(error) => {
                    let tries = callback.attempts.saturating_add(1);
                    let next = if tries >= MAX_TRIES {
                        tracing::error!(job_id = %callback.job_id, %error, tries, "callback given up");
                        i64::MAX
                    } else {
                        tracing::info!(job_id = %callback.job_id, %error, tries, "callback failed; trying again later");
                        now_micros() + backoff_us(tries)
                    };
                    storage.callback_failed(callback.job_id, &error, next).await
                }
            };
            if let Err(e) = settled {
                // The claim ends by itself: the callback is sent again (at least once).
                tracing::warn!(error = %e, "recording a callback's outcome failed");
            }
        })
        .await;
    claimed
}

/// One POST. `Err` carries a short reason (no response body is logged: it may be large).
async fn deliver(
    client: &reqwest::Client,
    secret: &Secret,
    callback: &PendingCallback,
) -> Result<(), String> {
    let timestamp = now_micros() / 1_000_000;
    let response = client
        .post(&callback.url)
        .header("content-type", "application/json")
        .header(
            "Surge-Signature",
            signature(secret, timestamp, &callback.body),
        )
        .header("Idempotency-Key", callback.job_id.to_string())
        .body(callback.body.clone())
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("receiver answered {status}"))
    }
}

/// 1 s doubling per try, at most 1 h.
fn backoff_us(tries: u32) -> i64 {
    let seconds = 1i64 << tries.min(12);
    seconds.min(3600) * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        let secret: Secret = "0123456789abcdef".parse().unwrap();
        // Computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac 0123456789abcdef
        assert_eq!(
            signature(&secret, 1_700_000_000, "{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_us(1), 2_000_000);
        assert_eq!(backoff_us(30), 3_600_000_000);
    }
}
