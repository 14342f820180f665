//! Traces leave the process: with `--otlp-endpoint` (cargo feature `otlp`), one job is one
//! trace from the POST through the broker to the result commit. A minimal OTLP/HTTP
//! receiver (JSON) started here collects the spans; their parent links must chain:
//! client → `POST /jobs` → `publish` → `job echo` → `commit`, all in the client's trace.
//!
//! Run by `scripts/test.sh` as `cargo test -p surge-producer --features otlp --test otlp`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use clap::Parser;
use serde_json::{json, Value};
use surge_common::testing;
use surge_producer::config::ProducerArgs;
use surge_producer::Ingress;

type Spans = Arc<Mutex<Vec<Value>>>;

/// An OTLP/HTTP receiver: every span of every `POST /v1/traces` (JSON encoding).
async fn receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(|State(spans): State<Spans>, body: String| async move {
                let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let mut spans = spans.lock().unwrap();
                for resource in request["resourceSpans"].as_array().into_iter().flatten() {
                    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                        spans.extend(scope["spans"].as_array().into_iter().flatten().cloned());
                    }
                }
                "{}"
            }),
        )
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (endpoint, spans)
}

fn find<'a>(spans: &'a [Value], name: &str) -> Option<&'a Value> {
    spans.iter().find(|s| s["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_is_one_trace_from_the_post_to_the_commit() {
    let (endpoint, spans) = receiver().await;
    let args = ProducerArgs::try_parse_from([
        "surge-producer",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &testing::temp_sqlite_url(),
        "--otlp-endpoint",
        &endpoint,
    ])
    .unwrap();
    surge_common::telemetry::init_with(&args.telemetry, "surge-test").unwrap();
    assert!(surge_common::otlp::enabled());
    let ingress = Ingress::build(&args).await.unwrap();
    let base = format!("http://{}", ingress.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(ingress.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let http = reqwest::Client::new();
    let accepted: Value = http
        .post(format!("{base}/jobs"))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .json(&json!({"kind": "echo", "payload": {"traced": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let done: Value = http
        .get(format!("{base}/jobs/{id}?wait=30"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");

    // The worker's spans end with the ack, just after the result is visible.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let collected = loop {
        surge_common::otlp::flush();
        let collected = spans.lock().unwrap().clone();
        if ["POST /jobs", "publish", "job echo", "commit"]
            .iter()
            .all(|name| find(&collected, name).is_some())
        {
            break collected;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "spans so far: {collected:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let span = |name: &str| find(&collected, name).unwrap();
    let (post, publish, job, commit) = (
        span("POST /jobs"),
        span("publish"),
        span("job echo"),
        span("commit"),
    );
    for s in [post, publish, job, commit] {
        assert_eq!(s["traceId"], client_trace, "one trace: {s}");
    }
    assert_eq!(post["parentSpanId"], client_span, "{post}");
    assert_eq!(publish["parentSpanId"], post["spanId"], "{publish}");
    assert_eq!(job["parentSpanId"], publish["spanId"], "{job}");
    assert_eq!(commit["parentSpanId"], job["spanId"], "{commit}");
    assert!(
        job["attributes"].to_string().contains(&id),
        "the job span names the job: {job}"
    );

    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
