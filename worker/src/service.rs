//! The worker's one entry point: build it from its settings, run it until a shutdown
//! future completes.
//!
//! `surge-worker`'s `main`, the benchmark's worker role, the demo and the tests all start a
//! worker through [`WorkerService`], so a figure measured on any of them is a figure of
//! `surge-worker`. The ingress runs its embedded workers (memory broker) through
//! [`WorkerService::embedded`].
//!
//! Ownership of the broker connection: [`WorkerService::build`] opens the broker and
//! closes it after the last job is settled (so the last acks reach the broker);
//! [`WorkerService::build_with`] and [`WorkerService::embedded`] use a broker the caller
//! opened, and leave closing it to the caller, who may share it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use surge_common::broker::{Broker, BrokerKind};
use surge_common::config::{KindsError, OpenError};
use surge_common::kinds::{KindRegistry, KindRegistryBuilder};
use surge_common::storage::Storage;
use tokio::net::TcpListener;

use crate::config::WorkerArgs;
use crate::runner::{Worker, WorkerError, WorkerOptions};
use crate::stats::WorkerStats;

/// Why a worker could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The memory broker lives inside one process; a separate worker cannot reach it.
    #[error(
        "the memory broker lives inside one process, so a separate worker cannot reach it: \
         use --broker rabbitmq or --broker kafka (surge-producer runs embedded workers for \
         the memory broker)"
    )]
    MemoryBroker,
    /// The broker or the database could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The job kinds (`--config`, or kinds registered in code) are wrong.
    #[error(transparent)]
    Kinds(#[from] KindsError),
    /// The metrics address could not be bound.
    #[error("binding the metrics address {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The consume loop failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// A worker ready to run: storage and broker open, metrics address bound.
pub struct WorkerService {
    worker: Worker,
    kinds: KindRegistry,
    broker: Arc<dyn Broker>,
    owns_broker: bool,
    metrics: Option<TcpListener>,
}

impl WorkerService {
    /// `surge-worker` from its flags: opens the results database and the broker (refusing
    /// the memory broker), reads `--config`, binds `--metrics-listen`.
    pub async fn build(args: &WorkerArgs) -> Result<WorkerService, ServiceError> {
        WorkerService::build_with_kinds(args, KindRegistry::builder()).await
    }

    /// A team's own worker binary: [`WorkerService::build`] with the kinds registered in
    /// `own` (Rust handlers) next to those of `--config`. Give the ingress the same kinds
    /// (`surge_producer::Ingress::build_with_kinds`) so it accepts their jobs.
    pub async fn build_with_kinds(
        args: &WorkerArgs,
        own: KindRegistryBuilder,
    ) -> Result<WorkerService, ServiceError> {
        if args.broker.broker == BrokerKind::Memory {
            return Err(ServiceError::MemoryBroker);
        }
        let storage = args.database.open().await?;
        let broker = args.broker.open().await?;
        let kinds = args
            .kinds
            .registry(own, &storage, args.broker.broker, &args.callbacks)?;
        let mut service = WorkerService::assemble(args, broker, storage, kinds).await?;
        service.owns_broker = true;
        service.prepare().await?;
        Ok(service)
    }

    /// The same worker on a broker and database the caller opened (any broker, the
    /// memory one included, since the caller shares this process). The broker is not
    /// closed at the end.
    pub async fn build_with(
        args: &WorkerArgs,
        broker: Arc<dyn Broker>,
        storage: Storage,
    ) -> Result<WorkerService, ServiceError> {
        let kinds = args.kinds.registry(
            KindRegistry::builder(),
            &storage,
            args.broker.broker,
            &args.callbacks,
        )?;
        let service = WorkerService::assemble(args, broker, storage, kinds).await?;
        service.prepare().await?;
        Ok(service)
    }

    async fn assemble(
        args: &WorkerArgs,
        broker: Arc<dyn Broker>,
        storage: Storage,
        kinds: KindRegistry,
    ) -> Result<WorkerService, ServiceError> {
        let metrics = match args.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|source| ServiceError::Bind { address, source })?,
            ),
            None => None,
        };
        let mut service = WorkerService::embedded(broker, storage, kinds, args.options());
        service.metrics = metrics;
        Ok(service)
    }

    /// Workers inside another process (the ingress with the memory broker): no metrics
    /// listener of their own, the broker is the caller's, the kinds the ingress's.
    pub fn embedded(
        broker: Arc<dyn Broker>,
        storage: Storage,
        kinds: KindRegistry,
        options: WorkerOptions,
    ) -> WorkerService {
        WorkerService {
            worker: Worker::new(broker.clone(), storage, kinds.clone(), options),
            kinds,
            broker,
            owns_broker: false,
            metrics: None,
        }
    }

    /// Sets up what the kinds share with other replicas (the HTTP kinds' concurrency slots,
    /// in the results database) before the first job; refused when another replica uses
    /// another `concurrency` for a kind. The `build*` constructors do it; an
    /// [`WorkerService::embedded`] worker does it here or at the start of
    /// [`WorkerService::run_until_stopped`]. Done once; later calls return at once.
    pub async fn prepare(&self) -> Result<(), ServiceError> {
        self.kinds
            .prepare()
            .await
            .map_err(|e| ServiceError::Kinds(KindsError::Http(e)))
    }

    /// Live counters of this worker.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.worker.stats()
    }

    /// Where `GET /metrics` is served, when `--metrics-listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Consumes until `shutdown` completes, settles or releases the jobs in flight (see
    /// [`Worker::run`]), stops the metrics server, and closes the broker if it opened it.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServiceError> {
        surge_common::metrics::install();
        if let Err(error) = self.prepare().await {
            tracing::error!(%error, "the worker cannot start");
            return Err(error);
        }
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = self.metrics.map(|listener| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "serving /metrics and /healthz");
            }
            tokio::spawn(serve_metrics(listener, async {
                let _ = metrics_stopped.await;
            }))
        });
        let result = self.worker.run(shutdown).await;
        let _ = stop_metrics.send(());
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        if self.owns_broker {
            // Every in-flight job is settled; let the last acks reach the broker.
            if let Err(e) = self.broker.close().await {
                tracing::warn!(error = %e, "closing the broker connection failed");
            }
        }
        Ok(result?)
    }
}

/// `GET /metrics` (Prometheus) and `GET /healthz` on the worker's metrics address. An
/// internal port, off by default, so plain `axum::serve` (no connection bounds) is enough.
async fn serve_metrics(listener: TcpListener, shutdown: impl Future<Output = ()> + Send + 'static) {
    let routes = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async { surge_common::metrics::render() }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    if let Err(e) = axum::serve(listener, routes)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "metrics server stopped");
    }
}
