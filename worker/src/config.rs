//! The `surge-worker` command line (flags with `SURGE_*` environment fallbacks).

use std::time::Duration;

use surge_common::broker::BrokerKind;
use surge_common::config::{
    BrokerArgs, CallbackArgs, DatabaseArgs, KindsArgs, RetryArgs, TelemetryArgs,
};

use crate::runner::{default_worker_id, WorkerOptions};

/// `surge-worker`: consume jobs, run them, commit results, ack.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about)]
pub struct WorkerArgs {
    /// Broker connection.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Results database.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Retry policy.
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Job kinds (`--config`).
    #[command(flatten)]
    pub kinds: KindsArgs,
    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Most jobs this replica runs at once (the broker prefetch). Capacity across the
    /// deployment = this × replicas.
    #[arg(long, env = "SURGE_CAPACITY", default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    pub capacity: u16,
    /// Consumer group (Kafka).
    #[arg(long, env = "SURGE_GROUP", default_value = "surge-workers")]
    pub group: String,
    /// Name stored with each result (default: hostname-pid).
    #[arg(long, env = "SURGE_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Most results committed in one database transaction (group commit).
    #[arg(long, env = "SURGE_WRITE_BATCH", default_value_t = 256)]
    pub write_batch: usize,
    /// Serve `GET /metrics` (Prometheus) and `GET /healthz` on this address, e.g.
    /// `0.0.0.0:9090`. Off by default (replicas on one host would collide).
    #[arg(long, env = "SURGE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Outcome callbacks: signing key, internal receivers allowed.
    #[command(flatten)]
    pub callbacks: CallbackArgs,
    /// Seconds in-flight jobs may run on after SIGTERM/SIGINT.
    #[arg(long, env = "SURGE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
}

impl WorkerArgs {
    /// The runner options these flags describe.
    pub fn options(&self) -> WorkerOptions {
        WorkerOptions {
            capacity: self.capacity,
            group: self.group.clone(),
            worker_id: self.worker_id.clone().unwrap_or_else(default_worker_id),
            retry: self.retry.policy(),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            write_batch: self.write_batch,
            max_replicas: match self.broker.broker {
                BrokerKind::Kafka => u32::try_from(self.broker.kafka_partitions).ok(),
                _ => None,
            },
            callback_secret: self.callbacks.callback_secret.clone(),
            ..WorkerOptions::default()
        }
    }
}
