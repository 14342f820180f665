//! `surge-demo`: the 400-against-200 burst, end to end, with a report.
//!
//! Default: embedded (memory broker, a fresh SQLite file, ingress on 127.0.0.1, workers as
//! tasks in this process). `--broker rabbitmq` / `--broker kafka` run the same burst
//! through the real broker, on a queue / topic of its own for this run.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use surge_benches::burst::{self, BurstConfig};
use surge_common::broker::{Broker, BrokerKind};
use surge_common::config::{redact_url, BrokerArgs, TelemetryArgs};
use surge_common::storage::Storage;

/// Fire a burst of concurrent jobs at an ingress with a bounded worker capacity and check
/// that every accepted job is persisted exactly once.
#[derive(Debug, Parser)]
#[command(version, about)]
struct DemoArgs {
    /// Concurrent POSTs in the burst.
    #[arg(long, default_value_t = 400)]
    jobs: usize,
    /// Jobs in flight at most, across all workers.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    capacity: u16,
    /// Workers sharing the capacity with a real broker [default: 2; 1 with --broker kafka,
    /// see below]. The memory broker always runs one: the ingress's embedded worker, as
    /// `surge-producer --broker memory` does.
    ///
    /// On Kafka each worker is a consumer-group member; a member that joins while the burst
    /// runs triggers a rebalance, which waits for the in-flight jobs of the partitions that
    /// move and pauses the group meanwhile, so the drain is slower than with one member.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    workers: Option<u16>,
    /// Duration of each (sleep) job, in milliseconds.
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
        "surge-demo: {} jobs of {} ms against capacity {} ({} worker{}) — broker {:?}, queue {}, database {}",
        args.jobs,
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

    let config = BurstConfig {
        jobs: args.jobs,
        capacity: args.capacity,
        workers,
        job_ms: args.job_ms,
        drain_timeout: burst::ideal_drain_for(args.jobs, args.capacity, args.job_ms) * 5
            + Duration::from_secs(60),
        progress: true,
    };
    let report = burst::run(broker.clone(), storage, &config).await?;
    if let Err(e) = broker.delete_topology().await {
        eprintln!("note: could not remove this run's queues: {e}");
    }
    println!("{report}");
    let broken = report.violations();
    if !broken.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
