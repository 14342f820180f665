//! Publishes scheduled jobs (`delay_ms` / `run_at`) when they are due.
//!
//! Scheduled jobs wait in the database (`surge_common::storage::schedule`): durable on any
//! broker, and not in the broker's queue where a job due next week would sit in front of
//! jobs due now. Every ingress runs this loop; a due job is claimed by one of them with a
//! lease, published (awaiting the broker's confirm), then forgotten. A failed publish, or
//! an ingress that dies mid-way, leaves the job to be claimed again when its lease ends.
//!
//! The lease outlasts the whole publish-then-forget sequence ([`lease`]): the publish is
//! bounded by the publish timeout, and forgetting is tried for [`MARK_WINDOW`] after it.
//! So while this ingress lives and reaches its database, no other scheduler publishes the
//! job again. A job is published twice only when the ingress dies between the broker's
//! confirm and the database write, or cannot write for the whole window; the repeat has
//! the same job id (one result row), and is not even published once a worker has started
//! the first copy (see `surge_common::storage::schedule`).

use std::time::Duration;

use surge_common::clock::now_micros;

use crate::state::AppState;

/// Longest sleep between looks at the schedule (a job scheduled by another ingress is
/// seen at most this late).
pub const TICK: Duration = Duration::from_secs(1);
/// How long forgetting published jobs is tried after their publish.
pub const MARK_WINDOW: Duration = Duration::from_secs(30);
/// Slack on top of the publish and the mark, for the claim's own statement and clocks.
const LEASE_SLACK: Duration = Duration::from_secs(10);

/// How long a claim keeps other schedulers off a job: the longest publish
/// (`publish_timeout`), then [`MARK_WINDOW`], with some slack.
pub fn lease(publish_timeout: Duration) -> Duration {
    publish_timeout
        .saturating_add(MARK_WINDOW)
        .saturating_add(LEASE_SLACK)
}
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
pub async fn publish_due(state: &AppState) -> usize {
    use backon::Retryable;
    let timeout = state.limits.publish_timeout;
    let lease_us = i64::try_from(lease(timeout).as_micros()).unwrap_or(i64::MAX);
    let jobs = match state.storage.claim_due(lease_us, BATCH).await {
        Ok(jobs) if jobs.is_empty() => return 0,
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(error = %e, "reading the schedule failed; trying again shortly");
            return 0;
        }
    };
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
        // Published: keep trying to forget them while the claim holds (in the background,
        // so due jobs keep flowing); the mark is safe to repeat.
        tracing::warn!(error = %e, jobs = ids.len(), "published due jobs could not be removed from the schedule; retrying");
        let storage = state.storage.clone();
        tokio::spawn(async move {
            let retried = tokio::time::timeout(
                MARK_WINDOW,
                (|| storage.unschedule(&ids)).retry(surge_common::retry::reconnect(usize::MAX)),
            )
            .await;
            if !matches!(retried, Ok(Ok(()))) {
                tracing::error!(jobs = ?ids, "published due jobs could not be removed from the schedule; unless a worker has started them by then, they are published again when their claim ends (one result row still)");
            }
        });
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
