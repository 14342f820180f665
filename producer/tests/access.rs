//! Who may read what, and who a client is: `--auth-scope all` puts the dashboard's data,
//! `/metrics` and `/openapi.json` behind the API keys too; `--trusted-proxies` makes the
//! per-client rate limit count the client a trusted proxy forwarded for, and nobody
//! else's claim.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use serde_json::json;
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::Broker;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::admission::AdmissionConfig;
use surge_producer::auth::{ApiKeys, AuthScope};
use surge_producer::client_addr::TrustedProxies;
use surge_producer::{app, AppState, Limits};
use tower::ServiceExt;

async fn state() -> (AppState, Arc<MemoryBroker>) {
    let broker = Arc::new(MemoryBroker::new());
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    (
        AppState::new(broker.clone(), storage, Limits::default()),
        broker,
    )
}

async fn status(state: &AppState, request: Request<Body>) -> StatusCode {
    app(state.clone()).oneshot(request).await.unwrap().status()
}

fn get(path: &str, key: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(path);
    if let Some(key) = key {
        builder = builder.header("authorization", format!("Bearer {key}"));
    }
    builder.body(Body::empty()).unwrap()
}

/// The endpoints that hold data but no job: open by default, guarded with scope `all`.
const READS: [&str; 4] = [
    "/metrics",
    "/openapi.json",
    "/api/dashboard",
    "/api/dashboard/kinds",
];
/// Open whatever the scope.
const ALWAYS_OPEN: [&str; 3] = ["/healthz", "/readyz", "/"];

#[tokio::test]
async fn by_default_keys_guard_the_job_endpoints_only() {
    let (state, _) = state().await;
    let state = state.with_api_keys(ApiKeys::parse("s3cret"));
    for path in READS.iter().chain(&ALWAYS_OPEN) {
        assert_eq!(
            status(&state, get(path, None)).await,
            StatusCode::OK,
            "{path}"
        );
    }
    assert_eq!(
        status(&state, get("/jobs?status=dead", None)).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn with_scope_all_every_read_needs_a_key_but_health_and_the_page() {
    let (state, _) = state().await;
    let state = state.with_api_keys(ApiKeys::parse("s3cret").with_scope(AuthScope::All));
    for path in READS {
        assert_eq!(
            status(&state, get(path, None)).await,
            StatusCode::UNAUTHORIZED,
            "{path} without a key"
        );
        assert_eq!(
            status(&state, get(path, Some("guess"))).await,
            StatusCode::UNAUTHORIZED,
            "{path} with a wrong key"
        );
        assert_eq!(
            status(&state, get(path, Some("s3cret"))).await,
            StatusCode::OK,
            "{path} with the key"
        );
    }
    for path in ALWAYS_OPEN {
        assert_eq!(
            status(&state, get(path, None)).await,
            StatusCode::OK,
            "{path}"
        );
    }
    // An unknown path tells nothing without a key either.
    assert_eq!(
        status(&state, get("/nope", None)).await,
        StatusCode::UNAUTHORIZED
    );
    // Scope `all` without keys configured changes nothing: authentication is off.
    let (open, _) = state_open_all().await;
    assert_eq!(status(&open, get("/metrics", None)).await, StatusCode::OK);
}

async fn state_open_all() -> (AppState, Arc<MemoryBroker>) {
    let (state, broker) = state().await;
    (
        state.with_api_keys(ApiKeys::parse("").with_scope(AuthScope::All)),
        broker,
    )
}

/// A job posted by `peer` with `X-Forwarded-For: forwarded_for` (when given).
fn post_from(peer: &str, forwarded_for: Option<&str>) -> Request<Body> {
    let mut builder = Request::post("/jobs").header("content-type", "application/json");
    if let Some(chain) = forwarded_for {
        builder = builder.header("x-forwarded-for", chain);
    }
    let mut request = builder
        .body(Body::from(json!({"kind": "echo"}).to_string()))
        .unwrap();
    let peer: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request
}

/// One job per client per hour: a second job from the same client is 429.
fn one_job_each(state: AppState) -> AppState {
    state.with_admission(AdmissionConfig {
        client_rate: NonZeroU32::new(1),
        client_burst: NonZeroU32::new(1),
        ..AdmissionConfig::default()
    })
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate() {
    let (state, broker) = state().await;
    let state =
        one_job_each(state).with_trusted_proxies(TrustedProxies::parse("127.0.0.0/8").unwrap());
    let proxy = "127.0.0.1:40000";
    for client in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(
            status(&state, post_from(proxy, Some(client))).await,
            StatusCode::ACCEPTED,
            "{client}'s first job"
        );
    }
    assert_eq!(
        status(&state, post_from(proxy, Some("203.0.113.1"))).await,
        StatusCode::TOO_MANY_REQUESTS,
        "203.0.113.1's second job"
    );
    // A client cannot pick its own identity by prepending entries: the proxy's entry
    // (the rightmost) is the one believed.
    assert_eq!(
        status(&state, post_from(proxy, Some("198.51.100.77, 203.0.113.2"))).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a forged first entry"
    );
    assert_eq!(broker.stats().await.unwrap().backlog, Some(2));
}

#[tokio::test]
async fn an_untrusted_peer_is_counted_by_its_own_address_whatever_it_claims() {
    let (state, broker) = state().await;
    // No trusted proxies (the default).
    let state = one_job_each(state);
    let peer = "127.0.0.1:40000";
    assert_eq!(
        status(&state, post_from(peer, Some("203.0.113.1"))).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        status(&state, post_from(peer, Some("203.0.113.2"))).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Trusted proxies configured, but this peer is not one of them.
    let (state, _) = self::state().await;
    let state =
        one_job_each(state).with_trusted_proxies(TrustedProxies::parse("10.0.0.0/8").unwrap());
    assert_eq!(
        status(&state, post_from(peer, Some("203.0.113.1"))).await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        status(&state, post_from(peer, Some("203.0.113.2"))).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(broker.stats().await.unwrap().backlog, Some(1));
}
