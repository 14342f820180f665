//! Scenario 6, HTTP dispatch: what the hop to a downstream service costs. Jobs/s through
//! an HTTP kind whose target answers `200 {}` at once (this binary's `__null` role, a
//! child process of its own: `POST /ok`) against `echo` (no I/O), on the same broker, the
//! same worker setup (one worker process of the rate scenario's capacity; the kind's
//! `concurrency` is that capacity too), measured alternately in one run — echo, http,
//! echo, http — so the machine's load hits both alike. The ratio http ÷ echo is the
//! figure.
//!
//! Each measurement is a fresh deployment: `jobs` jobs posted in batches into the queue
//! while no worker runs, then one worker process started; jobs/s = stored results ÷ (last
//! finish − first start). On the memory broker the workers live in the ingress and drain
//! while the batches are posted (the posting rate can then bound the figure; both kinds
//! alike). A measurement stops waiting after `dispatch_timeout` and reports what it got.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use surge_common::clock::now_micros;
use uuid::Uuid;

use super::Sizes;
use crate::deploy::{Backend, Cost, Deployment, Env, Spec};
use crate::http::{self, Pool};
use crate::procs::{self, Proc};
use crate::results::{DispatchRow, DispatchRun};

/// The HTTP kind the generated configuration declares.
const KIND: &str = "target";
/// Jobs per `POST /jobs/batch`.
const BATCH: u64 = 500;
/// Batches in flight while posting.
const POSTERS: usize = 4;

/// A running target: `POST /ok` → `200 {}`.
pub struct Target {
    /// Where it listens.
    pub address: std::net::SocketAddr,
    proc: Proc,
}

impl Target {
    /// Starts this binary's `__null` role.
    pub async fn start(env: &Env) -> anyhow::Result<Target> {
        let listen = procs::free_port()?;
        let mut command = tokio::process::Command::new(&env.exes.bench);
        command
            .arg("__null")
            .arg("--listen")
            .arg(listen.to_string());
        let log = env.log_dir.join(format!("target-{}.log", env.run_id));
        let mut proc = Proc::spawn("http target", command, &log, &env.log_level)?;
        procs::wait_healthy(listen, &mut proc, Duration::from_secs(30)).await?;
        Ok(Target {
            address: listen,
            proc,
        })
    }

    /// Stops it.
    pub async fn stop(self) {
        self.proc.stop(Duration::from_secs(5)).await;
    }
}

/// The configuration file declaring the HTTP kind `target` → `url`, `concurrency`
/// requests in flight at most.
pub fn config_text(url: &str, concurrency: u16) -> String {
    format!(
        "# surge-bench, HTTP dispatch: a target that answers 200 {{}} at once.\n\
         [kinds.{KIND}]\nurl = \"{url}\"\nconcurrency = {concurrency}\ntimeout_ms = 30000\n"
    )
}

/// Scenario 6 on `backend`, against `target` (shared by the backends of a run).
pub async fn dispatch(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
    target: &Target,
) -> anyhow::Result<DispatchRow> {
    let url = format!("http://{}/ok", target.address);
    let config = env
        .log_dir
        .join(format!("dispatch-{}-{}.toml", env.run_id, backend.name()));
    std::fs::write(&config, config_text(&url, sizes.rate_capacity))
        .with_context(|| format!("writing {}", config.display()))?;
    let env = env.with_config(config);
    let mut runs = Vec::new();
    for round in 1..=sizes.dispatch_rounds {
        for kind in ["echo", KIND] {
            let run = measure(&env, sizes, backend, kind, round, target).await?;
            eprintln!(
                "    → {} {} round {round}: {:.0} jobs/s ({} of {} stored, {} succeeded)",
                backend.name(),
                run.kind,
                run.throughput,
                run.stored,
                run.jobs,
                run.succeeded
            );
            runs.push(run);
        }
    }
    Ok(DispatchRow::new(
        backend.name(),
        sizes.rate_capacity,
        sizes.dispatch_jobs,
        runs,
    ))
}

async fn measure(
    env: &Env,
    sizes: &Sizes,
    backend: Backend,
    kind: &str,
    round: u32,
    target: &Target,
) -> anyhow::Result<DispatchRun> {
    let spec = Spec {
        backend,
        label: format!("dispatch-{kind}-{}", backend.name()),
        workers: 0,
        capacity: sizes.rate_capacity,
    };
    let mut dep = Deployment::start(env, &spec).await?;
    let result = measure_on(&mut dep, sizes, kind, round, target).await;
    dep.stop().await;
    result
}

async fn measure_on(
    dep: &mut Deployment,
    sizes: &Sizes,
    kind: &str,
    round: u32,
    target: &Target,
) -> anyhow::Result<DispatchRun> {
    let shown = if kind == KIND { "http" } else { kind };
    let started_us = now_micros();
    // The same small payload for both kinds: echo returns it, the target ignores it.
    let ids = post_backlog(dep.address, kind, &json!({ "n": 1 }), sizes.dispatch_jobs).await?;
    if dep.backend != Backend::Memory {
        dep.add_workers(1, sizes.rate_capacity)?;
    }
    let before = dep.snapshot();
    let target_before = target.proc.usage();
    let stored = super::drain(
        &dep.db,
        ids.len() as u64,
        sizes.dispatch_timeout,
        &format!("{} {shown} round {round}", dep.backend.name()),
    )
    .await?;
    let after = dep.snapshot();
    let target_after = target.proc.usage();
    let rows = dep.db.rows_since(started_us).await?;
    let mine: Vec<_> = rows.iter().filter(|r| ids.contains(&r.id)).collect();
    let first = mine.iter().map(|r| r.started_us).min().unwrap_or(0);
    let last = mine.iter().map(|r| r.finished_us).max().unwrap_or(0);
    let mut cost = Cost::between(&before, &after, mine.len() as u64);
    if kind == KIND {
        cost.cpu_s_per_1k.insert(
            "target".into(),
            (target_after.cpu_s - target_before.cpu_s) * 1000.0 / (mine.len().max(1) as f64),
        );
    }
    Ok(DispatchRun {
        kind: shown.to_owned(),
        round,
        jobs: ids.len() as u64,
        stored: stored.min(ids.len() as u64),
        succeeded: mine.iter().filter(|r| r.status == "succeeded").count() as u64,
        throughput: mine.len() as f64 / ((last - first) as f64 / 1e6).max(1e-9),
        cost,
    })
}

/// Posts `n` jobs of `kind` with `payload` in batches, [`POSTERS`] batches in flight; the
/// accepted ids.
pub(super) async fn post_backlog(
    address: std::net::SocketAddr,
    kind: &str,
    payload: &serde_json::Value,
    n: u64,
) -> anyhow::Result<std::collections::HashSet<Uuid>> {
    let pool = Pool::new(address);
    let batches: Vec<u64> = (0..n.div_ceil(BATCH))
        .map(|i| BATCH.min(n - i * BATCH))
        .collect();
    let mut ids = std::collections::HashSet::new();
    for chunk in batches.chunks(POSTERS) {
        let answers = futures::future::join_all(chunk.iter().map(|&size| {
            let pool: Arc<Pool> = pool.clone();
            let body: Vec<serde_json::Value> = (0..size)
                .map(|_| json!({ "kind": kind, "payload": payload }))
                .collect();
            async move {
                let request = http::post_json("/jobs/batch", &serde_json::to_string(&body)?);
                pool.send(&request).await
            }
        }))
        .await;
        for answer in answers {
            let response = answer?;
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
        }
    }
    Ok(ids)
}
