//! The four scenarios of the benchmark, each run per backend (see `bin/bench.rs`).
//!
//! 1. [`burst`]: `n` concurrent POSTs of a sleep job against a capacity, on fresh
//!    processes; the promises (all accepted, never more than the capacity in flight, every
//!    accepted job stored once) and a timeline of backlog and in-flight from the stored
//!    start/finish times.
//! 2. [`rate`]: open-loop ramp to the highest rate the deployment sustains with a bounded
//!    backlog, then, on fresh processes, latency at 25/50/75/90/100 % of it, lowest load first
//!    (a step past the machine's limit would leave backlog and memory to the lighter ones).
//! 3. [`scaling`]: a backlog of I/O-bound jobs drained by 1, 2, 4 worker processes.
//! 4. Ceilings: [`http_ceiling`] (an axum handler that only answers 202),
//!    [`ingress_ceiling`] (the real ingress with no consumer), [`broker_ceiling`]
//!    (confirmed publish and consume through the `Broker` trait, no HTTP, no database) and
//!    [`db_ceiling`] (the result writer alone: single-row vs batched).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use surge_common::broker::{Broker, ConsumeOptions};
use surge_common::clock::now_micros;
use surge_common::job::{Job, JobKind};
use surge_common::storage::batch::ResultWriter;
use surge_common::storage::{JobResult, JobStatus};
use uuid::Uuid;

use crate::burst::ideal_drain_for;
use crate::db::{BenchDb, Engine, Row};
use crate::deploy::{Backend, Cost, Deployment, Env, Snapshot, Spec};
use crate::http::{self, Pool};
use crate::load::{self, histogram, LoadResult};
use crate::procs::{self, Proc};
use crate::report::BurstReport;
use crate::results::{BurstRow, CeilingRow, RateStep, RateSummary, ScalingRow};

/// How much of everything.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Burst: concurrent POSTs.
    pub burst_jobs: usize,
    /// Burst: capacity (one worker process of this capacity).
    pub burst_capacity: u16,
    /// Burst: job duration.
    pub burst_job_ms: u64,
    /// Rate: first offered rate of the ramp.
    pub ramp_start: f64,
    /// Rate: each ramp step offers this many times the last.
    pub ramp_factor: f64,
    /// Rate: most ramp steps.
    pub ramp_steps: usize,
    /// Rate: bisection steps between the last sustainable and the first failing rate.
    pub bisect_steps: usize,
    /// Rate: duration of a ramp step.
    pub step: Duration,
    /// Rate: duration of a measuring step.
    pub measure: Duration,
    /// Rate: worker capacity.
    pub rate_capacity: u16,
    /// Rate: shares of the max rate to measure, in %.
    pub load_pcts: Vec<u32>,
    /// Scaling: replica counts.
    pub replicas: Vec<u16>,
    /// Scaling: capacity per replica.
    pub scale_capacity: u16,
    /// Scaling: job duration.
    pub scale_job_ms: u64,
    /// Scaling: jobs in the backlog.
    pub scale_jobs: u64,
    /// Ceilings: duration of each measurement.
    pub ceiling: Duration,
    /// Closed-loop clients (HTTP ceilings) and concurrent publishers (broker ceiling).
    pub clients: usize,
    /// Connections opened before an open-loop run.
    pub prewarm: usize,
    /// Longest wait for results after a step.
    pub drain_timeout: Duration,
}

impl Sizes {
    /// The full benchmark.
    pub fn full() -> Sizes {
        Sizes {
            burst_jobs: 400,
            burst_capacity: 200,
            burst_job_ms: 1000,
            ramp_start: 200.0,
            ramp_factor: 1.5,
            ramp_steps: 14,
            bisect_steps: 2,
            step: Duration::from_secs(3),
            measure: Duration::from_secs(5),
            rate_capacity: 200,
            load_pcts: vec![25, 50, 75, 90, 100],
            replicas: vec![1, 2, 4],
            scale_capacity: 25,
            scale_job_ms: 100,
            scale_jobs: 2000,
            ceiling: Duration::from_secs(3),
            clients: 32,
            prewarm: 64,
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// Every scenario with tiny counts: proves the harness, measures nothing.
    pub fn smoke() -> Sizes {
        Sizes {
            burst_jobs: 20,
            burst_capacity: 10,
            burst_job_ms: 100,
            ramp_start: 40.0,
            ramp_factor: 2.0,
            ramp_steps: 2,
            bisect_steps: 0,
            step: Duration::from_millis(400),
            measure: Duration::from_millis(400),
            rate_capacity: 20,
            load_pcts: vec![50, 100],
            replicas: vec![1, 2],
            scale_capacity: 5,
            scale_job_ms: 20,
            scale_jobs: 40,
            ceiling: Duration::from_millis(300),
            clients: 4,
            prewarm: 8,
            drain_timeout: Duration::from_secs(20),
        }
    }
}

const WARM_UP: Duration = Duration::from_secs(90);

fn sleep_body(ms: u64) -> String {
    json!({"kind": "sleep", "payload": {"ms": ms}}).to_string()
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn quantiles_ms(h: &hdrhistogram::Histogram<u64>) -> [f64; 4] {
    if h.is_empty() {
        return [0.0; 4];
    }
    [
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    ]
}

/// Waits until `n` results are stored (progress on stderr), or `timeout`.
async fn drain(db: &BenchDb, n: u64, timeout: Duration, label: &str) -> anyhow::Result<u64> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let count = db.count().await?;
        eprint!(
            "\r    {label}: {:>5.1}s  stored {count:>7}/{n}   ",
            started.elapsed().as_secs_f64()
        );
        let _ = std::io::stderr().flush();
        if count >= n || Instant::now() > deadline {
            eprintln!();
            return Ok(count);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `body` on a fresh deployment and always stops it.
async fn with_deployment<T>(
    env: &Env,
    spec: Spec,
    body: impl AsyncFnOnce(&mut Deployment) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut deployment = Deployment::start(env, &spec).await?;
    let result = body(&mut deployment).await;
    deployment.stop().await;
    result
}

// ---------------------------------------------------------------------------------------
// 1. Burst

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

// ---------------------------------------------------------------------------------------
// 2. Max sustainable rate

/// Scenario 2 on `backend`.
pub async fn rate(env: &Env, sizes: &Sizes, backend: Backend) -> anyhow::Result<RateSummary> {
    let spec = |label: &str| Spec {
        backend,
        label: format!("{label}-{}", backend.name()),
        workers: 1,
        capacity: sizes.rate_capacity,
    };
    let mut steps = Vec::new();
    let max_rate = with_deployment(env, spec("ramp"), async |dep| {
        dep.warm_up(WARM_UP).await?;
        let pool = Pool::new(dep.address);
        pool.prewarm(sizes.prewarm).await?;
        let request = http::post_json("/jobs", &sleep_body(0));
        let (mut good, mut bad) = (0.0f64, None::<f64>);
        let mut offered = sizes.ramp_start;
        for _ in 0..sizes.ramp_steps {
            let step = rate_step(dep, &pool, &request, sizes, offered, "ramp", None).await?;
            let ok = step.sustainable;
            steps.push(step);
            if ok {
                good = offered;
                offered *= sizes.ramp_factor;
            } else {
                bad = Some(offered);
                break;
            }
        }
        if let Some(mut hi) = bad {
            for _ in 0..sizes.bisect_steps {
                let mid = ((good + hi) / 2.0).round();
                let step = rate_step(dep, &pool, &request, sizes, mid, "ramp", None).await?;
                if step.sustainable {
                    good = mid;
                } else {
                    hi = mid;
                }
                steps.push(step);
            }
        }
        Ok(good)
    })
    .await?;
    eprintln!(
        "    {}: max sustainable rate {max_rate:.0} jobs/s",
        backend.name()
    );
    if max_rate > 0.0 {
        let measured = with_deployment(env, spec("measure"), async |dep| {
            dep.warm_up(WARM_UP).await?;
            let pool = Pool::new(dep.address);
            pool.prewarm(sizes.prewarm).await?;
            let request = http::post_json("/jobs", &sleep_body(0));
            let mut measured = Vec::new();
            for pct in &sizes.load_pcts {
                let offered = (max_rate * f64::from(*pct) / 100.0).max(1.0);
                measured.push(
                    rate_step(dep, &pool, &request, sizes, offered, "measure", Some(*pct)).await?,
                );
            }
            Ok(measured)
        })
        .await?;
        steps.extend(measured);
    }
    Ok(RateSummary {
        backend: backend.name().to_owned(),
        max_rate,
        steps,
    })
}

async fn rate_step(
    dep: &mut Deployment,
    pool: &Arc<Pool>,
    request: &http::Request,
    sizes: &Sizes,
    offered: f64,
    phase: &str,
    load_pct: Option<u32>,
) -> anyhow::Result<RateStep> {
    let duration = if phase == "ramp" {
        sizes.step
    } else {
        sizes.measure
    };
    dep.reset_peaks();
    let before = dep.snapshot();
    let label = format!(
        "{} {phase} {offered:.0}/s{}",
        dep.backend.name(),
        load_pct.map_or_else(String::new, |p| format!(" ({p}%)"))
    );
    let load = load::open_loop(pool, request, offered, duration, Some(&label)).await;
    let stored_at_end = dep.db.count().await?;
    dep.accepted_total += load.accepted;
    let backlog_end = dep.accepted_total.saturating_sub(stored_at_end);
    let stored = drain(
        &dep.db,
        dep.accepted_total,
        sizes.drain_timeout,
        "    draining",
    )
    .await?;
    let after = dep.snapshot();
    let rows = dep.db.rows_since(load.start_us).await?;
    let due: HashMap<Uuid, i64> = load.jobs.iter().map(|j| (j.id, j.intended_us)).collect();
    let mut e2e = histogram();
    let mut last_commit = load.start_us;
    let mut done = 0u64;
    for row in &rows {
        if let (Some(intended), Some(committed)) = (due.get(&row.id), row.committed_us) {
            e2e.saturating_record(u64::try_from(committed - intended).unwrap_or(0));
            last_commit = last_commit.max(committed);
            done += 1;
        }
    }
    let completed_rate = done as f64 / ((last_commit - load.start_us) as f64 / 1e6).max(1e-9);
    let late = load.elapsed.saturating_sub(duration);
    let bound = (offered * 0.5).max(f64::from(sizes.rate_capacity)) as u64;
    let sustainable = load.not_accepted() == 0
        && backlog_end <= bound
        && late <= Duration::from_millis(500).max(duration / 10)
        && stored >= dep.accepted_total;
    eprintln!(
        "    → accepted {} errors {} backlog at end {backlog_end} (bound {bound}) late {:.0} ms e2e {completed_rate:.0}/s: {}",
        load.accepted,
        load.not_accepted(),
        late.as_secs_f64() * 1000.0,
        if sustainable { "sustainable" } else { "NOT sustainable" }
    );
    if let Some(error) = &load.first_error {
        eprintln!("    first error: {error}");
    }
    Ok(RateStep {
        backend: dep.backend.name().to_owned(),
        phase: phase.to_owned(),
        load_pct,
        offered,
        sustainable,
        accepted: load.accepted,
        errors: load.not_accepted(),
        completed_rate,
        backlog_end,
        accept_ms: quantiles_ms(&load.latency),
        e2e_ms: quantiles_ms(&e2e),
        lag_p99_ms: ms(load.lag.value_at_quantile(0.99)),
        lost: load.accepted.saturating_sub(done),
        connections_opened: load.connections_opened,
        cost: Cost::between(&before, &after, load.accepted),
    })
}

// ---------------------------------------------------------------------------------------
// 3. Scaling

/// Scenario 3 on `backend`: for each replica count, a backlog of `sleep` jobs drained by
/// that many worker processes (memory: that many times the capacity inside the ingress,
/// since the memory broker cannot be shared between processes).
pub async fn scaling(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
) -> anyhow::Result<Vec<ScalingRow>> {
    let mut out = Vec::new();
    for &replicas in &sizes.replicas {
        let spec = Spec {
            backend,
            label: format!("scale{replicas}-{}", backend.name()),
            workers: replicas,
            capacity: if backend == Backend::Memory {
                sizes.scale_capacity * replicas
            } else {
                sizes.scale_capacity
            },
        };
        let row = with_deployment(env, spec, async |dep| {
            dep.warm_up(WARM_UP).await?;
            dep.reset_peaks();
            let before = dep.snapshot();
            let pool = Pool::new(dep.address);
            let started_us = now_micros();
            let mut ids = HashSet::new();
            let mut left = sizes.scale_jobs;
            while left > 0 {
                let n = left.min(500);
                let batch: Vec<serde_json::Value> = (0..n)
                    .map(|_| json!({"kind": "sleep", "payload": {"ms": sizes.scale_job_ms}}))
                    .collect();
                let request = http::post_json("/jobs/batch", &serde_json::to_string(&batch)?);
                let response = pool.send(&request).await?;
                anyhow::ensure!(
                    response.status == 202,
                    "batch answered {}: {}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                );
                let accepted: serde_json::Value = serde_json::from_slice(&response.body)?;
                for job in accepted["jobs"].as_array().into_iter().flatten() {
                    if let Some(id) = job["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                        ids.insert(id);
                    }
                }
                left -= n;
            }
            dep.accepted_total += ids.len() as u64;
            let ideal = f64::from(replicas) * f64::from(sizes.scale_capacity) * 1000.0
                / sizes.scale_job_ms.max(1) as f64;
            let timeout = Duration::from_secs_f64(sizes.scale_jobs as f64 / ideal * 4.0)
                + Duration::from_secs(60);
            drain(
                &dep.db,
                dep.accepted_total,
                timeout,
                &format!("{} × {replicas}", backend.name()),
            )
            .await?;
            let after = dep.snapshot();
            let rows: Vec<Row> = dep
                .db
                .rows_since(started_us)
                .await?
                .into_iter()
                .filter(|r| ids.contains(&r.id))
                .collect();
            let first = rows.iter().map(|r| r.started_us).min().unwrap_or(0);
            let last = rows.iter().map(|r| r.finished_us).max().unwrap_or(0);
            let mut per: BTreeMap<String, u64> = BTreeMap::new();
            for r in &rows {
                *per.entry(r.worker.clone()).or_default() += 1;
            }
            Ok(ScalingRow {
                backend: backend.name().to_owned(),
                replicas,
                capacity: sizes.scale_capacity,
                job_ms: sizes.scale_job_ms,
                jobs: ids.len() as u64,
                throughput: rows.len() as f64 / ((last - first) as f64 / 1e6).max(1e-9),
                ideal,
                per_replica: per.into_values().collect(),
                lost: (ids.len() as u64).saturating_sub(rows.len() as u64),
                cost: Cost::between(&before, &after, ids.len() as u64),
            })
        })
        .await?;
        eprintln!(
            "    → {replicas} replica(s): {:.0} jobs/s (ideal {:.0})",
            row.throughput, row.ideal
        );
        out.push(row);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// 4. Ceilings

/// The HTTP ceiling: this binary's `__null` role (an axum router whose `POST /jobs` only
/// answers 202) under `clients` closed-loop connections, and under the burst of
/// scenario 1.
pub async fn http_ceiling(env: &Env, sizes: &Sizes) -> anyhow::Result<Vec<CeilingRow>> {
    let listen = procs::free_port()?;
    let mut command = tokio::process::Command::new(&env.exes.bench);
    command
        .arg("__null")
        .arg("--listen")
        .arg(listen.to_string());
    let log = env.log_dir.join(format!("null-{}.log", env.run_id));
    let mut server = Proc::spawn("null server", command, &log, &env.log_level)?;
    let result = async {
        procs::wait_healthy(listen, &mut server, Duration::from_secs(30)).await?;
        let pool = Pool::new(listen);
        pool.prewarm(sizes.clients).await?;
        let request = http::post_json("/jobs", &sleep_body(0));
        server.reset_peak();
        let before = server.usage();
        let load = load::closed_loop(&pool, &request, sizes.clients, sizes.ceiling).await;
        let after = server.usage();
        anyhow::ensure!(load.accepted > 0, "the null server accepted nothing");
        let closed = CeilingRow {
            subject: "http".into(),
            ceiling: format!(
                "axum handler answering 202 only ({} conns, closed loop)",
                sizes.clients
            ),
            rate: load.accepted as f64 / load.elapsed.as_secs_f64(),
            ops: load.accepted,
            p99_ms: Some(load.latency_ms(0.99)),
            cost: Cost::single("server", before, after, load.accepted),
        };
        // The burst's floor: the same burst as scenario 1 against the do-nothing server,
        // so its accept latency can be read against what HTTP alone costs here.
        let pool = Pool::new(listen);
        pool.prewarm(sizes.burst_jobs).await?;
        let before = server.usage();
        let burst = load::burst(&pool, &request, sizes.burst_jobs).await;
        let after = server.usage();
        let floor = CeilingRow {
            subject: "http".into(),
            ceiling: format!(
                "axum handler answering 202 only (burst of {} concurrent POSTs)",
                sizes.burst_jobs
            ),
            rate: burst.accepted as f64 / burst.elapsed.as_secs_f64(),
            ops: burst.accepted,
            p99_ms: Some(burst.latency_ms(0.99)),
            cost: Cost::single("server", before, after, burst.accepted),
        };
        Ok(vec![closed, floor])
    }
    .await;
    server.stop(Duration::from_secs(5)).await;
    result
}

/// The ingress alone: the real ingress with no worker process (memory: its embedded
/// workers still run, as `surge-producer` always starts them), `clients` closed-loop
/// connections posting single jobs.
pub async fn ingress_ceiling(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
) -> anyhow::Result<CeilingRow> {
    let spec = Spec {
        backend,
        label: format!("ingress-{}", backend.name()),
        workers: 0,
        capacity: sizes.rate_capacity,
    };
    with_deployment(env, spec, async |dep| {
        let pool = Pool::new(dep.address);
        pool.prewarm(sizes.clients).await?;
        let request = http::post_json("/jobs", &sleep_body(0));
        // One untimed round so the broker channel and database pool are open.
        load::closed_loop(&pool, &request, sizes.clients, Duration::from_millis(200)).await;
        dep.reset_peaks();
        let before = dep.snapshot();
        let load = load::closed_loop(&pool, &request, sizes.clients, sizes.ceiling).await;
        let after = dep.snapshot();
        if let Some(e) = &load.first_error {
            eprintln!("    first error: {e}");
        }
        anyhow::ensure!(load.accepted > 0, "the ingress accepted nothing");
        Ok(CeilingRow {
            subject: backend.name().into(),
            ceiling: format!(
                "ingress accept, POST /jobs, no consumer ({} conns, closed loop)",
                sizes.clients
            ),
            rate: load.accepted as f64 / load.elapsed.as_secs_f64(),
            ops: load.accepted,
            p99_ms: Some(load.latency_ms(0.99)),
            cost: Cost::between(&before, &after, load.accepted),
        })
    })
    .await
}

fn bench_job() -> Job {
    Job::new(JobKind::Sleep, json!({"ms": 0}), None)
}

/// The broker ceiling: confirmed single-job publishes from `clients` concurrent
/// publishers through the `Broker` trait with Surge's own durability settings, no HTTP, no
/// database; draining that backlog with one consumer (prefetch = the rate scenario's
/// capacity, every delivery acked); then publishing and consuming at once. Runs in a child
/// process of its own ([`ceiling_here`]), so its CPU and peak RSS are its own.
pub async fn broker_ceiling(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
) -> anyhow::Result<Vec<CeilingRow>> {
    let queue = env.fresh_queue(&format!("raw-{}", backend.name()));
    let mut command = tokio::process::Command::new(&env.exes.bench);
    command
        .arg("__ceiling")
        .arg("--what")
        .arg("broker")
        .arg("--backend")
        .arg(backend.name())
        .arg("--amqp-url")
        .arg(&env.amqp_url)
        .arg("--kafka-brokers")
        .arg(&env.kafka_brokers)
        .arg("--queue")
        .arg(&queue);
    ceiling_child(env, sizes, command, &queue).await
}

/// The database ceiling on `engine` (see [`ceiling_here`]), in a child process.
pub async fn db_ceiling(
    env: &Env,
    sizes: &Sizes,
    engine: &Engine,
) -> anyhow::Result<Vec<CeilingRow>> {
    let mut command = tokio::process::Command::new(&env.exes.bench);
    command
        .arg("__ceiling")
        .arg("--what")
        .arg("db")
        .arg("--database")
        .arg(match engine {
            Engine::Postgres(url) => url.as_str(),
            Engine::Sqlite => "sqlite",
        });
    ceiling_child(
        env,
        sizes,
        command,
        &format!("db-{}-{}", engine.name(), env.run_id),
    )
    .await
}

async fn ceiling_child(
    env: &Env,
    sizes: &Sizes,
    mut command: tokio::process::Command,
    name: &str,
) -> anyhow::Result<Vec<CeilingRow>> {
    let log = env.log_dir.join(format!("{name}.ceiling.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    command
        .arg("--clients")
        .arg(sizes.clients.to_string())
        .arg("--secs")
        .arg(sizes.ceiling.as_secs_f64().to_string())
        .arg("--prefetch")
        .arg(sizes.rate_capacity.to_string())
        .env("RUST_LOG", &env.log_level)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(file))
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(600), command.output())
        .await
        .context("the ceiling process took over 10 minutes")??;
    anyhow::ensure!(
        output.status.success(),
        "the ceiling process failed ({}); see {}",
        output.status,
        log.display()
    );
    serde_json::from_slice(&output.stdout).context("reading the ceiling process's rows")
}

/// Which in-process ceiling a `__ceiling` child measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CeilingKind {
    /// Through the `Broker` trait.
    Broker,
    /// Through `Storage` / `ResultWriter`.
    Db,
}

/// The `__ceiling` child's command line.
#[derive(Debug, Clone, clap::Parser)]
pub struct CeilingArgs {
    /// What to measure.
    #[arg(long, value_enum)]
    pub what: CeilingKind,
    /// Broker (with `--what broker`).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// `sqlite` or a PostgreSQL URL (with `--what db`).
    #[arg(long)]
    pub database: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, default_value = "")]
    pub amqp_url: String,
    /// Kafka bootstrap servers.
    #[arg(long, default_value = "")]
    pub kafka_brokers: String,
    /// Queue / topic (removed afterwards).
    #[arg(long, default_value = "surge.bench.raw")]
    pub queue: String,
    /// Concurrent publishers.
    #[arg(long)]
    pub clients: usize,
    /// Seconds per measurement.
    #[arg(long)]
    pub secs: f64,
    /// Consumer prefetch.
    #[arg(long)]
    pub prefetch: u16,
}

/// Runs a `__ceiling` child's measurement in this process.
pub async fn ceiling_here(args: &CeilingArgs) -> anyhow::Result<Vec<CeilingRow>> {
    let duration = Duration::from_secs_f64(args.secs);
    match args.what {
        CeilingKind::Broker => {
            let backend = args.backend.context("--backend is required")?;
            let broker =
                connect_broker(backend, &args.amqp_url, &args.kafka_brokers, &args.queue).await?;
            let result = broker_phases(broker.clone(), args, duration, backend).await;
            if let Err(e) = broker.delete_topology().await {
                eprintln!("note: could not delete {}: {e}", args.queue);
            }
            result
        }
        CeilingKind::Db => {
            let engine = match args.database.as_deref() {
                Some("sqlite") | None => Engine::Sqlite,
                Some(url) => Engine::Postgres(url.to_owned()),
            };
            db_phases(duration, &engine).await
        }
    }
}

/// A broker handle of this process on `queue`, through the one backend factory
/// ([`surge_common::broker::connect`]), so a backend compiled out of this build is a clear
/// error naming its cargo feature.
pub async fn connect_broker(
    backend: Backend,
    amqp_url: &str,
    kafka_brokers: &str,
    queue: &str,
) -> anyhow::Result<Arc<dyn Broker>> {
    use surge_common::broker::BrokerKind;
    let args = surge_common::config::BrokerArgs {
        broker: match backend {
            Backend::Memory => BrokerKind::Memory,
            Backend::Rabbitmq => BrokerKind::Rabbitmq,
            Backend::Kafka => BrokerKind::Kafka,
        },
        amqp_url: amqp_url.to_owned(),
        // The scenarios declare queues of their own, of the default (classic) type.
        rabbitmq_queue_type: Default::default(),
        kafka_brokers: kafka_brokers.to_owned(),
        queue: queue.to_owned(),
        kafka_partitions: crate::deploy::KAFKA_PARTITIONS,
    };
    surge_common::broker::connect(&args)
        .await
        .with_context(|| format!("connecting to {}", backend.name()))
}

async fn publish_for(
    broker: &Arc<dyn Broker>,
    clients: usize,
    duration: Duration,
) -> (u64, hdrhistogram::Histogram<u64>, u64) {
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let broker = broker.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed, mut h) = (0u64, 0u64, histogram());
                while Instant::now() < deadline {
                    let job = bench_job();
                    let sent = Instant::now();
                    match broker.publish(std::slice::from_ref(&job)).await {
                        Ok(()) => {
                            ok += 1;
                            h.saturating_record(sent.elapsed().as_micros() as u64);
                        }
                        Err(_) => failed += 1,
                    }
                }
                (ok, h, failed)
            })
        })
        .collect();
    let (mut ok, mut h, mut failed) = (0, histogram(), 0);
    for task in tasks {
        if let Ok((n, mine, f)) = task.await {
            ok += n;
            failed += f;
            let _ = h.add(&mine);
        }
    }
    (ok, h, failed)
}

async fn broker_phases(
    broker: Arc<dyn Broker>,
    args: &CeilingArgs,
    duration: Duration,
    backend: Backend,
) -> anyhow::Result<Vec<CeilingRow>> {
    let queue = args.queue.as_str();
    let subject = backend.name().to_owned();
    let mut rows = Vec::new();
    // Warm the publishing channel / producer.
    broker
        .publish(&[bench_job()])
        .await
        .context("first publish")?;

    procs::reset_peak("self");
    let services = procs::service_cpu();
    let before = procs::own_usage();
    let started = Instant::now();
    let (published, latency, failed) = publish_for(&broker, args.clients, duration).await;
    let elapsed = started.elapsed();
    anyhow::ensure!(failed == 0, "{failed} publishes failed");
    rows.push(CeilingRow {
        subject: subject.clone(),
        ceiling: format!(
            "raw confirmed publish, 1 job per call ({} publishers)",
            args.clients
        ),
        rate: published as f64 / elapsed.as_secs_f64(),
        ops: published,
        p99_ms: Some(ms(latency.value_at_quantile(0.99))),
        cost: with_services(
            Cost::single("bench", before, procs::own_usage(), published),
            &services,
            published,
        ),
    });

    // Consume: one consumer acking every delivery, counting as it goes.
    let acked = Arc::new(AtomicU64::new(0));
    let mut deliveries = broker
        .consume(ConsumeOptions {
            group: format!("{queue}-raw"),
            prefetch: args.prefetch,
        })
        .await
        .context("consuming")?;
    let consumer = {
        let acked = acked.clone();
        tokio::spawn(async move {
            while let Some(delivery) = deliveries.next().await {
                let Ok(delivery) = delivery else { break };
                let acked = acked.clone();
                tokio::spawn(async move {
                    if delivery.ack().await.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        })
    };
    let backlog = published + 1;
    procs::reset_peak("self");
    let services = procs::service_cpu();
    let before = procs::own_usage();
    let started = Instant::now();
    let drained = wait_count(&acked, backlog, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    rows.push(CeilingRow {
        subject: subject.clone(),
        ceiling: format!(
            "raw consume + ack of that backlog (prefetch {})",
            args.prefetch
        ),
        rate: drained as f64 / elapsed.as_secs_f64(),
        ops: drained,
        p99_ms: None,
        cost: with_services(
            Cost::single("bench", before, procs::own_usage(), drained),
            &services,
            drained,
        ),
    });

    procs::reset_peak("self");
    let services = procs::service_cpu();
    let before = procs::own_usage();
    let started = Instant::now();
    let base = acked.load(Ordering::Relaxed);
    let (published, latency, failed) = publish_for(&broker, args.clients, duration).await;
    anyhow::ensure!(failed == 0, "{failed} publishes failed");
    let done = wait_count(&acked, base + published, Duration::from_secs(120)).await - base;
    let elapsed = started.elapsed();
    rows.push(CeilingRow {
        subject,
        ceiling: format!(
            "raw publish + consume at once ({} publishers, 1 consumer)",
            args.clients
        ),
        rate: done as f64 / elapsed.as_secs_f64(),
        ops: done,
        p99_ms: Some(ms(latency.value_at_quantile(0.99))),
        cost: with_services(
            Cost::single("bench", before, procs::own_usage(), done),
            &services,
            done,
        ),
    });
    consumer.abort();
    Ok(rows)
}

async fn wait_count(counter: &AtomicU64, n: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let now = counter.load(Ordering::Relaxed);
        if now >= n || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn with_services(mut cost: Cost, before: &BTreeMap<String, f64>, n: u64) -> Cost {
    cost.add_services(before, &procs::service_cpu(), n);
    cost
}

fn result_row() -> JobResult {
    let now = now_micros();
    JobResult {
        job_id: Uuid::now_v7(),
        kind: "sleep".into(),
        status: JobStatus::Succeeded,
        result: Some(json!({"slept_ms": 0})),
        error: None,
        attempts: 1,
        deliveries: 1,
        worker: "bench".into(),
        enqueued_at_us: now,
        started_at_us: now,
        finished_at_us: now,
        job: None,
    }
}

/// The database ceiling on `engine`: Surge's result writes alone — `Storage::record` one
/// row per transaction, `ResultWriter` (group commit) under many concurrent callers, and
/// `Storage::record_many` with full batches.
async fn db_phases(duration: Duration, engine: &Engine) -> anyhow::Result<Vec<CeilingRow>> {
    const BATCH: usize = 256;
    const CALLERS: usize = 512;
    let db = BenchDb::create_with(engine, false).await?;
    let storage = db.storage().clone();
    let subject = engine.name().to_owned();
    let mut rows = Vec::new();
    let result = async {
        // 1. One row per call, one call at a time: autocommit single-row writes.
        procs::reset_peak("self");
        let services = procs::service_cpu();
        let before = procs::own_usage();
        let (started, mut n, mut h) = (Instant::now(), 0u64, histogram());
        while started.elapsed() < duration {
            let t = Instant::now();
            storage.record(&result_row()).await?;
            h.saturating_record(t.elapsed().as_micros() as u64);
            n += 1;
        }
        rows.push(CeilingRow {
            subject: subject.clone(),
            ceiling: "Storage::record, 1 row per commit, sequential".into(),
            rate: n as f64 / started.elapsed().as_secs_f64(),
            ops: n,
            p99_ms: Some(ms(h.value_at_quantile(0.99))),
            cost: with_services(
                Cost::single("bench", before, procs::own_usage(), n),
                &services,
                n,
            ),
        });

        // 2. The worker's path: ResultWriter under many concurrent callers.
        let writer = ResultWriter::spawn(storage.clone(), BATCH);
        procs::reset_peak("self");
        let services = procs::service_cpu();
        let before = procs::own_usage();
        let started = Instant::now();
        let deadline = started + duration;
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let (mut n, mut h) = (0u64, histogram());
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if writer.record(result_row()).await.is_err() {
                            break;
                        }
                        h.saturating_record(t.elapsed().as_micros() as u64);
                        n += 1;
                    }
                    (n, h)
                })
            })
            .collect();
        let (mut n, mut h) = (0u64, histogram());
        for caller in callers {
            let (mine, hist) = caller.await?;
            n += mine;
            let _ = h.add(&hist);
        }
        drop(writer);
        rows.push(CeilingRow {
            subject: subject.clone(),
            ceiling: format!("ResultWriter group commit (≤{BATCH}/commit, {CALLERS} callers)"),
            rate: n as f64 / started.elapsed().as_secs_f64(),
            ops: n,
            p99_ms: Some(ms(h.value_at_quantile(0.99))),
            cost: with_services(
                Cost::single("bench", before, procs::own_usage(), n),
                &services,
                n,
            ),
        });

        // 3. record_many directly with full batches.
        procs::reset_peak("self");
        let services = procs::service_cpu();
        let before = procs::own_usage();
        let (started, mut n, mut h) = (Instant::now(), 0u64, histogram());
        while started.elapsed() < duration {
            let batch: Vec<JobResult> = (0..BATCH).map(|_| result_row()).collect();
            let t = Instant::now();
            storage.record_many(&batch).await?;
            h.saturating_record(t.elapsed().as_micros() as u64);
            n += BATCH as u64;
        }
        rows.push(CeilingRow {
            subject: subject.clone(),
            ceiling: format!("Storage::record_many, {BATCH} rows per commit, sequential"),
            rate: n as f64 / started.elapsed().as_secs_f64(),
            ops: n,
            p99_ms: Some(ms(h.value_at_quantile(0.99))),
            cost: with_services(
                Cost::single("bench", before, procs::own_usage(), n),
                &services,
                n,
            ),
        });
        anyhow::Ok(())
    }
    .await;
    db.remove().await;
    result?;
    Ok(rows)
}
