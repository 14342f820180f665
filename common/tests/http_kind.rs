//! HTTP kinds against a real HTTP server started by each test (axum on 127.0.0.1:0): how
//! each answer becomes an outcome, the headers sent, the adaptive limit, the circuit
//! breaker, the rate limit, and the concurrency cap held across several replicas
//! (separate `HttpKind`s with their own pools on one database) on SQLite and PostgreSQL.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use surge_common::job::Job;
use surge_common::kinds::http::config::{HttpKindConfig, HttpKindFile};
use surge_common::kinds::http::HttpKind;
use surge_common::kinds::pause::{KindPauses, PausableKind};
use surge_common::kinds::{JobError, Kind};
use surge_common::storage::flow::SlotsSetup;
use surge_common::storage::pauses::PauseSource;
use surge_common::storage::Storage;
use surge_common::testing::{self, POSTGRES_URL_VAR};

/// What the test server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU32,
    in_flight: AtomicU32,
    peak: AtomicU32,
    failing: AtomicBool,
    last: Mutex<Option<(HeaderMap, Bytes)>>,
}

struct Server {
    base: String,
    seen: Arc<Seen>,
}

async fn record(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    *seen.last.lock().unwrap() = Some((headers, body));
    StatusCode::OK.into_response()
}

async fn json_body(State(seen): State<Arc<Seen>>, body: Bytes) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    axum::Json(json!({"ok": true, "echo": payload})).into_response()
}

async fn status(State(seen): State<Arc<Seen>>, Path(code): Path<u16>) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(code).unwrap();
    let body = format!(
        "field `name` is required{}",
        " and this explanation goes on".repeat(30)
    );
    let mut response = (status, body).into_response();
    if status.is_redirection() {
        response
            .headers_mut()
            .insert("location", "http://127.0.0.1:1/elsewhere".parse().unwrap());
    }
    response
}

async fn work(State(seen): State<Arc<Seen>>) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.peak.fetch_max(now, Ordering::SeqCst);
    // The target's own work: long enough for requests to overlap.
    tokio::time::sleep(Duration::from_millis(15)).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    (StatusCode::OK, "done").into_response()
}

async fn toggle(State(seen): State<Arc<Seen>>) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    if seen.failing.load(Ordering::SeqCst) {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else {
        axum::Json(json!({"probe": "ok"})).into_response()
    }
}

async fn start() -> Server {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/record", post(record))
        .route("/json", post(json_body))
        .route("/text", post(|| async { "plain words" }))
        .route("/status/{code}", post(status))
        .route("/work", post(work))
        .route("/toggle", post(toggle))
        .route("/big", post(|| async { "0123456789".repeat(1000) }))
        .route(
            "/endless",
            post(|| async {
                // Never ends: the client must stop reading at its cap.
                let chunks = futures::stream::repeat_with(|| {
                    Ok::<_, Infallible>(Bytes::from_static(&[0xff; 4096]))
                });
                Body::from_stream(chunks)
            }),
        )
        .route(
            "/retry-seconds",
            post(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "7")],
                    "slow down",
                )
            }),
        )
        .route(
            "/retry-date",
            post(|| async {
                let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
                (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", at)], "")
            }),
        )
        .route(
            "/retry-garbage",
            post(|| async { (StatusCode::BAD_GATEWAY, [("retry-after", "soon-ish")], "") }),
        )
        .route(
            "/busy-once",
            post(|State(seen): State<Arc<Seen>>| async move {
                // The first request is told to come back in 5 s; the others succeed.
                if seen.requests.fetch_add(1, Ordering::SeqCst) == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "5")],
                        "busy",
                    )
                        .into_response()
                } else {
                    axum::Json(json!({"done": true})).into_response()
                }
            }),
        )
        .route(
            "/slow-busy",
            post(|State(seen): State<Arc<Seen>>| async move {
                seen.requests.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "5")], "").into_response()
            }),
        )
        .route("/hang", post(std::future::pending::<&'static str>))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        base: format!("http://{addr}"),
        seen,
    }
}

fn env(var: &str) -> Option<String> {
    (var == "TOKEN").then(|| "s3cret".to_owned())
}

fn config(name: &str, url: &str, extra: &str) -> HttpKindConfig {
    let file: HttpKindFile = toml::from_str(&format!("url = \"{url}\"\n{extra}")).unwrap();
    HttpKindConfig::check(name, file, &env).unwrap()
}

async fn sqlite() -> Storage {
    Storage::connect(&testing::temp_sqlite_url()).await.unwrap()
}

async fn kind(url: &str, extra: &str) -> HttpKind {
    HttpKind::new(config("target", url, extra), sqlite().await).unwrap()
}

fn job() -> Job {
    Job::new("target", json!({"name": "ada", "n": 1}), None)
}

fn retryable(result: Result<Value, JobError>) -> (String, Option<Duration>) {
    match result {
        Err(JobError::Retryable {
            message,
            retry_after,
        }) => (message, retry_after),
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

fn permanent(result: Result<Value, JobError>) -> String {
    match result {
        Err(JobError::Permanent(message)) => message,
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}

fn deferred(result: Result<Value, JobError>) -> (String, Duration) {
    match result {
        Err(JobError::Deferred { reason, after }) => (reason, after),
        other => panic!("expected a deferral, got {other:?}"),
    }
}

#[tokio::test]
async fn success_bodies_become_results() {
    let server = start().await;
    let b = &server.base;
    let json_kind = kind(&format!("{b}/json"), "").await;
    assert_eq!(
        json_kind.run(&job(), 1).await,
        Ok(json!({"ok": true, "echo": {"name": "ada", "n": 1}}))
    );
    let text = kind(&format!("{b}/text"), "").await;
    assert_eq!(text.run(&job(), 1).await, Ok(json!("plain words")));

    let big = kind(&format!("{b}/big"), "max_result_bytes = 100").await;
    let result = big.run(&job(), 1).await.unwrap();
    assert_eq!(result["truncated"], json!(true));
    assert_eq!(result["bytes"], json!(100));
    assert_eq!(result["content_length"], json!(10_000));
    assert_eq!(result["body"], json!("0123456789".repeat(10)));

    // An endless, non-UTF-8 body: read up to the cap, then dropped.
    let endless = kind(&format!("{b}/endless"), "max_result_bytes = 1000").await;
    let result = endless.run(&job(), 1).await.unwrap();
    assert_eq!(result["truncated"], json!(true));
    assert!(result["body"].as_str().unwrap().len() <= 1000);
}

#[tokio::test]
async fn client_errors_are_permanent_with_a_short_excerpt() {
    let server = start().await;
    let b = &server.base;
    let message = permanent(
        kind(&format!("{b}/status/400"), "")
            .await
            .run(&job(), 1)
            .await,
    );
    assert!(message.contains("400 Bad Request"), "{message}");
    assert!(message.contains("field `name` is required"), "{message}");
    assert!(message.chars().count() < 260, "{message}");
    let message = permanent(
        kind(&format!("{b}/status/404"), "")
            .await
            .run(&job(), 1)
            .await,
    );
    assert!(message.contains("404"), "{message}");
    // A redirect is not followed (the server at the Location is never contacted).
    let message = permanent(
        kind(&format!("{b}/status/302"), "")
            .await
            .run(&job(), 1)
            .await,
    );
    assert!(
        message.contains("302") && message.contains("redirect"),
        "{message}"
    );
}

#[tokio::test]
async fn overload_and_server_errors_are_retryable_honouring_retry_after() {
    let server = start().await;
    let b = &server.base;
    for code in [408, 429, 500, 503] {
        let (message, after) = retryable(
            kind(&format!("{b}/status/{code}"), "")
                .await
                .run(&job(), 1)
                .await,
        );
        assert!(message.contains(&code.to_string()), "{message}");
        assert_eq!(after, None);
    }
    let (_, after) = retryable(
        kind(&format!("{b}/retry-seconds"), "")
            .await
            .run(&job(), 1)
            .await,
    );
    assert_eq!(after, Some(Duration::from_secs(7)));
    // Clamped to the kind's max_backoff_ms.
    let clamped = kind(&format!("{b}/retry-seconds"), "max_backoff_ms = 2000").await;
    assert_eq!(
        retryable(clamped.run(&job(), 1).await).1,
        Some(Duration::from_secs(2))
    );
    let (_, after) = retryable(
        kind(&format!("{b}/retry-date"), "")
            .await
            .run(&job(), 1)
            .await,
    );
    let after = after.expect("an HTTP-date Retry-After is honoured");
    assert!(
        after <= Duration::from_secs(30) && after >= Duration::from_secs(25),
        "{after:?}"
    );
    let (_, after) = retryable(
        kind(&format!("{b}/retry-garbage"), "")
            .await
            .run(&job(), 1)
            .await,
    );
    assert_eq!(after, None);
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_retryable() {
    let server = start().await;
    let hang = kind(&format!("{}/hang", server.base), "timeout_ms = 200").await;
    let (message, _) = retryable(hang.run(&job(), 1).await);
    assert!(message.contains("timed out"), "{message}");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = kind(&format!("http://127.0.0.1:{port}/x"), "").await;
    let (message, _) = retryable(refused.run(&job(), 1).await);
    assert!(message.contains("connect"), "{message}");
    assert!(
        !message.contains(&port.to_string()),
        "no URL in the message: {message}"
    );
}

#[tokio::test]
async fn every_request_carries_its_headers() {
    let server = start().await;
    let kind = kind(
        &format!("{}/record", server.base),
        "[headers]\nX-Api-Key = \"key-${TOKEN}\"\nIdempotency-Key = \"not-this\"",
    )
    .await;
    let mut job = job();
    job.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    kind.run(&job, 3).await.unwrap();
    let (headers, body) = server.seen.last.lock().unwrap().take().unwrap();
    let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("idempotency-key"), job.id.to_string());
    assert_eq!(header("surge-attempt"), "3");
    assert_eq!(header("traceparent"), job.traceparent.clone().unwrap());
    assert_eq!(header("x-api-key"), "key-s3cret");
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), job.payload);
}

#[tokio::test]
async fn the_adaptive_limit_shrinks_under_429s() {
    let server = start().await;
    let extra = "concurrency = 8\nbreaker_failures = 0";
    let kind = kind(&format!("{}/status/429", server.base), extra).await;
    assert_eq!(kind.flow().limit, 8.0);
    for _ in 0..3 {
        retryable(kind.run(&job(), 1).await);
    }
    assert_eq!(kind.flow().limit, 1.0);
    // Not adaptive: the limit stays at the cap.
    let fixed = self::kind(
        &format!("{}/status/429", server.base),
        &format!("{extra}\nadaptive = false"),
    )
    .await;
    retryable(fixed.run(&job(), 1).await);
    assert_eq!(fixed.flow().limit, 8.0);
}

#[tokio::test]
async fn the_breaker_opens_defers_without_sending_and_closes_after_a_probe() {
    let server = start().await;
    let seen = &server.seen;
    seen.failing.store(true, Ordering::SeqCst);
    let storage = sqlite().await;
    let extra = "breaker_failures = 2\nbreaker_cooldown_ms = 300";
    let flaky = HttpKind::new(
        config("flaky", &format!("{}/toggle", server.base), extra),
        storage.clone(),
    )
    .unwrap();
    let other = HttpKind::new(
        config("other", &format!("{}/json", server.base), extra),
        storage,
    )
    .unwrap();
    retryable(flaky.run(&job(), 1).await);
    retryable(flaky.run(&job(), 2).await);
    assert!(flaky.flow().breaker_open);
    let sent = seen.requests.load(Ordering::SeqCst);
    let (reason, after) = deferred(flaky.run(&job(), 3).await);
    assert!(reason.contains("circuit"), "{reason}");
    assert!(after <= Duration::from_millis(300));
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        sent,
        "nothing sent while open"
    );
    // Another kind (same target even) is not affected.
    other.run(&job(), 1).await.unwrap();
    assert!(!other.flow().breaker_open);

    // The target recovers; after the cool-down one probe goes through and closes it.
    seen.failing.store(false, Ordering::SeqCst);
    let mut result = flaky.run(&job(), 3).await;
    for _ in 0..100 {
        match result {
            Err(JobError::Deferred { after, .. }) => {
                // The broker would bring the job back after `after`.
                tokio::time::sleep(after).await;
                result = flaky.run(&job(), 3).await;
            }
            _ => break,
        }
    }
    assert_eq!(result, Ok(json!({"probe": "ok"})));
    assert!(!flaky.flow().breaker_open);
    flaky.run(&job(), 1).await.unwrap();
}

#[tokio::test]
async fn over_the_rate_jobs_are_deferred() {
    let server = start().await;
    // One request per 100 s: the second cannot start within the wait bound.
    let kind = kind(&format!("{}/json", server.base), "rate = 0.01").await;
    kind.run(&job(), 1).await.unwrap();
    let (reason, after) = deferred(kind.run(&job(), 1).await);
    assert!(reason.contains("rate"), "{reason}");
    assert!(after > Duration::from_secs(60), "{after:?}");
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_full_cap_or_a_failed_database_defers_without_sending() {
    let server = start().await;
    let storage = sqlite().await;
    let url = format!("{}/json", server.base);
    let kind = HttpKind::new(config("full", &url, "concurrency = 2"), storage.clone()).unwrap();
    kind.prepare().await.unwrap();
    // Another replica holds both slots.
    let held = storage
        .acquire_dispatch_slots("full", "other", 2, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(held.len(), 2);
    let (reason, _) = deferred(kind.run(&job(), 1).await);
    assert!(reason.contains("slots"), "{reason}");
    assert_eq!(kind.flow().in_flight, 0);
    // The database is gone: deferred too, never sent without a slot.
    storage.pool().close().await;
    let (reason, _) = deferred(kind.run(&job(), 1).await);
    assert!(reason.contains("database"), "{reason}");
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 0);
}

/// Three replicas (own `HttpKind`, own pool, one database) and 90 jobs against a target
/// that records its peak concurrency: it never sees more than `concurrency`. A deferred job
/// is brought back, as the broker would.
async fn the_cap_holds_across_replicas(database_url: &str) {
    const CAP: u32 = 4;
    const JOBS: usize = 90;
    let server = start().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let storage = Storage::connect(database_url).await.unwrap();
        let config = config(
            "capped",
            &format!("{}/work", server.base),
            &format!("concurrency = {CAP}"),
        );
        let kind = Arc::new(HttpKind::new(config, storage).unwrap());
        kind.prepare().await.unwrap();
        replicas.push(kind);
    }
    let runs = (0..JOBS).map(|i| {
        let kind = replicas[i % replicas.len()].clone();
        tokio::spawn(async move {
            let job = Job::new("capped", json!({"i": i}), None);
            let mut deferrals = 0;
            loop {
                match kind.run(&job, 1).await {
                    Err(JobError::Deferred { .. }) if deferrals < 100 => {
                        deferrals += 1;
                        // The broker's redelivery, shortened.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        })
    });
    for result in futures::future::join_all(runs).await {
        assert_eq!(result.unwrap(), Ok(json!("done")));
    }
    let peak = server.seen.peak.load(Ordering::SeqCst);
    assert!(peak <= CAP, "the target saw {peak} concurrent requests");
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), JOBS as u32);
    // Slots a replica keeps for its next attempt go back to the database shortly after.
    let storage = Storage::connect(database_url).await.unwrap();
    let mut in_use = storage.dispatch_slots_in_use("capped").await.unwrap();
    for _ in 0..500 {
        if in_use.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        in_use = storage.dispatch_slots_in_use("capped").await.unwrap();
    }
    assert_eq!(in_use, (0, CAP), "every slot released");
}

#[tokio::test]
async fn the_cap_holds_across_replicas_on_sqlite() {
    the_cap_holds_across_replicas(&testing::temp_sqlite_url()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn the_cap_holds_across_replicas_on_postgres() {
    let Some(url) = testing::fresh_postgres().await else {
        return;
    };
    the_cap_holds_across_replicas(&url).await;
}

/// The slot table itself: leases on the database clock, expiry, stale releases.
async fn slot_leases(storage: Storage) {
    const LONG: Duration = Duration::from_secs(600);
    assert_eq!(
        storage.ensure_dispatch_slots("k", 2).await.unwrap(),
        SlotsSetup::Ready
    );
    let a = storage
        .acquire_dispatch_slots("k", "a", 1, LONG)
        .await
        .unwrap();
    let b = storage
        .acquire_dispatch_slots("k", "b", 1, LONG)
        .await
        .unwrap();
    assert!(a.len() == 1 && b.len() == 1 && a != b);
    assert!(storage
        .acquire_dispatch_slots("k", "c", 1, LONG)
        .await
        .unwrap()
        .is_empty());
    // Other kinds have their own slots.
    storage.ensure_dispatch_slots("other", 1).await.unwrap();
    assert_eq!(
        storage
            .acquire_dispatch_slots("other", "x", 5, LONG)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(storage.release_dispatch_slot("k", a[0], "a").await.unwrap());
    // Several at once, never more than are free.
    assert_eq!(
        storage
            .acquire_dispatch_slots("k", "d", 5, LONG)
            .await
            .unwrap(),
        a
    );
    assert!(storage.release_dispatch_slot("k", a[0], "d").await.unwrap());
    // A short lease runs out on the database clock; the slot is then taken over and the
    // old holder's release frees nothing.
    let short = storage
        .acquire_dispatch_slots("k", "short", 1, Duration::from_millis(1))
        .await
        .unwrap();
    let mut taken = Vec::new();
    for _ in 0..500 {
        taken = storage
            .acquire_dispatch_slots("k", "e", 1, LONG)
            .await
            .unwrap();
        if !taken.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(taken, short);
    assert!(!storage
        .release_dispatch_slot("k", short[0], "short")
        .await
        .unwrap());
    assert_eq!(storage.dispatch_slots_in_use("k").await.unwrap(), (2, 2));
}

#[tokio::test]
async fn slot_leases_on_sqlite() {
    slot_leases(sqlite().await).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn slot_leases_on_postgres() {
    let Some(url) = postgres().await else {
        return;
    };
    slot_leases(Storage::connect(&url).await.unwrap()).await;
}

async fn postgres() -> Option<String> {
    let base = testing::service(POSTGRES_URL_VAR, "PostgreSQL")?;
    Some(testing::fresh_postgres_database(&base).await.unwrap())
}

/// A lease is measured on the database's clock, from when the claiming statement runs:
/// its end is the database's now plus the lease, whatever the claimer's own clock says, so
/// a replica whose clock runs ahead cannot take a slot another one holds.
async fn leases_are_on_the_database_clock(storage: Storage) {
    const LEASE: Duration = Duration::from_secs(60);
    storage.ensure_dispatch_slots("clock", 1).await.unwrap();
    let before = storage.dispatch_clock_us().await.unwrap();
    let slot = storage
        .acquire_dispatch_slots("clock", "holder", 1, LEASE)
        .await
        .unwrap();
    let after = storage.dispatch_clock_us().await.unwrap();
    assert_eq!(slot, [0]);
    let until: i64 =
        sqlx::query_scalar("SELECT lease_until_us FROM dispatch_slots WHERE kind = 'clock'")
            .fetch_one(storage.pool())
            .await
            .unwrap();
    let lease_us = i64::try_from(LEASE.as_micros()).unwrap();
    assert!(
        before + lease_us <= until + 1_000 && until <= after + lease_us + 1_000,
        "lease ends at {until}, the database's clock said {before}..{after}"
    );
    // Nobody else gets it while the lease lasts, whatever their clock.
    assert!(storage
        .acquire_dispatch_slots("clock", "thief", 1, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        storage.dispatch_slots_in_use("clock").await.unwrap(),
        (1, 1)
    );
}

/// A claim that waits for a pooled connection starts its lease once it has one: on SQLite
/// (one connection per pool) a claim is queued behind a held connection, and its lease
/// ends a full lease after the connection was given back.
#[tokio::test]
async fn a_lease_starts_once_the_connection_is_held() {
    const LEASE: Duration = Duration::from_secs(60);
    let storage = sqlite().await;
    storage.ensure_dispatch_slots("late", 1).await.unwrap();
    let busy = storage.pool().acquire().await.unwrap();
    let claim = tokio::spawn({
        let storage = storage.clone();
        async move {
            storage
                .acquire_dispatch_slots("late", "late", 1, LEASE)
                .await
                .unwrap()
        }
    });
    // The claim queues for the connection meanwhile (nothing to await: the pool does not
    // say who waits); if it had not, the check below would hold trivially.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handed_back = surge_common::clock::now_micros();
    drop(busy);
    assert_eq!(claim.await.unwrap(), [0]);
    let until: i64 =
        sqlx::query_scalar("SELECT lease_until_us FROM dispatch_slots WHERE kind = 'late'")
            .fetch_one(storage.pool())
            .await
            .unwrap();
    let lease_us = i64::try_from(LEASE.as_micros()).unwrap();
    assert!(
        until >= handed_back + lease_us - 5_000,
        "the lease ends {} ms early",
        (handed_back + lease_us - until) / 1000
    );
}

#[tokio::test]
async fn leases_are_on_the_database_clock_on_sqlite() {
    leases_are_on_the_database_clock(sqlite().await).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn leases_are_on_the_database_clock_on_postgres() {
    let Some(url) = postgres().await else {
        return;
    };
    leases_are_on_the_database_clock(Storage::connect(&url).await.unwrap()).await;
}

/// A replica started with another `concurrency` than the one the running replicas use is
/// refused with both values named, and changes nothing: no slot row in use is deleted or
/// freed, none is added. Once no slot is held, a new value is adopted (explicitly logged).
async fn another_concurrency_is_refused_while_slots_are_in_use(url: &str) {
    let server = start().await;
    let target = format!("{}/json", server.base);
    let replica = |concurrency: u32| {
        let target = target.clone();
        async move {
            let storage = Storage::connect(url).await.unwrap();
            HttpKind::new(
                config("sized", &target, &format!("concurrency = {concurrency}")),
                storage,
            )
            .unwrap()
        }
    };
    let first = replica(4).await;
    first.prepare().await.unwrap();
    // Right after set-up, before any job: the slots are there, all free.
    let storage = Storage::connect(url).await.unwrap();
    assert_eq!(
        storage.dispatch_slots_in_use("sized").await.unwrap(),
        (0, 4)
    );
    // Slots 0..3 in use by the first replica's requests.
    let held = storage
        .acquire_dispatch_slots("sized", "running", 4, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(held, [0, 1, 2, 3]);

    for other in [2, 6] {
        let refused = Kind::prepare(&replica(other).await).await.unwrap_err();
        let message = refused.to_string();
        assert!(
            message.starts_with("kinds.sized: ")
                && message.contains(&format!("concurrency = {other} here"))
                && message.contains("records concurrency = 4")
                && message.contains("4 of its slots are in use"),
            "{message}"
        );
        assert_eq!(
            storage.dispatch_slots_in_use("sized").await.unwrap(),
            (4, 4),
            "nothing deleted, added or freed"
        );
        assert_eq!(
            storage.dispatch_concurrency("sized").await.unwrap(),
            Some(4)
        );
    }
    // Its attempts are deferred, never sent.
    let refused = replica(2).await;
    let (reason, _) = deferred(refused.run(&job(), 1).await);
    assert!(reason.contains("concurrency = 2 here"), "{reason}");
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 0);

    // Every slot free again: a new value is adopted for all.
    for slot in held {
        assert!(storage
            .release_dispatch_slot("sized", slot, "running")
            .await
            .unwrap());
    }
    replica(6).await.prepare().await.unwrap();
    assert_eq!(
        storage.dispatch_slots_in_use("sized").await.unwrap(),
        (0, 6)
    );
    assert_eq!(
        storage.dispatch_concurrency("sized").await.unwrap(),
        Some(6)
    );
    // And the replica that still has 4 is refused now that 6 is in use.
    let running = storage
        .acquire_dispatch_slots("sized", "new", 1, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    assert!(replica(4).await.prepare().await.is_err());
    assert_eq!(
        storage.dispatch_slots_in_use("sized").await.unwrap(),
        (1, 6)
    );
}

#[tokio::test]
async fn another_concurrency_is_refused_while_slots_are_in_use_on_sqlite() {
    another_concurrency_is_refused_while_slots_are_in_use(&testing::temp_sqlite_url()).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_postgres),
    ignore = "set SURGE_TEST_POSTGRES_URL to run (scripts/test.sh does)"
)]
async fn another_concurrency_is_refused_while_slots_are_in_use_on_postgres() {
    let Some(url) = postgres().await else {
        return;
    };
    another_concurrency_is_refused_while_slots_are_in_use(&url).await;
}

/// The description is public (`/openapi.json`, unauthenticated): without one of its own, a
/// kind's is a sentence that shows nothing of its URL.
#[tokio::test]
async fn a_default_description_never_shows_the_url() {
    let kind = kind(
        "http://svc-user:svc-pass@10.1.2.3:9000/private/path?token=t0ps3cret",
        "",
    )
    .await;
    let description = kind.description();
    for leak in [
        "svc-user",
        "svc-pass",
        "10.1.2.3",
        "9000",
        "private",
        "t0ps3cret",
    ] {
        assert!(!description.contains(leak), "{description}");
    }
    let described = HttpKind::new(
        config("d", "http://10.1.2.3/", "description = \"Thumbnails\""),
        sqlite().await,
    )
    .unwrap();
    assert_eq!(described.description(), "Thumbnails");
}

/// A `429` with `Retry-After: 5` pauses the kind: this job and the next are deferred (no
/// attempt consumed, no request sent) until the pause ends, the pause is stored for the
/// other replicas, and then the job succeeds.
#[tokio::test]
async fn a_retry_after_pauses_the_kind_without_consuming_attempts() {
    let server = start().await;
    let storage = sqlite().await;
    let pauses = KindPauses::new(storage.clone());
    let http = HttpKind::new(
        config("target", &format!("{}/busy-once", server.base), ""),
        storage.clone(),
    )
    .unwrap()
    .with_pauses(pauses.clone());
    let kind = PausableKind::new("target".into(), Arc::new(http), pauses.clone());
    let started = tokio::time::Instant::now();
    let (reason, after) = deferred(kind.run(&job(), 1).await);
    assert!(reason.contains("429"), "{reason}");
    assert!(
        after <= Duration::from_secs(5) && after >= Duration::from_secs(4),
        "{after:?}"
    );
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 1);
    let stored = storage
        .kind_pauses(surge_common::clock::now_micros())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].source, PauseSource::Target);
    // While paused: deferred again, no request sent; then it runs (the same attempt:
    // none was consumed).
    let deadline = started + Duration::from_secs(10);
    let mut deferrals = 0;
    let result = loop {
        match kind.run(&job(), 1).await {
            Err(JobError::Deferred { .. }) if tokio::time::Instant::now() < deadline => {
                assert_eq!(server.seen.requests.load(Ordering::SeqCst), 1);
                deferrals += 1;
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => break other,
        }
    };
    assert!(deferrals > 10, "{deferrals}");
    assert_eq!(result, Ok(json!({"done": true})));
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 2);
}

/// Jobs already waiting for the kind's only slot when its target asks for a pause are
/// deferred when their turn comes, not sent: one request in all.
#[tokio::test]
async fn jobs_waiting_for_their_turn_heed_a_pause_learned_meanwhile() {
    let server = start().await;
    let storage = sqlite().await;
    let pauses = KindPauses::new(storage.clone());
    let http = HttpKind::new(
        config(
            "target",
            &format!("{}/slow-busy", server.base),
            "concurrency = 1",
        ),
        storage,
    )
    .unwrap()
    .with_pauses(pauses.clone());
    let kind = Arc::new(PausableKind::new("target".into(), Arc::new(http), pauses));
    let runs: Vec<_> = (0..5)
        .map(|_| {
            let kind = kind.clone();
            tokio::spawn(async move { kind.run(&job(), 1).await })
        })
        .collect();
    for run in runs {
        deferred(run.await.unwrap());
    }
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 1);
}

fn keyed(key: &str) -> Job {
    Job::new("target", json!({"n": 1}), Some(key.to_owned()))
}

/// A key whose `concurrency_per_key` slots are all held (by another replica) is deferred
/// with reason `key_concurrency`, no request sent and no kind slot kept; jobs of other
/// keys, and keyless jobs, go through meanwhile.
#[tokio::test]
async fn a_key_at_its_cap_is_deferred_without_holding_up_other_keys() {
    use surge_common::storage::dispatch_keys::{key_hash, KeyRows};
    let server = start().await;
    let storage = sqlite().await;
    let url = format!("{}/json", server.base);
    let kind = HttpKind::new(
        config("target", &url, "concurrency = 1\nconcurrency_per_key = 1"),
        storage.clone(),
    )
    .unwrap();
    kind.prepare().await.unwrap();
    let held = storage
        .acquire_key_slot(
            "target",
            &key_hash("busy"),
            "other-replica",
            1,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert_eq!(held, Some(0));
    let (reason, after) = deferred(kind.run(&keyed("busy"), 1).await);
    assert!(reason.contains("key"), "{reason}");
    assert!(after >= Duration::from_millis(100), "{after:?}");
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 0);
    // The kind's only slot was never taken for it: other keys and keyless jobs run.
    kind.run(&keyed("quiet"), 1).await.unwrap();
    kind.run(&job(), 1).await.unwrap();
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 2);
    // The other replica lets go: the busy key runs, and its slot row goes with it.
    assert!(storage
        .release_key_slot("target", &key_hash("busy"), 0, "other-replica")
        .await
        .unwrap());
    kind.run(&keyed("busy"), 1).await.unwrap();
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap(),
        KeyRows {
            slots: 0,
            rates: 0,
            pauses: 0
        }
    );
}

/// `rate_per_key`: a key's second request within the interval is deferred (reason
/// `key_rate`) until its next turn; another key is not held back.
#[tokio::test]
async fn over_its_key_rate_a_job_is_deferred_and_other_keys_are_not() {
    let server = start().await;
    let kind = kind(&format!("{}/json", server.base), "rate_per_key = 0.01").await;
    kind.run(&keyed("a"), 1).await.unwrap();
    let (reason, after) = deferred(kind.run(&keyed("a"), 1).await);
    assert!(reason.contains("key"), "{reason}");
    assert!(after > Duration::from_secs(60), "{after:?}");
    kind.run(&keyed("b"), 1).await.unwrap();
    kind.run(&job(), 1).await.unwrap();
    kind.run(&job(), 1).await.unwrap();
    assert_eq!(server.seen.requests.load(Ordering::SeqCst), 4);
}

/// On a kind with per-key limits, a `429` with `Retry-After: 5` to a job with a key pauses
/// that key only: its jobs are deferred without a request (no attempt consumed), other
/// keys' jobs run, and the kind itself is not paused.
#[tokio::test]
async fn a_retry_after_pauses_only_the_key_on_a_kind_with_per_key_limits() {
    let seen = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            "/busy-key",
            post(
                |State(seen): State<Arc<AtomicU32>>, body: Bytes| async move {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if payload["tenant"] == "a" {
                        (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "5")],
                            "tenant a: slow down",
                        )
                            .into_response()
                    } else {
                        axum::Json(json!({"done": true})).into_response()
                    }
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let storage = sqlite().await;
    let pauses = KindPauses::new(storage.clone());
    let http = HttpKind::new(
        config(
            "target",
            &format!("http://{addr}/busy-key"),
            "concurrency_per_key = 4",
        ),
        storage.clone(),
    )
    .unwrap()
    .with_pauses(pauses.clone());
    let kind = PausableKind::new("target".into(), Arc::new(http), pauses);
    let tenant = |t: &str| Job::new("target", json!({"tenant": t}), Some(t.to_owned()));
    let (reason, after) = deferred(kind.run(&tenant("a"), 1).await);
    assert!(reason.contains("429") && reason.contains("key"), "{reason}");
    assert!(
        after <= Duration::from_secs(5) && after >= Duration::from_secs(4),
        "{after:?}"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // The key waits, no request sent; other keys go on; the kind is not paused.
    let (reason, after) = deferred(kind.run(&tenant("a"), 1).await);
    assert!(reason.contains("key"), "{reason}");
    assert!(after >= Duration::from_secs(3), "{after:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(kind.run(&tenant("b"), 1).await, Ok(json!({"done": true})));
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(storage
        .kind_pauses(surge_common::clock::now_micros())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        storage.dispatch_key_rows().await.unwrap().pauses,
        1,
        "one row: the paused key"
    );
}
