//! `GET /metrics` after a burst: the documented series are there and their counts agree
//! (accepted = succeeded + dead + in flight once the backlog is empty). A test binary of
//! its own, because the metrics recorder is process-wide.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use surge_common::broker::memory::MemoryBroker;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::{app, AppState, Limits};
use surge_worker::{WorkerOptions, WorkerService};
use tower::ServiceExt;

/// The value of the series `name{labels}` (labels as written by the exporter), or 0.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn scrape(state: &AppState) -> String {
    let response = app(state.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn post(state: &AppState, body: serde_json::Value) -> StatusCode {
    let request = Request::post("/jobs")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    app(state.clone()).oneshot(request).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_burst_add_up() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let broker = Arc::new(MemoryBroker::new());
    let state = AppState::new(broker.clone(), storage.clone(), Limits::default());
    let worker = WorkerService::embedded(
        broker.clone(),
        storage,
        state.kinds.clone(),
        WorkerOptions {
            capacity: 10,
            ..WorkerOptions::default()
        },
    );
    let stats = worker.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until_stopped(async {
        let _ = stopped.await;
    }));

    let posts = (0..60).map(|_| post(&state, json!({"kind": "sleep", "payload": {"ms": 50}})));
    for status in futures::future::join_all(posts).await {
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    assert_eq!(
        post(&state, json!({"kind": "poison"})).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post(&state, json!({"kind": "nope"})).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        post(&state, json!({"kind": "sleep"})).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );

    // Mid-burst: nothing is counted twice.
    let text = scrape(&state).await;
    let accepted = value(&text, "surge_jobs_accepted_total");
    assert_eq!(accepted, 61.0, "{text}");
    let settled = value(&text, "surge_jobs_processed_total{outcome=\"succeeded\"}")
        + value(&text, "surge_jobs_processed_total{outcome=\"dead\"}");
    let in_flight = value(&text, "surge_jobs_in_flight");
    assert!(in_flight <= 10.0, "in flight within capacity: {text}");
    assert!(settled + in_flight <= accepted, "{text}");

    // Drained: every accepted job is settled, nothing is left in flight.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.snapshot().succeeded + stats.snapshot().dead < 61 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = scrape(&state).await;
    let succeeded = value(&text, "surge_jobs_processed_total{outcome=\"succeeded\"}");
    let dead = value(&text, "surge_jobs_processed_total{outcome=\"dead\"}");
    let in_flight = value(&text, "surge_jobs_in_flight");
    assert_eq!((succeeded, dead, in_flight), (60.0, 1.0, 0.0), "{text}");
    assert_eq!(
        value(&text, "surge_jobs_accepted_total"),
        succeeded + dead + in_flight
    );
    assert_eq!(
        value(&text, "surge_jobs_rejected_total{reason=\"invalid_job\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(value(&text, "surge_backlog"), 0.0, "{text}");
    assert_eq!(value(&text, "surge_capacity"), 10.0, "{text}");
    for histogram in [
        "surge_publish_seconds_count",
        "surge_job_seconds_count",
        "surge_end_to_end_seconds_count",
    ] {
        assert!(value(&text, histogram) >= 60.0, "{histogram}: {text}");
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}
