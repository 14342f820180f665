//! Topic creation at connect and deletion for tests, the numbers behind
//! [`Broker::stats`](crate::broker::Broker::stats), and where a topic's replicas live
//! ([`placement`]).
//!
//! Every query here is a blocking librdkafka call with its own timeout, run on the blocking
//! pool; `stats` additionally bounds the whole round at [`STATS_TIMEOUT`] so `/readyz` never
//! hangs on a dead broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::Producer as _;
use rdkafka::{Offset, TopicPartitionList};

use super::client::{
    base_config, broker_error, code_error, TracingContext, QUERY_TIMEOUT, SETUP_TIMEOUT,
};
use super::producer::Producer;
use super::{Topics, DEFAULT_GROUP};
use crate::broker::{BrokerError, BrokerStats};

/// The most a `stats()` call may take.
pub(super) const STATS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a `stats()` answer is reused (protects the broker from per-request polling).
const STATS_FRESH: Duration = Duration::from_millis(250);
/// How long topic creation may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for created topics to show up in metadata.
const METADATA_PATIENCE: Duration = Duration::from_secs(10);

/// Partition counts of the three topics.
#[derive(Debug, Clone, Copy)]
pub(super) struct PartitionCounts {
    pub main: i32,
    pub retry: i32,
    pub dead: i32,
}

/// Runs a blocking librdkafka call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KafkaError> + Send + 'static,
) -> Result<T, BrokerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BrokerError::Unavailable(format!("kafka query task failed: {e}")))?
        .map_err(|e| broker_error(&e))
}

/// Replication factor asked for when creating topics: -1, the cluster's
/// `default.replication.factor` (CreateTopics v4+, Kafka 2.4+). A fixed 1 would leave every
/// partition on one broker of a multi-broker cluster, so losing that broker would lose the
/// partition; the cluster's operator knows how many copies it can hold
/// (`scripts/kafka.sh` sets min(3, nodes)). `min.insync.replicas` is likewise the
/// cluster's default.
const BROKER_DEFAULT_REPLICATION: i32 = -1;

/// Makes sure the three topics exist. First checks (quickly) that the broker answers.
pub(super) async fn ensure_topics(
    bootstrap: &str,
    producer: &Producer,
    topics: &Topics,
    partitions: i32,
) -> Result<(), BrokerError> {
    let client = producer.client().clone();
    let probe = topics.main.clone();
    blocking(move || client.client().fetch_metadata(Some(&probe), SETUP_TIMEOUT)).await?;

    let admin = admin_client(bootstrap)?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .all()
        .into_iter()
        .map(|name| {
            NewTopic::new(
                name,
                partitions,
                TopicReplication::Fixed(BROKER_DEFAULT_REPLICATION),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let outcome = tokio::time::timeout(
        ADMIN_TIMEOUT + QUERY_TIMEOUT,
        admin.create_topics(&new_topics, &options),
    )
    .await;
    // Dropping the admin client joins its polling thread: keep that off the async threads.
    drop(tokio::task::spawn_blocking(move || drop(admin)));
    let results = outcome
        .map_err(|_| BrokerError::Unavailable("timed out creating kafka topics".into()))?
        .map_err(|e| broker_error(&e))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "kafka topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(code_error(
                    code,
                    false,
                    format!("creating topic {name}: {code}"),
                ))
            }
        }
    }
    await_partitions_ready(producer, topics).await
}

/// How often [`await_partitions_ready`] looks again.
const READY_POLL: Duration = Duration::from_millis(50);

/// Waits (at most [`SETUP_TIMEOUT`]) until every partition of the three topics has a leader
/// that serves it: its offsets can be listed.
///
/// `CreateTopics` answers once the controller recorded the topic; the brokers create the
/// partitions' logs a little later (tens of milliseconds, more on a busy machine).
/// Publishing into that window is not safe: measured in `kafka_scaling.rs`, about one run
/// in ten lost one record of 5,000 published right after the topic was created, with every
/// delivery report a success (the topic's log held 4,999). Listing a partition's offsets
/// needs its log on the leader, so once all of them answer, the window is over.
async fn await_partitions_ready(producer: &Producer, topics: &Topics) -> Result<(), BrokerError> {
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    let names: Vec<String> = topics.all().iter().map(|t| (*t).to_owned()).collect();
    loop {
        let client = producer.client().clone();
        let names = names.clone();
        let ready = tokio::task::spawn_blocking(move || partitions_ready(&client, &names))
            .await
            .map_err(|e| BrokerError::Unavailable(format!("kafka query task failed: {e}")))?;
        match ready {
            Ok(()) => return Ok(()),
            Err(why) if tokio::time::Instant::now() >= deadline => {
                return Err(BrokerError::Unavailable(format!(
                    "kafka topics are not ready after {SETUP_TIMEOUT:?}: {why}"
                )))
            }
            Err(why) => {
                tracing::debug!(%why, "kafka topics not ready yet");
                tokio::time::sleep(READY_POLL).await;
            }
        }
    }
}

/// `Ok` when every partition of `topics` has a leader whose log answers a ListOffsets;
/// otherwise what is not ready yet.
fn partitions_ready(
    client: &rdkafka::producer::FutureProducer<super::producer::ProducerContext>,
    topics: &[String],
) -> Result<(), String> {
    for topic in topics {
        let metadata = client
            .client()
            .fetch_metadata(Some(topic), QUERY_TIMEOUT)
            .map_err(|e| format!("metadata of {topic}: {e}"))?;
        let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(format!("{topic} is not in the metadata yet"));
        };
        if let Some(error) = found.error() {
            return Err(format!("{topic}: {:?}", RDKafkaErrorCode::from(error)));
        }
        if found.partitions().is_empty() {
            return Err(format!("{topic} has no partitions yet"));
        }
        for partition in found.partitions() {
            if partition.leader() < 0 || partition.error().is_some() {
                return Err(format!("{topic}[{}] has no leader yet", partition.id()));
            }
            client
                .client()
                .fetch_watermarks(topic, partition.id(), QUERY_TIMEOUT)
                .map_err(|e| format!("offsets of {topic}[{}]: {e}", partition.id()))?;
        }
    }
    Ok(())
}

/// An admin client on `bootstrap`.
fn admin_client(bootstrap: &str) -> Result<AdminClient<TracingContext>, BrokerError> {
    base_config(bootstrap, "surge-admin")
        .create_with_context(TracingContext)
        .map_err(|e| broker_error(&e))
}

/// Deletes the three topics (those already gone are fine). Kafka finishes the deletion in
/// the background; consumers still subscribed log that their topics vanished.
pub(super) async fn delete_topics(bootstrap: &str, topics: &Topics) -> Result<(), BrokerError> {
    let admin = admin_client(bootstrap)?;
    let options = AdminOptions::new()
        .request_timeout(Some(ADMIN_TIMEOUT))
        .operation_timeout(Some(ADMIN_TIMEOUT));
    let outcome = tokio::time::timeout(
        ADMIN_TIMEOUT + QUERY_TIMEOUT,
        admin.delete_topics(&topics.all(), &options),
    )
    .await;
    drop(tokio::task::spawn_blocking(move || drop(admin)));
    let results = outcome
        .map_err(|_| BrokerError::Unavailable("timed out deleting kafka topics".into()))?
        .map_err(|e| broker_error(&e))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "kafka topic deleted"),
            Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => {
                return Err(code_error(
                    code,
                    false,
                    format!("deleting topic {name}: {code}"),
                ))
            }
        }
    }
    Ok(())
}

/// Where one partition's replicas live, from the cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlacement {
    /// The partition's number.
    pub partition: i32,
    /// The broker id leading it (-1: no leader right now).
    pub leader: i32,
    /// The brokers holding a replica.
    pub replicas: Vec<i32>,
    /// The replicas in sync with the leader.
    pub in_sync: Vec<i32>,
}

/// Where a topic's partitions live and how many in-sync replicas a write needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlacement {
    /// Every partition, by number.
    pub partitions: Vec<PartitionPlacement>,
    /// The topic's effective `min.insync.replicas` (`None`: the broker did not say).
    pub min_insync_replicas: Option<i32>,
}

/// Describes `topic`: its partitions' leaders and replicas (metadata) and its
/// `min.insync.replicas` (DescribeConfigs).
pub(super) async fn placement(
    bootstrap: &str,
    producer: &Producer,
    topic: &str,
) -> Result<TopicPlacement, BrokerError> {
    let client = producer.client().clone();
    let name = topic.to_owned();
    let metadata =
        blocking(move || client.client().fetch_metadata(Some(&name), SETUP_TIMEOUT)).await?;
    let described = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| BrokerError::Config(format!("topic {topic} is not in the metadata")))?;
    if let Some(error) = described.error() {
        let code = RDKafkaErrorCode::from(error);
        return Err(code_error(
            code,
            false,
            format!("describing topic {topic}: {code}"),
        ));
    }
    let mut partitions: Vec<PartitionPlacement> = described
        .partitions()
        .iter()
        .map(|p| PartitionPlacement {
            partition: p.id(),
            leader: p.leader(),
            replicas: p.replicas().to_vec(),
            in_sync: p.isr().to_vec(),
        })
        .collect();
    partitions.sort_by_key(|p| p.partition);

    let admin = admin_client(bootstrap)?;
    let options = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
    let resource = [ResourceSpecifier::Topic(topic)];
    let outcome = tokio::time::timeout(
        ADMIN_TIMEOUT + QUERY_TIMEOUT,
        admin.describe_configs(&resource, &options),
    )
    .await;
    drop(tokio::task::spawn_blocking(move || drop(admin)));
    let results = outcome
        .map_err(|_| BrokerError::Unavailable("timed out describing a kafka topic".into()))?
        .map_err(|e| broker_error(&e))?;
    let min_insync_replicas = results.into_iter().find_map(Result::ok).and_then(|config| {
        config
            .get("min.insync.replicas")
            .and_then(|entry| entry.value.as_deref())
            .and_then(|value| value.parse().ok())
    });
    Ok(TopicPlacement {
        partitions,
        min_insync_replicas,
    })
}

/// Reads the partition counts of the three topics, waiting (bounded) for freshly created
/// topics to appear in metadata.
pub(super) async fn partition_counts(
    producer: &Producer,
    topics: &Topics,
) -> Result<PartitionCounts, BrokerError> {
    let deadline = Instant::now() + METADATA_PATIENCE;
    let mut counts = [0i32; 3];
    for (slot, name) in counts.iter_mut().zip(topics.all()) {
        loop {
            let client = producer.client().clone();
            let topic = name.to_owned();
            let metadata =
                blocking(move || client.client().fetch_metadata(Some(&topic), SETUP_TIMEOUT))
                    .await?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == name)
                .filter(|t| t.error().is_none())
                .map(|t| t.partitions().len());
            match found {
                Some(n) if n > 0 => {
                    *slot = i32::try_from(n).unwrap_or(i32::MAX);
                    break;
                }
                _ if Instant::now() < deadline => {
                    // Polling for topic propagation: bounded by METADATA_PATIENCE.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => {
                    return Err(BrokerError::Config(format!(
                        "topic {name} does not exist after creating it"
                    )))
                }
            }
        }
    }
    Ok(PartitionCounts {
        main: counts[0],
        retry: counts[1],
        dead: counts[2],
    })
}

type StatsClient = Arc<BaseConsumer<TracingContext>>;

#[derive(Default)]
struct Cache {
    client: Option<(String, StatsClient)>,
    last: Option<(Instant, BrokerStats)>,
}

/// Answers `stats()`: consumer-group lag over `T` and `T.retry`, and the size of `T.dead`.
pub(super) struct StatsSource {
    bootstrap: String,
    topics: Topics,
    counts: PartitionCounts,
    /// The consumer group whose lag is reported: [`DEFAULT_GROUP`] until this broker
    /// consumes, then the group it consumes with.
    group: Mutex<String>,
    cache: tokio::sync::Mutex<Cache>,
}

impl StatsSource {
    pub(super) fn new(bootstrap: &str, topics: Topics, counts: PartitionCounts) -> Self {
        StatsSource {
            bootstrap: bootstrap.to_owned(),
            topics,
            counts,
            group: Mutex::new(DEFAULT_GROUP.to_owned()),
            cache: tokio::sync::Mutex::new(Cache::default()),
        }
    }

    /// Reports lag for `group` from now on.
    pub(super) fn use_group(&self, group: &str) {
        let mut current = self.group.lock().unwrap_or_else(|p| p.into_inner());
        group.clone_into(&mut current);
    }

    fn group(&self) -> String {
        self.group.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fresh (≤ [`STATS_FRESH`] old) stats, or `Unavailable` within [`STATS_TIMEOUT`].
    pub(super) async fn get(&self) -> Result<BrokerStats, BrokerError> {
        let started = tokio::time::Instant::now();
        // One query at a time; concurrent callers share its answer.
        let mut cache = tokio::time::timeout(STATS_TIMEOUT, self.cache.lock())
            .await
            .map_err(|_| BrokerError::Unavailable("kafka stats timed out".into()))?;
        if let Some((at, stats)) = &cache.last {
            if at.elapsed() < STATS_FRESH {
                return Ok(stats.clone());
            }
        }
        let group = self.group();
        let client = match &cache.client {
            Some((g, client)) if *g == group => client.clone(),
            _ => {
                let client: StatsClient = Arc::new(
                    base_config(&self.bootstrap, "surge-stats")
                        .set("group.id", &group)
                        .set("enable.auto.commit", "false")
                        .create_with_context(TracingContext)
                        .map_err(|e| broker_error(&e))?,
                );
                if let Some((_, old)) = cache.client.replace((group.clone(), client.clone())) {
                    drop(tokio::task::spawn_blocking(move || drop(old)));
                }
                client
            }
        };
        let topics = self.topics.clone();
        let counts = self.counts;
        let query = blocking(move || query(&client, &group, &topics, counts));
        let remaining = STATS_TIMEOUT.saturating_sub(started.elapsed());
        let stats = tokio::time::timeout(remaining, query)
            .await
            .map_err(|_| BrokerError::Unavailable("kafka stats timed out".into()))??;
        cache.last = Some((Instant::now(), stats.clone()));
        Ok(stats)
    }
}

/// Every partition of the three topics.
fn partitions(topics: &Topics, counts: PartitionCounts) -> Vec<(&str, i32)> {
    [
        (topics.main.as_str(), counts.main),
        (topics.retry.as_str(), counts.retry),
        (topics.dead.as_str(), counts.dead),
    ]
    .into_iter()
    .flat_map(|(topic, n)| (0..n).map(move |p| (topic, p)))
    .collect()
}

/// The earliest (`Offset::Beginning`) or next (`Offset::End`) offset of every partition,
/// in one ListOffsets round trip.
fn list_offsets(
    client: &BaseConsumer<TracingContext>,
    partitions: &[(&str, i32)],
    which: Offset,
) -> Result<HashMap<(String, i32), i64>, KafkaError> {
    let mut request = TopicPartitionList::with_capacity(partitions.len());
    for (topic, partition) in partitions {
        request.add_partition_offset(topic, *partition, which)?;
    }
    let answer = client.offsets_for_times(request, QUERY_TIMEOUT)?;
    let mut out = HashMap::with_capacity(partitions.len());
    for elem in answer.elements() {
        elem.error()?;
        let offset = match elem.offset() {
            Offset::Offset(n) => n,
            _ => 0,
        };
        out.insert((elem.topic().to_owned(), elem.partition()), offset);
    }
    Ok(out)
}

/// The blocking part of `stats()`: four round trips (committed offsets, low and high
/// watermarks of every partition, the group's members).
fn query(
    client: &BaseConsumer<TracingContext>,
    group: &str,
    topics: &Topics,
    counts: PartitionCounts,
) -> Result<BrokerStats, KafkaError> {
    let all = partitions(topics, counts);
    let mut lag = TopicPartitionList::new();
    for (topic, partition) in all.iter().filter(|(t, _)| *t != topics.dead) {
        lag.add_partition(topic, *partition);
    }
    let committed = client.committed_offsets(lag, QUERY_TIMEOUT)?;
    let low = list_offsets(client, &all, Offset::Beginning)?;
    let high = list_offsets(client, &all, Offset::End)?;
    let span = |tp: &(String, i32), from: Option<i64>| {
        let low = low.get(tp).copied().unwrap_or(0);
        let high = high.get(tp).copied().unwrap_or(low);
        u64::try_from(high - from.map_or(low, |c| c.max(low))).unwrap_or(0)
    };
    let mut backlog = 0u64;
    for elem in committed.elements() {
        let tp = (elem.topic().to_owned(), elem.partition());
        let next = match elem.offset() {
            Offset::Offset(c) => Some(c),
            _ => None,
        };
        backlog += span(&tp, next);
    }
    let dead = (0..counts.dead)
        .map(|p| span(&(topics.dead.clone(), p), None))
        .sum();
    // DescribeGroups: a group that does not exist (yet) answers with no members.
    let members = client.fetch_group_list(Some(group), QUERY_TIMEOUT)?;
    let consumers = members
        .groups()
        .iter()
        .filter(|g| g.name() == group)
        .map(|g| g.members().len() as u64)
        .sum();
    Ok(BrokerStats {
        backlog: Some(backlog),
        // Kafka only knows committed offsets, not what a member holds unsettled.
        in_flight: None,
        dead_letters: Some(dead),
        consumers: Some(consumers),
    })
}
