//! `surge-worker` binary: parse flags, start logging, run until SIGTERM / Ctrl-C.

#![forbid(unsafe_code)]

use clap::Parser;
use surge_worker::config::WorkerArgs;
use surge_worker::WorkerService;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    surge_common::telemetry::init_with(&args.telemetry, "surge-worker")?;
    WorkerService::build(&args)
        .await?
        .run_until_stopped(surge_common::shutdown::signal())
        .await?;
    surge_common::otlp::flush();
    Ok(())
}
