//! Publishes scheduled jobs (`delay_ms` / `run_at`) when they are due.
//!
//! Scheduled jobs wait in the database (`surge_common::storage::schedule`): durable on any
//! broker, and not in the broker's queue where a job due next week would sit in front of
//! jobs due now. Every ingress runs this loop; a due job is claimed by one of them with a
//! lease, published (awaiting the broker's confirm), then forgotten. A failed publish, or
//! an ingress that dies mid-way, leaves the job to be claimed again when its lease ends.

use std::time::Duration;

use surge_common::clock::now_micros;

use crate::state::AppState;

/// Longest sleep between looks at the schedule (a job scheduled by another ingress is
/// seen at most this late).
pub const TICK: Duration = Duration::from_secs(1);
/// How long a claim keeps other schedulers off a job.
const LEASE: Duration = Duration::from_secs(30);
/// Most jobs claimed and published together.
const BATCH: u32 = 200;

/// Runs until `stop` completes.
pub async fn run(state: AppState, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        let published = publish_due(&state).await;
        let pause = if published >= BATCH as usize {
            Duration::ZERO
        } else {
            until_next_due(&state).await
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Claims due jobs, publishes them, forgets them. Returns how many were published.
async fn publish_due(state: &AppState) -> usize {
    let lease_us = i64::try_from(LEASE.as_micros()).unwrap_or(i64::MAX);
    let jobs = match state.storage.claim_due(lease_us, BATCH).await {
        Ok(jobs) if jobs.is_empty() => return 0,
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "reading the schedule failed; trying again shortly");
            return 0;
        }
    };
    let timeout = state.limits.publish_timeout;
    match tokio::time::timeout(timeout, state.broker.publish(&jobs)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "publishing due jobs failed; they are tried again when their claim ends");
            return 0;
        }
        Err(_) => {
            tracing::warn!(jobs = jobs.len(), "the broker did not confirm due jobs in time; they are tried again when their claim ends");
            return 0;
        }
    }
    let ids: Vec<_> = jobs.iter().map(|job| job.id).collect();
    if let Err(e) = state.storage.unschedule(&ids).await {
        // Published: a second publish after the lease is harmless (results are keyed by
        // job id), so this is only noise.
        tracing::warn!(error = %e, "published due jobs could not be removed from the schedule");
    }
    tracing::debug!(jobs = jobs.len(), "published due jobs");
    jobs.len()
}

/// How long to sleep: until the next job is due, at most [`TICK`].
async fn until_next_due(state: &AppState) -> Duration {
    match state.storage.next_due().await {
        Ok(Some(due)) => {
            let wait_us = (due - now_micros()).max(0);
            Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)).min(TICK)
        }
        _ => TICK,
    }
}
