//! An in-process Surge: the ingress on an ephemeral loopback port plus worker tasks, on
//! whichever broker and database the caller connected.

use std::net::SocketAddr;
use std::sync::Arc;

use surge_common::broker::Broker;
use surge_common::storage::Storage;
use surge_producer::{app, AppState, Limits};
use surge_worker::stats::StatsSnapshot;
use surge_worker::{Worker, WorkerOptions, WorkerStats};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running ingress and its workers. Call [`Stack::stop`] to shut both down cleanly.
pub struct Stack {
    /// Where the ingress listens.
    pub address: SocketAddr,
    workers: Vec<(Arc<WorkerStats>, JoinHandle<()>)>,
    server: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl Stack {
    /// Starts the ingress and `worker_count` worker tasks sharing `capacity` (each gets an
    /// equal share, so the total in flight never exceeds `capacity`).
    pub async fn start(
        broker: Arc<dyn Broker>,
        storage: Storage,
        capacity: u16,
        worker_count: u16,
    ) -> std::io::Result<Stack> {
        let (stop, stopped) = watch::channel(false);
        let worker_count = worker_count.clamp(1, capacity.max(1));
        let share = capacity / worker_count;
        let mut workers = Vec::new();
        for i in 0..worker_count {
            let options = WorkerOptions {
                capacity: share,
                worker_id: format!("demo-worker-{i}"),
                ..WorkerOptions::default()
            };
            let worker = Worker::new(broker.clone(), storage.clone(), options);
            let stats = worker.stats();
            let mut stopped = stopped.clone();
            let handle = tokio::spawn(async move {
                let until = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                if let Err(e) = worker.run(until).await {
                    tracing::error!(error = %e, "worker stopped with an error");
                }
            });
            workers.push((stats, handle));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let state = AppState::new(broker, storage, Limits::default());
        let mut stopped = stopped.clone();
        let server = tokio::spawn(async move {
            let until = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app(state))
                .with_graceful_shutdown(until)
                .await
            {
                tracing::error!(error = %e, "ingress stopped with an error");
            }
        });
        Ok(Stack {
            address,
            workers,
            server,
            stop,
        })
    }

    /// The workers' counters, summed (peak in flight is the sum of per-worker peaks, an
    /// upper bound of the true simultaneous peak).
    pub fn worker_stats(&self) -> StatsSnapshot {
        self.workers.iter().map(|(stats, _)| stats.snapshot()).fold(
            StatsSnapshot::default(),
            |a, b| StatsSnapshot {
                in_flight: a.in_flight + b.in_flight,
                peak_in_flight: a.peak_in_flight + b.peak_in_flight,
                succeeded: a.succeeded + b.succeeded,
                retried: a.retried + b.retried,
                dead: a.dead + b.dead,
                duplicates: a.duplicates + b.duplicates,
            },
        )
    }

    /// Stops the ingress and the workers and waits for both.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        for (_, handle) in self.workers {
            let _ = handle.await;
        }
    }
}
