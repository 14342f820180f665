//! Stopping a worker while it waits to reconnect: a broker that refuses every consume
//! keeps the worker in its back-off pause, and a shutdown requested during that pause
//! ends the run cleanly (it once panicked with "`async fn` resumed after completion":
//! the pause consumed the shutdown future and the loop polled it again).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use surge_common::broker::{Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries};
use surge_common::job::Job;
use surge_common::kinds::KindRegistry;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_worker::{Worker, WorkerOptions};
use tokio::sync::Notify;

/// A broker that is down: every consume fails as unavailable, and says it was tried.
struct DownBroker {
    tried: Arc<Notify>,
}

#[async_trait]
impl Broker for DownBroker {
    async fn publish(&self, _jobs: &[Job]) -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable("down for the test".into()))
    }

    async fn consume(&self, _options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        self.tried.notify_one();
        Err(BrokerError::Unavailable("down for the test".into()))
    }

    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        Err(BrokerError::Unavailable("down for the test".into()))
    }

    fn name(&self) -> &'static str {
        "down"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_the_reconnect_pause_stops_the_worker() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let tried = Arc::new(Notify::new());
    let broker = Arc::new(DownBroker {
        tried: tried.clone(),
    });
    let worker = Worker::new(
        broker,
        storage,
        KindRegistry::builder().build(),
        WorkerOptions::default(),
    );
    // Shutdown completes right after the first failed consume, so it fires while the
    // worker sits in the back-off pause that follows.
    let shutdown = async move { tried.notified().await };
    let run = tokio::spawn(worker.run(shutdown));
    let ended = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the worker stops within 30 s of the shutdown");
    let result = ended.expect("the worker does not panic");
    assert!(result.is_ok(), "a clean stop: {result:?}");
}
