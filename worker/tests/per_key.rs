//! Three `surge-worker` processes run an HTTP kind with `concurrency_per_key = 2` against a
//! test server that records, for each fairness key, its peak number of requests in flight:
//! no key ever has a third request in flight (the per-key cap holds across processes: key
//! slots leased in the shared database), other keys keep flowing meanwhile, every job gets
//! exactly one result, and no per-key row is left afterwards.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use support::{assert_exactly_once, eventually, spawn_worker, wait_for_results};
use surge_common::broker::Broker;
use surge_common::job::Job;
use surge_common::storage::{JobStatus, Storage};
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};
use tokio::process::Child;

const PER_KEY: u32 = 2;
const KIND_CAP: u32 = 24;
/// Jobs per key: one hot key with most of the work, and a few quieter ones.
const KEYS: [(&str, usize); 5] = [
    ("hot", 120),
    ("tenant-1", 40),
    ("tenant-2", 40),
    ("tenant-3", 40),
    ("tenant-4", 40),
];
/// Jobs each worker runs at once: three workers could send 96 requests at a time, 60 of
/// them of the hot key if nothing stopped them.
const CAPACITY: &str = "32";

#[derive(Default)]
struct Target {
    requests: AtomicU32,
    in_flight: AtomicU32,
    peak: AtomicU32,
    /// Per key: (in flight now, peak).
    keys: Mutex<HashMap<String, (u32, u32)>>,
}

impl Target {
    fn key_change(&self, key: &str, up: bool) {
        let mut keys = self.keys.lock().unwrap();
        let entry = keys.entry(key.to_owned()).or_default();
        if up {
            entry.0 += 1;
            entry.1 = entry.1.max(entry.0);
        } else {
            entry.0 -= 1;
        }
    }
}

async fn handle(State(target): State<Arc<Target>>, body: Bytes) -> axum::Json<Value> {
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = payload["tenant"].as_str().unwrap_or("?").to_owned();
    target.requests.fetch_add(1, Ordering::SeqCst);
    let now = target.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    target.peak.fetch_max(now, Ordering::SeqCst);
    target.key_change(&key, true);
    // The target's own work: long enough for one key's requests to pile up.
    tokio::time::sleep(Duration::from_millis(30)).await;
    target.key_change(&key, false);
    target.in_flight.fetch_sub(1, Ordering::SeqCst);
    axum::Json(json!({ "echo": payload }))
}

async fn start_target() -> (String, Arc<Target>) {
    let target = Arc::new(Target::default());
    let app = Router::new()
        .route("/work", post(handle))
        .with_state(target.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/work"), target)
}

/// A configuration file declaring the HTTP kind `target`, its key taken from the payload.
fn config_file(url: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", testing::unique_name("config")));
    std::fs::write(
        &path,
        format!(
            "[kinds.target]\nurl = \"{url}\"\nconcurrency = {KIND_CAP}\n\
             concurrency_per_key = {PER_KEY}\nkey_from = \"/tenant\"\ntimeout_ms = 10000\n"
        ),
    )
    .unwrap();
    path
}

async fn per_key_cap_holds(broker: &dyn Broker, database: &str, args: &[&str]) {
    let storage = Storage::connect(database).await.unwrap();
    let (url, target) = start_target().await;
    let config = config_file(&url);
    // Interleaved, as tenants' jobs arrive; the key set as the ingress's key_from would.
    let mut jobs: Vec<Job> = Vec::new();
    let most = KEYS.iter().map(|(_, n)| *n).max().unwrap_or(0);
    for i in 0..most {
        for (key, n) in KEYS {
            if i < n {
                jobs.push(Job::new(
                    "target",
                    json!({ "tenant": key, "i": i }),
                    Some(key.to_owned()),
                ));
            }
        }
    }
    let ids: Vec<_> = jobs.iter().map(|j| j.id).collect();
    for chunk in jobs.chunks(100) {
        broker.publish(chunk).await.unwrap();
    }
    let mut args: Vec<&str> = args.to_vec();
    let config_arg = config.display().to_string();
    // Six workers at once (this test on both brokers): within PostgreSQL's 100
    // connections, as an operator sizes replicas.
    args.extend([
        "--config",
        &config_arg,
        "--capacity",
        CAPACITY,
        "--database-connections",
        "10",
    ]);
    let mut workers: Vec<Child> = ["key-a", "key-b", "key-c"]
        .iter()
        .map(|name| spawn_worker(name, database, &args))
        .collect();

    let rows = wait_for_results(&storage, &ids, Duration::from_secs(240)).await;
    for row in &rows {
        assert_eq!(row.status, JobStatus::Succeeded, "{row:?}");
    }
    assert_exactly_once(&storage, &ids, &rows).await;
    let peaks: HashMap<String, (u32, u32)> = target.keys.lock().unwrap().clone();
    let overall = target.peak.load(Ordering::SeqCst);
    eprintln!(
        "per-key peaks {peaks:?} (cap {PER_KEY}), overall peak {overall}, {} requests for {} jobs",
        target.requests.load(Ordering::SeqCst),
        jobs.len()
    );
    for (key, (_, peak)) in &peaks {
        assert!(
            *peak <= PER_KEY,
            "the target saw {peak} concurrent requests of key {key}"
        );
    }
    assert_eq!(peaks.len(), KEYS.len(), "every key reached the target");
    assert_eq!(
        target.requests.load(Ordering::SeqCst) as usize,
        jobs.len(),
        "one request per job"
    );
    assert!(
        overall > PER_KEY && overall <= KIND_CAP,
        "keys ran side by side, within the kind's cap ({overall})"
    );
    // Every key slot is freed: no row left behind.
    eventually("every per-key row to go", || {
        let storage = storage.clone();
        async move { (storage.dispatch_key_rows().await.ok()? == Default::default()).then_some(()) }
    })
    .await;
    for worker in &mut workers {
        worker.kill().await.unwrap();
    }
    let _ = std::fs::remove_file(config);
}

#[tokio::test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn three_rabbitmq_workers_never_exceed_the_per_key_cap() {
    use surge_common::broker::rabbitmq::RabbitMqBroker;
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let queue = testing::unique_name("per-key");
    let broker = RabbitMqBroker::connect(&amqp, &queue).await.unwrap();
    let args = [
        "--broker",
        "rabbitmq",
        "--amqp-url",
        &amqp,
        "--queue",
        &queue,
    ];
    per_key_cap_holds(&broker, &database, &args).await;
    broker.delete_topology().await.unwrap();
}

/// On Kafka a key's jobs share a partition, so they reach one worker at a time as a rule:
/// the per-key cap then holds that worker's many concurrent jobs of the key (and any
/// overlap while partitions move between workers).
#[cfg(feature = "kafka")]
#[tokio::test]
#[cfg_attr(
    not(all(surge_kafka, surge_postgres)),
    ignore = "set SURGE_TEST_KAFKA_BROKERS and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn three_kafka_workers_never_exceed_the_per_key_cap() {
    use surge_common::broker::kafka::KafkaBroker;
    use surge_common::testing::KAFKA_BROKERS_VAR;
    let Some(brokers) = testing::service(KAFKA_BROKERS_VAR, "Kafka (scripts/kafka.sh)") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let topic = testing::unique_name("per-key");
    let group = testing::unique_name("group");
    let broker = KafkaBroker::connect(&brokers, &topic, 6).await.unwrap();
    let args = [
        "--broker",
        "kafka",
        "--kafka-brokers",
        &brokers,
        "--queue",
        &topic,
        "--kafka-partitions",
        "6",
        "--group",
        &group,
    ];
    per_key_cap_holds(&broker, &database, &args).await;
}
