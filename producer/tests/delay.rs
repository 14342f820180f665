//! Scheduled jobs (`delay_ms` / `run_at`) on every broker: a delayed job says `scheduled`,
//! runs no earlier than asked, does not hold up a job posted after it, and survives a
//! restart of the ingress that accepted it (it waits in the database, not in a process).

use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use surge_common::storage::{JobResult, Storage};
use surge_common::testing::{self, AMQP_URL_VAR, KAFKA_BROKERS_VAR, POSTGRES_URL_VAR};
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use surge_worker::config::WorkerArgs;
use surge_worker::WorkerService;
use tokio::sync::watch;
use uuid::Uuid;

/// The delay asked for.
const DELAY_MS: u64 = 1500;

/// A running ingress: its base URL and how to stop it.
struct Running {
    base: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_ingress(broker_flags: &[String], database: &str) -> Running {
    let mut argv: Vec<String> = ["surge-producer", "--listen", "127.0.0.1:0"]
        .map(String::from)
        .to_vec();
    argv.extend(broker_flags.iter().cloned());
    argv.extend(["--database-url".into(), database.into()]);
    let args = ProducerArgs::try_parse_from(argv).unwrap();
    let ingress = Ingress::build(&args).await.unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        ingress
            .run_until_stopped(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
            .unwrap();
    });
    Running { base, stop, task }
}

async fn stop(running: Running) {
    running.stop.send(true).unwrap();
    running.task.await.unwrap();
}

async fn post(base: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn get(base: &str, path: &str) -> Value {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn row(storage: &Storage, id: &str) -> JobResult {
    let id = Uuid::parse_str(id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(row) = storage.get(id).await.unwrap() {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "no result for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scenario(broker_flags: Vec<String>, database: String) {
    let storage = Storage::connect(&database).await.unwrap();
    let real_broker = !broker_flags.iter().any(|f| f == "memory");
    // Workers (a real broker) live across the ingress restart.
    let (stop_worker, mut worker_stopped) = watch::channel(false);
    let worker = if real_broker {
        let mut argv = vec!["surge-worker".to_owned()];
        argv.extend(broker_flags.iter().cloned());
        argv.extend(["--database-url".into(), database.clone()]);
        let args = WorkerArgs::try_parse_from(argv).unwrap();
        let service = WorkerService::build(&args).await.unwrap();
        Some(tokio::spawn(async move {
            service
                .run_until_stopped(async move {
                    let _ = worker_stopped.wait_for(|s| *s).await;
                })
                .await
                .unwrap();
        }))
    } else {
        None
    };

    let ingress = start_ingress(&broker_flags, &database).await;
    // Bad schedules name their field and accept nothing.
    for (body, field) in [
        (
            json!({"kind": "echo", "delay_ms": 8 * 24 * 3_600_000u64}),
            "delay_ms",
        ),
        (json!({"kind": "echo", "run_at": "next tuesday"}), "run_at"),
        (
            json!({"kind": "echo", "run_at": "2999-01-01T00:00:00Z"}),
            "run_at",
        ),
    ] {
        let (status, answer) = post(&ingress.base, body).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }

    let (status, delayed) = post(
        &ingress.base,
        json!({"kind": "echo", "payload": {"n": "later"}, "delay_ms": DELAY_MS}),
    )
    .await;
    assert_eq!(status, 202, "{delayed}");
    let delayed = delayed["id"].as_str().unwrap().to_owned();
    let state = get(&ingress.base, &format!("/jobs/{delayed}")).await;
    assert_eq!(state["status"], "scheduled", "{state}");

    // A job posted after it runs first.
    let (status, now) = post(
        &ingress.base,
        json!({"kind": "echo", "payload": {"n": "now"}}),
    )
    .await;
    assert_eq!(status, 202, "{now}");
    let now = row(&storage, now["id"].as_str().unwrap()).await;
    let delayed_row = row(&storage, &delayed).await;
    let due_us = delayed_row.enqueued_at_us + i64::try_from(DELAY_MS * 1000).unwrap();
    assert!(
        delayed_row.started_at_us >= due_us,
        "ran {} µs early",
        due_us - delayed_row.started_at_us
    );
    assert!(
        now.finished_at_us < delayed_row.started_at_us,
        "the later job waited"
    );
    assert_eq!(delayed_row.result, Some(json!({"n": "later"})));

    // Scheduled, then the ingress restarts before it is due: the next one publishes it.
    let (status, survivor) = post(
        &ingress.base,
        json!({"kind": "echo", "payload": {"n": "restart"}, "delay_ms": DELAY_MS}),
    )
    .await;
    assert_eq!(status, 202, "{survivor}");
    stop(ingress).await;
    let ingress = start_ingress(&broker_flags, &database).await;
    let survivor = row(&storage, survivor["id"].as_str().unwrap()).await;
    assert_eq!(survivor.result, Some(json!({"n": "restart"})));
    stop(ingress).await;

    stop_worker.send(true).unwrap();
    if let Some(worker) = worker {
        worker.await.unwrap();
    }
}

fn queue_flags(broker: &str, flag: &str, url: &str) -> Vec<String> {
    vec![
        "--broker".into(),
        broker.into(),
        flag.into(),
        url.into(),
        "--queue".into(),
        testing::unique_name("delay"),
        "--builtin-kinds".into(),
        "true".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_memory_broker_a_delayed_job_runs_when_due() {
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
async fn on_rabbitmq_a_delayed_job_runs_when_due() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    scenario(queue_flags("rabbitmq", "--amqp-url", &amqp), database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_kafka_a_delayed_job_runs_when_due() {
    let Some(brokers) = testing::service(KAFKA_BROKERS_VAR, "Kafka") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let mut flags = queue_flags("kafka", "--kafka-brokers", &brokers);
    flags.extend(["--kafka-partitions".into(), "2".into()]);
    scenario(flags, database).await;
}
