//! Outcome callbacks on every broker: a job with a `callback_url` has its outcome POSTed
//! there when it succeeds or dies, signed with the workers' secret, and retried until the
//! receiver takes it (at least once). The receiver is a real HTTP server started here, on
//! loopback, so the stacks allow it (`--callback-allow 127.0.0.1/32`); it refuses each
//! callback's first try with 500.
//!
//! Then what is refused: internal targets without an allowance (at submit, and when the
//! sender is about to connect), callbacks nothing can sign; and a replayed job's new
//! outcome, which is a callback of its own.

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

/// Every callback received: (signature header, idempotency key, body), by idempotency key.
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
                    // The first try of each callback fails: the sender must try again.
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
        .chain(["--callback-allow".into(), "127.0.0.1/32".into()])
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
        // The job's first outcome.
        let expected_key = format!("{id}:1");
        let tries = tries_of(&received, &expected_key, 2).await;
        for (signature, key, body) in &tries {
            assert_eq!(key, &expected_key);
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

/// The tries of the callback `key` once at least `count` arrived.
async fn tries_of(received: &Received, key: &str, count: usize) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let tries = received
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .unwrap_or_default();
        if tries.len() >= count {
            return tries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key}: {tries:?}; all: {:?}",
            received.lock().unwrap().keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// An ingress on the memory broker (its workers inside), on `database`, with `extra` flags.
struct Stack {
    base: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Stack {
    async fn start(database: &str, extra: &[&str]) -> Stack {
        let mut argv: Vec<String> = [
            "surge-producer",
            "--listen",
            "127.0.0.1:0",
            "--broker",
            "memory",
            "--database-url",
            database,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(extra.iter().map(|s| s.to_string()));
        let ingress = match Ingress::build(&ProducerArgs::try_parse_from(argv).unwrap()).await {
            Ok(ingress) => ingress,
            Err(e) => panic!("{e}"),
        };
        let base = format!("http://{}", ingress.local_addr());
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            ingress
                .run_until_stopped(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
                .unwrap()
        });
        Stack { base, stop, task }
    }

    async fn submit(&self, job: Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/jobs", self.base))
            .json(&job)
            .send()
            .await
            .unwrap()
    }

    async fn finish(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// The parts of a URL that must never be echoed back.
const LEAKS: [&str; 3] = ["cb-user", "cb-pass", "t0ps3cret"];

/// Without `--callback-allow`, loopback, private, link-local and `localhost` targets are
/// refused when the job is submitted: 422 naming `callback_url`, the URL not repeated,
/// nothing queued, nothing called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_targets_are_refused_at_submit_unless_allowed() {
    let (hook, received) = receiver().await;
    let database = testing::temp_sqlite_url();
    let strict = Stack::start(&database, &["--callback-secret", SECRET]).await;
    let port = hook.split(':').nth(2).unwrap().split('/').next().unwrap();
    for target in [
        hook.clone(),
        format!("http://cb-user:cb-pass@127.0.0.1:{port}/hook?token=t0ps3cret"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.7/hook".to_owned(),
        "http://[fd00::7]/hook".to_owned(),
    ] {
        let answer = strict
            .submit(json!({"kind": "echo", "callback_url": target}))
            .await;
        assert_eq!(answer.status().as_u16(), 422, "{target}");
        let text = answer.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["field"], "callback_url", "{text}");
        assert!(text.contains("--callback-allow"), "{text}");
        for leak in LEAKS.iter().chain(&[port, "169.254", "10.0.0.7"]) {
            assert!(!text.contains(leak), "{text} shows {leak}");
        }
    }
    strict.finish().await;
    assert!(received.lock().unwrap().is_empty());

    // Allowed, the same receiver is called back.
    let allowed = Stack::start(
        &database,
        &[
            "--callback-secret",
            SECRET,
            "--callback-allow",
            "127.0.0.1/32",
        ],
    )
    .await;
    let answer = allowed
        .submit(json!({"kind": "echo", "callback_url": hook}))
        .await;
    assert_eq!(answer.status().as_u16(), 202);
    let id = answer.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tries_of(&received, &format!("{id}:1"), 2).await;
    allowed.finish().await;
}

/// Without a secret nothing could sign a callback: a job asking for one is refused (422
/// naming `callback_url`), and a kind with a `callback_url` does not start; nor does one
/// whose `callback_url` is internal and not allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_or_unreachable_callbacks_are_refused() {
    let database = testing::temp_sqlite_url();
    let unsigned = Stack::start(&database, &["--callback-allow", "127.0.0.1/32"]).await;
    let answer = unsigned
        .submit(json!({"kind": "echo", "callback_url": "https://hooks.example.com/surge"}))
        .await;
    assert_eq!(answer.status().as_u16(), 422);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"]["field"], "callback_url");
    assert!(body.to_string().contains("--callback-secret"), "{body}");
    // Jobs without a callback are not affected.
    let answer = unsigned.submit(json!({"kind": "echo"})).await;
    assert_eq!(answer.status().as_u16(), 202);
    unsigned.finish().await;

    let dir = std::env::temp_dir().join(testing::unique_name("callback-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("surge.toml");
    let start = |flags: Vec<&'static str>| {
        let mut argv = vec![
            "surge-producer".to_owned(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--broker".into(),
            "memory".into(),
            "--database-url".into(),
            database.clone(),
            "--config".into(),
            config.display().to_string(),
        ];
        argv.extend(flags.into_iter().map(str::to_owned));
        async move {
            Ingress::build(&ProducerArgs::try_parse_from(argv).unwrap())
                .await
                .err()
                .map(|e| e.to_string())
        }
    };
    std::fs::write(
        &config,
        "[kinds.hooked]\nurl = \"http://127.0.0.1:9/x\"\ncallback_url = \"https://hooks.example.com/k\"\n",
    )
    .unwrap();
    let error = start(vec![]).await.expect("started without a secret");
    assert!(
        error.contains("hooked") && error.contains("--callback-secret"),
        "{error}"
    );
    assert!(start(vec!["--callback-secret", SECRET]).await.is_none());

    std::fs::write(
        &config,
        "[kinds.hooked]\nurl = \"http://127.0.0.1:9/x\"\ncallback_url = \"http://cb-user:cb-pass@10.0.0.7/k?token=t0ps3cret\"\n",
    )
    .unwrap();
    let error = start(vec!["--callback-secret", SECRET])
        .await
        .expect("started with an internal callback target");
    assert!(
        error.contains("callback_url") && error.contains("--callback-allow"),
        "{error}"
    );
    for leak in LEAKS.iter().chain(&["10.0.0.7"]) {
        assert!(!error.contains(leak), "{error} shows {leak}");
    }
    // The file's `callback_allow` allows it.
    std::fs::write(
        &config,
        "callback_allow = [\"10.0.0.0/8\"]\n[kinds.hooked]\nurl = \"http://127.0.0.1:9/x\"\ncallback_url = \"http://10.0.0.7/k\"\n",
    )
    .unwrap();
    assert!(start(vec!["--callback-secret", SECRET]).await.is_none());
    std::fs::remove_dir_all(&dir).ok();
}

/// A callback queued for a name that resolves to an internal address by the time it is
/// sent (here `localhost`, as DNS rebinding would make any name) is refused before any
/// connection, and given up at once with an error that names neither URL nor address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_refused_at_delivery_is_given_up_with_a_clear_error() {
    let (hook, received) = receiver().await;
    let database = testing::temp_sqlite_url();
    let stack = Stack::start(&database, &["--callback-secret", SECRET]).await;
    let storage = Storage::connect(&database).await.unwrap();
    let port = hook.split(':').nth(2).unwrap().split('/').next().unwrap();
    let id = uuid::Uuid::now_v7();
    let url = format!("http://cb-user:cb-pass@localhost:{port}/hook?token=t0ps3cret");
    storage.enqueue_callback(id, &url, "{}").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let state = loop {
        let states = storage.callbacks_of(id).await.unwrap();
        if let Some(state) = states.iter().find(|s| s.last_error.is_some()) {
            break state.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!state.delivered);
    let error = state.last_error.unwrap();
    assert!(error.contains("not a public address"), "{error}");
    for leak in LEAKS.iter().chain(&[port, "localhost", "127.0.0.1"]) {
        assert!(!error.contains(leak), "{error} shows {leak}");
    }
    // Given up: not tried again.
    assert_eq!(state.attempts, 1);
    assert!(!storage.callbacks_due().await.unwrap());
    stack.finish().await;
    assert!(received.lock().unwrap().is_empty());
}

/// A job that died (its "dead" callback delivered) and is replayed and succeeds sends a
/// second callback, "succeeded", under an Idempotency-Key of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_job_calls_back_its_new_outcome_under_a_new_key() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let (hook, received) = receiver().await;
    // The HTTP kind's service: refuses the first job (400: permanent, the job dies), then
    // takes it.
    let calls = Arc::new(AtomicU32::new(0));
    let service = axum::Router::new().route(
        "/target",
        axum::routing::post(move || {
            let calls = calls.clone();
            async move {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    (StatusCode::BAD_REQUEST, "not yet")
                } else {
                    (StatusCode::OK, "done")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = format!("http://{}/target", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    let dir = std::env::temp_dir().join(testing::unique_name("callback-replay"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("surge.toml");
    std::fs::write(
        &config,
        format!("[kinds.flip]\nurl = \"{target}\"\nmax_attempts = 1\n"),
    )
    .unwrap();
    let database = testing::temp_sqlite_url();
    let config = config.display().to_string();
    let stack = Stack::start(
        &database,
        &[
            "--callback-secret",
            SECRET,
            "--callback-allow",
            "127.0.0.1/32",
            "--config",
            &config,
        ],
    )
    .await;
    let answer = stack
        .submit(json!({"kind": "flip", "payload": {}, "callback_url": hook}))
        .await;
    assert_eq!(answer.status().as_u16(), 202);
    let id = answer.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = tries_of(&received, &format!("{id}:1"), 2).await;
    let dead: Value = serde_json::from_str(&first[1].2).unwrap();
    assert_eq!(dead["status"], "dead", "{dead}");

    let replay = reqwest::Client::new()
        .post(format!("{}/jobs/{id}/replay", stack.base))
        .send()
        .await
        .unwrap();
    assert!(replay.status().is_success(), "{}", replay.status());
    let second = tries_of(&received, &format!("{id}:2"), 2).await;
    let succeeded: Value = serde_json::from_str(&second[1].2).unwrap();
    assert_eq!(succeeded["status"], "succeeded", "{succeeded}");
    assert_eq!(succeeded["id"], id.as_str());
    // The first outcome was not sent again.
    assert_eq!(
        received.lock().unwrap()[&format!("{id}:1")].len(),
        2,
        "one failed try and one delivered"
    );
    let storage = Storage::connect(&database).await.unwrap();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let states = storage.callbacks_of(uuid).await.unwrap();
        let keys: Vec<&str> = states.iter().map(|s| s.key.as_str()).collect();
        if states.iter().all(|s| s.delivered) && states.len() == 2 {
            assert_eq!(keys, [format!("{id}:1"), format!("{id}:2")]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack.finish().await;
    std::fs::remove_dir_all(&dir).ok();
}
