//! Kafka-only promises, beyond the conformance suite: [`KafkaBroker::placement`] describes
//! the topic Surge created (every partition, its leader among its replicas, the in-sync
//! replicas among them, and `min.insync.replicas`). Against `SURGE_TEST_KAFKA_BROKERS`
//! (reported ignored without it, except in CI, where the test runs and fails). The
//! three-broker replication itself is checked by `producer/tests/kafka_cluster.rs`.

use surge_common::broker::kafka::KafkaBroker;
use surge_common::broker::Broker;
use surge_common::testing::{service, unique_name, KAFKA_BROKERS_VAR};

const PARTITIONS: i32 = 3;

#[tokio::test]
#[cfg_attr(
    not(surge_kafka),
    ignore = "set SURGE_TEST_KAFKA_BROKERS to run (scripts/test.sh does)"
)]
async fn placement_describes_every_partition_of_the_topic() {
    let Some(brokers) = service(KAFKA_BROKERS_VAR, "Kafka (scripts/kafka.sh)") else {
        return;
    };
    let broker = KafkaBroker::connect(&brokers, &unique_name("placement"), PARTITIONS)
        .await
        .expect("connects and creates the topic");
    let placement = broker.placement().await.expect("the topic is described");
    broker.delete_topology().await.expect("cleanup");

    let numbers: Vec<i32> = placement.partitions.iter().map(|p| p.partition).collect();
    assert_eq!(
        numbers,
        (0..PARTITIONS).collect::<Vec<_>>(),
        "{placement:?}"
    );
    for partition in &placement.partitions {
        assert!(!partition.replicas.is_empty(), "{placement:?}");
        assert!(
            partition.replicas.contains(&partition.leader),
            "the leader is a replica: {placement:?}"
        );
        assert!(
            partition
                .in_sync
                .iter()
                .all(|id| partition.replicas.contains(id)),
            "in-sync replicas are replicas: {placement:?}"
        );
    }
    let min_isr = placement
        .min_insync_replicas
        .expect("the broker reports min.insync.replicas");
    assert!(
        (1..=placement.partitions[0].replicas.len() as i32).contains(&min_isr),
        "min.insync.replicas {min_isr} fits the replication: {placement:?}"
    );
}
