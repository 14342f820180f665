//! Outcome callbacks: an outbox in the results database.
//!
//! The worker writes a job's callback after its result commits and before it acks the
//! message (a crash in between redelivers the message, whose duplicate path writes it
//! again: the insert is keyed by job id, so once). Senders claim due callbacks with a
//! lease, POST them, and mark them delivered, or schedule the next try with backoff. So a
//! callback is delivered at least once, and a slow or dead receiver never holds up a job.

use uuid::Uuid;

use super::{Storage, StorageError};
use crate::clock::now_micros;

/// A callback to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCallback {
    /// The job it reports on.
    pub job_id: Uuid,
    /// Where it goes.
    pub url: String,
    /// The JSON body.
    pub body: String,
    /// Deliveries tried before this one.
    pub attempts: u32,
}

impl Storage {
    /// Queues `body` for `url` about `job_id` (nothing if it is queued already).
    pub async fn enqueue_callback(
        &self,
        job_id: Uuid,
        url: &str,
        body: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO callbacks (job_id, url, body, attempts, next_at_us) \
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job_id.to_string())
        .bind(url)
        .bind(body)
        .bind(now_micros())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Claims up to `limit` undelivered callbacks that are due, for `lease_us`.
    pub async fn claim_callbacks(
        &self,
        lease_us: i64,
        limit: u32,
    ) -> Result<Vec<PendingCallback>, StorageError> {
        let now = now_micros();
        // Conditions repeated outside the subquery: re-checked on a row another sender
        // claimed meanwhile (see `schedule.rs`).
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "UPDATE callbacks SET claimed_until_us = $1 \
             WHERE job_id IN (SELECT job_id FROM callbacks WHERE delivered_at_us IS NULL \
                 AND next_at_us <= $2 AND (claimed_until_us IS NULL OR claimed_until_us < $2) \
                 ORDER BY next_at_us LIMIT $3) \
             AND delivered_at_us IS NULL AND next_at_us <= $2 \
             AND (claimed_until_us IS NULL OR claimed_until_us < $2) \
             RETURNING job_id, url, body, attempts",
        )
        .bind(now + lease_us)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(id, url, body, attempts)| {
                Some(PendingCallback {
                    job_id: Uuid::parse_str(&id).ok()?,
                    url,
                    body,
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                })
            })
            .collect())
    }

    /// Whether any undelivered callback is due (without claiming it).
    pub async fn callbacks_due(&self) -> Result<bool, StorageError> {
        let due: Option<(String,)> = sqlx::query_as(
            "SELECT job_id FROM callbacks WHERE delivered_at_us IS NULL AND next_at_us <= $1 \
             LIMIT 1",
        )
        .bind(now_micros())
        .fetch_optional(self.pool())
        .await?;
        Ok(due.is_some())
    }

    /// The receiver took the callback.
    pub async fn callback_delivered(&self, job_id: Uuid) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE callbacks SET delivered_at_us = $1, attempts = attempts + 1, \
             claimed_until_us = NULL, last_error = NULL WHERE job_id = $2",
        )
        .bind(now_micros())
        .bind(job_id.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A delivery failed: try again at `next_at_us`.
    pub async fn callback_failed(
        &self,
        job_id: Uuid,
        error: &str,
        next_at_us: i64,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE callbacks SET attempts = attempts + 1, next_at_us = $1, \
             claimed_until_us = NULL, last_error = $2 WHERE job_id = $3",
        )
        .bind(next_at_us)
        .bind(error)
        .bind(job_id.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Whether the callback of `job_id` was delivered, and how many tries it took; `None`
    /// when the job has none.
    pub async fn callback_state(&self, job_id: Uuid) -> Result<Option<(bool, u32)>, StorageError> {
        let row: Option<(Option<i64>, i64)> =
            sqlx::query_as("SELECT delivered_at_us, attempts FROM callbacks WHERE job_id = $1")
                .bind(job_id.to_string())
                .fetch_optional(self.pool())
                .await?;
        Ok(row.map(|(delivered, attempts)| {
            (
                delivered.is_some(),
                u32::try_from(attempts).unwrap_or(u32::MAX),
            )
        }))
    }
}
