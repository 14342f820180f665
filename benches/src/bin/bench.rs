//! `surge-bench`: the burst, the max sustainable rate, scaling and the ceilings, on the
//! memory broker, RabbitMQ and Kafka in one run; a Markdown table, JSON and SVG charts.
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

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use surge_benches::charts;
use surge_benches::db::Engine;
use surge_benches::deploy::{Backend, Env};
use surge_benches::procs::{Exe, Executables};
use surge_benches::results::{evaluate_targets, Meta, Results};
use surge_benches::scenarios::{self, Sizes};

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// 1: burst against the capacity.
    Burst,
    /// 2: max sustainable rate and latency at shares of it.
    Rate,
    /// 3: 1, 2, 4 worker processes.
    Scaling,
    /// 4: HTTP, ingress, broker and database ceilings.
    Ceilings,
}

/// Surge's benchmark: burst, max sustainable rate, scaling and ceilings for the memory
/// broker, RabbitMQ and Kafka in one run.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Every scenario on every backend with tiny counts (proves the harness; < 1 minute).
    #[arg(long)]
    smoke: bool,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "burst,rate,scaling,ceilings"
    )]
    scenarios: Vec<Scenario>,
    /// Backends to run them on.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "memory,rabbitmq,kafka"
    )]
    backends: Vec<Backend>,
    /// Results folder (results.md, results.json, *.svg, logs/).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also copy results.md, results.json and the charts to benches/results/ (for the README).
    #[arg(long)]
    publish: bool,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "SURGE_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    amqp_url: String,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "SURGE_TEST_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    kafka_brokers: String,
    /// PostgreSQL (fresh databases are created next to this one, and dropped).
    #[arg(
        long,
        env = "SURGE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    postgres_url: String,
    /// Results database of the deployments.
    #[arg(long, value_enum, default_value = "postgres")]
    database: DbChoice,
    /// Database ceilings to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    db_ceilings: Vec<DbChoice>,
    /// RUST_LOG of the ingress and worker processes.
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Run the ingress and workers as this binary's roles even when `surge-producer` and
    /// `surge-worker` are next to it.
    #[arg(long)]
    self_roles: bool,
    /// Use this ingress executable (takes `surge-producer`'s flags), e.g. a patched build.
    #[arg(long)]
    ingress_exe: Option<PathBuf>,
    /// Use this worker executable (takes `surge-worker`'s flags).
    #[arg(long)]
    worker_exe: Option<PathBuf>,
    /// Burst: concurrent POSTs (default 400; smoke 20).
    #[arg(long)]
    burst_jobs: Option<usize>,
    /// Burst: capacity (default 200; smoke 10).
    #[arg(long)]
    burst_capacity: Option<u16>,
    /// Burst: job duration in ms (default 1000; smoke 100).
    #[arg(long)]
    burst_job_ms: Option<u64>,
    /// Rate: seconds per ramp step (default 3).
    #[arg(long)]
    step_secs: Option<f64>,
    /// Load only, against an ingress already running at this address (no scenarios):
    /// with `--rate`, open loop; with `--burst N`, one burst; else `--clients` closed loop.
    #[arg(long)]
    target: Option<std::net::SocketAddr>,
    /// Load only: offered jobs/s (open loop).
    #[arg(long, requires = "target")]
    rate: Option<f64>,
    /// Load only: concurrent POSTs of one burst.
    #[arg(long, requires = "target")]
    burst: Option<usize>,
    /// Load only: closed-loop connections (default 32).
    #[arg(long, requires = "target", default_value_t = 32)]
    clients: usize,
    /// Load only: seconds of load.
    #[arg(long, requires = "target", default_value_t = 10.0)]
    duration: f64,
    /// Load only: the job to POST.
    #[arg(
        long,
        requires = "target",
        default_value = r#"{"kind":"sleep","payload":{"ms":0}}"#
    )]
    body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DbChoice {
    Sqlite,
    Postgres,
}

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

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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
    if let Some(s) = args.step_secs {
        sizes.step = Duration::from_secs_f64(s);
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

fn notes(sizes: &Sizes) -> Vec<String> {
    vec![
        "Accept latency is measured from the *intended* send time (open loop: `t0 + i/rate`, \
         coordinated omission corrected; burst: the burst's start), HdrHistogram."
            .into(),
        format!(
            "Keep-alive connections are opened and used once before measuring ({} for the \
             burst, {} for open loop, one per client for closed loop), so connection set-up is \
             not counted as accept latency; `conns opened` counts any opened while measuring.",
            sizes.burst_jobs, sizes.prewarm
        ),
        "End-to-end = intended send → result row written (a `clock_timestamp()` default of an \
         extra column in the benchmark's own database, inside the committing transaction); \
         the ack follows the commit."
            .into(),
        "A rate is sustainable when every request got a 202, the answers kept pace (at most \
         max(0.5 s, 10 %) late) and, when the last answer arrived, the backlog was at most \
         max(capacity, 0.5 s of arrivals); between steps the backlog drains."
            .into(),
        "The ingress and every worker are separate processes: CPU s per 1,000 jobs is their \
         /proc utime+stime over the step (workers summed), peak RSS their VmHWM (reset with \
         clear_refs before each step; workers: the largest). `bench` = a broker or database \
         ceiling measured in a child process of its own (getrusage, VmHWM). The servers' CPU \
         (`rabbitmq-server` = beam.smp, `kafka-server` = the Kafka JVM, `postgres` = all its \
         processes) is included; other users of those servers on the machine count too."
            .into(),
        "Memory broker: the workers run inside the ingress process (as surge-producer does), \
         so its scaling rows are capacity × replicas in one process and its ingress-only \
         ceiling still has consumers."
            .into(),
    ]
}

/// The processes this binary can stand in for.
mod roles {
    use std::sync::Arc;

    use anyhow::Context;
    use clap::Parser;
    use surge_common::broker::BrokerKind;
    use surge_common::storage::Storage;
    use surge_producer::config::ProducerArgs;
    use surge_producer::{app, AppState};
    use surge_worker::config::WorkerArgs;
    use surge_worker::{Worker, WorkerOptions};

    fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
        Ok(tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?)
    }

    /// `surge-producer`'s job: the same flags, the same library calls.
    pub fn ingress(args: &[String]) -> anyhow::Result<()> {
        let args = ProducerArgs::parse_from(
            std::iter::once("surge-producer".to_owned()).chain(args.iter().cloned()),
        );
        runtime()?.block_on(async move {
            surge_common::telemetry::init(args.telemetry.log_format);
            let storage = Storage::connect(&args.database.database_url)
                .await
                .context("opening the results database")?;
            let broker = surge_common::broker::connect(&args.broker)
                .await
                .context("connecting to the broker")?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let embedded = (args.broker.broker == BrokerKind::Memory).then(|| {
                let options = WorkerOptions {
                    capacity: args.embedded_capacity,
                    retry: args.retry.policy(),
                    ..WorkerOptions::default()
                };
                let worker = Worker::new(broker.clone(), storage.clone(), options);
                let mut stopped = stopped.clone();
                tokio::spawn(worker.run(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                }))
            });
            let state = AppState::new(broker, storage, args.limits());
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            axum::serve(
                listener,
                app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(surge_common::shutdown::signal())
            .await?;
            let _ = stop.send(true);
            if let Some(worker) = embedded {
                worker.await??;
            }
            Ok(())
        })
    }

    /// `surge-worker`'s job: the same flags, the same library calls.
    pub fn worker(args: &[String]) -> anyhow::Result<()> {
        let args = WorkerArgs::parse_from(
            std::iter::once("surge-worker".to_owned()).chain(args.iter().cloned()),
        );
        runtime()?.block_on(async move {
            surge_common::telemetry::init(args.telemetry.log_format);
            let storage = Storage::connect(&args.database.database_url)
                .await
                .context("opening the results database")?;
            let broker = surge_common::broker::connect(&args.broker)
                .await
                .context("connecting to the broker")?;
            surge_common::metrics::install();
            let worker = Worker::new(broker, storage, args.options());
            worker.run(surge_common::shutdown::signal()).await?;
            Ok(())
        })
    }

    /// An in-process ceiling (broker or database) in a process of its own; its rows go to
    /// stdout as JSON.
    pub fn ceiling(args: &[String]) -> anyhow::Result<()> {
        let args = surge_benches::scenarios::CeilingArgs::parse_from(
            std::iter::once("__ceiling".to_owned()).chain(args.iter().cloned()),
        );
        surge_common::telemetry::init(surge_common::config::LogFormat::Text);
        let rows = runtime()?.block_on(surge_benches::scenarios::ceiling_here(&args))?;
        println!("{}", serde_json::to_string(&rows)?);
        Ok(())
    }

    #[derive(Debug, Parser)]
    struct NullArgs {
        #[arg(long)]
        listen: std::net::SocketAddr,
    }

    /// The HTTP ceiling: `POST /jobs` answers `202` with a fixed body, nothing else
    /// happens (same axum and tokio as the ingress, no middleware).
    pub fn null(args: &[String]) -> anyhow::Result<()> {
        let args =
            NullArgs::parse_from(std::iter::once("__null".to_owned()).chain(args.iter().cloned()));
        runtime()?.block_on(async move {
            let body: Arc<str> = Arc::from(format!(
                "{{\"id\":\"{0}\",\"status_url\":\"/jobs/{0}\"}}",
                uuid::Uuid::nil()
            ));
            let router = axum::Router::new()
                .route(
                    "/jobs",
                    axum::routing::post(move || {
                        let body = body.clone();
                        async move {
                            (
                                axum::http::StatusCode::ACCEPTED,
                                [(axum::http::header::CONTENT_TYPE, "application/json")],
                                body.to_string(),
                            )
                        }
                    }),
                )
                .route("/healthz", axum::routing::get(|| async { "ok" }));
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            axum::serve(listener, router)
                .with_graceful_shutdown(surge_common::shutdown::signal())
                .await?;
            Ok(())
        })
    }
}
