//! Bulk replay of dead jobs (`POST /jobs/replay`): claim the dead jobs matching a filter,
//! publish them, then remove their dead rows — as the single replay does, many at a time.
//!
//! The claim is the single replay's ([`Storage::claim_replay`]): exclusive, so two
//! overlapping bulk replays (or a bulk and a single one) never both publish a job; and it
//! keeps the dead row until the publish is confirmed ([`Storage::finish_replays`]), so a
//! replay interrupted in between loses nothing: the jobs stay dead, and their claims
//! expire after [`REPLAY_CLAIM_EXPIRY`](super::lifecycle::REPLAY_CLAIM_EXPIRY) (or are
//! released at once by [`Storage::abandon_replays`] when the publish fails).

use sqlx::Row;
use uuid::Uuid;

use super::{JobResult, Storage, StorageError};
use crate::clock::now_micros;

/// Most jobs one bulk replay publishes.
pub const MAX_BULK_REPLAY: u32 = 1000;

/// Which dead jobs to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFilter {
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs that died at or after this time, µs since the epoch.
    pub since_us: Option<i64>,
    /// Most jobs to replay (1 to [`MAX_BULK_REPLAY`]; clamped), newest deaths first.
    pub max: u32,
}

impl Storage {
    /// Claims up to `filter.max` dead jobs matching `filter` that no other replay holds,
    /// newest deaths first, and returns their rows (each with its job). Dead rows without
    /// their job (it was not kept) are left alone.
    pub async fn claim_dead_matching(
        &self,
        filter: &ReplayFilter,
    ) -> Result<Vec<JobResult>, StorageError> {
        self.claim_dead_matching_at(filter, now_micros()).await
    }

    /// [`Storage::claim_dead_matching`] as if the time were `now_us`: tests use it to see a
    /// claim expire without waiting.
    pub async fn claim_dead_matching_at(
        &self,
        filter: &ReplayFilter,
        now_us: i64,
    ) -> Result<Vec<JobResult>, StorageError> {
        let expiry =
            i64::try_from(super::lifecycle::REPLAY_CLAIM_EXPIRY.as_micros()).unwrap_or(i64::MAX);
        let mut sql = String::from(
            "SELECT job_id FROM jobs WHERE state = 'dead' AND finished_at_us IS NOT NULL \
             AND job IS NOT NULL \
             AND (replaying_since_us IS NULL OR replaying_since_us < $1)",
        );
        let mut next = 2;
        if filter.kind.is_some() {
            sql.push_str(&format!(" AND kind = ${next}"));
            next += 1;
        }
        if filter.since_us.is_some() {
            sql.push_str(&format!(" AND finished_at_us >= ${next}"));
            next += 1;
        }
        sql.push_str(&format!(
            " ORDER BY finished_at_us DESC, job_id DESC LIMIT ${next}"
        ));
        let mut query = sqlx::query(&sql).bind(now_us.saturating_sub(expiry));
        if let Some(kind) = &filter.kind {
            query = query.bind(kind.clone());
        }
        if let Some(since) = filter.since_us {
            query = query.bind(since);
        }
        let max = filter.max.clamp(1, MAX_BULK_REPLAY);
        let ids = query
            .bind(i64::from(max))
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>("job_id"))
            .collect::<Result<Vec<String>, sqlx::Error>>()?;
        // Claimed again one by one in one statement: a job another replay claimed since
        // the read above is skipped here.
        self.claim_dead(&ids, now_us).await
    }

    /// The replays of claimed jobs are published: their rows go back to `queued`, first
    /// attempt, unless a replayed run already stored its outcome (see
    /// [`Storage::finish_replay`]).
    pub async fn finish_replays(&self, ids: &[Uuid]) -> Result<(), StorageError> {
        let statement = format!(
            "UPDATE jobs SET state = 'queued', attempts = 1, result = NULL, error = NULL, \
             deliveries = 0, worker = NULL, started_at_us = NULL, finished_at_us = NULL, \
             updated_at_us = {}, job = NULL, replaying_since_us = NULL \
             WHERE replaying_since_us IS NOT NULL",
            self.list(1, 1)
        );
        self.replays_done(ids, &statement, Some(now_micros())).await
    }

    /// The replays of claimed jobs could not be published: the jobs stay dead and can be
    /// replayed again at once (see [`Storage::abandon_replay`]).
    pub async fn abandon_replays(&self, ids: &[Uuid]) -> Result<(), StorageError> {
        self.replays_done(
            ids,
            "UPDATE jobs SET replaying_since_us = NULL WHERE TRUE",
            None,
        )
        .await
    }

    /// Runs `statement` (ending in a `WHERE` clause) for `ids`, in padded chunks; `time`,
    /// when given, is the statement's own first parameter.
    async fn replays_done(
        &self,
        ids: &[Uuid],
        statement: &str,
        time: Option<i64>,
    ) -> Result<(), StorageError> {
        let first = 1 + usize::from(time.is_some());
        for chunk in ids.chunks(super::MAX_ROWS_PER_STATEMENT) {
            let rows = super::padded(chunk.len());
            let sql = format!("{statement} AND job_id IN ({})", self.list(first, rows));
            let mut query = sqlx::query(&sql);
            if let Some(time) = time {
                query = query.bind(time);
            }
            for id in chunk {
                query = query.bind(id.to_string());
            }
            super::bind_nulls(query, rows - chunk.len())
                .execute(self.pool())
                .await?;
        }
        Ok(())
    }
}
