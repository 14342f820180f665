//! The ingress's one entry point: build it from its settings, run it until a shutdown
//! future completes.
//!
//! `surge-producer`'s `main`, the benchmark's ingress role, the demo and the tests all
//! start the ingress through [`Ingress::build`] / [`Ingress::build_with`] and
//! [`Ingress::run_until_stopped`], so what they measure is `surge-producer`: the same
//! admission control, API keys, connection bounds, drain delay and embedded workers.
//!
//! Ownership of the broker connection: [`Ingress::build`] opens the broker and closes it
//! once every request and embedded worker is done; with [`Ingress::build_with`] the caller
//! opened it, may share it, and closes it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use surge_common::broker::{Broker, BrokerKind};
use surge_common::config::{KindsError, OpenError};
use surge_common::kinds::{KindRegistry, KindRegistryBuilder};
use surge_common::storage::Storage;
use surge_worker::service::ServiceError;
use surge_worker::{WorkerService, WorkerStats};
use tokio::net::TcpListener;

use crate::config::ProducerArgs;
use crate::server::{self, ServeOptions};
use crate::state::AppState;

/// Why the ingress could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The broker or the database could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The job kinds (`--config`, or kinds registered in code) are wrong.
    #[error(transparent)]
    Kinds(#[from] KindsError),
    /// `--api-keys-file` could not be read.
    #[error("reading the API keys file: {0}")]
    ApiKeys(std::io::Error),
    /// The listen address could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded workers failed.
    #[error("embedded worker: {0}")]
    Worker(#[from] ServiceError),
    /// The embedded workers' task panicked.
    #[error("embedded worker panicked")]
    WorkerPanicked,
}

/// An ingress ready to serve: listener bound, broker and database open, state built.
pub struct Ingress {
    listener: TcpListener,
    state: AppState,
    broker: Arc<dyn Broker>,
    owns_broker: bool,
    embedded: Option<WorkerService>,
    drain_delay: Duration,
    serve: ServeOptions,
    retention: surge_common::storage::retention::RetentionPolicy,
}

impl Ingress {
    /// `surge-producer` from its flags: opens the results database and the broker, then
    /// [`Ingress::build_with`].
    pub async fn build(args: &ProducerArgs) -> Result<Ingress, IngressError> {
        Ingress::build_with_kinds(args, KindRegistry::builder()).await
    }

    /// A team's own ingress binary: [`Ingress::build`] accepting, next to the kinds of
    /// `--config`, those registered in `own` (Rust handlers; their `validate` runs here,
    /// their `run` in the workers built with the same kinds,
    /// `surge_worker::WorkerService::build_with_kinds`).
    pub async fn build_with_kinds(
        args: &ProducerArgs,
        own: KindRegistryBuilder,
    ) -> Result<Ingress, IngressError> {
        let storage = args.database.open().await?;
        let broker = args.broker.open().await?;
        let kinds = args
            .kinds
            .registry(own, &storage, args.broker.broker, &args.callbacks)?;
        let schedules = args.kinds.schedules(&kinds)?;
        let mut ingress = Ingress::assemble(args, broker, storage, kinds, schedules).await?;
        ingress.owns_broker = true;
        Ok(ingress)
    }

    /// The ingress on a broker and database the caller opened: API keys, admission
    /// control, request limits and connection bounds from `args`; with `--broker memory`,
    /// workers of `--embedded-capacity` inside this process; the listener bound to
    /// `--listen` (port 0 picks a free one, see [`Ingress::local_addr`]). The broker is
    /// not closed at the end.
    pub async fn build_with(
        args: &ProducerArgs,
        broker: Arc<dyn Broker>,
        storage: Storage,
    ) -> Result<Ingress, IngressError> {
        let kinds = args.kinds.registry(
            KindRegistry::builder(),
            &storage,
            args.broker.broker,
            &args.callbacks,
        )?;
        let schedules = args.kinds.schedules(&kinds)?;
        Ingress::assemble(args, broker, storage, kinds, schedules).await
    }

    async fn assemble(
        args: &ProducerArgs,
        broker: Arc<dyn Broker>,
        storage: Storage,
        kinds: KindRegistry,
        schedules: Vec<surge_common::recurring::Schedule>,
    ) -> Result<Ingress, IngressError> {
        let api_keys = args.api_keys().map_err(IngressError::ApiKeys)?;
        if api_keys.enabled() {
            tracing::info!(scope = ?api_keys.scope(), "API keys required");
        }
        let embedded = (args.broker.broker == BrokerKind::Memory).then(|| {
            tracing::warn!(
                capacity = args.embedded_capacity,
                "memory broker: jobs are NOT durable and are run by workers inside this process"
            );
            WorkerService::embedded(
                broker.clone(),
                storage.clone(),
                kinds.clone(),
                args.embedded_worker_options(),
            )
        });
        if let Some(workers) = &embedded {
            workers.prepare().await?;
        }
        let state = AppState::new(broker.clone(), storage, args.limits())
            .with_admission(args.admission())
            .with_api_keys(api_keys)
            .with_trusted_proxies(args.trusted_proxies.clone().unwrap_or_default())
            .with_idle_timeout(args.serve_options().idle_timeout)
            .with_kinds(kinds)
            .with_schedules(schedules);
        let listener = crate::server::bind(args.listen).map_err(|source| IngressError::Bind {
            address: args.listen,
            source,
        })?;
        Ok(Ingress {
            listener,
            state,
            broker,
            owns_broker: false,
            embedded,
            drain_delay: Duration::from_millis(args.drain_delay_ms),
            serve: args.serve_options(),
            retention: args.retention.policy(),
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// What the handlers share (broker, storage, admission, the draining flag).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The embedded workers' counters (memory broker only).
    pub fn worker_stats(&self) -> Option<Arc<WorkerStats>> {
        self.embedded.as_ref().map(WorkerService::stats)
    }

    /// Runs the embedded workers and serves until `shutdown` completes; then refuses new
    /// jobs and answers 503 on `/readyz` for the drain delay, stops accepting connections,
    /// lets in-flight requests finish, stops the embedded workers (settling their jobs) and
    /// closes the broker if it opened it.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), IngressError> {
        let Ingress {
            listener,
            state,
            broker,
            owns_broker,
            embedded,
            drain_delay,
            serve,
            retention,
        } = self;
        if let Ok(address) = listener.local_addr() {
            tracing::info!(%address, "surge-producer listening");
        }
        let (stop_workers, workers_stopped) = tokio::sync::watch::channel(false);
        let embedded = embedded.map(|service| {
            let mut stopped = workers_stopped.clone();
            tokio::spawn(service.run_until_stopped(async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        });
        let mut scheduler_stopped = workers_stopped.clone();
        let scheduler = tokio::spawn(crate::scheduler::run(state.clone(), async move {
            let _ = scheduler_stopped.wait_for(|s| *s).await;
        }));
        let mut pruner_stopped = workers_stopped.clone();
        let pruner = tokio::spawn(crate::retention::run(
            state.storage.clone(),
            retention,
            format!(
                "{}-{}",
                surge_worker::runner::default_worker_id(),
                uuid::Uuid::new_v4()
            ),
            async move {
                let _ = pruner_stopped.wait_for(|s| *s).await;
            },
        ));
        let mut recurring_stopped = workers_stopped.clone();
        let recurring = tokio::spawn(crate::recurring::run(state.clone(), async move {
            let _ = recurring_stopped.wait_for(|s| *s).await;
        }));
        let draining = state.draining.clone();
        let drain = async move {
            shutdown.await;
            // Not ready, refuse new jobs; then stop accepting connections and let in-flight
            // requests (publishes awaiting their confirm) finish.
            draining.store(true, Ordering::Relaxed);
            tokio::time::sleep(drain_delay).await;
        };
        server::serve(listener, crate::app(state), serve, drain).await;
        let _ = stop_workers.send(true);
        let _ = recurring.await;
        let _ = scheduler.await;
        let _ = pruner.await;
        let workers = match embedded {
            Some(task) => match task.await {
                Ok(result) => result.map_err(IngressError::from),
                Err(_) => Err(IngressError::WorkerPanicked),
            },
            None => Ok(()),
        };
        if owns_broker {
            if let Err(e) = broker.close().await {
                tracing::warn!(error = %e, "closing the broker connection failed");
            }
        }
        workers
    }
}
