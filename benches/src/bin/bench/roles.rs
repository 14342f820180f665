//! The processes this binary can stand in for: `__ingress` and `__worker` run the same
//! entry points as `surge-producer` and `surge-worker`, `__ceiling` a ceiling measured in
//! a process of its own, `__null` the HTTP ceiling's do-nothing server.

use std::sync::Arc;

use clap::Parser;
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use surge_worker::config::WorkerArgs;
use surge_worker::WorkerService;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `surge-producer`: the same flags, the same entry point as its `main`.
pub fn ingress(args: &[String]) -> anyhow::Result<()> {
    let args = ProducerArgs::parse_from(
        std::iter::once("surge-producer".to_owned()).chain(args.iter().cloned()),
    );
    runtime()?.block_on(async move {
        surge_common::telemetry::init(args.telemetry.log_format);
        Ingress::build(&args)
            .await?
            .run_until_stopped(surge_common::shutdown::signal())
            .await?;
        Ok(())
    })
}

/// `surge-worker`: the same flags, the same entry point as its `main`.
pub fn worker(args: &[String]) -> anyhow::Result<()> {
    let args = WorkerArgs::parse_from(
        std::iter::once("surge-worker".to_owned()).chain(args.iter().cloned()),
    );
    runtime()?.block_on(async move {
        surge_common::telemetry::init(args.telemetry.log_format);
        WorkerService::build(&args)
            .await?
            .run_until_stopped(surge_common::shutdown::signal())
            .await?;
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
/// happens (the same axum, hyper connection handling and tokio as the ingress, no
/// middleware). `POST /ok` answers `200 {}` at once: the HTTP-dispatch scenario's target.
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
            .route(
                "/ok",
                axum::routing::post(|| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        "{}",
                    )
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        surge_producer::server::serve(
            listener,
            router,
            surge_producer::server::ServeOptions::default(),
            surge_common::shutdown::signal(),
        )
        .await;
        Ok(())
    })
}
