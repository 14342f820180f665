//! Scenario 1: `n` concurrent POSTs of a sleep job against a capacity, on fresh processes;
//! the promises (all accepted, never more than the capacity in flight, every accepted job
//! stored once) and a timeline of backlog and in flight from the stored start/finish times.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use super::{drain, sleep_body, with_deployment, Sizes, WARM_UP};
use crate::burst::ideal_drain_for;
use crate::db::Row;
use crate::deploy::{Backend, Cost, Env, Snapshot, Spec};
use crate::http::{self, Pool};
use crate::load::{self, LoadResult};
use crate::report::BurstReport;
use crate::results::BurstRow;

/// Scenario 1 on `backend`.
pub async fn burst(env: &Env, sizes: &Sizes, backend: Backend) -> anyhow::Result<BurstRow> {
    let spec = Spec {
        backend,
        label: format!("burst-{}", backend.name()),
        workers: 1,
        capacity: sizes.burst_capacity,
    };
    with_deployment(env, spec, async |dep| {
        dep.warm_up(WARM_UP).await?;
        let n = sizes.burst_jobs;
        let pool = Pool::new(dep.address);
        pool.prewarm(n).await.context("pre-warming connections")?;
        let request = http::post_json("/jobs", &sleep_body(sizes.burst_job_ms));
        dep.reset_peaks();
        let before = dep.snapshot();
        let load = load::burst(&pool, &request, n).await;
        dep.accepted_total += load.accepted;
        let ideal = ideal_drain_for(n, sizes.burst_capacity, sizes.burst_job_ms);
        drain(
            &dep.db,
            dep.accepted_total,
            ideal * 5 + Duration::from_secs(60),
            &format!("{} burst of {n}", backend.name()),
        )
        .await?;
        let after = dep.snapshot();
        let rows = dep.db.rows_since(load.start_us).await?;
        Ok(burst_row(
            backend, sizes, &load, &rows, ideal, &before, &after,
        ))
    })
    .await
}

fn burst_row(
    backend: Backend,
    sizes: &Sizes,
    load: &LoadResult,
    rows: &[Row],
    ideal: Duration,
    before: &Snapshot,
    after: &Snapshot,
) -> BurstRow {
    let ids: HashSet<Uuid> = load.jobs.iter().map(|j| j.id).collect();
    let mine: Vec<&Row> = rows.iter().filter(|r| ids.contains(&r.id)).collect();
    let t0 = load.start_us;
    let last = mine
        .iter()
        .map(|r| r.committed_us.unwrap_or(r.finished_us))
        .max()
        .unwrap_or(t0);
    let peak = peak_overlap(mine.iter().map(|r| (r.started_us, r.finished_us)));
    let q = |p: f64| Duration::from_micros(load.latency.value_at_quantile(p));
    let report = BurstReport {
        broker: backend.name().to_owned(),
        jobs: sizes.burst_jobs,
        capacity: sizes.burst_capacity,
        job_ms: sizes.burst_job_ms,
        kind: "sleep".to_owned(),
        accepted: load.accepted as usize,
        rejected: load
            .rejected
            .iter()
            .map(|(s, n)| (*s, *n as usize))
            .collect(),
        failed: load.failed as usize,
        accept_p50: q(0.5),
        accept_p99: q(0.99),
        accept_max: Duration::from_micros(load.latency.max()),
        burst_sent: load.elapsed,
        peak_in_flight: peak,
        peak_in_flight_gauge: peak,
        drain: Duration::from_micros(u64::try_from(last - t0).unwrap_or(0)),
        ideal,
        persisted: mine.len(),
        succeeded: mine.iter().filter(|r| r.status == "succeeded").count(),
        lost: (load.accepted as usize).saturating_sub(mine.len()),
        duplicates: mine
            .iter()
            .map(|r| u64::try_from(r.deliveries - 1).unwrap_or(0))
            .sum(),
    };
    let timeline = timeline(load, &mine, t0, last);
    BurstRow {
        backend: backend.name().to_owned(),
        jobs: report.jobs,
        capacity: report.capacity,
        job_ms: report.job_ms,
        accepted: report.accepted,
        not_accepted: report.not_accepted(),
        accept_p50_ms: report.accept_p50.as_secs_f64() * 1000.0,
        accept_p99_ms: report.accept_p99.as_secs_f64() * 1000.0,
        accept_max_ms: report.accept_max.as_secs_f64() * 1000.0,
        peak_in_flight: report.peak_in_flight,
        drain_ms: report.drain.as_secs_f64() * 1000.0,
        ideal_ms: ideal.as_secs_f64() * 1000.0,
        persisted: report.persisted,
        lost: report.lost,
        duplicates: report.duplicates,
        connections_opened: load.connections_opened,
        cost: Cost::between(before, after, load.accepted),
        violations: report.violations(),
        timeline,
    }
}

/// The most intervals `[start, end)` overlapping at any instant.
pub fn peak_overlap(intervals: impl Iterator<Item = (i64, i64)>) -> u64 {
    let mut events: Vec<(i64, i64)> = intervals.flat_map(|(s, e)| [(s, 1), (e, -1)]).collect();
    events.sort_unstable();
    let (mut now, mut peak) = (0i64, 0i64);
    for (_, delta) in events {
        now += delta;
        peak = peak.max(now);
    }
    u64::try_from(peak).unwrap_or(0)
}

/// `(ms since t0, backlog, in flight)` every 10 ms: backlog = accepted but not started,
/// in flight = started but not finished.
fn timeline(load: &LoadResult, rows: &[&Row], t0: i64, end: i64) -> Vec<(f64, u64, u64)> {
    let mut accepted: Vec<i64> = load.jobs.iter().map(|j| j.accepted_us).collect();
    let mut started: Vec<i64> = rows.iter().map(|r| r.started_us).collect();
    let mut finished: Vec<i64> = rows.iter().map(|r| r.finished_us).collect();
    accepted.sort_unstable();
    started.sort_unstable();
    finished.sort_unstable();
    let upto = |v: &[i64], t: i64| v.partition_point(|x| *x <= t) as u64;
    let mut out = Vec::new();
    let mut t = t0;
    while t <= end + 20_000 {
        let (a, s, f) = (upto(&accepted, t), upto(&started, t), upto(&finished, t));
        out.push((
            (t - t0) as f64 / 1000.0,
            a.saturating_sub(s),
            s.saturating_sub(f),
        ));
        t += 10_000;
    }
    out
}
