//! The one place a backend is chosen: [`BrokerKind`] (the `--broker` / `SURGE_BROKER`
//! value), the [`BrokerTarget`] it connects to and [`connect`].
//!
//! # Adding a backend
//!
//! 1. A folder `broker/<name>/` with a type implementing [`Broker`] and a [`Settle`]
//!    for its deliveries (see `rabbitmq/` and `kafka/` for the split by responsibility).
//! 2. A cargo feature `<name>` in `common/Cargo.toml` making its client crate optional,
//!    re-exported by the `producer`, `worker` and `benches` crates, and
//!    `#[cfg(feature = "<name>")] pub mod <name>;` in `broker/mod.rs`.
//! 3. A [`BrokerKind`] variant, its [`BrokerKind::feature`], and one arm in [`connect`]
//!    (plus its address in [`BrokerTarget`] and a flag in `crate::config::BrokerArgs` if
//!    it needs one).
//! 4. One fixture in `common/tests/conformance.rs` (`Fixture::open` / `second`, and a
//!    `suite!` line): every test body of the contract then runs against it.
//!
//! A backend whose feature is compiled out stays a valid `--broker` value, so the error
//! at start-up names the missing feature instead of clap rejecting the word.
//!
//! [`Settle`]: super::Settle

use std::sync::Arc;

use super::{memory, Broker, BrokerError, KafkaTuning, QueueType};

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BrokerKind {
    /// In-process queue: fast, not durable, single process only.
    Memory,
    /// RabbitMQ over AMQP 0.9.1 (lapin).
    Rabbitmq,
    /// Apache Kafka or a Kafka-protocol broker (rdkafka).
    Kafka,
}

impl BrokerKind {
    /// The cargo feature that compiles this backend in (`None`: always compiled).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            BrokerKind::Memory => None,
            BrokerKind::Rabbitmq => Some("rabbitmq"),
            BrokerKind::Kafka => Some("kafka"),
        }
    }

    /// Whether this binary was built with the backend.
    pub fn compiled_in(self) -> bool {
        match self {
            BrokerKind::Memory => true,
            BrokerKind::Rabbitmq => cfg!(feature = "rabbitmq"),
            BrokerKind::Kafka => cfg!(feature = "kafka"),
        }
    }
}

/// Which backend to connect, where and how: what the `--broker` flags describe
/// (`crate::config::BrokerArgs::target`).
#[derive(Debug, Clone)]
pub struct BrokerTarget {
    /// The backend.
    pub kind: BrokerKind,
    /// RabbitMQ URL(s), comma separated (may hold a password: never log it unredacted).
    pub amqp_url: String,
    /// RabbitMQ queue type of the main, retry and dead-letter queues.
    pub rabbitmq_queue_type: QueueType,
    /// Kafka bootstrap servers, comma separated.
    pub kafka_brokers: String,
    /// Queue (RabbitMQ) or topic (Kafka) name.
    pub queue: String,
    /// Partitions of the Kafka topic when Surge creates it.
    pub kafka_partitions: i32,
    /// The Kafka clients' tuning.
    pub kafka_tuning: KafkaTuning,
}

/// Connects the backend `target` names. For `memory`, a fresh in-process queue. A backend
/// compiled out of this build is a [`BrokerError::Config`] naming its cargo feature.
pub async fn connect(target: &BrokerTarget) -> Result<Arc<dyn Broker>, BrokerError> {
    Ok(match target.kind {
        BrokerKind::Memory => Arc::new(memory::MemoryBroker::new()),
        #[cfg(feature = "rabbitmq")]
        BrokerKind::Rabbitmq => Arc::new(
            super::rabbitmq::RabbitMqBroker::connect_with(
                &target.amqp_url,
                &target.queue,
                target.rabbitmq_queue_type,
            )
            .await?,
        ),
        #[cfg(feature = "kafka")]
        BrokerKind::Kafka => Arc::new(
            super::kafka::KafkaBroker::connect_with(
                &target.kafka_brokers,
                &target.queue,
                target.kafka_partitions,
                target.kafka_tuning,
            )
            .await?,
        ),
        #[allow(unreachable_patterns)]
        missing => return Err(not_compiled(missing)),
    })
}

/// The error for a backend this build left out.
fn not_compiled(kind: BrokerKind) -> BrokerError {
    let feature = kind.feature().unwrap_or("?");
    BrokerError::Config(format!(
        "this binary was built without the `{feature}` cargo feature, so --broker {feature} \
         is unavailable; rebuild with `--features {feature}` (it is on by default)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: BrokerKind) -> BrokerTarget {
        BrokerTarget {
            kind,
            // Unroutable addresses: these tests must not reach a real broker.
            amqp_url: "not a url".into(),
            rabbitmq_queue_type: Default::default(),
            kafka_brokers: String::new(),
            queue: String::new(),
            kafka_partitions: 1,
            kafka_tuning: KafkaTuning {
                assignment: Default::default(),
                linger_ms: 5,
                fetch_wait_ms: 100,
            },
        }
    }

    #[tokio::test]
    async fn a_compiled_out_backend_is_a_start_up_error_naming_its_feature() {
        for kind in [BrokerKind::Rabbitmq, BrokerKind::Kafka] {
            if kind.compiled_in() {
                continue;
            }
            let feature = kind.feature().unwrap();
            match connect(&args(kind)).await {
                Err(BrokerError::Config(message)) => {
                    assert!(
                        message.contains(&format!("`{feature}` cargo feature")),
                        "{message}"
                    )
                }
                Err(other) => panic!("{kind:?}: {other}"),
                Ok(_) => panic!("{kind:?} connected without its feature"),
            }
        }
    }

    #[tokio::test]
    async fn memory_is_always_compiled_in() {
        assert!(BrokerKind::Memory.compiled_in());
        let broker = connect(&args(BrokerKind::Memory)).await.unwrap();
        assert_eq!(broker.name(), "memory");
    }
}
