//! `Idempotency-Key`: a client that retries a POST with the same key and the same body gets
//! the original job back instead of a second one.
//!
//! The ingress *claims* the key (insert-if-absent, state `pending`) before publishing,
//! marks it `done` once the broker confirmed, and *releases* it (deletes the claim) when the
//! publish failed, so the client's retry can go through. A second request that finds the
//! claim `pending` is racing the first and is told to retry (409).
//!
//! Keys are scoped: each is looked up within its client's scope (the ingress passes a
//! hash of the API key; with API keys off, every client shares one scope, `""`), so two
//! clients using the same key never see each other's job.

use sqlx::Row;
use uuid::Uuid;

use super::{Storage, StorageError};
use crate::clock::now_micros;

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new: it is now ours, bound to the given job id.
    Claimed,
    /// The key was used before.
    Existing {
        /// The job the key is bound to.
        job_id: Uuid,
        /// The hash of the request that used it.
        request_hash: String,
        /// `true` once that request's job was confirmed by the broker.
        done: bool,
    },
}

impl Storage {
    /// Claims `key` in `scope` for `job_id` and the request hashed `request_hash`.
    pub async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        job_id: Uuid,
    ) -> Result<Claim, StorageError> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys \
             (scope, idem_key, request_hash, job_id, state, created_at_us) \
             VALUES ($1, $2, $3, $4, 'pending', $5) ON CONFLICT (scope, idem_key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(request_hash)
        .bind(job_id.to_string())
        .bind(now_micros())
        .execute(self.pool())
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(Claim::Claimed);
        }
        let row = sqlx::query(
            "SELECT request_hash, job_id, state FROM idempotency_keys \
             WHERE scope = $1 AND idem_key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            // Released between our insert and select: the caller may simply try again.
            return Ok(Claim::Existing {
                job_id,
                request_hash: String::new(),
                done: false,
            });
        };
        let stored: String = row.try_get("job_id")?;
        let state: String = row.try_get("state")?;
        Ok(Claim::Existing {
            job_id: Uuid::parse_str(&stored).map_err(|e| StorageError::Corrupt {
                job_id: stored.clone(),
                message: e.to_string(),
            })?,
            request_hash: row.try_get("request_hash")?,
            done: state == "done",
        })
    }

    /// The claimed request's job was confirmed by the broker.
    pub async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE idempotency_keys SET state = 'done' WHERE scope = $1 AND idem_key = $2",
        )
        .bind(scope)
        .bind(key)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The claimed request failed before the broker took it: forget the claim.
    pub async fn release_idempotency_key(
        &self,
        scope: &str,
        key: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND idem_key = $2 AND state = 'pending'",
        )
        .bind(scope)
        .bind(key)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
