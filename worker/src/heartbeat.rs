//! The worker's heartbeat: once a second it upserts this worker's row in
//! `worker_heartbeats` (capacity, in flight, succeeded, dead, last seen) from
//! [`WorkerStats::snapshot`], with the keys it started most jobs of lately, so the ingress
//! dashboard can list the workers and the busiest keys of every process. A failing database is logged once per outage and retried on the next tick; it
//! never stops the worker.

use std::sync::Arc;
use std::time::Duration;

use surge_common::clock::now_micros;
use surge_common::storage::heartbeat::Heartbeat;
use surge_common::storage::Storage;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::stats::WorkerStats;

/// How often a worker reports itself.
pub const EVERY: Duration = Duration::from_secs(1);

/// Heartbeats last seen longer ago than this are deleted when a worker starts.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The running heartbeat task; stops it when stopped or dropped (so a worker that returns
/// early never leaves a heartbeat claiming it is up).
#[derive(Debug)]
pub struct Beating(JoinHandle<()>);

impl Beating {
    /// Stops the heartbeats. The row stays, and shows the worker stale once it is old.
    pub fn stop(self) {}
}

impl Drop for Beating {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts [`beat`] on the current Tokio runtime.
pub fn spawn(
    storage: Storage,
    stats: Arc<WorkerStats>,
    worker_id: String,
    capacity: u16,
    kinds: surge_common::kinds::KindRegistry,
) -> Beating {
    Beating(tokio::spawn(beat(
        storage, stats, worker_id, capacity, kinds,
    )))
}

/// Sends a heartbeat now and every [`EVERY`], forever (see [`spawn`]).
pub async fn beat(
    storage: Storage,
    stats: Arc<WorkerStats>,
    worker_id: String,
    capacity: u16,
    kinds: surge_common::kinds::KindRegistry,
) {
    let started_at_us = now_micros();
    let forget_before = started_at_us.saturating_sub(micros(FORGET_AFTER));
    if let Err(e) = storage.prune_heartbeats(forget_before).await {
        tracing::debug!(error = %e, "could not prune old heartbeats");
    }
    let mut ticker = tokio::time::interval(EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        let now = stats.snapshot();
        let heartbeat = Heartbeat {
            worker_id: worker_id.clone(),
            capacity: u64::from(capacity),
            in_flight: now.in_flight,
            succeeded: now.succeeded,
            dead: now.dead,
            started_at_us,
            last_seen_us: now_micros(),
            kinds: kinds.flows(),
            busy_keys: stats.keys().rotate(),
        };
        let sent = tokio::time::timeout(5 * EVERY, storage.upsert_heartbeat(&heartbeat)).await;
        match sent {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!("heartbeats stored again");
                }
                failing = false;
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "heartbeat not stored; retrying every second");
            }
            Err(_) if !failing => {
                failing = true;
                tracing::warn!("heartbeat timed out; retrying every second");
            }
            _ => {}
        }
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
