//! Runs the recurring jobs of the config file (`[schedules.NAME]`, see
//! `surge_common::recurring`).
//!
//! Every ingress runs this loop, just after each whole second: for each schedule that is
//! not paused it computes the ticks due since the last one recorded and records each with
//! its job ([`fire`]); the database keeps one row per schedule and tick, so of several
//! replicas exactly one stores each tick's job (`surge_common::storage::recurring`). The
//! job is stored as a scheduled job due now, and published by the scheduler
//! ([`crate::scheduler`]), which this loop calls at once when it recorded any: so a tick's
//! job survives a crash of the replica that recorded it (another scheduler claims it when
//! its lease ends) and is published once.
//!
//! Which ticks are due ([`due_after`]): those after the latest recorded tick, but none
//! older than [`ON_TIME`] (a tick is on time up to that late), or than the schedule's
//! `catch_up` window plus [`ON_TIME`] when it has one. So ticks missed while no ingress
//! ran are skipped, or run when an ingress comes back if they are within `catch_up`. A
//! schedule that never ticked starts with its next tick; one resumed does not catch up the
//! ticks of its pause.
//!
//! The tick rows are pruned every [`PRUNE_EVERY`]: rows older than the schedule's window
//! plus [`PRUNE_MARGIN`] (no replica whose clock is less than that margin off computes
//! such a tick again), keeping the latest.

use std::time::{Duration, Instant};

use surge_common::clock::{micros, now_micros};
use surge_common::job::JobRequest;
use surge_common::recurring::Schedule;
use surge_common::storage::recurring::ScheduleCursor;
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// How late a tick may be and still count as on time (not missed).
pub const ON_TIME: Duration = Duration::from_secs(3);
/// Most ticks one schedule records in one pass (a catch-up continues at the next pass, at
/// once).
pub const MAX_TICKS_PER_PASS: usize = 100;
/// How often tick rows are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How far beyond a schedule's window its rows are kept.
pub const PRUNE_MARGIN: Duration = Duration::from_secs(600);
/// How long after a whole second a pass starts (ticks are whole seconds).
const AFTER_THE_SECOND: Duration = Duration::from_millis(20);

/// Runs until `stop` completes; returns at once when there is no schedule.
pub async fn run(state: AppState, stop: impl std::future::Future<Output = ()>) {
    if state.schedules.is_empty() {
        return;
    }
    tracing::info!(
        schedules = ?state.schedules.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        "recurring jobs"
    );
    tokio::pin!(stop);
    let mut pruned = None::<Instant>;
    loop {
        let (recorded, more) = pass(&state).await;
        if recorded > 0 {
            crate::scheduler::publish_due(&state).await;
        }
        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            prune(&state).await;
            pruned = Some(Instant::now());
        }
        let pause = if more {
            Duration::ZERO
        } else {
            let into_second = u64::try_from(now_micros().rem_euclid(1_000_000)).unwrap_or(0);
            Duration::from_micros(1_000_000 - into_second) + AFTER_THE_SECOND
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The instant after which `schedule`'s ticks are due at `now_us` (see the module docs).
pub fn due_after(schedule: &Schedule, cursor: &ScheduleCursor, now_us: i64) -> i64 {
    let on_time = now_us.saturating_sub(micros(ON_TIME));
    let mut after = match (cursor.last_tick_us, schedule.catch_up) {
        (Some(last), Some(window)) => last.max(on_time.saturating_sub(micros(window))),
        (Some(last), None) => last.max(on_time),
        (None, _) => on_time,
    };
    if let Some(changed) = cursor.changed_at_us {
        after = after.max(changed);
    }
    after
}

/// One look at every schedule: records the ticks due. Returns how many this replica
/// recorded, and whether a schedule has more due than one pass takes.
pub async fn pass(state: &AppState) -> (usize, bool) {
    let cursors = match state.storage.schedule_cursors().await {
        Ok(cursors) => cursors,
        Err(e) => {
            tracing::warn!(error = %e, "reading the schedules failed; trying again shortly");
            return (0, false);
        }
    };
    let now = now_micros();
    let (mut recorded, mut more) = (0, false);
    for schedule in state.schedules.iter() {
        let cursor = cursors.get(&schedule.name).cloned().unwrap_or_default();
        if cursor.paused {
            continue;
        }
        let after = due_after(schedule, &cursor, now);
        let ticks = schedule.ticks_between(after, now, MAX_TICKS_PER_PASS);
        more |= ticks.len() == MAX_TICKS_PER_PASS;
        if let (Some(first), Some(last)) = (ticks.first(), cursor.last_tick_us) {
            if schedule
                .next_tick_after(last)
                .is_some_and(|next| next < *first)
            {
                tracing::info!(
                    schedule = %schedule.name,
                    last_recorded_us = last,
                    resuming_at_us = first,
                    "ticks were missed while no ingress ran (or while paused); those older \
                     than the catch_up window are skipped"
                );
            }
        }
        for tick in ticks {
            match fire(state, schedule, tick, false).await {
                Ok(Some(_)) => recorded += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(schedule = %schedule.name, tick_us = tick, error = %e, "recording a tick failed; trying again at the next pass");
                    break;
                }
            }
        }
    }
    (recorded, more)
}

/// Records `schedule`'s tick at `tick_us` (a trigger by hand when `manual`) with its
/// job, stored for the scheduler to publish. `Some(id)` when this call recorded it, `None`
/// when the tick was recorded already (by another replica).
pub async fn fire(
    state: &AppState,
    schedule: &Schedule,
    tick_us: i64,
    manual: bool,
) -> Result<Option<Uuid>, ApiError> {
    let request = JobRequest {
        kind: schedule.kind.clone(),
        payload: schedule.payload.clone(),
        key: None,
        delay_ms: None,
        callback_url: None,
        run_at: None,
        priority: None,
    };
    let mut job = request.into_job(&state.kinds)?;
    job.id = if manual {
        schedule.trigger_id(tick_us)
    } else {
        schedule.job_id(tick_us)
    };
    let recorded = state
        .storage
        .record_tick(&schedule.name, tick_us, manual, &job)
        .await?;
    if recorded {
        // Stored, it is accepted, like a job a client scheduled for later.
        state.record_accepted(std::slice::from_ref(&job), Duration::ZERO);
        metrics::counter!(surge_common::metrics::SCHEDULE_JOBS, "schedule" => schedule.name.clone(), "trigger" => if manual { "manual" } else { "tick" }).increment(1);
        tracing::debug!(schedule = %schedule.name, tick_us, job_id = %job.id, manual, "tick recorded");
    }
    Ok(recorded.then_some(job.id))
}

/// Deletes tick rows no replica needs any more (see the module docs).
async fn prune(state: &AppState) {
    let now = now_micros();
    for schedule in state.schedules.iter() {
        let keep = ON_TIME + schedule.catch_up.unwrap_or_default() + PRUNE_MARGIN;
        if let Err(e) = state
            .storage
            .prune_ticks(&schedule.name, now.saturating_sub(micros(keep)))
            .await
        {
            tracing::warn!(schedule = %schedule.name, error = %e, "pruning old ticks failed; trying again later");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_second(catch_up: Option<&str>) -> Schedule {
        let mut text = "[schedules.s]\ncron = \"@every 1s\"\nkind = \"echo\"".to_owned();
        if let Some(window) = catch_up {
            text.push_str(&format!("\ncatch_up = {window:?}"));
        }
        surge_common::kinds::file::SurgeConfig::parse(&text, &|_| None)
            .unwrap()
            .schedules
            .remove(0)
    }

    const NOW: i64 = 1_800_000_000_000_000;
    const SECOND: i64 = 1_000_000;

    #[test]
    fn missed_ticks_are_skipped_without_catch_up_and_run_within_it() {
        let down_since = Some(NOW - 600 * SECOND);
        let cursor = ScheduleCursor {
            last_tick_us: down_since,
            ..Default::default()
        };
        // No catch_up: only the ticks of the last ON_TIME.
        let skip = every_second(None);
        assert_eq!(due_after(&skip, &cursor, NOW), NOW - 3 * SECOND);
        // catch_up = 1h: every tick since the last one.
        let catch = every_second(Some("1h"));
        assert_eq!(due_after(&catch, &cursor, NOW), NOW - 600 * SECOND);
        // catch_up = 2m: the last two minutes (and the on-time slack).
        let short = every_second(Some("2m"));
        assert_eq!(due_after(&short, &cursor, NOW), NOW - 123 * SECOND);
    }

    #[test]
    fn a_new_schedule_starts_now_and_a_resumed_one_skips_its_pause() {
        let catch = every_second(Some("1h"));
        assert_eq!(
            due_after(&catch, &ScheduleCursor::default(), NOW),
            NOW - 3 * SECOND
        );
        let resumed = ScheduleCursor {
            last_tick_us: Some(NOW - 600 * SECOND),
            paused: false,
            changed_at_us: Some(NOW - 10 * SECOND),
        };
        assert_eq!(due_after(&catch, &resumed, NOW), NOW - 10 * SECOND);
    }
}
