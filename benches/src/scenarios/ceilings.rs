//! Scenario 4, the ceilings: the HTTP stack alone (a do-nothing server), the ingress with
//! no consumer, and — each in a child process of its own, see [`super::inproc`] — the
//! broker and the database through Surge's own code.

use std::time::Duration;

use anyhow::Context;

use super::{sleep_body, with_deployment, Sizes};
use crate::db::Engine;
use crate::deploy::{Backend, Cost, Env, Spec};
use crate::http::{self, Pool};
use crate::load;
use crate::procs::{self, Proc};
use crate::results::CeilingRow;

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
