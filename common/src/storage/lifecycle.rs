//! A job's life before it has a result — queued, running, retrying — and the way back from
//! the dead letters.
//!
//! The ingress marks a job `queued` once the broker confirmed it; workers mark it `running`
//! and `retrying`. These rows are advisory (a lost one only makes `GET /jobs/{id}` less
//! precise), so workers write them in the background; the terminal outcome lives in
//! `job_results` and always wins.

use std::collections::HashMap;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Row};
use uuid::Uuid;

use super::{decode, JobResult, Storage, StorageError, COLUMNS};
use crate::clock::now_micros;
use crate::job::Job;

/// How long a replay's claim on a dead job holds ([`Storage::claim_replay`]): longer than
/// any publish takes, so a live replay keeps its job; a claim left by a replay that died
/// before publishing (or before clearing it) expires after this, and the job can be
/// replayed again.
pub const REPLAY_CLAIM_EXPIRY: std::time::Duration = std::time::Duration::from_secs(120);

fn claim_expiry_us() -> i64 {
    i64::try_from(REPLAY_CLAIM_EXPIRY.as_micros()).unwrap_or(i64::MAX)
}

/// A state before the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Accepted, not yet picked up.
    Queued,
    /// A worker is running it.
    Running,
    /// An attempt failed; another is scheduled.
    Retrying,
    /// Not attempted, back in the broker without consuming an attempt: its target's
    /// circuit is open or at its concurrency cap.
    Waiting,
    /// Accepted for later (`delay_ms` / `run_at`): waits in the database until due.
    Scheduled,
}

impl Stage {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Running => "running",
            Stage::Retrying => "retrying",
            Stage::Waiting => "waiting",
            Stage::Scheduled => "scheduled",
        }
    }

    /// Every stage.
    pub const ALL: [Stage; 5] = [
        Stage::Queued,
        Stage::Running,
        Stage::Retrying,
        Stage::Waiting,
        Stage::Scheduled,
    ];

    fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|stage| stage.as_str() == s)
    }
}

/// One job's non-terminal state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageUpdate {
    /// The job.
    pub job_id: Uuid,
    /// Its kind's wire name.
    pub kind: String,
    /// Where it is.
    pub stage: Stage,
    /// The attempt running, or about to run.
    pub attempt: u32,
    /// The last error, when retrying.
    pub error: Option<String>,
    /// When this was observed (µs since the epoch).
    pub at_us: i64,
}

/// `queued` stage updates for freshly accepted `jobs` (ids and kinds only, no payloads).
pub fn queued_updates(jobs: &[Job]) -> Vec<StageUpdate> {
    let at_us = now_micros();
    jobs.iter()
        .map(|job| StageUpdate {
            job_id: job.id,
            kind: job.kind.as_str().to_owned(),
            stage: Stage::Queued,
            attempt: 1,
            error: None,
            at_us,
        })
        .collect()
}

/// What `GET /jobs/{id}` reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Lifecycle {
    /// Not finished yet.
    Pending(StageUpdate),
    /// Finished (succeeded or dead).
    Finished(Box<JobResult>),
}

impl Storage {
    /// Marks freshly accepted jobs `queued`, unless a worker already got further.
    pub async fn mark_queued(&self, jobs: &[Job]) -> Result<(), StorageError> {
        self.record_stages(&queued_updates(jobs)).await
    }

    /// Records stage changes; of several for one job, the last wins. A `queued` update
    /// never overwrites a stage a worker wrote (the worker may have started the job before
    /// the ingress got the broker's confirm). A job that has finished gets no stage row
    /// (an update written late, after the result, would otherwise linger): the result's
    /// commit removes the row, see [`Storage::record_pending`].
    pub async fn record_stages(&self, updates: &[StageUpdate]) -> Result<(), StorageError> {
        let mut last: HashMap<Uuid, &StageUpdate> = HashMap::new();
        for update in updates {
            last.insert(update.job_id, update);
        }
        // Rows in id order: the ingress and every worker write here concurrently, and
        // multi-row upserts that lock rows in different orders deadlock on PostgreSQL.
        let mut latest: Vec<&StageUpdate> = last.into_values().collect();
        latest.sort_by_key(|update| update.job_id);
        let (queued, progressed): (Vec<&StageUpdate>, Vec<&StageUpdate>) = latest
            .into_iter()
            .partition(|update| update.stage == Stage::Queued);
        for (updates, on_conflict) in [
            (queued, "DO NOTHING"),
            (
                progressed,
                "DO UPDATE SET status = excluded.status, attempt = excluded.attempt, \
                 error = excluded.error, updated_at_us = excluded.updated_at_us \
                 WHERE job_status.updated_at_us <= excluded.updated_at_us",
            ),
        ] {
            for chunk in updates.chunks(super::MAX_ROWS_PER_STATEMENT) {
                let rows = super::padded(chunk.len());
                let sql = format!(
                    "INSERT INTO job_status (job_id, kind, status, attempt, error, updated_at_us) \
                     SELECT * FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL \
                     AND NOT EXISTS (SELECT 1 FROM job_results r WHERE r.job_id = v.column1 \
                     AND r.replaying_since_us IS NULL) \
                     ON CONFLICT (job_id) {on_conflict}",
                    self.placeholders(1, rows, 6)
                );
                bind_stages(&sql, chunk, rows - chunk.len())
                    .execute(self.pool())
                    .await?;
            }
        }
        Ok(())
    }

    /// Where a job is: its result if it has one, else its stage, else `None` (unknown, or
    /// cancelled because its publish failed: the client was told it does not exist).
    pub async fn lifecycle(&self, job_id: Uuid) -> Result<Option<Lifecycle>, StorageError> {
        if let Some(result) = self.get(job_id).await? {
            return Ok(Some(Lifecycle::Finished(Box::new(result))));
        }
        if self.is_cancelled(job_id).await? {
            return Ok(None);
        }
        let row = sqlx::query(
            "SELECT job_id, kind, status, attempt, error, updated_at_us FROM job_status \
             WHERE job_id = $1",
        )
        .bind(job_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            // The result commit inserts the result and deletes the stage row at once, and
            // it may have landed between the first read and this one: read the result
            // again, or a job finishing right now would be answered 404.
            return Ok(self
                .get(job_id)
                .await?
                .map(|result| Lifecycle::Finished(Box::new(result))));
        };
        let status: String = row.try_get("status")?;
        let stage = Stage::parse(&status).ok_or_else(|| StorageError::Corrupt {
            job_id: job_id.to_string(),
            message: format!("stage {status}"),
        })?;
        let attempt: i64 = row.try_get("attempt")?;
        Ok(Some(Lifecycle::Pending(StageUpdate {
            job_id,
            kind: row.try_get("kind")?,
            stage,
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
            error: row.try_get("error")?,
            at_us: row.try_get("updated_at_us")?,
        })))
    }

    /// Claims a dead job for replay and returns its row (with the job), or `None` when the
    /// job is not dead or another replay holds it. The dead row stays, marked as being
    /// replayed, and the job is marked `queued`; the row still answers `GET /jobs/{id}`
    /// until [`Storage::finish_replay`]. The claim is exclusive: one statement sets the
    /// mark only where none is set (or the one set is older than [`REPLAY_CLAIM_EXPIRY`]),
    /// so of two overlapping replays one publishes the job and the other does not.
    /// Nothing is lost if the caller never gets further (a crash, a dropped request): the
    /// job is still dead, and once the claim expires (or is abandoned) it can be replayed
    /// again.
    pub async fn claim_replay(&self, job_id: Uuid) -> Result<Option<JobResult>, StorageError> {
        self.claim_replay_at(job_id, now_micros()).await
    }

    /// [`Storage::claim_replay`] as if the time were `now_us` (µs since the epoch): tests
    /// use it to see a claim expire without waiting.
    pub async fn claim_replay_at(
        &self,
        job_id: Uuid,
        now_us: i64,
    ) -> Result<Option<JobResult>, StorageError> {
        let mut claimed = self.claim_dead(&[job_id.to_string()], now_us).await?;
        Ok(claimed.pop())
    }

    /// Claims the dead jobs among `ids` that no unexpired replay holds (see
    /// [`Storage::claim_replay`]), in one transaction; returns their rows.
    pub(crate) async fn claim_dead(
        &self,
        ids: &[String],
        now_us: i64,
    ) -> Result<Vec<JobResult>, StorageError> {
        let mut tx = self.pool().begin().await?;
        let mut claimed = Vec::new();
        for chunk in ids.chunks(super::MAX_ROWS_PER_STATEMENT) {
            let rows = super::padded(chunk.len());
            let sql = format!(
                "UPDATE job_results SET replaying_since_us = {} WHERE status = 'dead' \
                 AND (replaying_since_us IS NULL OR replaying_since_us < {}) \
                 AND job_id IN ({}) RETURNING {COLUMNS}",
                self.list(1, 1),
                self.list(2, 1),
                self.list(3, rows),
            );
            // Parameters in the order they appear (SQLite's `?` are positional).
            let mut query = sqlx::query(&sql)
                .bind(now_us)
                .bind(now_us.saturating_sub(claim_expiry_us()));
            for id in chunk {
                query = query.bind(id.clone());
            }
            query = super::bind_nulls(query, rows - chunk.len());
            for row in query.fetch_all(&mut *tx).await? {
                claimed.push(decode(&row)?);
            }
        }
        for dead in &claimed {
            sqlx::query(
                "INSERT INTO job_status (job_id, kind, status, attempt, error, updated_at_us) \
                 VALUES ($1, $2, 'queued', 1, NULL, $3) ON CONFLICT (job_id) DO UPDATE SET \
                 status = 'queued', attempt = 1, error = NULL, updated_at_us = excluded.updated_at_us",
            )
            .bind(dead.job_id.to_string())
            .bind(dead.kind.clone())
            .bind(now_us)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// The replay of a claimed job is published: removes its dead row, unless the replayed
    /// run already replaced it with its own outcome.
    pub async fn finish_replay(&self, job_id: Uuid) -> Result<(), StorageError> {
        sqlx::query("DELETE FROM job_results WHERE job_id = $1 AND replaying_since_us IS NOT NULL")
            .bind(job_id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The replay of a claimed job could not be published: the job stays dead (and can be
    /// replayed again at once), and a run of a message the broker may have kept anyway
    /// finds its dead row and changes nothing.
    pub async fn abandon_replay(&self, job_id: Uuid) -> Result<(), StorageError> {
        sqlx::query("UPDATE job_results SET replaying_since_us = NULL WHERE job_id = $1")
            .bind(job_id.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

/// `sql`'s parameters bound to `updates`, six per row in the column order of the upsert,
/// then `padding` rows of NULLs (see [`super::padded`]).
fn bind_stages<'q>(
    sql: &'q str,
    updates: &[&StageUpdate],
    padding: usize,
) -> Query<'q, Any, AnyArguments<'q>> {
    let mut query = sqlx::query(sql);
    for u in updates {
        query = query
            .bind(u.job_id.to_string())
            .bind(u.kind.clone())
            .bind(u.stage.as_str())
            .bind(i64::from(u.attempt))
            .bind(u.error.clone())
            .bind(u.at_us);
    }
    for _ in 0..padding {
        let (text, int) = (None::<String>, None::<i64>);
        query = query.bind(text.clone()).bind(text.clone()).bind(text);
        query = query.bind(int).bind(None::<String>).bind(int);
    }
    query
}
