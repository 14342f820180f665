//! The `surge-producer` command line (flags with `SURGE_*` environment fallbacks).

use std::net::SocketAddr;

use surge_common::config::{
    BrokerArgs, CallbackArgs, DatabaseArgs, KindsArgs, RetentionArgs, RetryArgs, TelemetryArgs,
};

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
    /// Longest wait, in milliseconds, for the broker to confirm a publish; beyond it the
    /// client gets 503 (Retry-After) and the jobs are cancelled (they never run).
    #[arg(long, env = "SURGE_PUBLISH_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_timeout_ms: u64,
    /// Answer 503 (with Retry-After from the drain rate) once this many jobs wait in the
    /// broker. Off when absent.
    #[arg(long, env = "SURGE_MAX_BACKLOG")]
    pub max_backlog: Option<u64>,
    /// Jobs per second each client (API key, else address) may submit; 429 beyond. Off
    /// when absent.
    #[arg(long, env = "SURGE_CLIENT_RATE")]
    pub client_rate: Option<std::num::NonZeroU32>,
    /// Burst allowance of the per-client rate (default: the rate).
    #[arg(long, env = "SURGE_CLIENT_BURST")]
    pub client_burst: Option<std::num::NonZeroU32>,
    /// API keys for the job endpoints, comma separated. Off when absent.
    #[arg(long, env = "SURGE_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<String>,
    /// File with one API key per line (added to --api-keys).
    #[arg(long, env = "SURGE_API_KEYS_FILE")]
    pub api_keys_file: Option<std::path::PathBuf>,
    /// What the API keys protect: `jobs` (the job endpoints; health, metrics, the
    /// dashboard's data and the OpenAPI document stay open) or `all` (everything but
    /// /healthz, /readyz and the dashboard page, which asks for a key).
    #[arg(long, env = "SURGE_AUTH_SCOPE", value_enum, default_value = "jobs")]
    pub auth_scope: crate::auth::AuthScope,
    /// Proxies (addresses or CIDRs, comma separated) whose `X-Forwarded-For` / `Forwarded`
    /// header names the client for the per-client rate limit. A request from any other
    /// peer is counted by its own address, whatever it claims. None by default.
    #[arg(long, env = "SURGE_TRUSTED_PROXIES", value_parser = crate::client_addr::TrustedProxies::parse_flag)]
    pub trusted_proxies: Option<crate::client_addr::TrustedProxies>,
    /// After SIGTERM, answer 503 on /readyz and new jobs for this long before closing, so
    /// load balancers stop sending traffic; in-flight requests always finish.
    #[arg(long, env = "SURGE_DRAIN_DELAY_MS", default_value_t = 0)]
    pub drain_delay_ms: u64,
    /// Close a connection whose request head has not fully arrived this many milliseconds
    /// after the server started waiting for it (also closes keep-alive connections idle
    /// that long between requests).
    #[arg(long, env = "SURGE_HEADER_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_ms: u64,
    /// Close a connection on which no byte was received, or none could be sent, for this
    /// many milliseconds (a body that stops mid-way, a client that stops reading).
    #[arg(long, env = "SURGE_IDLE_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_ms: u64,
    /// Most client connections open at once; further ones wait in the kernel's accept
    /// queue until one closes. Keep it below the file descriptor limit (`ulimit -n`) minus
    /// what the broker and database connections need.
    #[arg(long, env = "SURGE_MAX_CONNECTIONS", default_value_t = 768, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// With `--broker memory`: capacity of the workers run inside this process (the memory
    /// broker cannot be reached by other processes).
    #[arg(long, env = "SURGE_EMBEDDED_CAPACITY", default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    pub embedded_capacity: u16,
    /// With `--broker memory`: the name the embedded workers store with each result
    /// (default: hostname-pid).
    #[arg(long, env = "SURGE_WORKER_ID")]
    pub embedded_worker_id: Option<String>,
    /// Outcome callbacks: signing key, internal receivers allowed.
    #[command(flatten)]
    pub callbacks: CallbackArgs,
    /// Broker connection.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Results database (read by `GET /jobs/{id}`).
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// How long finished jobs are kept.
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Retry policy of the embedded workers.
    #[command(flatten)]
    pub retry: RetryArgs,
    /// Job kinds (`--config`): give every worker the same file.
    #[command(flatten)]
    pub kinds: KindsArgs,
    /// Logging.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl ProducerArgs {
    /// The admission settings these flags describe.
    pub fn admission(&self) -> crate::admission::AdmissionConfig {
        crate::admission::AdmissionConfig {
            max_backlog: self.max_backlog,
            client_rate: self.client_rate,
            client_burst: self.client_burst,
        }
    }

    /// The API keys from `--api-keys` and `--api-keys-file`.
    pub fn api_keys(&self) -> std::io::Result<crate::auth::ApiKeys> {
        let mut list = self.api_keys.clone().unwrap_or_default();
        if let Some(path) = &self.api_keys_file {
            list.push('\n');
            list.push_str(&std::fs::read_to_string(path)?);
        }
        Ok(crate::auth::ApiKeys::parse(&list).with_scope(self.auth_scope))
    }

    /// The connection bounds these flags describe.
    pub fn serve_options(&self) -> crate::server::ServeOptions {
        crate::server::ServeOptions {
            header_timeout: std::time::Duration::from_millis(self.header_timeout_ms),
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
        }
    }

    /// The options of the workers embedded with the memory broker.
    pub fn embedded_worker_options(&self) -> surge_worker::WorkerOptions {
        let defaults = surge_worker::WorkerOptions::default();
        surge_worker::WorkerOptions {
            capacity: self.embedded_capacity,
            retry: self.retry.policy(),
            worker_id: self
                .embedded_worker_id
                .clone()
                .unwrap_or(defaults.worker_id.clone()),
            callback_secret: self.callbacks.callback_secret.clone(),
            ..defaults
        }
    }

    /// The request limits these flags describe.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_batch: self.max_batch,
            publish_timeout: std::time::Duration::from_millis(self.publish_timeout_ms),
        }
    }
}
