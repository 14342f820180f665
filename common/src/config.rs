//! Command-line / environment configuration shared by the binaries.
//!
//! Each binary flattens the groups it needs into one clap struct, read once at start-up.
//! Every flag has an environment fallback (`SURGE_*`, plus the conventional `DATABASE_URL`
//! and `AMQP_URL`), and the defaults run the embedded setup: memory broker, SQLite file.
//! URLs may carry passwords: use [`redact_url`] before logging one.

use std::time::Duration;

use crate::broker::BrokerKind;
pub use crate::redact::{redact_url, redact_urls};
use crate::retry::RetryPolicy;

/// Which broker to use and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker backend.
    #[arg(long, env = "SURGE_BROKER", value_enum, default_value = "memory")]
    pub broker: BrokerKind,
    /// RabbitMQ URL (with `--broker rabbitmq`); several nodes of one cluster as a
    /// comma-separated list: the first that answers is used, the next one when it drops.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
    /// RabbitMQ queue type of the main, retry and dead-letter queues (with `--broker
    /// rabbitmq`): `quorum` replicates them over a cluster.
    #[arg(
        long,
        env = "SURGE_RABBITMQ_QUEUE_TYPE",
        value_enum,
        default_value_t = crate::broker::QueueType::default()
    )]
    pub rabbitmq_queue_type: crate::broker::QueueType,
    /// Kafka bootstrap servers, comma separated (with `--broker kafka`).
    #[arg(long, env = "SURGE_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,
    /// Queue (RabbitMQ) or topic (Kafka) name; retry and dead-letter names derive from it.
    #[arg(long, env = "SURGE_QUEUE", default_value = "surge.jobs")]
    pub queue: String,
    /// Partitions of the Kafka topic when Surge creates it.
    #[arg(long, env = "SURGE_KAFKA_PARTITIONS", default_value_t = 6)]
    pub kafka_partitions: i32,
    /// How the Kafka consumer group assigns partitions when a worker joins or leaves:
    /// `eager` (classic protocol, range/roundrobin: every member gives up every partition),
    /// `cooperative-sticky` (classic protocol, only the moving partitions are revoked) or
    /// `consumer` (Kafka 4's KIP-848 protocol: the broker assigns, incrementally, with its
    /// own session timeout). Every member of a group must use the same value.
    #[arg(
        long,
        env = "SURGE_KAFKA_ASSIGNMENT",
        value_enum,
        default_value_t = crate::broker::KafkaAssignment::default()
    )]
    pub kafka_assignment: crate::broker::KafkaAssignment,
    /// The Kafka producer's `linger.ms`: how long a published job may wait for others to
    /// share its batch. It is added to every 202 (the ingress awaits Kafka's
    /// acknowledgement); higher means fewer, larger requests and a little less CPU.
    #[arg(
        long,
        env = "SURGE_KAFKA_LINGER_MS",
        default_value_t = crate::broker::kafka_tuning::DEFAULT_LINGER_MS,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::broker::kafka_tuning::MAX_LINGER_MS))
    )]
    pub kafka_linger_ms: u32,
    /// The Kafka consumer's `fetch.wait.max.ms`: how long the broker may hold a fetch that
    /// found nothing new. The broker answers as soon as a job arrives, so this only spaces
    /// an idle worker's fetches (lower: more idle requests).
    #[arg(
        long,
        env = "SURGE_KAFKA_FETCH_WAIT_MS",
        default_value_t = crate::broker::kafka_tuning::DEFAULT_FETCH_WAIT_MS,
        value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::broker::kafka_tuning::MAX_FETCH_WAIT_MS))
    )]
    pub kafka_fetch_wait_ms: u32,
}

/// Where results are stored.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// `sqlite://FILE` (created if missing) or `postgres://…`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://surge.db",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Most connections this process keeps to PostgreSQL, all pools together. Replicas
    /// share the server's limit (`max_connections`, 100 by default): keep the sum over
    /// every ingress and worker below it. One connection on SQLite, whatever this says.
    #[arg(
        long,
        env = "SURGE_DATABASE_CONNECTIONS",
        default_value_t = crate::storage::DEFAULT_POSTGRES_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(4..=10_000)
    )]
    pub database_connections: u32,
    /// Which driver runs the statements every job pays for on PostgreSQL: `portable`
    /// (multi-row `VALUES`, as on SQLite) or `native` (arrays and `unnest`: faster
    /// acceptance, but slower big-tenant drains in the fairness benchmark; see README).
    #[arg(
        long,
        env = "SURGE_DATABASE_DRIVER",
        value_enum,
        default_value = "portable"
    )]
    pub database_driver: crate::storage::driver::DriverChoice,
}

impl DatabaseArgs {
    /// Opens the results database (running its migrations). The error names the database
    /// by its redacted URL.
    pub async fn open(&self) -> Result<crate::storage::Storage, OpenError> {
        let options = crate::storage::StorageOptions {
            max_connections: self.database_connections,
            driver: self.database_driver,
        };
        crate::storage::Storage::connect_with(&self.database_url, options)
            .await
            .map_err(|source| OpenError::Database {
                url: redact_url(&self.database_url),
                source,
            })
    }
}

impl BrokerArgs {
    /// The Kafka clients' tuning these flags describe.
    pub fn kafka_tuning(&self) -> crate::broker::KafkaTuning {
        crate::broker::KafkaTuning {
            assignment: self.kafka_assignment,
            linger_ms: self.kafka_linger_ms,
            fetch_wait_ms: self.kafka_fetch_wait_ms,
        }
    }

    /// The broker these flags describe.
    pub fn target(&self) -> crate::broker::BrokerTarget {
        crate::broker::BrokerTarget {
            kind: self.broker,
            amqp_url: self.amqp_url.clone(),
            rabbitmq_queue_type: self.rabbitmq_queue_type,
            kafka_brokers: self.kafka_brokers.clone(),
            queue: self.queue.clone(),
            kafka_partitions: self.kafka_partitions,
            kafka_tuning: self.kafka_tuning(),
        }
    }

    /// Connects the configured broker; the error says which one and where.
    pub async fn open(&self) -> Result<std::sync::Arc<dyn crate::broker::Broker>, OpenError> {
        crate::broker::connect(&self.target())
            .await
            .map_err(|source| OpenError::Broker {
                target: match self.broker {
                    crate::broker::BrokerKind::Memory => "the memory broker".to_owned(),
                    crate::broker::BrokerKind::Rabbitmq => {
                        format!("RabbitMQ at {}", redact_urls(&self.amqp_url))
                    }
                    crate::broker::BrokerKind::Kafka => format!("Kafka at {}", self.kafka_brokers),
                },
                source,
            })
    }
}

/// A service a binary needs at start-up could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The results database.
    #[error("opening the results database {url}: {source}")]
    Database {
        /// The database URL, password redacted.
        url: String,
        /// Why.
        source: crate::storage::StorageError,
    },
    /// The broker.
    #[error("connecting to {target}: {source}")]
    Broker {
        /// Which broker, where (password redacted).
        target: String,
        /// Why.
        source: crate::broker::BrokerError,
    },
}

/// A secret from a flag or the environment: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(std::sync::Arc<str>);

impl Secret {
    /// The secret itself, for the code that uses it (never for logs).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() < 16 {
            return Err("a secret needs at least 16 characters".into());
        }
        Ok(Secret(s.into()))
    }
}

/// Outcome callbacks: the key that signs them and the internal receivers they may reach.
/// Give the ingress and every worker the same values.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CallbackArgs {
    /// Key that signs outcome callbacks (jobs with a `callback_url`): HMAC-SHA256 in the
    /// `Surge-Signature` header. At least 16 characters; give the ingress and every worker
    /// the same one. Without it the ingress refuses jobs with a `callback_url` (422), a
    /// kind with a `callback_url` is a start-up error, and callbacks already queued wait
    /// undelivered (the worker says so in its logs).
    #[arg(long, env = "SURGE_CALLBACK_SECRET", hide_env_values = true)]
    pub callback_secret: Option<Secret>,
    /// Internal receivers outcome callbacks may reach, comma separated: host names (any
    /// address they resolve to) or addresses / CIDR blocks, e.g.
    /// `hooks.internal,10.20.0.0/16`. Only public addresses otherwise: loopback, private,
    /// link-local and other reserved ones are refused. Added to `callback_allow` in the
    /// configuration file.
    #[arg(
        long,
        env = "SURGE_CALLBACK_ALLOW",
        value_delimiter = ',',
        value_name = "HOSTS_OR_CIDRS"
    )]
    pub callback_allow: Vec<crate::netpolicy::AllowEntry>,
}

/// Job kinds: the configuration file that declares them.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KindsArgs {
    /// Configuration file (TOML) declaring job kinds, e.g. HTTP kinds that POST each job
    /// to an existing service (see the README's "Put Surge in front of your API"). Give
    /// the ingress and every worker the same file.
    #[arg(long = "config", env = "SURGE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Register the built-in example kinds (`sleep`, `hash`, `echo`, `flaky`, `poison`):
    /// `true` or `false`. Absent: the config file's `builtin_kinds` decides, and without
    /// it they are on only with `--broker memory` (the embedded demo), so a durable setup
    /// does not take 10-minute sleeps or poison jobs from any client unless asked to.
    #[arg(long, env = "SURGE_BUILTIN_KINDS")]
    pub builtin_kinds: Option<bool>,
}

/// The kinds of a process could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum KindsError {
    /// The configuration file is missing or wrong.
    #[error(transparent)]
    File(#[from] crate::kinds::file::ConfigFileError),
    /// Two kinds with one name, or a bad name, among those registered in code.
    #[error(transparent)]
    Registry(#[from] crate::kinds::RegistryError),
    /// An HTTP kind could not be set up.
    #[error(transparent)]
    Http(#[from] crate::kinds::http::HttpKindError),
    /// A kind sends its jobs' outcomes to a `callback_url`, but nothing could sign them.
    #[error(
        "kind {kind:?} has a callback_url, but there is no --callback-secret \
         (SURGE_CALLBACK_SECRET) to sign callbacks"
    )]
    UnsignedCallbacks {
        /// The kind.
        kind: String,
    },
    /// A kind's `callback_url` points at an address callbacks may not reach.
    #[error("kind {kind:?}: callback_url: {message}")]
    CallbackTarget {
        /// The kind.
        kind: String,
        /// Why (never the URL itself).
        message: String,
    },
}

impl KindsArgs {
    /// The file's settings (the built-in kinds only, without `--config`).
    pub fn load(&self) -> Result<crate::kinds::file::SurgeConfig, KindsError> {
        match &self.config {
            Some(path) => Ok(crate::kinds::file::SurgeConfig::load(path)?),
            None => Ok(crate::kinds::file::SurgeConfig::default()),
        }
    }

    /// The file's recurring jobs (`[schedules.NAME]`), each one's kind known to `kinds` and
    /// its payload valid for it; an error names the key at fault
    /// (`schedules.nightly.kind`, `schedules.nightly.payload.scope`).
    pub fn schedules(
        &self,
        kinds: &crate::kinds::KindRegistry,
    ) -> Result<Vec<crate::recurring::Schedule>, KindsError> {
        let Some(path) = &self.config else {
            return Ok(Vec::new());
        };
        let invalid = |key: String, message: String| {
            KindsError::File(crate::kinds::file::ConfigFileError::Invalid {
                path: path.display().to_string(),
                error: crate::kinds::file::ConfigError::new(key, message),
            })
        };
        let schedules = self.load()?.schedules;
        for schedule in &schedules {
            let key = format!("schedules.{}", schedule.name);
            if let Err(e) = kinds.validate(&schedule.kind, &schedule.payload) {
                return Err(invalid(format!("{key}.{}", e.field), e.message));
            }
        }
        Ok(schedules)
    }

    /// Whether the built-in example kinds are on: `--builtin-kinds`, else the file's
    /// `builtin_kinds`, else only with the memory broker.
    pub fn builtins_on(&self, file: &crate::kinds::file::SurgeConfig, broker: BrokerKind) -> bool {
        self.builtin_kinds
            .or(file.builtin_kinds)
            .unwrap_or(broker == BrokerKind::Memory)
    }

    /// The registry of this process: `own` (kinds registered in Rust by a team's binary;
    /// `KindRegistry::builder()` for none) plus what the file declares, and the built-in
    /// example kinds as [`KindsArgs::builtins_on`] says for `broker`, accepting the
    /// `callback_url`s `callbacks` allows (with the file's `callback_allow`). `storage`
    /// holds the HTTP kinds' cross-replica flow-control state. A kind with a
    /// `callback_url` needs a `--callback-secret` and a target callbacks may reach.
    pub fn registry(
        &self,
        own: crate::kinds::KindRegistryBuilder,
        storage: &crate::storage::Storage,
        broker: BrokerKind,
        callbacks: &CallbackArgs,
    ) -> Result<crate::kinds::KindRegistry, KindsError> {
        let mut config = self.load()?;
        config.builtin_kinds = Some(self.builtins_on(&config, broker));
        let allowed = callbacks
            .callback_allow
            .iter()
            .chain(&config.callback_allow)
            .cloned();
        let policy = crate::job::CallbackPolicy {
            targets: std::sync::Arc::new(crate::netpolicy::AddressPolicy::new(allowed)),
            signed: callbacks.callback_secret.is_some(),
        };
        let registry = own
            .with_pauses(crate::kinds::pause::KindPauses::new(storage.clone()))
            .with_config(&config, storage)?
            .with_callback_policy(policy.clone())
            .try_build()?;
        for (name, kind) in registry.iter() {
            let Some(url) = kind.callback_url() else {
                continue;
            };
            if !policy.signed {
                return Err(KindsError::UnsignedCallbacks {
                    kind: name.to_owned(),
                });
            }
            policy
                .check(&url)
                .map_err(|invalid| KindsError::CallbackTarget {
                    kind: name.to_owned(),
                    message: invalid.message,
                })?;
        }
        tracing::info!(kinds = ?registry, "job kinds");
        Ok(registry)
    }
}

/// Log output.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "SURGE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Export spans to this OTLP/HTTP endpoint, e.g. `http://127.0.0.1:4318` (needs a
    /// binary built with the `otlp` cargo feature).
    #[arg(long, env = "SURGE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How long finished jobs and their bookkeeping are kept (see
/// [`crate::storage::retention`]). Each takes a number with a unit (`90s`, `30m`, `24h`,
/// `7d`); `0` keeps forever.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Keep succeeded jobs (and delivered callbacks) this long after they finished.
    #[arg(long, env = "SURGE_RETAIN_SUCCEEDED", default_value = "24h", value_parser = parse_window)]
    pub retain_succeeded: Window,
    /// Keep dead jobs (replayable until then) this long after they finished.
    #[arg(long, env = "SURGE_RETAIN_DEAD", default_value = "7d", value_parser = parse_window)]
    pub retain_dead: Window,
    /// Keep cancelled jobs and refused submissions this long.
    #[arg(long, env = "SURGE_RETAIN_CANCELLED", default_value = "24h", value_parser = parse_window)]
    pub retain_cancelled: Window,
    /// Keep an `Idempotency-Key` this long after its first use; a retry after that is a new
    /// job.
    #[arg(long, env = "SURGE_RETAIN_IDEMPOTENCY_KEYS", default_value = "24h", value_parser = parse_window)]
    pub retain_idempotency_keys: Window,
}

impl RetentionArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> crate::storage::retention::RetentionPolicy {
        crate::storage::retention::RetentionPolicy {
            succeeded: self.retain_succeeded.0,
            dead: self.retain_dead.0,
            cancelled: self.retain_cancelled.0,
            idempotency: self.retain_idempotency_keys.0,
        }
    }
}

/// A retention window: `None` keeps forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window(pub Option<Duration>);

/// Parses a retention window: `0` (forever) or a whole number with a unit `s`, `m`, `h`
/// or `d`, at most 100 years.
pub fn parse_window(text: &str) -> Result<Window, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Window(None));
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| {
        format!("{text:?} has no unit: write e.g. 90s, 30m, 24h or 7d (0 keeps forever)")
    })?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}: use s, m, h or d")),
    };
    const LONGEST: u64 = 100 * 365 * 86_400;
    let total = number
        .checked_mul(seconds)
        .filter(|t| *t <= LONGEST)
        .ok_or_else(|| format!("{text:?} is longer than 100 years: use 0 to keep forever"))?;
    if total == 0 {
        return Ok(Window(None));
    }
    Ok(Window(Some(Duration::from_secs(total))))
}

/// How failing jobs are retried.
#[derive(Debug, Clone, clap::Args)]
pub struct RetryArgs {
    /// Attempts in all before a retryable failure is dead-lettered.
    #[arg(long, env = "SURGE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Delay before the first retry, in milliseconds (doubles each time, with jitter).
    #[arg(long, env = "SURGE_RETRY_BASE_MS", default_value_t = 200)]
    pub retry_base_ms: u64,
    /// Longest delay between retries, in milliseconds.
    #[arg(long, env = "SURGE_RETRY_MAX_MS", default_value_t = 30_000)]
    pub retry_max_ms: u64,
}

impl RetryArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            base_delay: Duration::from_millis(self.retry_base_ms),
            max_delay: Duration::from_millis(self.retry_max_ms.max(self.retry_base_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_window, redact_url, redact_urls, Window};
    use std::time::Duration;

    #[test]
    fn retention_windows_parse_with_units_and_zero_means_forever() {
        assert_eq!(parse_window("0"), Ok(Window(None)));
        assert_eq!(parse_window("0h"), Ok(Window(None)));
        assert_eq!(
            parse_window("90s"),
            Ok(Window(Some(Duration::from_secs(90))))
        );
        assert_eq!(
            parse_window("24h"),
            Ok(Window(Some(Duration::from_secs(86_400))))
        );
        assert_eq!(
            parse_window("7d"),
            Ok(Window(Some(Duration::from_secs(7 * 86_400))))
        );
        for bad in [
            "",
            "h",
            "24",
            "-1h",
            "1.5h",
            "3w",
            "99999999999999999999d",
            "400000000d",
        ] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_in_a_url_list_never_survive_redaction() {
        assert_eq!(
            redact_urls("amqp://a:one@h1:5681/%2f, amqp://b:two@h2:5682/%2f"),
            "amqp://a:***@h1:5681/%2f,amqp://b:***@h2:5682/%2f"
        );
    }

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres:***@127.0.0.1/test"
        );
        assert_eq!(redact_url("sqlite://surge.db"), "sqlite://surge.db");
    }

    /// Each case: the URL, the secret that must not survive, and the expected redaction.
    #[test]
    fn passwords_with_reserved_characters_never_survive() {
        let cases = [
            // `/` in the password: the authority used to end at the first `/`.
            (
                "postgres://u:se/cr3t@db.internal:5432/surge",
                "cr3t",
                "postgres://u:***@db.internal:5432/surge",
            ),
            (
                "postgres://u:p@ss@db/surge",
                "p@ss",
                "postgres://u:***@db/surge",
            ),
            ("amqp://u:a:b:c@mq/%2f", "a:b:c", "amqp://u:***@mq/%2f"),
            ("postgres://u:wh?at@db/x", "wh?at", "postgres://u:***@db/x"),
            ("postgres://u:ha#sh@db/x", "ha#sh", "postgres://u:***@db/x"),
            (
                "postgres://u:p%2Fw%40rd@db/x",
                "p%2Fw%40rd",
                "postgres://u:***@db/x",
            ),
            // All of them at once.
            (
                "postgres://u:/@:?#x@db/x",
                "/@:?#x",
                "postgres://u:***@db/x",
            ),
            // No password: nothing to hide, the user stays readable.
            ("postgres://u@db/x", "\0", "postgres://u:***@db/x"),
            ("postgres://db/x", "\0", "postgres://db/x"),
            // No scheme.
            ("u:se/cr3t@db/x", "se/cr3t", "u:***@db/x"),
            ("surge.db", "\0", "surge.db"),
            // A password in the query.
            (
                "postgres://db/x?user=u&password=se/cr3t&sslmode=require",
                "se/cr3t",
                "postgres://db/x?user=u&password=***&sslmode=require",
            ),
            // An `@` in the query with a password there: nothing before it is shown.
            (
                "postgres://db/x?password=p@host",
                "password=p",
                "postgres://***@host",
            ),
        ];
        for (url, secret, expected) in cases {
            let redacted = redact_url(url);
            assert_eq!(redacted, expected, "{url}");
            assert!(!redacted.contains(secret), "{url} leaked {secret}");
        }
    }
}

#[cfg(test)]
mod kafka_flag_tests {
    use clap::Parser;

    use super::BrokerArgs;
    use crate::broker::{KafkaAssignment, KafkaTuning};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        broker: BrokerArgs,
    }

    fn parse(args: &[&str]) -> Result<BrokerArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("surge").chain(args.iter().copied())).map(|c| c.broker)
    }

    #[test]
    fn kafka_tuning_flags_parse_and_default() {
        // The environment could set the variables: only flags given here are asserted.
        let args = parse(&[
            "--kafka-assignment",
            "cooperative-sticky",
            "--kafka-linger-ms",
            "20",
            "--kafka-fetch-wait-ms",
            "500",
        ])
        .unwrap();
        assert_eq!(
            args.kafka_tuning(),
            KafkaTuning {
                assignment: KafkaAssignment::CooperativeSticky,
                linger_ms: 20,
                fetch_wait_ms: 500,
            }
        );
        let consumer = parse(&["--kafka-assignment", "consumer"]).unwrap();
        assert_eq!(consumer.kafka_assignment, KafkaAssignment::Consumer);
    }

    #[test]
    fn bad_kafka_tuning_values_are_clap_errors_naming_the_flag() {
        for (args, flag) in [
            (&["--kafka-assignment", "sticky"][..], "--kafka-assignment"),
            (&["--kafka-linger-ms=-1"][..], "--kafka-linger-ms"),
            (&["--kafka-linger-ms", "5001"][..], "--kafka-linger-ms"),
            (
                &["--kafka-fetch-wait-ms", "9001"][..],
                "--kafka-fetch-wait-ms",
            ),
            (
                &["--kafka-fetch-wait-ms", "soon"][..],
                "--kafka-fetch-wait-ms",
            ),
        ] {
            let error = parse(args).expect_err(&format!("{args:?} accepted"));
            assert!(
                matches!(
                    error.kind(),
                    clap::error::ErrorKind::ValueValidation | clap::error::ErrorKind::InvalidValue
                ),
                "{args:?}: {:?}",
                error.kind()
            );
            assert!(error.to_string().contains(flag), "{args:?}: {error}");
        }
    }
}
