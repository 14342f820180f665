//! `surge-producer` binary: parse flags, connect, serve until SIGTERM / Ctrl-C.

use anyhow::Context;
use clap::Parser;
use surge_common::broker::BrokerKind;
use surge_common::config::redact_url;
use surge_common::storage::Storage;
use surge_producer::config::ProducerArgs;
use surge_producer::{app, AppState};
use surge_worker::{Worker, WorkerOptions};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ProducerArgs::parse();
    surge_common::telemetry::init(args.telemetry.log_format);
    let storage = Storage::connect(&args.database.database_url)
        .await
        .with_context(|| {
            format!(
                "opening the results database {}",
                redact_url(&args.database.database_url)
            )
        })?;
    let broker = surge_common::broker::connect(&args.broker)
        .await
        .context("connecting to the broker")?;

    let (stop, stopped) = watch::channel(false);
    let embedded = if args.broker.broker == BrokerKind::Memory {
        tracing::warn!(
            capacity = args.embedded_capacity,
            "memory broker: jobs are NOT durable and are run by workers inside this process"
        );
        let options = WorkerOptions {
            capacity: args.embedded_capacity,
            retry: args.retry.policy(),
            ..WorkerOptions::default()
        };
        let worker = Worker::new(broker.clone(), storage.clone(), options);
        let mut stopped = stopped.clone();
        Some(tokio::spawn(worker.run(async move {
            let _ = stopped.wait_for(|s| *s).await;
        })))
    } else {
        None
    };

    let state = AppState {
        broker,
        storage,
        limits: args.limits(),
        live: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "surge-producer listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(surge_common::shutdown::signal())
        .await
        .context("serving HTTP")?;
    let _ = stop.send(true);
    if let Some(worker) = embedded {
        worker.await.context("embedded worker panicked")??;
    }
    Ok(())
}
