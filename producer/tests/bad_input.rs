//! A corpus of bad requests (more than 50): each gets its documented 4xx and a JSON error
//! naming the problem, the service stays up, and nothing is published — on the memory
//! broker always, and on RabbitMQ when it is available.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use surge_common::broker::memory::MemoryBroker;
use surge_common::broker::rabbitmq::RabbitMqBroker;
use surge_common::broker::Broker;
use surge_common::storage::Storage;
use surge_common::testing::{self, AMQP_URL_VAR};
use surge_producer::auth::ApiKeys;
use surge_producer::{app, AppState, Limits};
use tower::ServiceExt;

const KEY: &str = "corpus-key";
const LIMITS: Limits = Limits {
    max_body_bytes: 8 * 1024,
    max_batch: 20,
    publish_timeout: std::time::Duration::from_secs(10),
};

/// One bad request: what it is, method, path, content type, body, extra headers, and the
/// status and error `field` it must get.
struct Case {
    name: String,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    status: StatusCode,
    field: Option<&'static str>,
}

fn case(
    name: impl Into<String>,
    body: impl Into<Vec<u8>>,
    status: StatusCode,
    field: Option<&'static str>,
) -> Case {
    Case {
        name: name.into(),
        path: "/jobs",
        content_type: Some("application/json"),
        body: body.into(),
        headers: Vec::new(),
        status,
        field,
    }
}

fn corpus() -> Vec<Case> {
    use StatusCode as S;
    let bad = S::BAD_REQUEST;
    let invalid = S::UNPROCESSABLE_ENTITY;
    let mut cases = vec![
        // Not JSON at all, or broken JSON.
        case("empty body", "", bad, None),
        case("whitespace only", "   \n", bad, None),
        case("bare word", "sleep", bad, None),
        case("unquoted keys", "{kind: \"echo\"}", bad, None),
        case("single quotes", "{'kind': 'echo'}", bad, None),
        case("truncated object", "{\"kind\": \"echo\"", bad, None),
        case("truncated string", "{\"kind\": \"ec", bad, None),
        case("trailing comma", "{\"kind\": \"echo\",}", bad, None),
        case(
            "trailing garbage",
            "{\"kind\": \"echo\"} trailing",
            bad,
            None,
        ),
        case(
            "two objects",
            "{\"kind\": \"echo\"}{\"kind\": \"echo\"}",
            bad,
            None,
        ),
        case(
            "NaN literal",
            "{\"kind\": \"sleep\", \"payload\": {\"ms\": NaN}}",
            bad,
            None,
        ),
        case(
            "invalid UTF-8 in a string",
            &b"{\"kind\": \"\xc3\x28\"}"[..],
            bad,
            None,
        ),
        case("invalid UTF-8 bytes", &b"\xff\xfe\xfd"[..], bad, None),
        case("UTF-16 BOM", &b"\xfe\xff\x00{"[..], bad, None),
        case(
            "lone surrogate escape",
            "{\"kind\": \"\\ud800\"}",
            bad,
            None,
        ),
        case(
            "control character in string",
            "{\"kind\": \"ec\u{1}ho\"}",
            bad,
            None,
        ),
        case(
            "deep nesting (not a job)",
            format!("{}{}", "[".repeat(3_000), "]".repeat(3_000)),
            invalid,
            None,
        ),
        case(
            "deep nesting in an object",
            format!(
                "{{\"kind\": \"echo\", \"payload\": {}1{}}}",
                "{\"a\":".repeat(300),
                "}".repeat(300)
            ),
            bad,
            None,
        ),
        case(
            "deep nesting in payload",
            format!(
                "{{\"kind\": \"echo\", \"payload\": {}1{}}}",
                "[".repeat(500),
                "]".repeat(500)
            ),
            bad,
            None,
        ),
        // JSON, but not a job.
        case("null", "null", invalid, None),
        case("number", "42", invalid, None),
        case("string", "\"echo\"", invalid, None),
        case("array on /jobs", "[{\"kind\": \"echo\"}]", invalid, None),
        case("empty object", "{}", invalid, Some("kind")),
        case("kind null", "{\"kind\": null}", invalid, Some("kind")),
        case("kind number", "{\"kind\": 1}", invalid, Some("kind")),
        case("kind object", "{\"kind\": {}}", invalid, Some("kind")),
        case(
            "kind unknown",
            "{\"kind\": \"mine-bitcoin\"}",
            invalid,
            Some("kind"),
        ),
        case(
            "kind wrong case",
            "{\"kind\": \"SLEEP\"}",
            invalid,
            Some("kind"),
        ),
        case("kind empty", "{\"kind\": \"\"}", invalid, Some("kind")),
        case(
            "unknown top-level field",
            "{\"kind\": \"echo\", \"urgency\": 9}",
            invalid,
            Some("urgency"),
        ),
        case(
            "priority out of range",
            "{\"kind\": \"echo\", \"priority\": 0}",
            invalid,
            Some("priority"),
        ),
        case(
            "duplicate kind field",
            "{\"kind\": \"echo\", \"kind\": \"echo\"}",
            invalid,
            None,
        ),
        case(
            "sleep without ms",
            "{\"kind\": \"sleep\", \"payload\": {}}",
            invalid,
            Some("payload"),
        ),
        case(
            "sleep ms string",
            "{\"kind\": \"sleep\", \"payload\": {\"ms\": \"5\"}}",
            invalid,
            Some("payload"),
        ),
        case(
            "sleep ms negative",
            "{\"kind\": \"sleep\", \"payload\": {\"ms\": -5}}",
            invalid,
            Some("payload"),
        ),
        case(
            "sleep ms fractional",
            "{\"kind\": \"sleep\", \"payload\": {\"ms\": 1.5}}",
            invalid,
            Some("payload"),
        ),
        case(
            "sleep ms huge",
            "{\"kind\": \"sleep\", \"payload\": {\"ms\": 99999999999999999999999}}",
            invalid,
            Some("payload"),
        ),
        case(
            "sleep ms over the limit",
            "{\"kind\": \"sleep\", \"payload\": {\"ms\": 600001}}",
            invalid,
            Some("payload.ms"),
        ),
        case(
            "sleep ms u64 max",
            format!(
                "{{\"kind\": \"sleep\", \"payload\": {{\"ms\": {}}}}}",
                u64::MAX
            ),
            invalid,
            Some("payload.ms"),
        ),
        case(
            "sleep extra field",
            "{\"kind\": \"sleep\", \"payload\": {\"ms\": 1, \"x\": 1}}",
            invalid,
            Some("payload"),
        ),
        case(
            "sleep payload array",
            "{\"kind\": \"sleep\", \"payload\": [1]}",
            invalid,
            Some("payload"),
        ),
        case(
            "sleep payload null",
            "{\"kind\": \"sleep\", \"payload\": null}",
            invalid,
            Some("payload"),
        ),
        case(
            "hash rounds zero",
            "{\"kind\": \"hash\", \"payload\": {\"rounds\": 0}}",
            invalid,
            Some("payload.rounds"),
        ),
        case(
            "hash rounds too many",
            "{\"kind\": \"hash\", \"payload\": {\"rounds\": 10000001}}",
            invalid,
            Some("payload.rounds"),
        ),
        case(
            "hash rounds over u32",
            "{\"kind\": \"hash\", \"payload\": {\"rounds\": 4294967296}}",
            invalid,
            Some("payload"),
        ),
        case(
            "hash data number",
            "{\"kind\": \"hash\", \"payload\": {\"rounds\": 1, \"data\": 5}}",
            invalid,
            Some("payload"),
        ),
        case(
            "flaky failures too many",
            "{\"kind\": \"flaky\", \"payload\": {\"failures\": 101}}",
            invalid,
            Some("payload.failures"),
        ),
        case(
            "flaky failures bool",
            "{\"kind\": \"flaky\", \"payload\": {\"failures\": true}}",
            invalid,
            Some("payload"),
        ),
        case(
            "key empty",
            "{\"kind\": \"echo\", \"key\": \"\"}",
            invalid,
            Some("key"),
        ),
        case(
            "key too long",
            format!("{{\"kind\": \"echo\", \"key\": \"{}\"}}", "k".repeat(257)),
            invalid,
            Some("key"),
        ),
        case(
            "key number",
            "{\"kind\": \"echo\", \"key\": 7}",
            invalid,
            Some("key"),
        ),
        case(
            "body over the limit",
            format!(
                "{{\"kind\": \"echo\", \"payload\": \"{}\"}}",
                "x".repeat(9000)
            ),
            S::PAYLOAD_TOO_LARGE,
            None,
        ),
    ];
    // Content types.
    for (name, content_type) in [
        ("no content type", None),
        ("text/plain", Some("text/plain")),
        ("form encoded", Some("application/x-www-form-urlencoded")),
        ("json-ish but not json", Some("application/jsonp")),
    ] {
        let mut c = case(
            name,
            "{\"kind\": \"echo\"}",
            S::UNSUPPORTED_MEDIA_TYPE,
            None,
        );
        c.content_type = content_type;
        cases.push(c);
    }
    // Batches.
    let eleven_bad: Vec<Value> = (0..21).map(|_| json!({"kind": "echo"})).collect();
    for (name, body, status, field) in [
        ("batch empty", "[]".to_owned(), invalid, None),
        (
            "batch not an array",
            "{\"kind\": \"echo\"}".to_owned(),
            invalid,
            None,
        ),
        (
            "batch over the limit",
            json!(eleven_bad).to_string(),
            S::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            "batch with a bad job",
            "[{\"kind\": \"echo\"}, {\"kind\": \"nope\"}]".to_owned(),
            invalid,
            Some("[1].kind"),
        ),
        (
            "batch with a bad payload",
            "[{\"kind\": \"sleep\", \"payload\": {\"ms\": 700000}}]".to_owned(),
            invalid,
            Some("[0].payload.ms"),
        ),
        (
            "batch of nulls",
            "[null, null]".to_owned(),
            invalid,
            Some("[0]"),
        ),
        (
            "batch truncated",
            "[{\"kind\": \"echo\"},".to_owned(),
            bad,
            None,
        ),
    ] {
        let mut c = case(name, body, status, field);
        c.path = "/jobs/batch";
        cases.push(c);
    }
    // Headers.
    for (name, header, value, status, field) in [
        (
            "idempotency key empty",
            "idempotency-key",
            String::new(),
            bad,
            Some("Idempotency-Key"),
        ),
        (
            "idempotency key too long",
            "idempotency-key",
            "i".repeat(300),
            bad,
            Some("Idempotency-Key"),
        ),
        (
            "idempotency key with spaces",
            "idempotency-key",
            "a b".to_owned(),
            bad,
            Some("Idempotency-Key"),
        ),
        (
            "wrong API key",
            "x-api-key",
            "not-the-key".to_owned(),
            S::UNAUTHORIZED,
            None,
        ),
        (
            "malformed bearer",
            "authorization",
            "Basic Y29ycHVz".to_owned(),
            S::UNAUTHORIZED,
            None,
        ),
    ] {
        let mut c = case(name, "{\"kind\": \"echo\"}", status, field);
        c.headers.push((header, value));
        cases.push(c);
    }
    cases
}

async fn send(state: &AppState, c: &Case) -> (StatusCode, Value) {
    let mut builder = Request::post(c.path);
    if let Some(ct) = c.content_type {
        builder = builder.header("content-type", ct);
    }
    let overrides_auth = c
        .headers
        .iter()
        .any(|(h, _)| *h == "x-api-key" || *h == "authorization");
    if !overrides_auth {
        builder = builder.header("x-api-key", KEY);
    }
    for (name, value) in &c.headers {
        builder = builder.header(*name, value.as_str());
    }
    let response = app(state.clone())
        .oneshot(builder.body(Body::from(c.body.clone())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn corpus_publishes_nothing(broker: Arc<dyn Broker>) {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let state = AppState::new(broker.clone(), storage, LIMITS).with_api_keys(ApiKeys::parse(KEY));
    let cases = corpus();
    assert!(cases.len() >= 50, "the corpus has {} cases", cases.len());
    let mut wrong = Vec::new();
    for c in &cases {
        let (status, body) = send(&state, c).await;
        let error = &body["error"];
        let named = c.field.is_none_or(|f| error["field"] == f);
        let explained =
            error["code"].is_string() && error["message"].as_str().is_some_and(|m| !m.is_empty());
        if status != c.status || !named || !explained {
            wrong.push(format!(
                "{}: got {status} {body}, expected {} field {:?}",
                c.name, c.status, c.field
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    assert_eq!(
        broker.stats().await.unwrap().backlog,
        Some(0),
        "bad input published something"
    );
    // Still up, and a good request still works.
    let good = case("good", "{\"kind\": \"echo\"}", StatusCode::ACCEPTED, None);
    assert_eq!(send(&state, &good).await.0, StatusCode::ACCEPTED);
    assert_eq!(broker.stats().await.unwrap().backlog, Some(1));
}

#[tokio::test]
async fn the_corpus_on_the_memory_broker() {
    corpus_publishes_nothing(Arc::new(MemoryBroker::new())).await;
}

#[tokio::test]
#[cfg_attr(
    not(surge_amqp),
    ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)"
)]
async fn the_corpus_on_rabbitmq() {
    let Some(amqp) = testing::service(AMQP_URL_VAR, "RabbitMQ") else {
        return;
    };
    let broker = Arc::new(
        RabbitMqBroker::connect(&amqp, &testing::unique_name("corpus"))
            .await
            .unwrap(),
    );
    corpus_publishes_nothing(broker.clone()).await;
    broker.delete_topology().await.unwrap();
}
