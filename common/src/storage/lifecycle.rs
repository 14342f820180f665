//! A job's life before it has a result — queued, running, retrying — and the way back from
//! the dead letters.
//!
//! A job's row in `jobs` is written `queued` by the ingress once the broker confirmed it
//! ([`Storage::accept`](super::Storage::accept)); workers mark it `running` and `retrying`.
//! These marks are advisory (a lost one only makes `GET /jobs/{id}` less precise), so
//! workers write them in the background; they never touch a finished row, so the outcome
//! always wins.

use std::collections::HashMap;

use sqlx::Row;
use uuid::Uuid;

use super::{decode, JobResult, JobStatus, Storage, StorageError, COLUMNS};
use crate::clock::now_micros;

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

/// What `GET /jobs/{id}` reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Lifecycle {
    /// Not finished yet.
    Pending(StageUpdate),
    /// Finished (succeeded or dead).
    Finished(Box<JobResult>),
}

impl Storage {
    /// Records stage changes; of several for one job, the last wins. A `queued` update
    /// never overwrites a stage a worker wrote (the worker may have started the job before
    /// the ingress got the broker's confirm). A finished or refused job's row is never
    /// changed (an update written late, after the outcome, is dropped). A job with no row
    /// yet (a worker got it before the ingress recorded it) gets one, without a decision.
    pub async fn record_stages(&self, updates: &[StageUpdate]) -> Result<(), StorageError> {
        let mut last: HashMap<Uuid, &StageUpdate> = HashMap::new();
        for update in updates {
            last.insert(update.job_id, update);
        }
        // Rows in id order: the ingress and every worker write here concurrently, and
        // multi-row upserts that lock rows in different orders deadlock on PostgreSQL.
        let mut latest: Vec<&StageUpdate> = last.into_values().collect();
        latest.sort_by_key(|update| update.job_id);
        self.driver.record_stages(&latest).await
    }

    /// Where a job is: its outcome if it finished, else its stage, else `None` (unknown,
    /// or refused because its publish failed: the client was told it does not exist).
    /// One read of the job's row.
    pub async fn lifecycle(&self, job_id: Uuid) -> Result<Option<Lifecycle>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, updated_at_us FROM jobs WHERE job_id = $1"
        ))
        .bind(job_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let state: String = row.try_get("status")?;
        if JobStatus::parse(&state).is_some() {
            return Ok(Some(Lifecycle::Finished(Box::new(decode(&row)?))));
        }
        let Some(stage) = Stage::parse(&state) else {
            // Refused at the ingress.
            return Ok(None);
        };
        let attempt: i64 = row.try_get("attempts")?;
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
    /// replayed; it still answers `GET /jobs/{id}` until [`Storage::finish_replay`] marks
    /// the job `queued`. The claim is exclusive: one statement sets the
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
                "UPDATE jobs SET replaying_since_us = {} WHERE state = 'dead' \
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
        tx.commit().await?;
        Ok(claimed)
    }

    /// The replay of a claimed job is published: its row goes back to `queued`, unless the
    /// replayed run already replaced it with its own outcome.
    pub async fn finish_replay(&self, job_id: Uuid) -> Result<(), StorageError> {
        self.finish_replays(&[job_id]).await
    }

    /// The replay of a claimed job could not be published: the job stays dead (and can be
    /// replayed again at once), and a run of a message the broker may have kept anyway
    /// finds its dead row and changes nothing.
    pub async fn abandon_replay(&self, job_id: Uuid) -> Result<(), StorageError> {
        self.abandon_replays(&[job_id]).await
    }
}
