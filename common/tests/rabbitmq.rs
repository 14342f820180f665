//! RabbitMQ-only promises, beyond the conformance suite: the queue type is checked at
//! start-up with an error naming the flag, queues declared by earlier versions (classic,
//! no `x-queue-type`) still open, and a list of URLs connects to a node that answers.
//! Against `SURGE_TEST_AMQP_URL` (reported ignored without it, except in CI, where the tests
//! run and fail).

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use surge_common::broker::rabbitmq::{QueueType, RabbitMqBroker};
use surge_common::broker::{Broker, BrokerError};
use surge_common::job::Job;
use surge_common::kinds::builtin::BuiltinKind;
use surge_common::testing::{service, unique_name, AMQP_URL_VAR};

/// A loopback AMQP URL nothing listens on (port 1 is never a broker's).
const DEAD_URL: &str = "amqp://guest:guest@127.0.0.1:1/%2f";

#[tokio::test]
#[cfg_attr(
    not(surge_amqp),
    ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)"
)]
async fn a_queue_of_another_type_fails_the_start_naming_the_flag() {
    let Some(url) = service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    for (existing, wanted) in [
        (QueueType::Classic, QueueType::Quorum),
        (QueueType::Quorum, QueueType::Classic),
    ] {
        let queue = unique_name("queue-type");
        let first = RabbitMqBroker::connect_with(&url, &queue, existing)
            .await
            .expect("the first declare succeeds");
        let error = RabbitMqBroker::connect_with(&url, &queue, wanted)
            .await
            .expect_err("a queue of another type is refused");
        first.delete_topology().await.expect("cleanup");
        let BrokerError::Config(message) = &error else {
            panic!("a type mismatch is a configuration error, not {error:?}");
        };
        assert!(
            message.contains("--rabbitmq-queue-type") && message.contains(&queue),
            "the error names the flag and the queue: {message}"
        );
        assert!(
            message.contains(existing.as_str()),
            "the error says which type the queue has: {message}"
        );
    }
}

/// Queues declared before the flag existed carry no `x-queue-type`: they are classic and
/// must keep opening with the default type.
#[tokio::test]
#[cfg_attr(
    not(surge_amqp),
    ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)"
)]
async fn queues_declared_without_a_type_open_as_classic() {
    let Some(url) = service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let queue = unique_name("legacy");
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let dead_letter = |target: &str| {
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(target.into()),
        );
        args
    };
    let (retry, dead) = (format!("{queue}.retry"), format!("{queue}.dead"));
    for (name, args) in [
        (&queue, dead_letter(&dead)),
        (&retry, dead_letter(&queue)),
        (&dead, FieldTable::default()),
    ] {
        channel
            .queue_declare(name.as_str().into(), QueueDeclareOptions::durable(), args)
            .await
            .expect("legacy declare");
    }
    let opened = RabbitMqBroker::connect_with(&url, &queue, QueueType::Classic).await;
    if let Ok(broker) = &opened {
        // Also the lanes it declared.
        let _ = broker.delete_topology().await;
    }
    for name in [&queue, &retry, &dead] {
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "done".into()).await;
    opened.expect("a classic queue declared without x-queue-type opens as classic");
}

#[tokio::test]
#[cfg_attr(
    not(surge_amqp),
    ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)"
)]
async fn a_url_list_connects_to_the_node_that_answers() {
    let Some(url) = service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let queue = unique_name("url-list");
    let list = format!("{DEAD_URL}, {url}");
    let broker = RabbitMqBroker::connect_with(&list, &queue, QueueType::Quorum)
        .await
        .expect("the second URL answers");
    let job = Job::new(BuiltinKind::Echo, json!({ "n": 1 }), None);
    let published = broker.publish(std::slice::from_ref(&job)).await;
    let backlog = broker.stats().await.map(|s| s.backlog);
    broker.delete_topology().await.expect("cleanup");
    published.expect("publish through the node that answered");
    assert_eq!(backlog.expect("stats"), Some(1));
    assert!(
        !format!("{broker:?}").contains("guest:guest"),
        "no password in Debug: {broker:?}"
    );
}

/// Needs no broker: nothing listens on either port.
#[tokio::test]
async fn a_url_list_where_no_node_answers_is_unavailable() {
    let error = RabbitMqBroker::connect_with(
        &format!("{DEAD_URL},amqp://guest:guest@127.0.0.1:2/%2f"),
        &unique_name("none"),
        QueueType::Quorum,
    )
    .await
    .expect_err("nothing listens");
    assert!(
        matches!(error, BrokerError::Unavailable(_)),
        "unreachable nodes are 'unavailable' (retry later), not {error:?}"
    );
    let error = RabbitMqBroker::connect_with(" , ", "q", QueueType::Classic)
        .await
        .expect_err("no URL");
    assert!(matches!(error, BrokerError::Config(_)), "{error:?}");
}
