//! `Idempotency-Key`: a client that retries a POST with the same key and the same body gets
//! the original job back instead of a second one.
//!
//! The ingress *claims* the key (insert-if-absent, state `pending`) before publishing,
//! marks it `done` once the broker confirmed, and *releases* it (deletes the claim) when the
//! publish failed, so the client's retry can go through. A second request that finds the
//! claim `pending` is racing the first and is told to retry (409).
//!
//! A claim left `pending` by an ingress that died mid-publish would answer 409 forever. So
//! a claim pending for longer than the caller's `pending_for` (the longest a live publish
//! can take) is *resumed* by the next request with the same body: it gets the claim's job
//! id and publishes that job again. If the first publish did reach the broker, the two
//! copies share one id, and a job id gets one result row. Keys expire with retention
//! ([`super::retention`]).
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
    /// The key was claimed by a request with the same body whose ingress never finished
    /// (pending longer than `pending_for`): it is ours now, bound to `job_id`, which the
    /// caller publishes (again).
    Resumed {
        /// The job the stale claim is bound to.
        job_id: Uuid,
    },
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
    /// Claims `key` in `scope` for `job_id` and the request hashed `request_hash`; a claim
    /// of the same request pending for longer than `pending_for` is resumed (see the
    /// module docs).
    pub async fn claim_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        job_id: Uuid,
        pending_for: std::time::Duration,
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
        let now = now_micros();
        let stale_before =
            now.saturating_sub(i64::try_from(pending_for.as_micros()).unwrap_or(i64::MAX));
        let resumed: Option<String> = sqlx::query_scalar(
            "UPDATE idempotency_keys SET created_at_us = $1 WHERE scope = $2 AND idem_key = $3 \
             AND state = 'pending' AND request_hash = $4 AND created_at_us < $5 RETURNING job_id",
        )
        .bind(now)
        .bind(scope)
        .bind(key)
        .bind(request_hash)
        .bind(stale_before)
        .fetch_optional(self.pool())
        .await?;
        if let Some(stored) = resumed {
            let job_id = Uuid::parse_str(&stored).map_err(|e| StorageError::Corrupt {
                job_id: stored.clone(),
                message: e.to_string(),
            })?;
            tracing::warn!(%job_id, "resuming an idempotency key left pending by an ingress that never finished");
            return Ok(Claim::Resumed { job_id });
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

#[cfg(test)]
mod tests {
    use super::*;

    const PENDING: std::time::Duration = std::time::Duration::from_secs(60);

    /// Migration 20261207020000 moves the keys stored before it to the shared scope
    /// `""`: they keep answering with their job, and the same key can now be claimed in
    /// another scope.
    async fn keys_stored_before_the_scope_migration_keep_working(url: &str) {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(url).await.unwrap();
        let mut before = sqlx::migrate!("./migrations");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < 20261207020000)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&pool).await.unwrap();
        let job = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO idempotency_keys (idem_key, request_hash, job_id, state, created_at_us) \
             VALUES ('order-1', 'abc', $1, 'done', 1)",
        )
        .bind(job.to_string())
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;

        let storage = Storage::connect(url).await.unwrap();
        let other = Uuid::now_v7();
        assert_eq!(
            storage
                .claim_idempotency_key("", "order-1", "def", other, PENDING)
                .await
                .unwrap(),
            Claim::Existing {
                job_id: job,
                request_hash: "abc".into(),
                done: true
            }
        );
        assert_eq!(
            storage
                .claim_idempotency_key("client-b", "order-1", "def", other, PENDING)
                .await
                .unwrap(),
            Claim::Claimed
        );
    }

    #[tokio::test]
    async fn keys_stored_before_the_scope_migration_keep_working_sqlite() {
        let url = crate::testing::temp_sqlite_url();
        let url = format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' });
        keys_stored_before_the_scope_migration_keep_working(&url).await;
    }

    #[tokio::test]
    #[cfg_attr(
        not(surge_postgres),
        ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
    )]
    async fn keys_stored_before_the_scope_migration_keep_working_postgres() {
        let Some(base) = crate::testing::service(crate::testing::POSTGRES_URL_VAR, "PostgreSQL")
        else {
            return;
        };
        let url = crate::testing::fresh_postgres_database(&base)
            .await
            .unwrap();
        keys_stored_before_the_scope_migration_keep_working(&url).await;
    }
}
