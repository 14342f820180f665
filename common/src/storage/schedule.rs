//! Jobs scheduled for later: they wait in the database (durable, whatever the broker, and
//! without blocking the broker's queue behind them) until due; then a scheduler claims
//! them, publishes them and deletes them.
//!
//! A claim is a lease (`claimed_until_us`): a scheduler that dies mid-publish leaves the
//! job to be claimed again once the lease ends, so nothing is lost; several ingress
//! replicas each run a scheduler, and a due job is claimed by one of them at a time (the
//! claim's conditions are re-checked on the row itself, so two concurrent claims cannot
//! both take it). A job published twice after a lost lease is harmless: results are
//! stored once per job id.

use uuid::Uuid;

use super::{Storage, StorageError};
use crate::clock::now_micros;
use crate::job::Job;

impl Storage {
    /// Stores `jobs` (each with a `run_at_us`) until due, and marks them `scheduled`.
    pub async fn schedule(&self, jobs: &[Job]) -> Result<(), StorageError> {
        let mut tx = self.pool().begin().await?;
        let now = now_micros();
        for job in jobs {
            let due = job.run_at_us.unwrap_or(now);
            sqlx::query(
                "INSERT INTO scheduled_jobs (job_id, due_at_us, job, claimed_until_us) \
                 VALUES ($1, $2, $3, NULL)",
            )
            .bind(job.id.to_string())
            .bind(due)
            .bind(String::from_utf8_lossy(&job.encode()).into_owned())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO job_status (job_id, kind, status, attempt, error, updated_at_us) \
                 VALUES ($1, $2, 'scheduled', 1, NULL, $3) ON CONFLICT (job_id) DO NOTHING",
            )
            .bind(job.id.to_string())
            .bind(job.kind.clone())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims up to `limit` jobs due by now for `lease_us` microseconds, oldest due first.
    /// A job whose stored encoding no longer decodes is logged and left claimed (it comes
    /// back after its lease, to be looked at; it cannot be published).
    pub async fn claim_due(&self, lease_us: i64, limit: u32) -> Result<Vec<Job>, StorageError> {
        let now = now_micros();
        // The conditions are repeated outside the subquery: PostgreSQL re-checks those on
        // a row another scheduler updated meanwhile, so it cannot be claimed twice.
        let rows: Vec<(String,)> = sqlx::query_as(
            "UPDATE scheduled_jobs SET claimed_until_us = $1 \
             WHERE job_id IN (SELECT job_id FROM scheduled_jobs WHERE due_at_us <= $2 \
                 AND (claimed_until_us IS NULL OR claimed_until_us < $2) \
                 ORDER BY due_at_us LIMIT $3) \
             AND due_at_us <= $2 AND (claimed_until_us IS NULL OR claimed_until_us < $2) \
             RETURNING job",
        )
        .bind(now + lease_us)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(text,)| match Job::decode(text.as_bytes()) {
                Ok(job) => Some(job),
                Err(e) => {
                    tracing::error!(error = %e, "a scheduled job does not decode; left claimed");
                    None
                }
            })
            .collect())
    }

    /// The claimed `ids` are published: forget them, and mark them `queued` (unless a
    /// worker already got further).
    pub async fn unschedule(&self, ids: &[Uuid]) -> Result<(), StorageError> {
        let mut tx = self.pool().begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM scheduled_jobs WHERE job_id = $1")
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE job_status SET status = 'queued', updated_at_us = $1 \
                 WHERE job_id = $2 AND status = 'scheduled'",
            )
            .bind(now_micros())
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes scheduled jobs whose request was refused after all (a batch whose other
    /// jobs could not be published): they never run.
    pub async fn drop_scheduled(&self, ids: &[Uuid]) -> Result<(), StorageError> {
        let mut tx = self.pool().begin().await?;
        for id in ids {
            for table in ["scheduled_jobs", "job_status"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE job_id = $1"))
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// When the next unclaimed scheduled job is due (µs since the epoch), if any.
    pub async fn next_due(&self) -> Result<Option<i64>, StorageError> {
        let next: Option<(i64,)> = sqlx::query_as(
            "SELECT due_at_us FROM scheduled_jobs WHERE claimed_until_us IS NULL \
             ORDER BY due_at_us LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(next.map(|(due,)| due))
    }
}
