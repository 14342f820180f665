//! Jobs scheduled for later: they wait in the database (durable, whatever the broker, and
//! without blocking the broker's queue behind them) until due; then a scheduler claims
//! them, publishes them and deletes them.
//!
//! A claim is a lease (`claimed_until_us`): a scheduler that dies mid-publish leaves the
//! job to be claimed again once the lease ends, so nothing is lost; several ingress
//! replicas each run a scheduler, and a due job is claimed by one of them at a time (the
//! claim's conditions are re-checked on the row itself, so two concurrent claims cannot
//! both take it).
//!
//! Publishing and forgetting are two steps, so a job can be published twice: when the
//! scheduler dies (or cannot reach the database for its whole lease) between the broker's
//! confirm and [`Storage::unschedule`]. The second publish is harmless — same job id, so
//! one result row — and is skipped altogether once the first copy got anywhere: a claim
//! finds a job whose lease ran out but that already has a result or a stage a worker
//! wrote (`running`, …), and forgets it instead of publishing it again.
//!
//! A batch that mixes jobs for now and for later stores the later ones *held*
//! ([`Storage::schedule_held`]): claimed in advance until a time no scheduler takes them
//! before, and released ([`Storage::release_scheduled`]) only once the jobs for now are
//! published, or dropped ([`Storage::drop_scheduled`]) when they were refused. So none of
//! a refused batch's jobs runs, however soon the later ones are due.

use sqlx::{Any, Transaction};
use uuid::Uuid;

use super::{Storage, StorageError};
use crate::clock::now_micros;
use crate::job::Job;

/// Writes a scheduled job's row in `jobs`, inside a running transaction: accepted (its
/// client got a 202), `scheduled` until a scheduler publishes it.
pub(crate) async fn insert_scheduled_row(
    tx: &mut Transaction<'static, Any>,
    job: &Job,
    now_us: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, enqueued_at_us, \
         updated_at_us) VALUES ($1, $2, 'scheduled', 1, 1, 0, $3, $4) \
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(job.id.to_string())
    .bind(job.kind.clone())
    .bind(job.enqueued_at_us)
    .bind(now_us)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Storage {
    /// Stores `jobs` (each with a `run_at_us`) until due, and marks them `scheduled`.
    pub async fn schedule(&self, jobs: &[Job]) -> Result<(), StorageError> {
        self.store_scheduled(jobs, None).await
    }

    /// [`Storage::schedule`], but no scheduler takes the jobs before `held_until_us` (µs
    /// since the epoch) unless [`Storage::release_scheduled`] releases them first: for the
    /// later part of a batch whose other jobs are still being published.
    pub async fn schedule_held(
        &self,
        jobs: &[Job],
        held_until_us: i64,
    ) -> Result<(), StorageError> {
        self.store_scheduled(jobs, Some(held_until_us)).await
    }

    async fn store_scheduled(
        &self,
        jobs: &[Job],
        held_until_us: Option<i64>,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool().begin().await?;
        let now = now_micros();
        for job in jobs {
            let due = job.run_at_us.unwrap_or(now);
            sqlx::query(
                "INSERT INTO scheduled_jobs (job_id, due_at_us, job, claimed_until_us) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(job.id.to_string())
            .bind(due)
            .bind(String::from_utf8_lossy(&job.encode()).into_owned())
            .bind(held_until_us)
            .execute(&mut *tx)
            .await?;
            insert_scheduled_row(&mut tx, job, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Releases jobs stored by [`Storage::schedule_held`] with `held_until_us`: schedulers
    /// take them when due. A job whose hold ran out and that a scheduler claimed since
    /// keeps that claim.
    pub async fn release_scheduled(
        &self,
        ids: &[Uuid],
        held_until_us: i64,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool().begin().await?;
        for id in ids {
            sqlx::query(
                "UPDATE scheduled_jobs SET claimed_until_us = NULL \
                 WHERE job_id = $1 AND claimed_until_us = $2",
            )
            .bind(id.to_string())
            .bind(held_until_us)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims up to `limit` jobs due by now for `lease_us` microseconds, oldest due first.
    /// A job whose stored encoding no longer decodes is logged and left claimed (it comes
    /// back after its lease, to be looked at; it cannot be published). A job whose earlier
    /// claim ran out although it was published (see the module docs) is forgotten, not
    /// claimed, once it has a result or a worker's stage.
    pub async fn claim_due(&self, lease_us: i64, limit: u32) -> Result<Vec<Job>, StorageError> {
        self.claim_due_at(lease_us, limit, now_micros()).await
    }

    /// [`Storage::claim_due`] as if the time were `now` (µs since the epoch): tests use it
    /// to see a lease run out without waiting.
    pub async fn claim_due_at(
        &self,
        lease_us: i64,
        limit: u32,
        now: i64,
    ) -> Result<Vec<Job>, StorageError> {
        // Published by a scheduler that could not forget them: a worker has them already.
        sqlx::query(
            "DELETE FROM scheduled_jobs WHERE claimed_until_us IS NOT NULL \
             AND claimed_until_us < $1 AND due_at_us <= $1 \
             AND EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = scheduled_jobs.job_id \
                         AND j.state <> 'scheduled')",
        )
        .bind(now)
        .execute(self.pool())
        .await?;
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
                "UPDATE jobs SET state = 'queued', updated_at_us = $1 \
                 WHERE job_id = $2 AND state = 'scheduled'",
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
            for table in ["scheduled_jobs", "jobs"] {
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
