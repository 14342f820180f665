//! How the Kafka clients are tuned: the consumer group's assignment protocol, the
//! producer's `linger.ms` and the consumer's `fetch.wait.max.ms`. Outside `kafka/` so that
//! the flags parse in a build without the `kafka` feature, like `--kafka-brokers`.

/// How a consumer group hands partitions to its members when one joins or leaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KafkaAssignment {
    /// Classic group protocol with the `range,roundrobin` assignors (librdkafka's
    /// default): every rebalance revokes *every* partition from every member and assigns
    /// them all again, so the whole group stops while it runs — measured, for well under
    /// 0.1 s with short jobs, and the fastest drain when workers join mid-burst (see
    /// `surge-bench --scenarios rebalance`).
    #[default]
    Eager,
    /// Classic group protocol with the `cooperative-sticky` assignor: a rebalance revokes
    /// only the partitions that move, in a second round; the others keep flowing. It
    /// balances each member's partition *count* over `T` and `T.retry` together, so a
    /// member may be left with retry partitions only (idle); the second round costs a
    /// heartbeat (1 s) of pause.
    CooperativeSticky,
    /// Kafka 4's consumer group protocol (KIP-848, `group.protocol=consumer`): the broker
    /// assigns partitions incrementally. Session timeout, heartbeat interval and assignor
    /// are then the broker's (`group.consumer.session.timeout.ms`, default 45 s;
    /// `group.consumer.heartbeat.interval.ms`, 5 s; `group.consumer.assignors`).
    Consumer,
}

impl KafkaAssignment {
    /// The flag's spelling (`eager`, `cooperative-sticky`, `consumer`).
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaAssignment::Eager => "eager",
            KafkaAssignment::CooperativeSticky => "cooperative-sticky",
            KafkaAssignment::Consumer => "consumer",
        }
    }

    /// Every value, in the flag's order.
    pub const ALL: [KafkaAssignment; 3] = [
        KafkaAssignment::Eager,
        KafkaAssignment::CooperativeSticky,
        KafkaAssignment::Consumer,
    ];
}

impl std::fmt::Display for KafkaAssignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KafkaAssignment {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s.trim(), true).map_err(|_| {
            format!(
                "unknown Kafka assignment {s:?}: expected eager, cooperative-sticky or consumer"
            )
        })
    }
}

/// Default `linger.ms` of the producer. 0: a publish leaves at once. The ingress awaits
/// each delivery report before its 202, so the linger is added to every accept: measured
/// (`surge-bench --scenarios rate --backends kafka`), accept p50 at 25 % load was
/// 2.0–2.5 ms with 0, 7.2–7.4 ms with 5 and 22–24 ms with 20, while the max sustainable
/// rate showed no difference above the noise. Under load librdkafka still batches the
/// records that queue up while earlier requests are in flight.
pub const DEFAULT_LINGER_MS: u32 = 0;
/// Default `fetch.wait.max.ms` of the consumer. With `fetch.min.bytes` 1 the broker
/// answers a fetch as soon as a record is there, so the wait only spaces an idle
/// consumer's fetches: 10 and 500 measured no better than 100.
pub const DEFAULT_FETCH_WAIT_MS: u32 = 100;
/// Largest accepted `linger.ms`: a publish waits up to this long before its batch leaves.
pub const MAX_LINGER_MS: u32 = 5_000;
/// Largest accepted `fetch.wait.max.ms`: librdkafka wants it 1 s below `socket.timeout.ms`
/// (10 s here).
pub const MAX_FETCH_WAIT_MS: u32 = 9_000;

/// The Kafka clients' tuning knobs; see the README's Kafka section for the measurements
/// behind the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaTuning {
    /// The consumer group's assignment protocol.
    pub assignment: KafkaAssignment,
    /// The producer's `linger.ms`: how long a record may wait for others to share its batch.
    pub linger_ms: u32,
    /// The consumer's `fetch.wait.max.ms`: how long the broker may hold a fetch that found
    /// less than `fetch.min.bytes`.
    pub fetch_wait_ms: u32,
}

impl Default for KafkaTuning {
    fn default() -> Self {
        KafkaTuning {
            assignment: KafkaAssignment::default(),
            linger_ms: DEFAULT_LINGER_MS,
            fetch_wait_ms: DEFAULT_FETCH_WAIT_MS,
        }
    }
}
