//! The burst scenario: `jobs` concurrent POSTs of one job (a `sleep` by default, or any
//! kind, e.g. an HTTP kind from a configuration file) against `capacity`.
//!
//! Accept latency is measured per request, from just before it is sent to its response.
//! Drain time runs from the first send to the last result's commit. Results are checked
//! in the database, by the ids the ingress returned: persisted, lost (accepted but no row),
//! duplicates (rows written again by redeliveries), and the peak number of jobs whose
//! handler intervals overlapped — measured from the stored start/finish timestamps, so it
//! holds across processes too.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use surge_common::broker::Broker;
use surge_common::clock::now_micros;
use surge_common::storage::{JobResult, JobStatus, Storage};
use uuid::Uuid;

use crate::report::BurstReport;
use crate::stack::Stack;

/// What to fire.
#[derive(Debug, Clone)]
pub struct BurstConfig {
    /// Concurrent POSTs.
    pub jobs: usize,
    /// Jobs in flight at most, across all workers.
    pub capacity: u16,
    /// Workers sharing the capacity on a real broker (the memory broker runs the
    /// ingress's embedded worker, as `surge-producer` does).
    pub workers: u16,
    /// Each job takes this long (the `sleep` payload, or the HTTP target's work).
    pub job_ms: u64,
    /// The kind POSTed.
    pub kind: String,
    /// Its payload.
    pub payload: Value,
    /// The configuration file (`--config`) given to the ingress and every worker.
    pub config_file: Option<PathBuf>,
    /// Give up waiting for the drain after this long.
    pub drain_timeout: Duration,
    /// Print a progress line to stderr while running.
    pub progress: bool,
}

impl BurstConfig {
    /// A burst of `sleep` jobs of `job_ms` each, with no configuration file.
    pub fn sleep(
        jobs: usize,
        capacity: u16,
        workers: u16,
        job_ms: u64,
        drain_timeout: Duration,
    ) -> BurstConfig {
        BurstConfig {
            jobs,
            capacity,
            workers,
            job_ms,
            kind: "sleep".to_owned(),
            payload: json!({ "ms": job_ms }),
            config_file: None,
            drain_timeout,
            progress: false,
        }
    }
}

/// The outcome of one POST.
enum Sent {
    Accepted(Uuid, Duration),
    Rejected(u16, Duration),
    Failed(String),
}

/// Starts an in-process ingress and workers on `broker` and `storage`, fires the burst,
/// waits for the drain and builds the report.
pub async fn run(
    broker: Arc<dyn Broker>,
    storage: Storage,
    config: &BurstConfig,
) -> anyhow::Result<BurstReport> {
    let broker_name = broker.name();
    let stack = Stack::start(
        broker,
        storage.clone(),
        config.capacity,
        config.workers,
        config.config_file.as_deref(),
    )
    .await
    .context("starting the ingress and workers")?;
    let url = format!("http://{}/jobs", stack.address);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(config.jobs)
        .timeout(Duration::from_secs(30))
        .build()?;
    let body = json!({ "kind": config.kind, "payload": config.payload });

    let started = Instant::now();
    let started_us = now_micros();
    let sends = (0..config.jobs).map(|_| {
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        tokio::spawn(async move { send(&client, &url, &body).await })
    });
    let sending = futures::future::join_all(sends);
    tokio::pin!(sending);

    // Progress while the burst is sent and drained.
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    let outcomes = loop {
        tokio::select! {
            done = &mut sending => break done,
            _ = ticker.tick() => show(config, &stack, None, started),
        }
    };
    let burst_sent = started.elapsed();
    let mut accepted = Vec::new();
    let mut rejected: BTreeMap<u16, usize> = BTreeMap::new();
    let mut failed = 0usize;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for outcome in outcomes {
        match outcome.context("a send task panicked")? {
            Sent::Accepted(id, took) => {
                accepted.push(id);
                latency.saturating_record(took.as_micros() as u64);
            }
            Sent::Rejected(status, took) => {
                *rejected.entry(status).or_default() += 1;
                latency.saturating_record(took.as_micros() as u64);
            }
            Sent::Failed(error) => {
                failed += 1;
                tracing::warn!(%error, "request failed");
            }
        }
    }

    // Wait until every accepted job has a stored result (or the timeout).
    let deadline = Instant::now() + config.drain_timeout;
    let expected = accepted.len() as u64;
    loop {
        let done = stack.worker_stats();
        show(config, &stack, Some(accepted.len()), started);
        // Repeated result writes (redeliveries) do not count: each job once.
        if done.succeeded + done.dead >= expected || Instant::now() > deadline {
            break;
        }
        ticker.tick().await;
    }
    if config.progress {
        eprintln!();
    }
    let stats = stack.worker_stats();
    stack.stop().await;

    let rows = storage
        .get_many(&accepted)
        .await
        .context("reading results")?;
    let last_commit_us = rows
        .iter()
        .map(|r| r.finished_at_us)
        .max()
        .unwrap_or(started_us);
    Ok(BurstReport {
        broker: broker_name.to_owned(),
        jobs: config.jobs,
        capacity: config.capacity,
        job_ms: config.job_ms,
        kind: config.kind.clone(),
        accepted: accepted.len(),
        rejected,
        failed,
        accept_p50: Duration::from_micros(latency.value_at_quantile(0.50)),
        accept_p99: Duration::from_micros(latency.value_at_quantile(0.99)),
        accept_max: Duration::from_micros(latency.max()),
        burst_sent,
        peak_in_flight: peak_overlap(&rows),
        peak_in_flight_gauge: stats.peak_in_flight,
        drain: Duration::from_micros(u64::try_from(last_commit_us - started_us).unwrap_or(0)),
        ideal: ideal_drain(config),
        persisted: rows.len(),
        succeeded: rows
            .iter()
            .filter(|r| r.status == JobStatus::Succeeded)
            .count(),
        lost: accepted.len().saturating_sub(rows.len()),
        duplicates: rows
            .iter()
            .map(|r| u64::from(r.deliveries.saturating_sub(1)))
            .sum(),
    })
}

async fn send(client: &reqwest::Client, url: &str, body: &serde_json::Value) -> Sent {
    let sent_at = Instant::now();
    let response = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => return Sent::Failed(e.to_string()),
    };
    let took = sent_at.elapsed();
    let status = response.status().as_u16();
    if status != 202 {
        return Sent::Rejected(status, took);
    }
    match response.json::<serde_json::Value>().await {
        Ok(body) => match body["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
            Some(id) => Sent::Accepted(id, took),
            None => Sent::Failed(format!("202 without a job id: {body}")),
        },
        Err(e) => Sent::Failed(e.to_string()),
    }
}

/// `ceil(jobs / capacity) × job duration`: the drain time of a perfect system.
pub fn ideal_drain(config: &BurstConfig) -> Duration {
    ideal_drain_for(config.jobs, config.capacity, config.job_ms)
}

/// `ceil(jobs / capacity) × job_ms`.
pub fn ideal_drain_for(jobs: usize, capacity: u16, job_ms: u64) -> Duration {
    let waves = jobs.div_ceil(usize::from(capacity.max(1))) as u64;
    Duration::from_millis(waves * job_ms)
}

/// The most handler intervals `[started, finished)` that overlap at any instant.
pub fn peak_overlap(rows: &[JobResult]) -> u64 {
    let mut events: Vec<(i64, i64)> = rows
        .iter()
        .flat_map(|r| [(r.started_at_us, 1), (r.finished_at_us, -1)])
        .collect();
    // At equal times, finishes (-1) sort before starts (+1): touching intervals don't overlap.
    events.sort_unstable();
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    u64::try_from(peak).unwrap_or(0)
}

fn show(config: &BurstConfig, stack: &Stack, accepted: Option<usize>, started: Instant) {
    if !config.progress {
        return;
    }
    let stats = stack.worker_stats();
    let accepted = accepted.map_or_else(|| "sending".to_owned(), |n| n.to_string());
    eprint!(
        "\r  {:>6.2}s  accepted {accepted:>7}/{}  in flight {:>4}/{}  done {:>6}   ",
        started.elapsed().as_secs_f64(),
        config.jobs,
        stats.in_flight,
        config.capacity,
        stats.succeeded + stats.dead,
    );
    let _ = std::io::stderr().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(start: i64, end: i64) -> JobResult {
        JobResult {
            job_id: Uuid::new_v4(),
            kind: "sleep".into(),
            status: JobStatus::Succeeded,
            result: None,
            error: None,
            attempts: 1,
            deliveries: 1,
            worker: "w".into(),
            enqueued_at_us: 0,
            started_at_us: start,
            finished_at_us: end,
            job: None,
        }
    }

    #[test]
    fn overlap_counts_simultaneous_intervals() {
        assert_eq!(peak_overlap(&[]), 0);
        assert_eq!(peak_overlap(&[row(0, 10), row(5, 15), row(10, 20)]), 2);
        assert_eq!(peak_overlap(&[row(0, 10), row(1, 9), row(2, 8)]), 3);
    }

    #[test]
    fn ideal_is_waves_times_duration() {
        let config = BurstConfig::sleep(400, 200, 1, 1000, Duration::from_secs(1));
        assert_eq!(ideal_drain(&config), Duration::from_secs(2));
        let odd = BurstConfig {
            jobs: 401,
            ..config
        };
        assert_eq!(ideal_drain(&odd), Duration::from_secs(3));
    }
}
