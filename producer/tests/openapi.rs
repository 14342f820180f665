//! `GET /openapi.json` matches the real router: every documented operation is routed, and
//! every route the API serves is documented.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use surge_common::broker::memory::MemoryBroker;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::{app, AppState};
use tower::ServiceExt;

async fn state() -> AppState {
    AppState::new(
        Arc::new(MemoryBroker::new()),
        Storage::connect(&testing::temp_sqlite_url()).await.unwrap(),
        Default::default(),
    )
}

async fn send(state: &AppState, method: Method, path: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn the_document_and_the_router_agree() {
    let state = state().await;
    let (status, doc) = send(&state, Method::GET, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3."),
        "{doc}"
    );

    let mut documented = BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for method in operations.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
            let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = send(&state, method.clone(), &concrete).await;
            let fallback = body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no route"));
            assert!(
                !fallback && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but not routed ({status}: {body})"
            );
        }
    }

    // Every route the API serves (kept in step with app.rs) is documented.
    let served = [
        "POST /jobs",
        "POST /jobs/batch",
        "GET /jobs/{id}",
        "POST /jobs/{id}/replay",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /",
        "GET /api/dashboard",
    ];
    for route in served {
        assert!(
            documented.contains(route),
            "{route} is served but not documented: {documented:?}"
        );
    }
    // And an operation that does not exist is refused by the router, so the check above bites.
    let (status, _) = send(&state, Method::DELETE, "/jobs").await;
    assert!(status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_FOUND);
}
