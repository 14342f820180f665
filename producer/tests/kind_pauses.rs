//! Paused kinds end to end, on RabbitMQ and PostgreSQL with a real ingress and worker and
//! an HTTP kind whose target (a local server) answers its first request `429` with
//! `Retry-After: 5`:
//! - the kind is paused for every replica (shown by `GET /kinds`, source `target`), the
//!   job is not sent again before the pause ends, and then it succeeds with its first
//!   attempt (`max_attempts = 1`: a consumed attempt would have killed it);
//! - an operator pauses the kind through the API (API key required; bad input refused
//!   naming the field; an unknown kind is a 404 naming `name`): a new job waits, the
//!   target untouched; resumed, the job runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use clap::Parser;
use serde_json::{json, Value};
use surge_common::storage::Storage;
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use surge_worker::config::WorkerArgs;
use surge_worker::WorkerService;
use tokio::sync::watch;
use tokio::time::Instant;

const KEY: &str = "kind-pause-key-7c2d";

/// The requests the target received: when, and their `Surge-Attempt`.
type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

async fn target(State(seen): State<Seen>, headers: HeaderMap) -> Response {
    let attempt = headers
        .get("surge-attempt")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let first = {
        let mut seen = seen.lock().unwrap();
        seen.push((Instant::now(), attempt));
        seen.len() == 1
    };
    if first {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "5")],
            "slow down",
        )
            .into_response()
    } else {
        axum::Json(json!({"done": true})).into_response()
    }
}

async fn start_target() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/work", post(target))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/work", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn requests(seen: &Seen) -> Vec<(Instant, String)> {
    seen.lock().unwrap().clone()
}

/// Polls `check` every 100 ms until it holds; panics after `patience`.
async fn until<F, Fut>(what: &str, patience: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + patience;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, Some(KEY), None).await
    }

    async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(KEY), body)
            .await
    }

    async fn paced(&self) -> Value {
        let (status, list) = self.get("/kinds").await;
        assert_eq!(status, 200, "{list}");
        list["kinds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "paced")
            .cloned()
            .unwrap_or_else(|| panic!("paced is not listed: {list}"))
    }

    async fn submit(&self) -> String {
        let (status, body) = self
            .post("/jobs", Some(json!({"kind": "paced", "payload": {"n": 1}})))
            .await;
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn status(&self, id: &str) -> Value {
        self.get(&format!("/jobs/{id}")).await.1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn the_target_and_an_operator_pause_a_kind_on_rabbitmq() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let storage = Storage::connect(&database).await.unwrap();
    let (url, seen) = start_target().await;
    let config = std::env::temp_dir().join(format!("{}.toml", testing::unique_name("pauses")));
    std::fs::write(
        &config,
        format!("[kinds.paced]\nurl = \"{url}\"\nmax_attempts = 1\nbreaker_failures = 0\n"),
    )
    .unwrap();
    let common: Vec<String> = [
        "--broker",
        "rabbitmq",
        "--amqp-url",
        &amqp,
        "--queue",
        &testing::unique_name("pauses"),
        "--database-url",
        &database,
        "--config",
        &config.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let (stop, stopped) = watch::channel(false);
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    let mut argv: Vec<String> = [
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--api-keys",
        KEY,
    ]
    .map(str::to_owned)
    .to_vec();
    argv.extend(common.iter().cloned());
    let ingress = Ingress::build(&ProducerArgs::try_parse_from(argv).unwrap())
        .await
        .unwrap();
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", ingress.local_addr()),
    };
    let mut tasks = vec![tokio::spawn({
        let until = until_stopped();
        async move { ingress.run_until_stopped(until).await.unwrap() }
    })];
    let mut argv = vec!["surge-worker".to_owned()];
    argv.extend(common.iter().cloned());
    let worker = WorkerService::build(&WorkerArgs::try_parse_from(argv).unwrap())
        .await
        .unwrap();
    tasks.push(tokio::spawn({
        let until = until_stopped();
        async move { worker.run_until_stopped(until).await.unwrap() }
    }));

    // Not paused at first, and the list needs the key.
    let (status, body) = api.call(reqwest::Method::GET, "/kinds", None, None).await;
    assert_eq!(status, 401, "{body}");
    let paced = api.paced().await;
    assert_eq!(paced["type"], "http", "{paced}");
    assert_eq!(paced["paused"], Value::Null, "{paced}");

    // The target says "Retry-After: 5": the kind is paused for everyone, by the target.
    let id = api.submit().await;
    until("the first request", Duration::from_secs(30), || async {
        !requests(&seen).is_empty()
    })
    .await;
    until("the target's pause", Duration::from_secs(5), || async {
        api.paced().await["paused"]["source"] == "target"
    })
    .await;
    let paused = api.paced().await["paused"].clone();
    assert!(paused["until"].is_string(), "{paused}");
    assert!(
        paused["reason"].as_str().unwrap().contains("429"),
        "{paused}"
    );
    // Then the job succeeds, sent once more only after the pause, with the same attempt.
    until("the job's success", Duration::from_secs(40), || async {
        api.status(&id).await["status"] == "succeeded"
    })
    .await;
    let sent = requests(&seen);
    assert_eq!(sent.len(), 2, "{sent:?}");
    let gap = sent[1].0 - sent[0].0;
    assert!(
        gap >= Duration::from_millis(4900),
        "sent again after {gap:?}"
    );
    assert_eq!(sent[0].1, "1");
    assert_eq!(sent[1].1, "1", "the pause consumed no attempt");
    let row = storage
        .get(uuid::Uuid::parse_str(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.attempts, 1);

    // An operator's pause: the key is required, bad input is refused naming the field.
    let (status, body) = api
        .call(reqwest::Method::POST, "/kinds/paced/pause", None, None)
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = api.post("/kinds/nope/pause", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["field"], "name", "{body}");
    for (bad, field) in [
        (json!({"for_s": 0}), "for_s"),
        (json!({"for_s": -3}), "for_s"),
        (json!({"for_s": "ten"}), "for_s"),
        (json!({"reason": "x".repeat(201)}), "reason"),
        (json!({"colour": "red"}), "colour"),
    ] {
        let (status, body) = api.post("/kinds/paced/pause", Some(bad.clone())).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["field"], field, "{bad}: {body}");
    }
    assert_eq!(api.paced().await["paused"]["source"], Value::Null);
    let (status, body) = api
        .post(
            "/kinds/paced/pause",
            Some(json!({"reason": "deploying the target"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"]["source"], "operator", "{body}");
    assert_eq!(body["paused"]["until"], Value::Null, "{body}");
    assert_eq!(body["paused"]["reason"], "deploying the target");
    // Workers learn it within about a second; a job sent after that waits.
    tokio::time::sleep(surge_common::kinds::pause::REFRESH * 2).await;
    let waiting = api.submit().await;
    until("the job waiting", Duration::from_secs(30), || async {
        api.status(&waiting).await["status"] == "waiting"
    })
    .await;
    assert_eq!(
        requests(&seen).len(),
        2,
        "the target was called while paused"
    );
    // Resumed: it runs (after the rest of its deferral, at most 30 s).
    let (status, body) = api.post("/kinds/paced/resume", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], Value::Null, "{body}");
    until(
        "the job's success after the resume",
        Duration::from_secs(60),
        || async { api.status(&waiting).await["status"] == "succeeded" },
    )
    .await;
    assert_eq!(requests(&seen).len(), 3);

    stop.send(true).unwrap();
    for task in tasks {
        task.await.unwrap();
    }
    let _ = std::fs::remove_file(config);
}
