//! `surge-producer` binary: parse flags, connect, serve until SIGTERM / Ctrl-C.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use surge_common::broker::BrokerKind;
use surge_producer::config::ProducerArgs;
use surge_producer::{app, AppState};
use surge_worker::{Worker, WorkerOptions};
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = ProducerArgs::parse();
    surge_common::telemetry::init(args.telemetry.log_format);
    let storage = args.database.open().await?;
    let broker = args.broker.open().await?;

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

    let api_keys = args.api_keys().context("reading the API keys file")?;
    if api_keys.enabled() {
        tracing::info!("API keys required on the job endpoints");
    }
    let state = AppState::new(broker.clone(), storage, args.limits())
        .with_admission(args.admission())
        .with_api_keys(api_keys);
    let draining = state.draining.clone();
    let drain_delay = std::time::Duration::from_millis(args.drain_delay_ms);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(address = %listener.local_addr()?, "surge-producer listening");
    let shutdown = async move {
        surge_common::shutdown::signal().await;
        // Not ready, refuse new jobs; then stop accepting connections and let in-flight
        // requests (publishes awaiting their confirm) finish.
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(drain_delay).await;
    };
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving HTTP")?;
    let _ = stop.send(true);
    if let Some(worker) = embedded {
        worker.await.context("embedded worker panicked")??;
    }
    if let Err(e) = broker.close().await {
        tracing::warn!(error = %e, "closing the broker connection failed");
    }
    Ok(())
}
