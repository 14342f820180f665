//! Recurring jobs in the database: one row per schedule and tick, the tick's job, and
//! whether a schedule is paused (see `crate::recurring` for when schedules tick).
//!
//! **One job per tick.** Every ingress replica computes the same ticks and the same job
//! id for each ([`crate::recurring::Schedule::job_id`]). [`Storage::record_tick`]
//! inserts the tick's row (`schedule_ticks`, keyed by schedule and tick) and, only when
//! that insert took the row, the job as a scheduled job due now (`scheduled_jobs` and a
//! `scheduled` stage), in one transaction. A replica that loses the race inserts nothing;
//! PostgreSQL makes a concurrent insert of the same key wait for the first one's commit
//! and then skip, SQLite has one writer at a time. So a tick has exactly one job, whatever
//! the number of replicas, restarts or crashes.
//!
//! **No tick is left without its job being published.** The job is stored with its tick in
//! one commit, and published by the ingress's scheduler like any job scheduled for later
//! (`super::schedule`): claimed with a lease, published, forgotten. An ingress that dies
//! between its commit and the publish leaves the job for the next scheduler to claim.
//!
//! **Paused** schedules (`schedule_state`) are shared by all replicas. A schedule resumed at
//! `t` does not catch up ticks before `t`.
//!
//! **Bounded.** [`Storage::prune_ticks`] deletes a schedule's rows older than a window
//! (its catch-up window plus a margin: no replica computes a tick that old again), always
//! keeping its latest tick and latest trigger.

use std::collections::HashMap;

use uuid::Uuid;

use super::lifecycle::Lifecycle;
use super::{Storage, StorageError};
use crate::clock::now_micros;
use crate::job::Job;

/// What the database knows of one schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleCursor {
    /// Its latest tick recorded (µs since the epoch), triggers not counted.
    pub last_tick_us: Option<i64>,
    /// Whether it is paused.
    pub paused: bool,
    /// When it was last paused or resumed (µs since the epoch).
    pub changed_at_us: Option<i64>,
}

/// A schedule's latest job, as `GET /schedules` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastJob {
    /// The job.
    pub id: Uuid,
    /// Its tick, or the moment it was triggered (µs since the epoch).
    pub tick_us: i64,
    /// Whether it was triggered by hand.
    pub manual: bool,
    /// Its status (`scheduled`, `queued`, `running`, …, `succeeded`, `dead`,
    /// `cancelled`), or `unknown` once its result was pruned.
    pub status: String,
}

impl Storage {
    /// Every schedule's cursor, by name (schedules never ticked nor paused are absent).
    pub async fn schedule_cursors(&self) -> Result<HashMap<String, ScheduleCursor>, StorageError> {
        let mut cursors: HashMap<String, ScheduleCursor> = HashMap::new();
        let ticks: Vec<(String, Option<i64>)> = sqlx::query_as(
            "SELECT schedule, MAX(tick_us) FROM schedule_ticks WHERE manual = 0 GROUP BY schedule",
        )
        .fetch_all(self.pool())
        .await?;
        for (schedule, last) in ticks {
            cursors.entry(schedule).or_default().last_tick_us = last;
        }
        let states: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT schedule, paused, changed_at_us FROM schedule_state")
                .fetch_all(self.pool())
                .await?;
        for (schedule, paused, changed_at) in states {
            let cursor = cursors.entry(schedule).or_default();
            cursor.paused = paused != 0;
            cursor.changed_at_us = Some(changed_at);
        }
        Ok(cursors)
    }

    /// Records the tick at `tick_us` of `schedule` (a trigger when `manual`) with its
    /// `job`, unless that tick has a row already. Returns whether this call recorded it
    /// (then the job is stored as a scheduled job due at `job.run_at_us`, or now, for the
    /// scheduler to publish). See the module docs.
    pub async fn record_tick(
        &self,
        schedule: &str,
        tick_us: i64,
        manual: bool,
        job: &Job,
    ) -> Result<bool, StorageError> {
        let now = now_micros();
        let mut tx = self.pool().begin().await?;
        let won = sqlx::query(
            "INSERT INTO schedule_ticks (schedule, manual, tick_us, job_id, recorded_at_us) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (schedule, manual, tick_us) DO NOTHING",
        )
        .bind(schedule)
        .bind(i64::from(manual))
        .bind(tick_us)
        .bind(job.id.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !won {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO scheduled_jobs (job_id, due_at_us, job, claimed_until_us) \
             VALUES ($1, $2, $3, NULL) ON CONFLICT (job_id) DO NOTHING",
        )
        .bind(job.id.to_string())
        .bind(job.run_at_us.unwrap_or(now))
        .bind(String::from_utf8_lossy(&job.encode()).into_owned())
        .execute(&mut *tx)
        .await?;
        super::schedule::insert_scheduled_row(&mut tx, job, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Pauses or resumes `schedule` for every replica.
    pub async fn set_schedule_paused(
        &self,
        schedule: &str,
        paused: bool,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO schedule_state (schedule, paused, changed_at_us) VALUES ($1, $2, $3) \
             ON CONFLICT (schedule) DO UPDATE SET paused = excluded.paused, \
             changed_at_us = excluded.changed_at_us \
             WHERE schedule_state.paused <> excluded.paused",
        )
        .bind(schedule)
        .bind(i64::from(paused))
        .bind(now_micros())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The latest job of `schedule` (tick or trigger), with its status.
    pub async fn last_schedule_job(&self, schedule: &str) -> Result<Option<LastJob>, StorageError> {
        let row: Option<(String, i64, i64)> = sqlx::query_as(
            "SELECT job_id, tick_us, manual FROM schedule_ticks WHERE schedule = $1 \
             ORDER BY recorded_at_us DESC, tick_us DESC LIMIT 1",
        )
        .bind(schedule)
        .fetch_optional(self.pool())
        .await?;
        let Some((id, tick_us, manual)) = row else {
            return Ok(None);
        };
        let id = Uuid::parse_str(&id).map_err(|e| StorageError::Corrupt {
            job_id: id.clone(),
            message: e.to_string(),
        })?;
        let status = match self.lifecycle(id).await? {
            Some(Lifecycle::Finished(result)) => result.status.as_str().to_owned(),
            Some(Lifecycle::Pending(stage)) => stage.stage.as_str().to_owned(),
            None => "unknown".to_owned(),
        };
        Ok(Some(LastJob {
            id,
            tick_us,
            manual: manual != 0,
            status,
        }))
    }

    /// The ticks recorded for `schedule` at or after `since_us` (triggers not counted),
    /// oldest first, at most `limit`: for tests and measurements.
    pub async fn schedule_ticks(
        &self,
        schedule: &str,
        since_us: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Uuid)>, StorageError> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT tick_us, job_id FROM schedule_ticks WHERE schedule = $1 AND manual = 0 \
             AND tick_us >= $2 ORDER BY tick_us LIMIT $3",
        )
        .bind(schedule)
        .bind(since_us)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(tick, id)| {
                Uuid::parse_str(&id)
                    .map(|id| (tick, id))
                    .map_err(|e| StorageError::Corrupt {
                        job_id: id.clone(),
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    /// Deletes `schedule`'s tick rows older than `before_us` and its trigger rows
    /// recorded before it, keeping its latest tick and latest trigger. Returns how many
    /// rows went.
    pub async fn prune_ticks(&self, schedule: &str, before_us: i64) -> Result<u64, StorageError> {
        let mut removed = 0;
        for manual in [0_i64, 1] {
            let column = if manual == 0 {
                "tick_us"
            } else {
                "recorded_at_us"
            };
            removed += sqlx::query(&format!(
                "DELETE FROM schedule_ticks WHERE schedule = $1 AND manual = $2 \
                 AND {column} < $3 AND tick_us < (SELECT MAX(t.tick_us) FROM schedule_ticks t \
                 WHERE t.schedule = $1 AND t.manual = $2)"
            ))
            .bind(schedule)
            .bind(manual)
            .bind(before_us)
            .execute(self.pool())
            .await?
            .rows_affected();
        }
        Ok(removed)
    }
}
