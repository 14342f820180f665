//! The `surge-producer` command line (flags with `SURGE_*` environment fallbacks).

use std::net::SocketAddr;

use surge_common::config::{BrokerArgs, DatabaseArgs, RetryArgs, TelemetryArgs};

use crate::state::Limits;

/// `surge-producer`: the HTTP ingress.
#[derive(Debug, Clone, clap::Parser)]
#[command(version, about)]
pub struct ProducerArgs {
    /// Address to listen on.
    #[arg(long, env = "SURGE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Largest request body, in bytes.
    #[arg(long, env = "SURGE_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Most jobs in one `POST /jobs/batch`.
    #[arg(long, env = "SURGE_MAX_BATCH", default_value_t = 1000)]
    pub max_batch: usize,
    /// With `--broker memory`: capacity of the workers run inside this process (the memory
    /// broker cannot be reached by other processes).
    #[arg(long, env = "SURGE_EMBEDDED_CAPACITY", default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    pub embedded_capacity: u16,
    /// Broker connection.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Results database (read by `GET /jobs/{id}`).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Retry policy of the embedded workers.
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl ProducerArgs {
    /// The request limits these flags describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_batch: self.max_batch,
        }
    }
}
