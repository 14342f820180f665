//! The Rust API, end to end: the example program's kind (`examples/own_kind.rs`) given to
//! the real ingress and a real worker on RabbitMQ and PostgreSQL; a job POSTed over HTTP
//! ends as a stored result, a bad payload is refused with 422 naming the field, and the
//! OpenAPI document describes the kind.

#[allow(dead_code)]
#[path = "../examples/own_kind.rs"]
mod own_kind;

use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use surge_common::testing::{self, AMQP_URL_VAR, POSTGRES_URL_VAR};
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;
use surge_worker::config::WorkerArgs;
use surge_worker::WorkerService;

#[tokio::test]
#[cfg_attr(
    not(all(surge_amqp, surge_postgres)),
    ignore = "set SURGE_TEST_AMQP_URL and SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn a_rust_kind_runs_from_post_to_stored_result() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let Some(postgres) = testing::service(POSTGRES_URL_VAR, "PostgreSQL") else {
        return;
    };
    let database = testing::fresh_postgres_database(&postgres).await.unwrap();
    let queue = testing::unique_name("own-kind");
    let common = [
        "--broker",
        "rabbitmq",
        "--amqp-url",
        &amqp,
        "--queue",
        &queue,
        "--database-url",
        &database,
        "--builtin-kinds",
        "true",
    ];
    let ingress_args = ProducerArgs::try_parse_from(
        ["surge-producer"]
            .into_iter()
            .chain(common)
            .chain(["--listen", "127.0.0.1:0"]),
    )
    .unwrap();
    let worker_args =
        WorkerArgs::try_parse_from(["surge-worker"].into_iter().chain(common)).unwrap();

    let ingress = Ingress::build_with_kinds(&ingress_args, own_kind::kinds())
        .await
        .unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let worker = WorkerService::build_with_kinds(&worker_args, own_kind::kinds())
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut ingress_stopped = stopped.clone();
    let ingress = tokio::spawn(ingress.run_until_stopped(async move {
        let _ = ingress_stopped.wait_for(|s| *s).await;
    }));
    let mut worker_stopped = stopped.clone();
    let worker = tokio::spawn(worker.run_until_stopped(async move {
        let _ = worker_stopped.wait_for(|s| *s).await;
    }));

    let http = reqwest::Client::new();
    let post = |body: Value| {
        let http = http.clone();
        let url = format!("{base}/jobs");
        async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };

    // A bad payload: 422 naming the field, by the kind's own schema.
    let (status, body) = post(json!({"kind": "word_count", "payload": {"text": 5}})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "payload.text", "{body}");
    // The built-in kinds are there too (no --config turned them off).
    let (status, body) = post(json!({"kind": "echo", "payload": {}})).await;
    assert_eq!(status, 202, "{body}");

    let (status, body) = post(json!({
        "kind": "word_count",
        "payload": {"text": "our API can handle only 200 requests at a time"}
    }))
    .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let job = loop {
        let job: Value = http
            .get(format!("{base}/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "succeeded" || job["status"] == "dead" {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no result yet: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"], json!({"words": 10}), "{job}");

    // The OpenAPI document describes the kind with its schema.
    let doc: Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let described = &doc["components"]["schemas"]["JobRequest.word_count"];
    assert_eq!(
        described["properties"]["payload"]["required"],
        json!(["text"]),
        "{described}"
    );

    stop.send(true).unwrap();
    ingress.await.unwrap().unwrap();
    worker.await.unwrap().unwrap();
}
