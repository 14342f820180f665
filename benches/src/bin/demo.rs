//! `surge-demo`: the founding story, end to end. An API that handles only 200 requests at
//! a time (started here, on 127.0.0.1) is hit by 400 concurrent requests, first directly
//! (half of them get a 503), then through Surge with an HTTP kind pointing at it (all 400
//! accepted and succeeded, the API never over its limit); a side-by-side report and an
//! SVG of the API's in-flight requests over time. `--kind sleep`: the older burst of
//! `sleep` jobs against the workers' capacity.
//!
//! Default: embedded (memory broker, a fresh SQLite file, ingress on 127.0.0.1, workers as
//! tasks in this process). `--broker rabbitmq` / `--broker kafka` run the same story
//! through the real broker, on a queue / topic of its own for this run.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use surge_benches::burst::{self, BurstConfig};
use surge_benches::story::{self, StoryConfig};
use surge_common::broker::{Broker, BrokerKind};
use surge_common::config::{redact_url, BrokerArgs, TelemetryArgs};
use surge_common::storage::Storage;

/// What the demo posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoKind {
    /// The story: an API that handles `--capacity` requests at a time, called directly and
    /// through Surge's HTTP kind.
    Api,
    /// The burst of `sleep` jobs against the workers' capacity, no downstream service.
    Sleep,
}

/// An API that handles only 200 requests at a time meets 400 concurrent requests: directly,
/// then through Surge. Checks that through Surge every request is accepted, every job
/// succeeds exactly once, and the API never sees more than its limit.
#[derive(Debug, Parser)]
#[command(version, about)]
struct DemoArgs {
    /// Concurrent requests (in each run).
    #[arg(long, default_value_t = 400)]
    jobs: usize,
    /// The API's limit (requests it handles at once), which is also the HTTP kind's
    /// `concurrency` and the workers' total capacity. With `--kind sleep`: jobs in flight
    /// at most, across all workers.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    capacity: u16,
    /// The story (`api`) or the plain burst of sleep jobs (`sleep`).
    #[arg(long, value_enum, default_value = "api")]
    kind: DemoKind,
    /// Where to write the SVG of the API's in-flight requests over time [default:
    /// target/surge-demo-inflight.svg in the workspace this was built from, else the temp
    /// folder].
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Workers sharing the capacity with a real broker [default: 2; 1 with --broker kafka,
    /// see below]. The memory broker always runs one: the ingress's embedded worker, as
    /// `surge-producer --broker memory` does.
    ///
    /// On Kafka each worker is a consumer-group member; a member that joins while the burst
    /// runs triggers a rebalance, which waits for the in-flight jobs of the partitions that
    /// move and pauses the group meanwhile, so the drain is slower than with one member.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Time the API takes per request (with `--kind sleep`: each job's sleep), in
    /// milliseconds.
    #[arg(long, default_value_t = 1000)]
    job_ms: u64,
    /// Results database; default: a fresh SQLite file `surge-demo.db` in the temp folder.
    #[arg(long)]
    database_url: Option<String>,
    /// Broker connection (`--queue` is suffixed with a run id so runs never mix).
    #[command(flatten)]
    broker: BrokerArgs,
    /// Logging (warnings only unless RUST_LOG says otherwise).
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = DemoArgs::parse();
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    surge_common::telemetry::init(args.telemetry.log_format);

    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            let path = std::env::temp_dir().join("surge-demo.db");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite://{}", path.display())
        }
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    args.broker.queue = format!("{}.demo-{}", args.broker.queue, &run_id[..8]);

    let workers = match args.broker.broker {
        BrokerKind::Memory => 1,
        BrokerKind::Kafka => args.workers.unwrap_or(1),
        BrokerKind::Rabbitmq => args.workers.unwrap_or(2),
    };
    eprintln!(
        "surge-demo: {} {} jobs of {} ms, limit {} ({} worker{}) — broker {:?}, queue {}, database {}",
        args.jobs,
        match args.kind {
            DemoKind::Api => story::KIND,
            DemoKind::Sleep => "sleep",
        },
        args.job_ms,
        args.capacity,
        workers,
        if workers == 1 { "" } else { "s" },
        args.broker.broker,
        args.broker.queue,
        redact_url(&database_url)
    );
    let storage = Storage::connect(&database_url)
        .await
        .with_context(|| format!("opening {}", redact_url(&database_url)))?;
    let broker: Arc<dyn Broker> = args.broker.open().await?;
    let drain_timeout =
        burst::ideal_drain_for(args.jobs, args.capacity, args.job_ms) * 5 + Duration::from_secs(60);

    let broken = match args.kind {
        DemoKind::Api => {
            let config = StoryConfig {
                jobs: args.jobs,
                limit: args.capacity,
                workers,
                job_ms: args.job_ms,
                drain_timeout,
                config_dir: std::env::temp_dir(),
                progress: true,
            };
            let report = story::run(broker.clone(), storage, &config).await;
            remove_topology(&*broker).await;
            let report = report?;
            println!("{report}");
            let chart = args.chart.clone().unwrap_or_else(default_chart_path);
            match story::write_chart(&report, &chart) {
                Ok(()) => println!("  chart: {}", chart.display()),
                Err(e) => eprintln!("note: could not write the chart {}: {e:#}", chart.display()),
            }
            report.violations()
        }
        DemoKind::Sleep => {
            let mut config = BurstConfig::sleep(
                args.jobs,
                args.capacity,
                workers,
                args.job_ms,
                drain_timeout,
            );
            config.progress = true;
            let report = burst::run(broker.clone(), storage, &config).await;
            remove_topology(&*broker).await;
            let report = report?;
            println!("{report}");
            report.violations()
        }
    };
    if !broken.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

async fn remove_topology(broker: &dyn Broker) {
    if let Err(e) = broker.delete_topology().await {
        eprintln!("note: could not remove this run's queues: {e}");
    }
}

/// `target/surge-demo-inflight.svg` of the workspace this binary was built from, when that
/// folder exists; else the temp folder.
fn default_chart_path() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let dir = if target.is_dir() {
        target
    } else {
        std::env::temp_dir()
    };
    dir.join("surge-demo-inflight.svg")
}
