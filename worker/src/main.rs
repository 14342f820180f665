//! `surge-worker` binary: parse flags, connect, run until SIGTERM / Ctrl-C.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use surge_common::broker::BrokerKind;
use surge_worker::config::WorkerArgs;
use surge_worker::Worker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = WorkerArgs::parse();
    surge_common::telemetry::init(args.telemetry.log_format);
    if args.broker.broker == BrokerKind::Memory {
        anyhow::bail!(
            "the memory broker lives inside one process, so a separate worker cannot reach it: \
             use --broker rabbitmq or --broker kafka (surge-producer runs embedded workers \
             for the memory broker)"
        );
    }
    let storage = args.database.open().await?;
    let broker = args.broker.open().await?;
    surge_common::metrics::install();
    if let Some(address) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the metrics address {address}"))?;
        tracing::info!(%address, "serving /metrics and /healthz");
        tokio::spawn(async move {
            let routes = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(|| async { surge_common::metrics::render() }),
                )
                .route("/healthz", axum::routing::get(|| async { "ok" }));
            if let Err(e) = axum::serve(listener, routes).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    let worker = Worker::new(broker.clone(), storage, args.options());
    worker.run(surge_common::shutdown::signal()).await?;
    // Every in-flight job is settled; let the last acks reach the broker before exiting.
    if let Err(e) = broker.close().await {
        tracing::warn!(error = %e, "closing the broker connection failed");
    }
    Ok(())
}
