//! `surge-producer` binary: parse flags, start logging, serve until SIGTERM / Ctrl-C.

#![forbid(unsafe_code)]

use clap::Parser;
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ProducerArgs::parse();
    surge_common::telemetry::init_with(&args.telemetry, "surge-producer")?;
    Ingress::build(&args)
        .await?
        .run_until_stopped(surge_common::shutdown::signal())
        .await?;
    surge_common::otlp::flush();
    Ok(())
}
