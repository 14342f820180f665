//! Outcome callbacks on every broker: a job with a `callback_url` has its outcome POSTed
//! there when it succeeds or dies, signed with the workers' secret, and retried until the
//! receiver takes it (at least once). The receiver is a real HTTP server started here; it
//! refuses each job's first callback with 500.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Parser;
use serde_json::{json, Value};
use surge_common::config::Secret;
use surge_common::storage::Storage;
use surge_common::testing::{self, AMQP_URL_VAR, KAFKA_BROKERS_VAR, POSTGRES_URL_VAR};
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use surge_worker::config::WorkerArgs;
use surge_worker::WorkerService;
use tokio::sync::watch;

const SECRET: &str = "test-callback-secret-0123";

/// Every callback received: (signature header, idempotency key, body), by job id.
type Received = Arc<Mutex<HashMap<String, Vec<(String, String, String)>>>>;

async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |State(received): State<Received>, headers: HeaderMap, body: String| async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    let key = header("idempotency-key");
                    let mut received = received.lock().unwrap();
                    let seen = received.entry(key.clone()).or_default();
                    seen.push((header("surge-signature"), key, body));
                    // The first try of each job fails: the sender must try again.
                    if seen.len() == 1 {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn scenario(broker_flags: Vec<String>, database: String) {
    let (hook, received) = receiver().await;
    let storage = Storage::connect(&database).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let until = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let common: Vec<String> = broker_flags
        .iter()
        .cloned()
        .chain(["--database-url".into(), database.clone()])
        .chain(["--callback-secret".into(), SECRET.into()])
        .collect();
    let mut ingress_argv = vec![
        "surge-producer".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    ingress_argv.extend(common.iter().cloned());
    let ingress = Ingress::build(&ProducerArgs::try_parse_from(ingress_argv).unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let mut tasks = vec![tokio::spawn({
        let until = until();
        async move { ingress.run_until_stopped(until).await.unwrap() }
    })];
    if !broker_flags.iter().any(|f| f == "memory") {
        let mut argv = vec!["surge-worker".to_owned()];
        argv.extend(common.iter().cloned());
        let worker = WorkerService::build(&WorkerArgs::try_parse_from(argv).unwrap())
            .await
            .unwrap();
        let until = until();
        tasks.push(tokio::spawn(async move {
            worker.run_until_stopped(until).await.unwrap()
        }));
    }

    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (kind, payload, status) in [
        ("echo", json!({"n": 1}), "succeeded"),
        ("poison", json!({}), "dead"),
    ] {
        let answer: Value = http
            .post(format!("{base}/jobs"))
            .json(&json!({"kind": kind, "payload": payload, "callback_url": hook}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push((answer["id"].as_str().unwrap().to_owned(), status));
    }
    // A bad callback URL is refused, naming the field.
    let refused = http
        .post(format!("{base}/jobs"))
        .json(&json!({"kind": "echo", "callback_url": "ftp://x/y"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 422);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"]["field"], "callback_url");

    let secret: Secret = SECRET.parse().unwrap();
    for (id, status) in ids {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let tries = loop {
            let tries = received
                .lock()
                .unwrap()
                .get(&id)
                .cloned()
                .unwrap_or_default();
            if tries.len() >= 2 {
                break tries;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id}: {tries:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for (signature, key, body) in &tries {
            assert_eq!(key, &id);
            let outcome: Value = serde_json::from_str(body).unwrap();
            assert_eq!(outcome["id"], id.as_str());
            assert_eq!(outcome["status"], status, "{outcome}");
            let timestamp: i64 = signature
                .strip_prefix("t=")
                .and_then(|rest| rest.split(',').next())
                .and_then(|t| t.parse().ok())
                .unwrap_or_else(|| panic!("no timestamp in {signature:?}"));
            assert_eq!(
                signature,
                &surge_worker::callbacks::signature(&secret, timestamp, body),
                "the signature verifies with the secret"
            );
        }
        // Delivered on the second try, and recorded so.
        let id = uuid::Uuid::parse_str(&id).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while storage.callback_state(id).await.unwrap() != Some((true, 2)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{:?}",
                storage.callback_state(id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
}

fn flags(broker: &str, flag: &str, url: &str) -> Vec<String> {
    vec![
        "--broker".into(),
        broker.into(),
        flag.into(),
        url.into(),
        "--queue".into(),
        testing::unique_name("callbacks"),
        "--builtin-kinds".into(),
        "true".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_broker_outcomes_are_called_back() {
    scenario(
        vec!["--broker".into(), "memory".into()],
        testing::temp_sqlite_url(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_rabbitmq_outcomes_are_called_back() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    scenario(flags("rabbitmq", "--amqp-url", &amqp), database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_kafka_outcomes_are_called_back() {
    let Some(brokers) = testing::service(KAFKA_BROKERS_VAR, "Kafka") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let mut flags = flags("kafka", "--kafka-brokers", &brokers);
    flags.extend(["--kafka-partitions".into(), "2".into()]);
    scenario(flags, database).await;
}
