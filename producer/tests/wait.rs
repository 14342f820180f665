//! `GET /jobs/{id}?wait=N` on SQLite and PostgreSQL: answered once the job finishes (not
//! before), or after N seconds with the job still pending; a bad `wait` is refused naming
//! the parameter.

use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use surge_common::testing::{self, POSTGRES_URL_VAR};
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;

async fn scenario(database_url: &str) {
    let args = ProducerArgs::try_parse_from([
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--embedded-capacity",
        "4",
    ])
    .unwrap();
    let ingress = Ingress::build(&args).await.unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ingress.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let post = |payload: Value| {
        let http = http.clone();
        let url = format!("{base}/jobs");
        async move {
            let body: Value = http
                .post(url)
                .json(&payload)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["id"].as_str().expect("an id").to_owned()
        }
    };
    let get = |path: String| {
        let http = http.clone();
        let url = format!("{base}{path}");
        async move {
            let response = http.get(url).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };

    // Waits for the result: the answer is the finished job.
    let quick = post(json!({"kind": "sleep", "payload": {"ms": 300}})).await;
    let (status, job) = get(format!("/jobs/{quick}?wait=30")).await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"slept_ms": 300}));

    // A job that will not finish in time: answered after the wait, still pending.
    let slow = post(json!({"kind": "sleep", "payload": {"ms": 5000}})).await;
    let (status, job) = get(format!("/jobs/{slow}?wait=1")).await;
    assert_eq!(status, 200, "{job}");
    assert!(
        matches!(job["status"].as_str(), Some("queued" | "running")),
        "{job}"
    );

    // Bad waits name the parameter and change nothing.
    for bad in ["51", "-1", "soon", "1.5"] {
        let (status, body) = get(format!("/jobs/{quick}?wait={bad}")).await;
        assert_eq!(status, 400, "wait={bad}: {body}");
        assert_eq!(body["error"]["field"], "wait", "{body}");
    }
    let (status, _) = get(format!("/jobs/{quick}?wait=0")).await;
    assert_eq!(status, 200);

    stop.send(()).unwrap();
    // The slow job may still be running: shutdown lets it finish.
    let _ = tokio::time::timeout(Duration::from_secs(60), running).await;
}

#[tokio::test]
async fn on_sqlite_a_waiting_request_gets_the_result() {
    scenario(&testing::temp_sqlite_url()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn on_postgres_a_waiting_request_gets_the_result() {
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    scenario(&database).await;
}

/// Starts an ingress (memory broker, SQLite) with these extra flags; returns it running,
/// its state, and how to stop it.
async fn start(
    extra: &[&str],
) -> (
    String,
    surge_producer::AppState,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), surge_producer::ingress::IngressError>>,
) {
    let database = testing::temp_sqlite_url();
    let mut argv = vec![
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &database,
    ];
    argv.extend_from_slice(extra);
    let args = ProducerArgs::try_parse_from(argv).unwrap();
    let ingress = Ingress::build(&args).await.unwrap();
    let address = ingress.local_addr().to_string();
    let state = ingress.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ingress.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (address, state, stop, running)
}

/// A client that hangs up in the middle of a wait leaves no waiter behind: its job (due
/// in a week: it would not finish for a week) is no longer looked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_wait_leaves_nothing_behind() {
    use tokio::io::AsyncWriteExt;
    let (address, state, stop, running) = start(&[]).await;
    let http = reqwest::Client::new();
    let week_ms = 7 * 24 * 3_600_000u64 - 60_000;
    let job: Value = http
        .post(format!("http://{address}/jobs"))
        .json(&json!({"kind": "echo", "delay_ms": week_ms}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = job["id"].as_str().expect("an id").to_owned();
    for round in 0..3 {
        let mut client = tokio::net::TcpStream::connect(&address).await.unwrap();
        client
            .write_all(format!("GET /jobs/{id}?wait=50 HTTP/1.1\r\nhost: surge\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while state.waiters.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: the wait never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state.waiters.len(), 1);
        drop(client);
        // Before the fix the waiter stayed until its job finished (here: a week).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !state.waiters.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {} waiter(s) left after the client hung up",
                state.waiters.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

/// The longest wait stays below the connection idle timeout, as served and as documented:
/// 50 s under the default 60 s; under a 12 s idle timeout, 10 s (a wait of 11 is refused
/// naming `wait`, and the document's `maximum` says 10).
#[tokio::test]
async fn the_longest_wait_stays_below_the_idle_timeout() {
    use surge_producer::waiters::{max_wait_for, MAX_WAIT_SECS};
    let default_idle = surge_producer::server::ServeOptions::default().idle_timeout;
    assert!(Duration::from_secs(MAX_WAIT_SECS) < default_idle);
    assert_eq!(max_wait_for(default_idle), Duration::from_secs(50));
    for idle_ms in [1u64, 999, 1_200, 12_000, 60_000, 600_000] {
        let idle = Duration::from_millis(idle_ms);
        let bound = max_wait_for(idle);
        assert!(bound < idle, "idle {idle:?}: wait bound {bound:?}");
    }

    let (address, _state, stop, running) = start(&["--idle-timeout-ms", "12000"]).await;
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("http://{address}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let wait = doc["paths"]["/jobs/{id}"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "wait")
        .unwrap()
        .clone();
    assert_eq!(wait["schema"]["maximum"], 10, "{wait}");
    let id = uuid::Uuid::now_v7();
    let response = http
        .get(format!("http://{address}/jobs/{id}?wait=11"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "wait", "{body}");
    let response = http
        .get(format!("http://{address}/jobs/{id}?wait=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404, "an unknown job: answered at once");
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
