//! Runs the pruner ([`surge_common::storage::retention`]) so the database stays bounded.
//!
//! Every ingress runs this loop; a pass runs only in the one holding the `retention` lease
//! (a row in `maintenance_leases`), so replicas never prune the same rows at once. A pass
//! deletes at most [`PASS_LIMIT`] rows of each kind; when it hits that limit the next pass
//! follows after [`CATCH_UP_PAUSE`], else after [`pass_interval`]. The lease holder also
//! publishes the age of the oldest row per final status, so a stuck pruner shows on a
//! dashboard as an age growing past its window, and the stored jobs per state
//! (`surge_storage_jobs`), counted once per pass rather than by every scrape.

use std::time::Duration;

use surge_common::clock::{micros, now_micros};
use surge_common::metrics as m;
use surge_common::storage::listing::StatusFilter;
use surge_common::storage::retention::{PruneReport, RetentionPolicy};
use surge_common::storage::Storage;

/// Most rows of each kind deleted by one pass (Oban's pruner takes 10,000 too): a pass is a
/// few short statements, never a long transaction.
pub const PASS_LIMIT: u32 = 10_000;
/// The pause before the next pass when one hit [`PASS_LIMIT`] (a backlog to work off).
pub const CATCH_UP_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause between passes.
pub const MAX_INTERVAL: Duration = Duration::from_secs(30);
/// How far behind the pass's clock the results count stops (`result_counts`): rows that
/// finished later are counted at each read, so a result committed a while after its handler
/// finished is not missed.
const COUNT_MARK_AGE: Duration = Duration::from_secs(60);
/// Name of the lease in `maintenance_leases`.
const LEASE: &str = "retention";

/// How often passes run under `policy`: twice per shortest window, between 1 s and
/// [`MAX_INTERVAL`] (so a 1-minute window is held to within about 30 s).
pub fn pass_interval(policy: &RetentionPolicy) -> Duration {
    [
        policy.succeeded,
        policy.dead,
        policy.cancelled,
        policy.idempotency,
    ]
    .into_iter()
    .flatten()
    .map(|w| w / 2)
    .min()
    .unwrap_or(MAX_INTERVAL)
    .clamp(CATCH_UP_PAUSE, MAX_INTERVAL)
}

/// How long one holder keeps the lease: several intervals, so a live holder renews it long
/// before it ends, and a dead one's passes are taken over within a few.
fn lease_length(interval: Duration) -> Duration {
    interval * 3 + Duration::from_secs(10)
}

/// Prunes under `policy` until `stop` completes; `holder` names this process in the lease.
pub async fn run(
    storage: Storage,
    policy: RetentionPolicy,
    holder: String,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let interval = pass_interval(&policy);
    tracing::info!(?policy, ?interval, "retention: pruning finished jobs");
    loop {
        let pause = match pass(&storage, &policy, &holder, interval).await {
            Some(report) if report.hit(PASS_LIMIT) => CATCH_UP_PAUSE,
            _ => interval,
        };
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    if let Err(e) = storage.release_lease(LEASE, &holder).await {
        tracing::debug!(error = %e, "retention: releasing the lease failed");
    }
}

/// One pass if this process holds the lease; `None` when another does or the database
/// failed (logged; the next pass tries again).
async fn pass(
    storage: &Storage,
    policy: &RetentionPolicy,
    holder: &str,
    interval: Duration,
) -> Option<PruneReport> {
    match storage
        .try_lease(LEASE, holder, lease_length(interval))
        .await
    {
        Ok(true) => {}
        Ok(false) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "retention: taking the lease failed");
            return None;
        }
    }
    let now = now_micros();
    let report = match storage.prune(policy, now, PASS_LIMIT).await {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(error = %e, "retention: pruning failed; trying again next pass");
            return None;
        }
    };
    for (what, rows) in report.by_label() {
        if rows > 0 {
            metrics::counter!(m::PRUNED_ROWS, "what" => what).increment(rows);
        }
    }
    if report != PruneReport::default() {
        tracing::info!(?report, "retention: pruned");
    }
    match storage.oldest_results().await {
        Ok(oldest) => {
            for status in ["succeeded", "dead", "cancelled"] {
                let age = oldest
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map_or(0.0, |(_, at)| (now - at).max(0) as f64 / 1e6);
                metrics::gauge!(m::OLDEST_RESULT_SECONDS, "status" => status).set(age);
            }
        }
        Err(e) => tracing::debug!(error = %e, "retention: reading the oldest rows failed"),
    }
    if let Err(e) = storage
        .count_results_below(now - micros(COUNT_MARK_AGE))
        .await
    {
        tracing::debug!(error = %e, "retention: counting the stored results failed");
    }
    match storage.rows_per_state().await {
        Ok(counts) => {
            // Every state the API names, each set (0 when none is stored).
            for state in StatusFilter::NAMES {
                let rows = counts
                    .iter()
                    .filter(|(s, _)| s == state)
                    .map(|(_, n)| *n)
                    .sum::<u64>();
                metrics::gauge!(m::STORED_JOBS, "state" => state).set(rows as f64);
            }
        }
        Err(e) => tracing::debug!(error = %e, "retention: counting the rows per state failed"),
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_run_twice_per_shortest_window_within_bounds() {
        let minute = Duration::from_secs(60);
        let policy = RetentionPolicy {
            succeeded: Some(minute),
            dead: None,
            cancelled: Some(minute * 60),
            idempotency: None,
        };
        assert_eq!(pass_interval(&policy), Duration::from_secs(30));
        let tiny = RetentionPolicy {
            succeeded: Some(Duration::from_secs(1)),
            ..policy
        };
        assert_eq!(pass_interval(&tiny), CATCH_UP_PAUSE);
        assert_eq!(pass_interval(&RetentionPolicy::default()), MAX_INTERVAL);
        let forever = RetentionPolicy {
            succeeded: None,
            dead: None,
            cancelled: None,
            idempotency: None,
        };
        assert_eq!(pass_interval(&forever), MAX_INTERVAL);
    }
}
