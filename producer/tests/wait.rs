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
    for bad in ["61", "-1", "soon", "1.5"] {
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
