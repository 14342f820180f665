//! `surge-bench`: the burst, the max sustainable rate, scaling, the ceilings, soak and HTTP
//! dispatch, on the memory broker, RabbitMQ and Kafka in one run; a Markdown table, JSON
//! and SVG charts.
//!
//! ```sh
//! cargo build --release -p surge-producer -p surge-worker   # the processes under test
//! cargo run --release -p surge-benches --bin surge-bench -- --publish
//! cargo run -p surge-benches --bin surge-bench -- --smoke     # every scenario, tiny counts
//! ```
//!
//! The ingress and workers run as child processes (`surge-producer` / `surge-worker` next
//! to this binary, else this binary's `__ingress` / `__worker` roles); `__null` is the
//! HTTP ceiling's do-nothing server.

#![forbid(unsafe_code)]

mod args;
mod meta;
mod roles;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use surge_benches::charts;
use surge_benches::db::Engine;
use surge_benches::deploy::Env;
use surge_benches::procs::{Exe, Executables};
use surge_benches::results::{evaluate_targets, Meta, Results};
use surge_benches::scenarios::{self, Sizes};

use args::{Args, DbChoice, Scenario};
use meta::{loadavg, notes, utc_now};

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("__ingress") => return roles::ingress(&argv[2..]),
        Some("__worker") => return roles::worker(&argv[2..]),
        Some("__null") => return roles::null(&argv[2..]),
        Some("__ceiling") => return roles::ceiling(&argv[2..]),
        _ => {}
    }
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args, argv))
}

async fn run(args: Args, argv: Vec<String>) -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    surge_common::telemetry::init(surge_common::config::LogFormat::Text);
    if let Some(target) = args.target {
        return load_only(&args, target).await;
    }
    let started = Instant::now();
    let mut sizes = if args.smoke {
        Sizes::smoke()
    } else {
        Sizes::full()
    };
    if let Some(n) = args.burst_jobs {
        sizes.burst_jobs = n;
    }
    if let Some(c) = args.burst_capacity {
        sizes.burst_capacity = c;
    }
    if let Some(ms) = args.burst_job_ms {
        sizes.burst_job_ms = ms;
    }
    if let Some(s) = args.soak_secs {
        sizes.soak = Duration::from_secs_f64(s);
    }
    if let Some(r) = args.soak_rate {
        sizes.soak_rate = r;
    }
    if let Some(n) = args.dispatch_jobs {
        sizes.dispatch_jobs = n;
    }
    if let Some(n) = args.dispatch_rounds {
        sizes.dispatch_rounds = n.max(1);
    }
    if let Some(s) = args.step_secs {
        sizes.step = Duration::from_secs_f64(s);
    }
    if let Some(n) = args.rebalance_jobs {
        sizes.rebalance_jobs = n.max(10);
    }
    if let Some(n) = args.rebalance_rounds {
        sizes.rebalance_rounds = n.max(1);
    }
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results")
    });
    let log_dir = out.join("logs");
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let mut exes = if args.self_roles {
        Executables::own()?
    } else {
        Executables::locate()?
    };
    if let Some(path) = &args.ingress_exe {
        exes.ingress = Exe::at(path);
    }
    if let Some(path) = &args.worker_exe {
        exes.worker = Exe::at(path);
    }
    let engine = |choice: DbChoice| match choice {
        DbChoice::Sqlite => Engine::Sqlite,
        DbChoice::Postgres => Engine::Postgres(args.postgres_url.clone()),
    };
    let env = Env::new(
        exes.clone(),
        args.amqp_url.clone(),
        args.kafka_brokers.clone(),
        engine(args.database),
        log_dir.clone(),
        args.log_level.clone(),
    );
    let mut results = Results {
        meta: Meta {
            command: argv.join(" "),
            smoke: args.smoke,
            started: utc_now(),
            load_before: loadavg(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            executables: vec![
                format!("ingress = {}", exes.ingress.describe()),
                format!("worker = {}", exes.worker.describe()),
            ],
            database: env.engine.name().to_owned(),
            brokers: surge_benches::procs::service_versions(
                &args
                    .backends
                    .iter()
                    .filter_map(|b| b.queue_type().map(|t| t.as_str()))
                    .collect::<Vec<_>>(),
                args.backends
                    .contains(&surge_benches::deploy::Backend::Kafka),
            ),
            notes: notes(&sizes),
            ..Meta::default()
        },
        ..Results::default()
    };
    eprintln!(
        "surge-bench: run {} — backends {:?}, scenarios {:?}, results in {}",
        env.run_id,
        args.backends,
        args.scenarios,
        out.display()
    );
    eprintln!(
        "  ingress: {}   worker: {}",
        exes.ingress.path.display(),
        exes.worker.describe()
    );
    let wants = |s: Scenario| args.scenarios.contains(&s);
    let record = |results: &mut Results, what: String, e: anyhow::Error| {
        eprintln!("\n  !! {what}: {e:#}");
        results.errors.push(format!("{what}: {e:#}"));
    };
    if wants(Scenario::Burst) {
        eprintln!(
            "\n== 1. burst: {} concurrent POSTs, capacity {}, sleep {} ms",
            sizes.burst_jobs, sizes.burst_capacity, sizes.burst_job_ms
        );
        for &backend in &args.backends {
            match scenarios::burst(&env, &sizes, backend).await {
                Ok(row) => {
                    eprintln!(
                        "    → {}: accepted {}/{}, accept p99 {:.2} ms, peak {}/{}, drain {:.2}× ideal, lost {}",
                        backend.name(), row.accepted, row.jobs, row.accept_p99_ms, row.peak_in_flight,
                        row.capacity, row.drain_ms / row.ideal_ms.max(1e-9), row.lost
                    );
                    results.burst.push(row);
                }
                Err(e) => record(&mut results, format!("burst on {}", backend.name()), e),
            }
        }
    }
    if wants(Scenario::Rate) {
        eprintln!("\n== 2. max sustainable rate (open loop, sleep 0 ms jobs)");
        for &backend in &args.backends {
            match scenarios::rate(&env, &sizes, backend).await {
                Ok(summary) => results.rate.push(summary),
                Err(e) => record(&mut results, format!("rate on {}", backend.name()), e),
            }
        }
    }
    if wants(Scenario::Scaling) {
        eprintln!(
            "\n== 3. scaling: {:?} worker replicas × capacity {}, sleep {} ms",
            sizes.replicas, sizes.scale_capacity, sizes.scale_job_ms
        );
        for &backend in &args.backends {
            match scenarios::scaling(&env, &sizes, backend).await {
                Ok(rows) => results.scaling.extend(rows),
                Err(e) => record(&mut results, format!("scaling on {}", backend.name()), e),
            }
        }
    }
    if wants(Scenario::Ceilings) {
        eprintln!("\n== 4. ceilings");
        match scenarios::http_ceiling(&env, &sizes).await {
            Ok(rows) => {
                for row in rows {
                    eprintln!(
                        "    → http {}: {:.0}/s, p99 {:.2} ms",
                        row.ceiling,
                        row.rate,
                        row.p99_ms.unwrap_or(0.0)
                    );
                    results.ceilings.push(row);
                }
            }
            Err(e) => record(&mut results, "HTTP ceiling".into(), e),
        }
        for &backend in &args.backends {
            match scenarios::ingress_ceiling(&env, &sizes, backend).await {
                Ok(row) => {
                    eprintln!("    → {} ingress accept: {:.0}/s", backend.name(), row.rate);
                    results.ceilings.push(row);
                }
                Err(e) => record(
                    &mut results,
                    format!("ingress ceiling on {}", backend.name()),
                    e,
                ),
            }
            match scenarios::broker_ceiling(&env, &sizes, backend).await {
                Ok(rows) => {
                    for row in &rows {
                        eprintln!(
                            "    → {} {}: {:.0}/s",
                            backend.name(),
                            row.ceiling,
                            row.rate
                        );
                    }
                    results.ceilings.extend(rows);
                }
                Err(e) => record(
                    &mut results,
                    format!("broker ceiling on {}", backend.name()),
                    e,
                ),
            }
        }
        for &choice in &args.db_ceilings {
            let engine = engine(choice);
            match scenarios::db_ceiling(&env, &sizes, &engine).await {
                Ok(rows) => {
                    for row in &rows {
                        eprintln!("    → {} {}: {:.0}/s", engine.name(), row.ceiling, row.rate);
                    }
                    results.ceilings.extend(rows);
                }
                Err(e) => record(
                    &mut results,
                    format!("database ceiling on {}", engine.name()),
                    e,
                ),
            }
        }
    }
    if wants(Scenario::Soak) {
        eprintln!(
            "\n== 5. soak: {:.0} jobs/s for {:.0} s, RSS of every process sampled",
            sizes.soak_rate,
            sizes.soak.as_secs_f64()
        );
        for &backend in &args.backends {
            match scenarios::soak(&env, &sizes, backend).await {
                Ok(row) => results.soak.push(row),
                Err(e) => record(&mut results, format!("soak on {}", backend.name()), e),
            }
        }
    }
    if wants(Scenario::Dispatch) {
        eprintln!(
            "\n== 6. HTTP dispatch: {} jobs per run, an HTTP kind (target answering 200 at once) against echo",
            sizes.dispatch_jobs
        );
        match scenarios::Target::start(&env).await {
            Ok(target) => {
                for &backend in &args.backends {
                    match scenarios::dispatch(&env, &sizes, backend, &target).await {
                        Ok(row) => {
                            eprintln!(
                                "    → {}: echo {:.0} jobs/s, http {:.0} jobs/s: http ÷ echo = {:.2}",
                                backend.name(),
                                row.echo_rate,
                                row.http_rate,
                                row.ratio
                            );
                            results.dispatch.push(row);
                        }
                        Err(e) => {
                            record(&mut results, format!("dispatch on {}", backend.name()), e)
                        }
                    }
                }
                target.stop().await;
            }
            Err(e) => record(&mut results, "dispatch target".into(), e),
        }
    }
    if wants(Scenario::Rebalance) {
        eprintln!(
            "\n== 7. Kafka rebalancing: {} sleep {} ms jobs, workers joining mid-burst, per --kafka-assignment",
            sizes.rebalance_jobs, sizes.rebalance_job_ms
        );
        for &backend in &args.backends {
            if backend != surge_benches::deploy::Backend::Kafka {
                eprintln!(
                    "    ({} has no consumer-group rebalancing: skipped)",
                    backend.name()
                );
                continue;
            }
            match scenarios::rebalance(&env, &sizes, backend).await {
                Ok(rows) => results.rebalance.extend(rows),
                Err(e) => record(&mut results, format!("rebalance on {}", backend.name()), e),
            }
        }
    }
    if wants(Scenario::Fairness) {
        eprintln!(
            "\n== 8. fairness: key A {} sleep {} ms jobs per worker then key B 10 (1 and 3 workers × {}), then {} one-job keys behind {} of one key",
            sizes.fair_big, sizes.fair_job_ms, sizes.fair_capacity, sizes.fair_many_keys, sizes.fair_many_big
        );
        for &backend in &args.backends {
            match scenarios::fairness(&env, &sizes, backend).await {
                Ok(rows) => results.fairness.extend(rows),
                Err(e) => record(&mut results, format!("fairness on {}", backend.name()), e),
            }
        }
    }
    results.meta.load_after = loadavg();
    results.meta.duration_s = started.elapsed().as_secs_f64();
    results.targets = evaluate_targets(&results, env.engine.name());

    let markdown = results.markdown();
    let json = serde_json::to_string_pretty(&results)?;
    let mut folders = vec![out.clone()];
    if args.publish {
        folders.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"));
    }
    for folder in &folders {
        std::fs::create_dir_all(folder)?;
        std::fs::write(folder.join("results.md"), &markdown)?;
        std::fs::write(folder.join("results.json"), &json)?;
        charts::write_all(&results, folder)?;
    }
    println!("{markdown}");
    eprintln!(
        "surge-bench: done in {:.0} s; written to {}",
        started.elapsed().as_secs_f64(),
        folders
            .iter()
            .map(|f| f.display().to_string())
            .collect::<Vec<_>>()
            .join(" and ")
    );
    if !results.errors.is_empty() {
        anyhow::bail!(
            "{} scenario run(s) failed: {}",
            results.errors.len(),
            results.errors.join(" | ")
        );
    }
    Ok(())
}

/// `--target`: load against a running ingress, latency summary on stdout.
async fn load_only(args: &Args, target: std::net::SocketAddr) -> anyhow::Result<()> {
    use surge_benches::{http, load};
    let pool = http::Pool::new(target);
    let request = http::post_json("/jobs", &args.body);
    let duration = Duration::from_secs_f64(args.duration);
    let result = if let Some(n) = args.burst {
        pool.prewarm(n).await?;
        load::burst(&pool, &request, n).await
    } else if let Some(rate) = args.rate {
        pool.prewarm(args.clients).await?;
        load::open_loop(&pool, &request, rate, duration, Some("open loop")).await
    } else {
        pool.prewarm(args.clients).await?;
        load::closed_loop(&pool, &request, args.clients, duration).await
    };
    println!(
        "sent {} accepted {} rejected {:?} failed {} in {:.2} s = {:.0}/s; latency ms p50 {:.2} \
         p99 {:.2} p99.9 {:.2} max {:.2}; generator lag p99 {:.2} ms; connections opened {}",
        result.sent,
        result.accepted,
        result.rejected,
        result.failed,
        result.elapsed.as_secs_f64(),
        result.rate(),
        result.latency_ms(0.5),
        result.latency_ms(0.99),
        result.latency_ms(0.999),
        result.latency.max() as f64 / 1000.0,
        result.lag.value_at_quantile(0.99) as f64 / 1000.0,
        result.connections_opened,
    );
    if let Some(e) = &result.first_error {
        println!("first error: {e}");
    }
    Ok(())
}
