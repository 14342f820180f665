//! `surge-bench`'s command line.

use std::path::PathBuf;

use clap::Parser;
use surge_benches::deploy::Backend;

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// 1: burst against the capacity.
    Burst,
    /// 2: max sustainable rate and latency at shares of it.
    Rate,
    /// 3: 1, 2, 4 worker processes.
    Scaling,
    /// 4: HTTP, ingress, broker and database ceilings.
    Ceilings,
    /// 5: a fixed rate for a while, resident memory of every process sampled.
    Soak,
    /// 6: jobs/s through an HTTP kind (target answering at once) against echo.
    Dispatch,
    /// 7 (Kafka only, not in the default list): workers joining a consumer group
    /// mid-burst under each `--kafka-assignment` value.
    Rebalance,
    /// 8 (not in the default list): one key's backlog, then other keys' jobs: their wait,
    /// the big key's drain.
    Fairness,
}

/// Surge's benchmark: burst, max sustainable rate, scaling, ceilings and soak for the
/// memory broker, RabbitMQ and Kafka in one run.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Every scenario on every backend with tiny counts (proves the harness; < 1 minute).
    #[arg(long)]
    pub smoke: bool,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "burst,rate,scaling,ceilings,soak,dispatch"
    )]
    pub scenarios: Vec<Scenario>,
    /// Backends to run them on.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "memory,rabbitmq,rabbitmq-quorum,kafka"
    )]
    pub backends: Vec<Backend>,
    /// Results folder (results.md, results.json, *.svg, logs/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also copy results.md, results.json and the charts to benches/results/ (for the README).
    #[arg(long)]
    pub publish: bool,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "SURGE_TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "SURGE_TEST_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_brokers: String,
    /// PostgreSQL (fresh databases are created next to this one, and dropped).
    #[arg(
        long,
        env = "SURGE_TEST_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    pub postgres_url: String,
    /// Results database of the deployments.
    #[arg(long, value_enum, default_value = "postgres")]
    pub database: DbChoice,
    /// Database ceilings to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    pub db_ceilings: Vec<DbChoice>,
    /// RUST_LOG of the ingress and worker processes.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// Run the ingress and workers as this binary's roles even when `surge-producer` and
    /// `surge-worker` are next to it.
    #[arg(long)]
    pub self_roles: bool,
    /// Use this ingress executable (takes `surge-producer`'s flags), e.g. a patched build.
    #[arg(long)]
    pub ingress_exe: Option<PathBuf>,
    /// Use this worker executable (takes `surge-worker`'s flags).
    #[arg(long)]
    pub worker_exe: Option<PathBuf>,
    /// Burst: concurrent POSTs (default 400; smoke 20).
    #[arg(long)]
    pub burst_jobs: Option<usize>,
    /// Burst: capacity (default 200; smoke 10).
    #[arg(long)]
    pub burst_capacity: Option<u16>,
    /// Burst: job duration in ms (default 1000; smoke 100).
    #[arg(long)]
    pub burst_job_ms: Option<u64>,
    /// Soak: seconds of load (default 30; smoke 2).
    #[arg(long)]
    pub soak_secs: Option<f64>,
    /// Soak: offered jobs/s (default 500; smoke 50).
    #[arg(long)]
    pub soak_rate: Option<f64>,
    /// HTTP dispatch: jobs per measurement (default 20000; smoke 200).
    #[arg(long)]
    pub dispatch_jobs: Option<u64>,
    /// HTTP dispatch: rounds of (echo, http) measurements (default 2; smoke 1).
    #[arg(long)]
    pub dispatch_rounds: Option<u32>,
    /// Rate: seconds per ramp step (default 3).
    #[arg(long)]
    pub step_secs: Option<f64>,
    /// Rebalance: jobs per run (default 8000; smoke 300).
    #[arg(long)]
    pub rebalance_jobs: Option<u64>,
    /// Rebalance: rounds over the assignment values (default 2; smoke 1).
    #[arg(long)]
    pub rebalance_rounds: Option<u32>,
    /// Load only, against an ingress already running at this address (no scenarios):
    /// with `--rate`, open loop; with `--burst N`, one burst; else `--clients` closed loop.
    #[arg(long)]
    pub target: Option<std::net::SocketAddr>,
    /// Load only: offered jobs/s (open loop).
    #[arg(long, requires = "target")]
    pub rate: Option<f64>,
    /// Load only: concurrent POSTs of one burst.
    #[arg(long, requires = "target")]
    pub burst: Option<usize>,
    /// Load only: closed-loop connections (default 32).
    #[arg(long, requires = "target", default_value_t = 32)]
    pub clients: usize,
    /// Load only: seconds of load.
    #[arg(long, requires = "target", default_value_t = 10.0)]
    pub duration: f64,
    /// Load only: the job to POST.
    #[arg(
        long,
        requires = "target",
        default_value = r#"{"kind":"sleep","payload":{"ms":0}}"#
    )]
    pub body: String,
}

/// Which results database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbChoice {
    /// A SQLite file.
    Sqlite,
    /// PostgreSQL (`--postgres-url`).
    Postgres,
}
