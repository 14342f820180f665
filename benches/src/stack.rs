//! An in-process Surge: the ingress on an ephemeral loopback port plus workers, on
//! whichever broker and database the caller connected — started through the same entry
//! points as `surge-producer` and `surge-worker` ([`Ingress`], [`WorkerService`]), from
//! the same flags.
//!
//! Memory broker: the ingress's embedded workers run the jobs, as `surge-producer --broker
//! memory` does. Real brokers: `worker_count` worker services share the capacity.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use surge_common::broker::Broker;
use surge_common::storage::Storage;
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use surge_worker::config::WorkerArgs;
use surge_worker::stats::StatsSnapshot;
use surge_worker::{WorkerService, WorkerStats};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running ingress and its workers. Call [`Stack::stop`] to shut both down cleanly.
pub struct Stack {
    /// Where the ingress listens.
    pub address: SocketAddr,
    stats: Vec<Arc<WorkerStats>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Stack {
    /// Starts the ingress and workers with `capacity` jobs in flight at most: on the
    /// memory broker the ingress's embedded workers; otherwise `worker_count` worker
    /// services, each with an equal share. `config_file` is given to the ingress and
    /// every worker as `--config`.
    pub async fn start(
        broker: Arc<dyn Broker>,
        storage: Storage,
        capacity: u16,
        worker_count: u16,
        config_file: Option<&Path>,
    ) -> anyhow::Result<Stack> {
        // The broker's name is its `--broker` value.
        let kind = broker.name();
        let (stop, stopped) = watch::channel(false);
        let until = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            }
        };
        let capacity = capacity.max(1);
        let config_flag: Vec<String> = config_file
            .map(|path| vec!["--config".to_owned(), path.display().to_string()])
            .unwrap_or_default();
        let capacity_flag = capacity.to_string();
        let ingress_args = ProducerArgs::try_parse_from(
            [
                "surge-producer",
                "--listen",
                "127.0.0.1:0",
                "--broker",
                kind,
                "--embedded-capacity",
                &capacity_flag,
                "--embedded-worker-id",
                "demo-worker-0",
                "--builtin-kinds",
                "true",
            ]
            .into_iter()
            .chain(config_flag.iter().map(String::as_str)),
        )?;
        let ingress = Ingress::build_with(&ingress_args, broker.clone(), storage.clone()).await?;
        let address = ingress.local_addr();
        let mut stats: Vec<_> = ingress.worker_stats().into_iter().collect();
        let mut tasks = Vec::new();
        if kind != "memory" {
            let worker_count = worker_count.clamp(1, capacity);
            let share = capacity / worker_count;
            for i in 0..worker_count {
                let (share, id) = (share.to_string(), format!("demo-worker-{i}"));
                let args = WorkerArgs::try_parse_from(
                    [
                        "surge-worker",
                        "--broker",
                        kind,
                        "--capacity",
                        &share,
                        "--worker-id",
                        &id,
                        "--builtin-kinds",
                        "true",
                    ]
                    .into_iter()
                    .chain(config_flag.iter().map(String::as_str)),
                )?;
                let worker =
                    WorkerService::build_with(&args, broker.clone(), storage.clone()).await?;
                stats.push(worker.stats());
                let until = until();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = worker.run_until_stopped(until).await {
                        tracing::error!(error = %e, "worker stopped with an error");
                    }
                }));
            }
        }
        let until = until();
        tasks.insert(
            0,
            tokio::spawn(async move {
                if let Err(e) = ingress.run_until_stopped(until).await {
                    tracing::error!(error = %e, "ingress stopped with an error");
                }
            }),
        );
        Ok(Stack {
            address,
            stats,
            tasks,
            stop,
        })
    }

    /// The workers' counters, summed (peak in flight is the sum of per-worker peaks, an
    /// upper bound of the true simultaneous peak).
    pub fn worker_stats(&self) -> StatsSnapshot {
        self.stats
            .iter()
            .map(|stats| stats.snapshot())
            .fold(StatsSnapshot::default(), |a, b| StatsSnapshot {
                in_flight: a.in_flight + b.in_flight,
                peak_in_flight: a.peak_in_flight + b.peak_in_flight,
                succeeded: a.succeeded + b.succeeded,
                retried: a.retried + b.retried,
                dead: a.dead + b.dead,
                duplicates: a.duplicates + b.duplicates,
                deferred: a.deferred + b.deferred,
            })
    }

    /// Stops the ingress and the workers and waits for all of them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
