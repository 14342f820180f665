//! The autoscaling signal: how many worker replicas the backlog calls for.
//!
//! Every few seconds a worker measures its own drain rate (jobs settled per second), reads
//! the broker backlog, and publishes `surge_desired_workers`: the replicas that would drain
//! the backlog plus the jobs in flight within the target time at that rate, never fewer
//! than 1 and never more than `max_replicas` (for Kafka, the partition count: replicas
//! beyond it get no partition and sit idle). An HPA on this gauge, or KEDA on the queue
//! length / lag directly (see `deploy/`), scales the Deployment.

use std::time::Duration;

/// Replicas needed to drain `backlog + in_flight` jobs within `target` when one replica
/// settles `rate_per_replica` jobs per second. Before any rate is measured, assumes one
/// replica clears `capacity` jobs per `target`.
pub fn desired_replicas(
    backlog: u64,
    in_flight: u64,
    rate_per_replica: f64,
    capacity: u16,
    target: Duration,
    max_replicas: Option<u32>,
) -> u32 {
    let work = (backlog + in_flight) as f64;
    let per_replica = if rate_per_replica > 0.0 {
        rate_per_replica * target.as_secs_f64()
    } else {
        f64::from(capacity.max(1))
    };
    let wanted = (work / per_replica.max(f64::EPSILON)).ceil();
    let wanted = if wanted.is_finite() && wanted >= 1.0 {
        wanted.min(f64::from(u32::MAX)) as u32
    } else {
        1
    };
    max_replicas.map_or(wanted, |max| wanted.min(max.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_secs(30);

    #[test]
    fn scales_with_backlog_over_drain_rate() {
        // 10 jobs/s per replica → 300 per replica within 30 s.
        assert_eq!(desired_replicas(0, 0, 10.0, 50, TARGET, None), 1);
        assert_eq!(desired_replicas(300, 0, 10.0, 50, TARGET, None), 1);
        assert_eq!(desired_replicas(301, 0, 10.0, 50, TARGET, None), 2);
        assert_eq!(desired_replicas(2900, 100, 10.0, 50, TARGET, None), 10);
    }

    #[test]
    fn respects_the_partition_cap_and_guesses_before_measuring() {
        assert_eq!(desired_replicas(100_000, 0, 10.0, 50, TARGET, Some(6)), 6);
        assert_eq!(desired_replicas(400, 0, 0.0, 200, TARGET, None), 2);
        assert_eq!(
            desired_replicas(u64::MAX / 2, 0, 0.0, 1, TARGET, Some(0)),
            1
        );
    }
}
