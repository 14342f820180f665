//! Outcome callbacks: an outbox in the results database.
//!
//! The worker writes a job's callback after its result commits and before it acks the
//! message (a crash in between redelivers the message, whose duplicate path writes it
//! again: an outcome already queued is not queued twice). Each outcome is a callback of
//! its own: a dead job that is replayed and succeeds gets a second callback, with its own
//! idempotency key (`<job id>:<n>`, the job's n-th outcome). Senders claim due callbacks
//! with a lease, POST them, and mark them delivered, or schedule the next try with
//! backoff. So each outcome is delivered at least once, and a slow or dead receiver never
//! holds up a job.

use uuid::Uuid;

use super::{Storage, StorageError};
use crate::clock::now_micros;

/// A callback to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCallback {
    /// Tells this callback apart from every other: sent as `Idempotency-Key`.
    pub key: String,
    /// The job it reports on.
    pub job_id: Uuid,
    /// Where it goes.
    pub url: String,
    /// The JSON body.
    pub body: String,
    /// Deliveries tried before this one.
    pub attempts: u32,
}

/// Where one outcome's callback stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackState {
    /// Its `Idempotency-Key`.
    pub key: String,
    /// Whether the receiver took it.
    pub delivered: bool,
    /// Deliveries tried.
    pub attempts: u32,
    /// Why the last try failed, if it did (never the URL).
    pub last_error: Option<String>,
}

impl Storage {
    /// Queues `body` for `url` as the next outcome of `job_id`, unless that outcome (the
    /// same body) is queued already.
    pub async fn enqueue_callback(
        &self,
        job_id: Uuid,
        url: &str,
        body: &str,
    ) -> Result<(), StorageError> {
        let id = job_id.to_string();
        // A job has one outcome, or a few after replays: reading them is cheap.
        let queued: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT seq, CAST(CASE WHEN body = $1 THEN 1 ELSE 0 END AS BIGINT) FROM callback_outbox \
             WHERE job_id = $2",
        )
        .bind(body)
        .bind(&id)
        .fetch_all(self.pool())
        .await?;
        if queued.iter().any(|(_, same)| *same == 1) {
            return Ok(());
        }
        let seq = queued.iter().map(|(seq, _)| *seq).max().unwrap_or(0) + 1;
        // Two redeliveries of one outcome racing here pick the same `seq`: the unique
        // (job_id, seq) index keeps one.
        sqlx::query(
            "INSERT INTO callback_outbox (idempotency_key, job_id, seq, url, body, attempts, \
             next_at_us) VALUES ($1, $2, $3, $4, $5, 0, $6) ON CONFLICT DO NOTHING",
        )
        .bind(format!("{id}:{seq}"))
        .bind(&id)
        .bind(seq)
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
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "UPDATE callback_outbox SET claimed_until_us = $1 \
             WHERE idempotency_key IN (SELECT idempotency_key FROM callback_outbox \
                 WHERE delivered_at_us IS NULL AND next_at_us <= $2 \
                 AND (claimed_until_us IS NULL OR claimed_until_us < $2) \
                 ORDER BY next_at_us LIMIT $3) \
             AND delivered_at_us IS NULL AND next_at_us <= $2 \
             AND (claimed_until_us IS NULL OR claimed_until_us < $2) \
             RETURNING idempotency_key, job_id, url, body, attempts",
        )
        .bind(now + lease_us)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, id, url, body, attempts)| {
                Some(PendingCallback {
                    key,
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
            "SELECT idempotency_key FROM callback_outbox WHERE delivered_at_us IS NULL \
             AND next_at_us <= $1 LIMIT 1",
        )
        .bind(now_micros())
        .fetch_optional(self.pool())
        .await?;
        Ok(due.is_some())
    }

    /// The receiver took the callback `key`.
    pub async fn callback_delivered(&self, key: &str) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE callback_outbox SET delivered_at_us = $1, attempts = attempts + 1, \
             claimed_until_us = NULL, last_error = NULL WHERE idempotency_key = $2",
        )
        .bind(now_micros())
        .bind(key)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A delivery of the callback `key` failed: try again at `next_at_us`.
    pub async fn callback_failed(
        &self,
        key: &str,
        error: &str,
        next_at_us: i64,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE callback_outbox SET attempts = attempts + 1, next_at_us = $1, \
             claimed_until_us = NULL, last_error = $2 WHERE idempotency_key = $3",
        )
        .bind(next_at_us)
        .bind(error)
        .bind(key)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The callbacks of `job_id`, one per outcome, oldest first (empty when it has none).
    pub async fn callbacks_of(&self, job_id: Uuid) -> Result<Vec<CallbackState>, StorageError> {
        let rows: Vec<(String, Option<i64>, i64, Option<String>)> = sqlx::query_as(
            "SELECT idempotency_key, delivered_at_us, attempts, last_error FROM callback_outbox \
             WHERE job_id = $1 ORDER BY seq",
        )
        .bind(job_id.to_string())
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key, delivered, attempts, last_error)| CallbackState {
                key,
                delivered: delivered.is_some(),
                attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                last_error,
            })
            .collect())
    }

    /// Whether the callback of `job_id`'s latest outcome was delivered, and how many tries
    /// it took; `None` when the job has none.
    pub async fn callback_state(&self, job_id: Uuid) -> Result<Option<(bool, u32)>, StorageError> {
        Ok(self
            .callbacks_of(job_id)
            .await?
            .pop()
            .map(|state| (state.delivered, state.attempts)))
    }
}
