//! How many jobs of each kind have each status, with each HTTP kind's flow control: the
//! dashboard's per-kind table (`GET /api/dashboard/kinds`).
//!
//! Counting reads every row's index entry (about 1.5 s at a million results, see
//! `/work/notes/ops.md`), so one count serves every viewer for [`KINDS_REFRESH`], and
//! concurrent viewers wait for the same count rather than each starting one
//! ([`KindCountsCache`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use surge_common::storage::listing::StatusFilter;
use surge_common::storage::{Storage, StorageError};
use tokio::sync::Mutex;

use crate::observed::MAX_WORKERS;

/// How long one count serves every viewer.
pub const KINDS_REFRESH: Duration = Duration::from_secs(5);

/// The latest count and when it was taken. One per ingress state.
#[derive(Debug, Default)]
pub struct KindCountsCache {
    latest: Mutex<Option<(Instant, KindCounts)>>,
}

impl KindCountsCache {
    /// Jobs per kind and status, counted at most once per [`KINDS_REFRESH`] (concurrent
    /// callers wait for the same count), with each HTTP kind's flow control as the live
    /// workers report it now.
    pub async fn current(&self, storage: &Storage) -> Result<KindCounts, StorageError> {
        let mut latest = self.latest.lock().await;
        let fresh = latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() < KINDS_REFRESH)
            .map(|(_, counts)| counts.clone());
        let counts = match fresh {
            Some(counts) => counts,
            None => {
                let mut rows: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
                for count in storage.counts_by_kind().await? {
                    *rows
                        .entry(count.kind)
                        .or_default()
                        .entry(count.status)
                        .or_default() += count.count;
                }
                let counts = KindCounts {
                    statuses: StatusFilter::NAMES
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect(),
                    kinds: rows
                        .into_iter()
                        .map(|(kind, counts)| KindRow {
                            kind,
                            counts,
                            flow: None,
                        })
                        .collect(),
                };
                *latest = Some((Instant::now(), counts.clone()));
                counts
            }
        };
        drop(latest);
        // Flow state is live (one indexed read of the heartbeats), not cached with the
        // counts.
        let since = surge_common::clock::now_micros()
            - i64::try_from(FLOW_SEEN_WITHIN.as_micros()).unwrap_or(i64::MAX);
        let beats = storage.heartbeats(since, MAX_WORKERS).await?;
        let mut counts = counts;
        let mut flows = flows(&beats);
        for row in &mut counts.kinds {
            row.flow = flows.remove(&row.kind);
        }
        // HTTP kinds that have no job yet still show their flow control.
        for (kind, flow) in flows {
            counts.kinds.push(KindRow {
                kind,
                counts: BTreeMap::new(),
                flow: Some(flow),
            });
        }
        counts.kinds.sort_by(|a, b| a.kind.cmp(&b.kind));
        Ok(counts)
    }
}

/// The JSON of `GET /api/dashboard/kinds`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KindCounts {
    /// Every status, in lifecycle order (the table's columns).
    pub statuses: Vec<String>,
    /// One row per kind that has jobs, by name.
    pub kinds: Vec<KindRow>,
}

/// One kind's jobs by status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KindRow {
    /// The kind.
    pub kind: String,
    /// Jobs per status (statuses with none are left out).
    pub counts: BTreeMap<String, u64>,
    /// For an HTTP kind: its flow control, summed over the workers that reported in the
    /// last [`FLOW_SEEN_WITHIN`] (their heartbeats).
    pub flow: Option<KindFlow>,
}

/// An HTTP kind's flow control across the live workers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KindFlow {
    /// The configured cap (requests in flight across all replicas).
    pub concurrency: u64,
    /// Requests in flight now, all workers together.
    pub in_flight: u64,
    /// The lowest and highest adaptive limit among the workers.
    pub limit_min: f64,
    /// See `limit_min`.
    pub limit_max: f64,
    /// Workers whose circuit for this kind is open (or half-open).
    pub breaker_open: u64,
    /// Workers reporting on this kind.
    pub workers: u64,
}

/// Heartbeats older than this do not count in [`KindFlow`] (a worker beats every second).
pub const FLOW_SEEN_WITHIN: Duration = Duration::from_secs(5);

/// Sums the per-kind flow state of `heartbeats` (see `surge_common::storage::heartbeat`).
pub fn flows(
    heartbeats: &[surge_common::storage::heartbeat::Heartbeat],
) -> BTreeMap<String, KindFlow> {
    let mut flows: BTreeMap<String, KindFlow> = BTreeMap::new();
    for beat in heartbeats {
        let Some(kinds) = beat.kinds.as_object() else {
            continue;
        };
        for (kind, state) in kinds {
            let limit = state["limit"].as_f64().unwrap_or(0.0);
            let flow = flows.entry(kind.clone()).or_default();
            if flow.workers == 0 {
                flow.limit_min = limit;
                flow.limit_max = limit;
            }
            flow.workers += 1;
            flow.concurrency = flow
                .concurrency
                .max(state["concurrency"].as_u64().unwrap_or(0));
            flow.in_flight += state["in_flight"].as_u64().unwrap_or(0);
            flow.limit_min = flow.limit_min.min(limit);
            flow.limit_max = flow.limit_max.max(limit);
            flow.breaker_open += u64::from(state["breaker_open"].as_bool().unwrap_or(false));
        }
    }
    flows
}

#[cfg(test)]
mod tests {
    use super::*;
    use surge_common::storage::heartbeat::Heartbeat;

    fn beat(kinds: serde_json::Value) -> Heartbeat {
        Heartbeat {
            worker_id: "w".into(),
            capacity: 1,
            in_flight: 0,
            succeeded: 0,
            dead: 0,
            started_at_us: 0,
            last_seen_us: 0,
            kinds,
            busy_keys: Vec::new(),
        }
    }

    #[test]
    fn flows_sum_over_workers() {
        let a = serde_json::json!({"api": {"limit": 20.0, "in_flight": 7, "breaker_open": false, "concurrency": 20}});
        let b = serde_json::json!({"api": {"limit": 10.0, "in_flight": 3, "breaker_open": true, "concurrency": 20}});
        let flows = flows(&[beat(a), beat(b), beat(serde_json::Value::Null)]);
        assert_eq!(
            flows["api"],
            KindFlow {
                concurrency: 20,
                in_flight: 10,
                limit_min: 10.0,
                limit_max: 20.0,
                breaker_open: 1,
                workers: 2,
            }
        );
    }
}
