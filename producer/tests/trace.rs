//! One trace from the POST to the worker: the request's log line and the worker's log line
//! for the same job carry the same `trace_id` — on RabbitMQ and on Kafka.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use surge_common::broker::kafka::KafkaBroker;
use surge_common::broker::rabbitmq::RabbitMqBroker;
use surge_common::broker::Broker;
use surge_common::storage::Storage;
use surge_common::testing::{self, AMQP_URL_VAR, KAFKA_BROKERS_VAR};
use surge_producer::{app, AppState};
use surge_worker::{WorkerOptions, WorkerService};
use tower::ServiceExt;

/// Every log line of this test binary, as JSON.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("info,surge_worker=debug")
            .with_writer(move || Capture(sink.clone()))
            .init();
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Log lines (parsed) that mention `needle` anywhere.
fn lines_with(needle: &str) -> Vec<Value> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).to_string();
    text.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn one_trace_end_to_end(broker: Arc<dyn Broker>) {
    logs();
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let state = AppState::new(broker.clone(), storage.clone(), Default::default());
    let worker = WorkerService::embedded(
        broker.clone(),
        storage.clone(),
        surge_common::kinds::KindRegistry::builtin(),
        WorkerOptions::default(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let request = Request::post("/jobs")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(Body::from(
            r#"{"kind": "echo", "payload": {"traced": true}}"#,
        ))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let job_id = body["id"].as_str().unwrap().to_owned();

    // The ingress logged the request with the trace id.
    let request_lines = lines_with(trace_id)
        .into_iter()
        .filter(|l| l.to_string().contains("/jobs") && l.to_string().contains("202"))
        .count();
    assert!(
        request_lines >= 1,
        "no request log line with trace id {trace_id}"
    );

    // The worker's log line for this job carries the same trace id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let worker_lines: Vec<Value> = lines_with(&job_id)
            .into_iter()
            .filter(|l| l.to_string().contains("succeeded"))
            .collect();
        if let Some(line) = worker_lines.first() {
            assert!(
                line.to_string().contains(trace_id),
                "worker line without the trace id: {line}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no worker log line for job {job_id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    broker.delete_topology().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_amqp),
    ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)"
)]
async fn one_trace_on_rabbitmq() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let broker = RabbitMqBroker::connect(&amqp, &testing::unique_name("trace"))
        .await
        .unwrap();
    one_trace_end_to_end(Arc::new(broker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(surge_kafka),
    ignore = "set SURGE_TEST_KAFKA_BROKERS to run (scripts/test.sh does)"
)]
async fn one_trace_on_kafka() {
    let Some(brokers) = testing::service(KAFKA_BROKERS_VAR, "Kafka (scripts/kafka.sh)") else {
        return;
    };
    let broker = KafkaBroker::connect(&brokers, &testing::unique_name("trace"), 3)
        .await
        .unwrap();
    one_trace_end_to_end(Arc::new(broker)).await;
}
