//! A broker that never confirms a publish (a quorum queue without its majority, a Kafka
//! partition without enough in-sync replicas): the ingress answers 503 with Retry-After
//! within its publish timeout instead of holding the request, and cancels the job, so it
//! never runs although the broker may still hold it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use surge_common::broker::{Broker, BrokerError, BrokerStats, ConsumeOptions, Deliveries};
use surge_common::job::Job;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::{app, AppState, Limits};
use tower::ServiceExt;

/// Takes every publish and never confirms it.
struct StalledBroker;

#[async_trait]
impl Broker for StalledBroker {
    async fn publish(&self, _jobs: &[Job]) -> Result<(), BrokerError> {
        futures::future::pending().await
    }

    async fn consume(&self, _options: ConsumeOptions) -> Result<Deliveries, BrokerError> {
        Err(BrokerError::Unavailable("stalled".into()))
    }

    async fn stats(&self) -> Result<BrokerStats, BrokerError> {
        Ok(BrokerStats::default())
    }

    fn name(&self) -> &'static str {
        "stalled"
    }
}

#[tokio::test]
async fn a_publish_the_broker_never_confirms_gets_503_and_the_job_is_cancelled() {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let limits = Limits {
        publish_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let state = AppState::new(Arc::new(StalledBroker), storage.clone(), limits);
    let request = Request::post("/jobs")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"kind": "echo", "payload": {"n": 1}}"#))
        .unwrap();
    // Without the publish timeout the request hangs: bound the test, not the ingress.
    let response = tokio::time::timeout(Duration::from_secs(60), app(state).oneshot(request))
        .await
        .expect("the ingress answered instead of waiting for the broker for ever")
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");

    // The refused job is recorded cancelled: should the broker deliver it after all, the
    // worker acks it without a result.
    let cancelled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE state = 'refused'")
        .fetch_one(storage.pool())
        .await
        .unwrap();
    assert_eq!(cancelled, 1);
}
