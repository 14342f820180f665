//! `GET /openapi.json` matches the real router: every documented operation is routed,
//! every route the API serves is documented, path ids are declared UUIDs, every job kind's
//! request shape is described, and requests built from that description are accepted.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use surge_common::broker::memory::MemoryBroker;
use surge_common::kinds::builtin::BuiltinKind;
use surge_common::kinds::file::SurgeConfig;
use surge_common::kinds::KindRegistry;
use surge_common::storage::Storage;
use surge_common::testing;
use surge_producer::{app, AppState};
use tower::ServiceExt;

/// The ingress's state with the built-in kinds and one HTTP kind from a config file, its
/// payload described by a JSON Schema (the target is never called: nothing is run here).
async fn state() -> AppState {
    let storage = Storage::connect(&testing::temp_sqlite_url()).await.unwrap();
    let config = SurgeConfig::parse(
        r#"
        [kinds.thumbnail]
        url = "http://127.0.0.1:9/thumbnail"
        [kinds.thumbnail.schema]
        type = "object"
        required = ["image"]
        properties = { image = { type = "string", minLength = 1, maxLength = 64 }, width = { type = "integer", minimum = 1, maximum = 4096 } }
        "#,
        &|_| None,
    )
    .unwrap();
    // Callbacks signed, and the loopback receiver of the generated requests allowed.
    let callbacks = surge_common::job::CallbackPolicy {
        targets: Arc::new(surge_common::netpolicy::AddressPolicy::new([
            "127.0.0.1/32".parse().unwrap(),
        ])),
        signed: true,
    };
    let kinds = KindRegistry::builder()
        .with_config(&config, &storage)
        .unwrap()
        .with_callback_policy(callbacks)
        .try_build()
        .unwrap();
    AppState::new(Arc::new(MemoryBroker::new()), storage, Default::default()).with_kinds(kinds)
}

async fn send(state: &AppState, method: Method, path: &str) -> (StatusCode, Value) {
    send_body(state, method, path, &serde_json::json!({})).await
}

async fn send_body(
    state: &AppState,
    method: Method,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
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
            let concrete = path
                .replace("{id}", &uuid::Uuid::now_v7().to_string())
                .replace("{name}", "no_such_schedule");
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
        "GET /jobs",
        "POST /jobs/replay",
        "DELETE /jobs/{id}",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /",
        "GET /api/dashboard",
        "GET /api/dashboard/kinds",
        "GET /schedules",
        "POST /schedules/{name}/pause",
        "POST /schedules/{name}/resume",
        "POST /schedules/{name}/trigger",
        "GET /kinds",
        "POST /kinds/{name}/pause",
        "POST /kinds/{name}/resume",
    ];
    for route in served {
        assert!(
            documented.contains(route),
            "{route} is served but not documented: {documented:?}"
        );
    }
    // The schedules' answers are described, not just named.
    for schema in [
        "ScheduleList",
        "ScheduleView",
        "LastJobView",
        "Triggered",
        "KindList",
        "KindView",
        "PauseView",
        "PauseRequest",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} is not in the document's components"
        );
    }
    // And an operation that does not exist is refused by the router, so the check above bites.
    let (status, _) = send(&state, Method::PUT, "/jobs").await;
    assert!(status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_FOUND);
}

/// The document, fetched from the real router.
async fn document(state: &AppState) -> Value {
    let (status, doc) = send(state, Method::GET, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    doc
}

/// `schema` with a `$ref` to `#/components/schemas/…` followed.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {reference}"));
            let target = &doc["components"]["schemas"][name];
            assert!(!target.is_null(), "dangling $ref {reference}");
            resolve(doc, target)
        }
        None => schema,
    }
}

#[derive(Debug, Clone, Copy)]
enum Edge {
    /// Required fields only, every number at its minimum, strings at their shortest.
    Least,
    /// Every field, every number at its maximum, strings at their longest (in characters,
    /// and 4-byte ones, so a byte limit on the server shows).
    Most,
}

/// A value valid by `schema` (as far as the keywords this API uses go), at one edge.
fn instance(doc: &Value, schema: &Value, edge: Edge) -> Value {
    let schema = resolve(doc, schema);
    if let Some(values) = schema["enum"].as_array() {
        return values[0].clone();
    }
    // `["string", "null"]`: null at the least edge (the server reads it as absent), the
    // other type at the most.
    if let Some(types) = schema["type"].as_array() {
        if matches!(edge, Edge::Least) && types.iter().any(|t| t == "null") {
            return Value::Null;
        }
        let mut single = schema.clone();
        single["type"] = types
            .iter()
            .find(|t| *t != "null")
            .cloned()
            .unwrap_or(Value::Null);
        return instance(doc, &single, edge);
    }
    match schema["type"].as_str() {
        Some("integer") => match edge {
            Edge::Least => schema["minimum"].clone(),
            Edge::Most => schema["maximum"].clone(),
        },
        Some("string") if schema["format"] == "uri" => {
            Value::String("http://127.0.0.1:9/hook".into())
        }
        Some("string") if schema["format"] == "date-time" => {
            Value::String("2026-01-01T00:00:00Z".into())
        }
        Some("string") => {
            let length = match edge {
                Edge::Least => schema["minLength"].as_u64().unwrap_or(0),
                Edge::Most => schema["maxLength"].as_u64().unwrap_or(8),
            };
            Value::String("🦀".repeat(length as usize))
        }
        Some("object") => {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut object = serde_json::Map::new();
            for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                let nullable = resolve(doc, property)["type"]
                    .as_array()
                    .is_some_and(|types| types.iter().any(|t| t == "null"));
                if matches!(edge, Edge::Most) || nullable || required.contains(&name.as_str()) {
                    object.insert(name.clone(), instance(doc, property, edge));
                }
            }
            Value::Object(object)
        }
        // No type: any JSON value.
        None => match edge {
            Edge::Least => Value::Null,
            Edge::Most => serde_json::json!({"nested": [1, "two", null, {"three": 3.5}]}),
        },
        Some(other) => panic!("no generator for type {other}"),
    }
}

#[tokio::test]
async fn path_ids_are_declared_uuids() {
    let state = state().await;
    let doc = document(&state).await;
    let mut checked = 0;
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        if !path.contains("{id}") {
            continue;
        }
        for (method, operation) in operations.as_object().unwrap() {
            let id = operation["parameters"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == "id" && p["in"] == "path"))
                .unwrap_or_else(|| panic!("{method} {path} does not declare its id"));
            assert_eq!(id["schema"]["type"], "string", "{method} {path}: {id}");
            assert_eq!(id["schema"]["format"], "uuid", "{method} {path}: {id}");
            checked += 1;
        }
    }
    assert_eq!(
        checked, 3,
        "GET and DELETE /jobs/{{id}}, POST /jobs/{{id}}/replay"
    );
    // What the format rules out is what the server refuses.
    let (status, body) = send(&state, Method::GET, "/jobs/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn every_kind_is_described_and_requests_valid_by_the_document_are_accepted() {
    let state = state().await;
    let doc = document(&state).await;
    let body =
        &doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let request = resolve(&doc, body);
    assert_eq!(
        request["discriminator"]["propertyName"], "kind",
        "the job request is not discriminated by kind: {request}"
    );
    let variants = request["oneOf"]
        .as_array()
        .unwrap_or_else(|| panic!("the job request is not a oneOf per kind: {request}"));

    let mut described = BTreeSet::new();
    let mut batch = Vec::new();
    for variant in variants {
        let schema = resolve(&doc, variant);
        let kinds = schema["properties"]["kind"]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("a variant without a single kind: {schema}"));
        assert_eq!(kinds.len(), 1, "{schema}");
        let kind = kinds[0].as_str().unwrap().to_owned();
        assert!(described.insert(kind.clone()), "{kind} described twice");
        // The discriminator's mapping points this kind at this variant.
        assert_eq!(
            request["discriminator"]["mapping"][&kind], variant["$ref"],
            "{kind}"
        );
        assert!(
            !schema["properties"]["payload"].is_null(),
            "{kind} does not describe its payload: {schema}"
        );

        let mut requests: Vec<Value> = schema["examples"].as_array().cloned().unwrap_or_default();
        let builtin = BuiltinKind::ALL.iter().any(|k| k.as_str() == kind);
        assert!(!builtin || !requests.is_empty(), "{kind} has no example");
        requests.push(instance(&doc, schema, Edge::Least));
        requests.push(instance(&doc, schema, Edge::Most));
        for request in requests {
            assert_eq!(request["kind"], kind, "{request}");
            let (status, answer) = send_body(&state, Method::POST, "/jobs", &request).await;
            assert_eq!(
                status,
                StatusCode::ACCEPTED,
                "{request} is valid by the document but was refused: {answer}"
            );
            batch.push(request);
        }
    }
    let kinds: BTreeSet<String> = state.kinds.names().map(str::to_owned).collect();
    assert!(kinds.contains("thumbnail"), "{kinds:?}");
    assert_eq!(
        described, kinds,
        "every kind the ingress knows, and only those"
    );

    // The batch endpoint takes an array of the same.
    let batch_schema = &doc["paths"]["/jobs/batch"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    assert_eq!(batch_schema["type"], "array", "{batch_schema}");
    assert_eq!(batch_schema["items"], *body, "{batch_schema}");
    let (status, answer) = send_body(
        &state,
        Method::POST,
        "/jobs/batch",
        &Value::Array(batch.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");

    // Its bounds are the server's: at least one job, at most `--max-batch`.
    let max = state.limits.max_batch;
    assert_eq!(batch_schema["minItems"], 1, "{batch_schema}");
    assert_eq!(batch_schema["maxItems"], max, "{batch_schema}");
    let (status, answer) =
        send_body(&state, Method::POST, "/jobs/batch", &Value::Array(vec![])).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "[] is below minItems: {answer}"
    );
    // The smallest generated job, so `max` of them stay under the body limit (some
    // generated jobs carry every optional field, a callback URL included).
    let smallest = batch
        .iter()
        .min_by_key(|request| request.to_string().len())
        .expect("jobs were generated")
        .clone();
    let full: Vec<Value> = vec![smallest; max];
    let (status, answer) = send_body(
        &state,
        Method::POST,
        "/jobs/batch",
        &Value::Array(full.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{max} jobs: {answer}");
    let over: Vec<Value> = full.iter().cycle().take(max + 1).cloned().collect();
    let (status, answer) =
        send_body(&state, Method::POST, "/jobs/batch", &Value::Array(over)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
}

/// The query parameters of the listing and the bulk replay: each documented one is taken
/// by the server (a bad value is refused naming it, never as unknown), an undocumented one
/// is refused, and the documented statuses are exactly the ones the server knows,
/// `cancelled` included.
#[tokio::test]
async fn query_parameters_are_documented_as_served() {
    let state = state().await;
    let doc = document(&state).await;
    for (method, path) in [(Method::GET, "/jobs"), (Method::POST, "/jobs/replay")] {
        let operation = &doc["paths"][path][method.as_str().to_lowercase()];
        let params: Vec<&Value> = operation["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} declares no parameters: {operation}"))
            .iter()
            .filter(|p| p["in"] == "query")
            .collect();
        assert!(params.len() >= 3, "{method} {path}: {params:?}");
        for param in params {
            let name = param["name"].as_str().unwrap();
            let (status, body) =
                send(&state, method.clone(), &format!("{path}?{name}=%00bad")).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{method} {path}?{name}: {body}"
            );
            assert_eq!(body["error"]["field"], name, "{body}");
            let message = body["error"]["message"].as_str().unwrap_or("");
            assert!(
                !message.contains("unknown parameter"),
                "{name} is documented but not taken: {body}"
            );
        }
        let (status, body) = send(&state, method.clone(), &format!("{path}?colour=red")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["field"], "colour", "{body}");
    }
    let status = &doc["paths"]["/jobs"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "status")
        .unwrap()["schema"];
    let names: BTreeSet<&str> = resolve(&doc, status)["enum"]
        .as_array()
        .unwrap_or_else(|| panic!("status is not an enumeration: {status}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let known: BTreeSet<&str> = surge_common::storage::listing::StatusFilter::NAMES
        .into_iter()
        .collect();
    assert_eq!(names, known);
    assert!(names.contains("cancelled"));
}

#[tokio::test]
async fn a_configured_kind_refuses_a_payload_failing_its_schema_naming_the_field() {
    let state = state().await;
    for (payload, field) in [
        (serde_json::json!({}), "payload.image"),
        (
            serde_json::json!({"image": "cat.png", "width": 5000}),
            "payload.width",
        ),
        (serde_json::json!({"image": 7}), "payload.image"),
    ] {
        let request = serde_json::json!({"kind": "thumbnail", "payload": payload});
        let (status, answer) = send_body(&state, Method::POST, "/jobs", &request).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    // Nothing was published: the memory broker holds no job.
    let stats = state.broker.stats().await.unwrap();
    assert_eq!(stats.backlog, Some(0), "{stats:?}");
}

/// Values valid by a parameter's schema: each enum value, the bounds of a range, strings
/// generated from the `pattern` (proptest, deterministic) cut to `maxLength`, the edges
/// of the lengths, a date-time, a UUID.
fn valid_values(doc: &Value, schema: &Value) -> Vec<String> {
    use proptest::strategy::{Strategy, ValueTree};
    let schema = resolve(doc, schema);
    if let Some(values) = schema["enum"].as_array() {
        return values
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
    }
    // An optional parameter is `["string", "null"]`: absent is its null.
    let ty = match &schema["type"] {
        Value::Array(types) => types.iter().find(|t| *t != "null").and_then(Value::as_str),
        single => single.as_str(),
    };
    match (ty, schema["format"].as_str()) {
        (Some("integer"), _) => [&schema["minimum"], &schema["maximum"]]
            .iter()
            .map(|bound| {
                bound
                    .as_u64()
                    .expect("integer parameters are bounded")
                    .to_string()
            })
            .collect(),
        (Some("string"), Some("uuid")) => vec![uuid::Uuid::now_v7().to_string()],
        (Some("string"), Some("date-time")) => vec![
            "2026-01-01T00:00:00Z".to_owned(),
            "2026-12-03T10:00:00.123456+02:00".to_owned(),
        ],
        (Some("string"), _) => {
            let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
            let max = schema["maxLength"].as_u64().map(|m| m as usize);
            let Some(pattern) = schema["pattern"].as_str() else {
                let mut values = vec!["a".repeat(min)];
                values.extend(max.map(|max| "🦀".repeat(max)));
                return values;
            };
            let anchored = pattern.strip_prefix('^').and_then(|p| p.strip_suffix('$'));
            let strategy = proptest::string::string_regex(anchored.expect("patterns are anchored"))
                .unwrap_or_else(|e| panic!("{pattern}: {e}"));
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            (0..64)
                .map(|_| {
                    let value = strategy.new_tree(&mut runner).unwrap().current();
                    value
                        .chars()
                        .take(max.unwrap_or(usize::MAX))
                        .collect::<String>()
                })
                .filter(|value| value.chars().count() >= min)
                .collect()
        }
        other => panic!("no generator for {other:?}: {schema}"),
    }
}

/// Values just outside a parameter's schema, where the keywords say so: below `minimum`,
/// above `maximum`, shorter than `minLength`, not in the `enum`.
fn invalid_values(doc: &Value, schema: &Value) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut values = Vec::new();
    if schema["enum"].is_array() {
        values.push("nope".to_owned());
    }
    if let Some(min) = schema["minimum"].as_u64() {
        if min > 0 {
            values.push((min - 1).to_string());
        }
    }
    if let Some(max) = schema["maximum"].as_u64() {
        values.push((max + 1).to_string());
    }
    if schema["minLength"].as_u64().is_some_and(|min| min > 0) {
        values.push(String::new());
    }
    values
}

/// Every parameter and header of every operation, generated from the document: each value
/// the document allows is taken (never refused naming it, never a 5xx), each it rules out
/// by its keywords is refused naming it. Before the fix the document allowed `kind=` (no
/// `minLength`) and any `Idempotency-Key` (no pattern), which the server refuses.
#[tokio::test]
async fn every_parameter_and_header_takes_what_the_document_allows() {
    let state = state().await;
    let doc = document(&state).await;
    let mut checked = std::collections::BTreeMap::new();
    for (path, operations) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = match path.as_str() {
                "/jobs" if method == Method::POST => serde_json::json!({"kind": "echo"}),
                "/jobs/batch" => serde_json::json!([{"kind": "echo"}]),
                _ => serde_json::json!({}),
            };
            let parameters = operation["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let id = uuid::Uuid::now_v7().to_string();
            for parameter in &parameters {
                let name = parameter["name"].as_str().unwrap();
                let place = parameter["in"].as_str().unwrap();
                let schema = &parameter["schema"];
                let with = |value: &str| -> Request<Body> {
                    let mut target = path
                        .replace("{id}", if place == "path" { value } else { &id })
                        .replace("{name}", if place == "path" { value } else { "s" });
                    if place == "query" {
                        let encoded: String =
                            form_urlencoded::byte_serialize(value.as_bytes()).collect();
                        target = format!("{target}?{name}={encoded}");
                    }
                    let mut builder = Request::builder()
                        .method(method.clone())
                        .uri(target)
                        .header("content-type", "application/json");
                    if place == "header" {
                        builder = builder.header(name, value);
                    }
                    builder.body(Body::from(body.to_string())).unwrap()
                };
                let valid = valid_values(&doc, schema);
                assert!(
                    !valid.is_empty(),
                    "{method} {path} {name}: nothing generated"
                );
                for value in &valid {
                    let (status, answer) = exchange(&state, with(value)).await;
                    assert!(
                        !status.is_server_error()
                            && !((status == StatusCode::BAD_REQUEST
                                || status == StatusCode::UNPROCESSABLE_ENTITY)
                                && answer["error"]["field"] == name),
                        "{method} {path} {place} {name}={value:?} is valid by the document \
                         but was refused: {status} {answer}"
                    );
                }
                for value in invalid_values(&doc, schema) {
                    let (status, answer) = exchange(&state, with(&value)).await;
                    assert_eq!(
                        status,
                        StatusCode::BAD_REQUEST,
                        "{method} {path} {name}={value:?}: {answer}"
                    );
                    assert_eq!(answer["error"]["field"], name, "{answer}");
                }
                checked.insert(format!("{method} {path} {name}"), valid.len());
            }
        }
    }
    for expected in [
        "GET /jobs kind",
        "GET /jobs cursor",
        "GET /jobs since",
        "GET /jobs/{id} wait",
        "POST /jobs Idempotency-Key",
        "POST /jobs/replay kind",
        "POST /jobs/replay status",
        "DELETE /jobs/{id} id",
    ] {
        assert!(
            checked.contains_key(expected),
            "{expected} not checked: {checked:?}"
        );
    }
}

async fn exchange(state: &AppState, request: Request<Body>) -> (StatusCode, Value) {
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}
