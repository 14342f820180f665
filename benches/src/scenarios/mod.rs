//! The scenarios of the benchmark, each run per backend (see `bin/bench/main.rs`), one
//! module each; this one holds their sizes and the helpers they share.
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
//!    [`db_ceiling`] (the result writer alone: single-row vs batched); the last two run in
//!    a child process of their own ([`inproc`]).
//! 5. [`soak`]: minutes at a fixed rate with the resident memory of every process
//!    sampled, so a leak shows as a slope.
//! 6. [`dispatch`]: jobs/s through an HTTP kind whose target answers at once, against
//!    `echo`, alternately on the same setup: the cost of the hop as a ratio.
//! 7. [`rebalance`] (Kafka only): workers joining a consumer group mid-burst under each
//!    `--kafka-assignment` value: pauses, reruns, drain against three from the start.
//! 8. [`fairness`]: one key's backlog, then another key's few jobs (1 and 3 workers), and
//!    many one-job keys behind one big key: the small keys' wait and the big one's drain.

mod burst;
mod ceilings;
mod dispatch;
mod fairness;
pub mod inproc;
mod rate;
pub mod rebalance;
mod scaling;
pub mod soak;

use std::io::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::db::BenchDb;
use crate::deploy::{Deployment, Env, Spec};

pub use burst::{burst, peak_overlap};
pub use ceilings::{broker_ceiling, db_ceiling, http_ceiling, ingress_ceiling};
pub use dispatch::{dispatch, Target};
pub use fairness::fairness;
pub use inproc::{ceiling_here, CeilingArgs, CeilingKind};
pub use rate::rate;
pub use rebalance::rebalance;
pub use scaling::scaling;
pub use soak::soak;

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
    /// Soak: offered jobs/s.
    pub soak_rate: f64,
    /// Soak: how long.
    pub soak: Duration,
    /// HTTP dispatch: jobs per measurement.
    pub dispatch_jobs: u64,
    /// HTTP dispatch: rounds of (echo, http).
    pub dispatch_rounds: u32,
    /// HTTP dispatch: longest wait for a measurement's results.
    pub dispatch_timeout: Duration,
    /// Rebalance: jobs in the backlog.
    pub rebalance_jobs: u64,
    /// Rebalance: job duration.
    pub rebalance_job_ms: u64,
    /// Rebalance: capacity of each worker.
    pub rebalance_capacity: u16,
    /// Rebalance: rounds over the assignment values.
    pub rebalance_rounds: u32,
    /// Rebalance: longest wait for a run's results.
    pub rebalance_timeout: Duration,
    /// Fairness: capacity of each worker.
    pub fair_capacity: u16,
    /// Fairness: job duration.
    pub fair_job_ms: u64,
    /// Fairness: key A's backlog per worker.
    pub fair_big: usize,
    /// Fairness, many keys: the big key's backlog.
    pub fair_many_big: usize,
    /// Fairness, many keys: keys of one job each.
    pub fair_many_keys: usize,
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
            soak_rate: 500.0,
            soak: Duration::from_secs(30),
            dispatch_jobs: 20_000,
            dispatch_rounds: 2,
            dispatch_timeout: Duration::from_secs(60),
            rebalance_jobs: 8_000,
            rebalance_job_ms: 20,
            rebalance_capacity: 10,
            rebalance_rounds: 2,
            rebalance_timeout: Duration::from_secs(120),
            fair_capacity: 20,
            fair_job_ms: 20,
            fair_big: 5_000,
            fair_many_big: 50_000,
            fair_many_keys: 10_000,
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
            soak_rate: 50.0,
            soak: Duration::from_secs(2),
            dispatch_jobs: 200,
            dispatch_rounds: 1,
            dispatch_timeout: Duration::from_secs(20),
            rebalance_jobs: 300,
            rebalance_job_ms: 20,
            rebalance_capacity: 5,
            rebalance_rounds: 1,
            rebalance_timeout: Duration::from_secs(60),
            fair_capacity: 5,
            fair_job_ms: 20,
            fair_big: 100,
            fair_many_big: 200,
            fair_many_keys: 50,
        }
    }
}

pub(crate) const WARM_UP: Duration = Duration::from_secs(90);

pub(crate) fn sleep_body(ms: u64) -> String {
    json!({"kind": "sleep", "payload": {"ms": ms}}).to_string()
}

pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

pub(crate) fn quantiles_ms(h: &hdrhistogram::Histogram<u64>) -> [f64; 4] {
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
pub(crate) async fn drain(
    db: &BenchDb,
    n: u64,
    timeout: Duration,
    label: &str,
) -> anyhow::Result<u64> {
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
pub(crate) async fn with_deployment<T>(
    env: &Env,
    spec: Spec,
    body: impl AsyncFnOnce(&mut Deployment) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut deployment = Deployment::start(env, &spec).await?;
    let result = body(&mut deployment).await;
    deployment.stop().await;
    result
}
