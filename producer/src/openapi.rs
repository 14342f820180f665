//! `GET /openapi.json`: the API description.
//!
//! - The operations come from the router itself: [`crate::app::routes`] registers every
//!   handler through utoipa-axum's `OpenApiRouter`, which adds the handler's
//!   `#[utoipa::path]` operation as it adds the route, so a route cannot be served
//!   undocumented, nor documented and not served.
//! - A job request is described per kind ([`JobRequestDoc`]): a `oneOf` discriminated by
//!   `kind`, each with its payload's fields and the limits the ingress enforces (read
//!   from `surge_common::job`'s constants), so a request valid by the document is one the
//!   server accepts.
//! - Path ids are declared `format: uuid`.

use std::borrow::Cow;
use std::sync::OnceLock;

use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use surge_common::job::{JobKind, MAX_FLAKY_FAILURES, MAX_HASH_ROUNDS, MAX_KEY_LEN, MAX_SLEEP_MS};
use utoipa::openapi::schema::{
    AdditionalProperties, Discriminator, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{OpenApi, PartialSchema, ToSchema};

/// A job submission: one schema per built-in kind, told apart by `kind` (component
/// `JobRequest`, with `SleepJobRequest`, `HashJobRequest`, … as its variants).
///
/// Documentation only: the server reads `surge_common::job::JobRequest` and validates it
/// with `TypedPayload::decode`; the tests post a request built from each variant of this
/// schema to the real router and expect 202.
#[derive(Debug)]
pub struct JobRequestDoc;

impl PartialSchema for JobRequestDoc {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new().description(Some(
            "A job: `kind` picks the payload's shape. Unknown fields are refused.",
        ));
        let mut mapping = Vec::new();
        for kind in JobKind::ALL {
            let name = component_name(kind);
            one_of = one_of.item(Ref::from_schema_name(name));
            mapping.push((
                kind.as_str().to_owned(),
                format!("#/components/schemas/{name}"),
            ));
        }
        one_of
            .discriminator(Some(Discriminator::with_mapping("kind", mapping)))
            .into()
    }
}

impl ToSchema for JobRequestDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobRequest")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for kind in JobKind::ALL {
            schemas.push((component_name(kind).to_owned(), kind_request(kind)));
        }
    }
}

/// The component name of `kind`'s request schema.
fn component_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Sleep => "SleepJobRequest",
        JobKind::Hash => "HashJobRequest",
        JobKind::Echo => "EchoJobRequest",
        JobKind::Flaky => "FlakyJobRequest",
        JobKind::Poison => "PoisonJobRequest",
    }
}

/// What `kind` does, and an example request of it.
fn about(kind: JobKind) -> (&'static str, Value) {
    match kind {
        JobKind::Sleep => (
            "Simulated I/O: waits `payload.ms` milliseconds.",
            json!({"kind": "sleep", "payload": {"ms": 500}}),
        ),
        JobKind::Hash => (
            "CPU work: `payload.rounds` rounds of SHA-256, starting from `payload.data`.",
            json!({"kind": "hash", "payload": {"rounds": 1000, "data": "surge"}}),
        ),
        JobKind::Echo => (
            "Returns its payload (any JSON value; `{}` when absent) as the result.",
            json!({"kind": "echo", "payload": {"hello": "world"}, "key": "customer-42"}),
        ),
        JobKind::Flaky => (
            "Fails retryably on its first `payload.failures` attempts, then succeeds.",
            json!({"kind": "flaky", "payload": {"failures": 2}}),
        ),
        JobKind::Poison => (
            "Always fails permanently and ends dead-lettered; the payload is any JSON value.",
            json!({"kind": "poison"}),
        ),
    }
}

/// An integer field `0 <= minimum <= value <= maximum`.
fn integer(minimum: u64, maximum: u64, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(minimum))
        .maximum(Some(maximum))
        .description(Some(description))
}

/// An object with exactly these fields (`serde(deny_unknown_fields)` on the server).
fn closed_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

/// `kind`'s payload, and whether a request must carry it (absent means `{}`).
fn payload(kind: JobKind) -> (RefOr<Schema>, bool) {
    match kind {
        JobKind::Sleep => (
            closed_object()
                .property(
                    "ms",
                    integer(0, MAX_SLEEP_MS, "How long to wait, in milliseconds."),
                )
                .required("ms")
                .into(),
            true,
        ),
        JobKind::Hash => (
            closed_object()
                .property(
                    "rounds",
                    integer(1, MAX_HASH_ROUNDS.into(), "SHA-256 rounds."),
                )
                .property(
                    "data",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .default(Some(json!("")))
                        .description(Some("Seed text hashed in the first round.")),
                )
                .required("rounds")
                .into(),
            true,
        ),
        JobKind::Flaky => (
            closed_object()
                .property(
                    "failures",
                    integer(
                        0,
                        MAX_FLAKY_FAILURES.into(),
                        "How many attempts fail before one succeeds.",
                    ),
                )
                .required("failures")
                .into(),
            true,
        ),
        JobKind::Echo | JobKind::Poison => (
            ObjectBuilder::new()
                .schema_type(SchemaType::AnyValue)
                .default(Some(json!({})))
                .description(Some("Any JSON value."))
                .into(),
            false,
        ),
    }
}

/// The request schema of one kind: `kind` (that one value), its payload, the optional key.
fn kind_request(kind: JobKind) -> RefOr<Schema> {
    let (description, example) = about(kind);
    let (payload, payload_required) = payload(kind);
    let mut object = closed_object()
        .description(Some(description))
        .property(
            "kind",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([kind.as_str()])),
        )
        .required("kind")
        .property("payload", payload)
        .property(
            "key",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                // The server counts bytes; 4-byte characters at most make 64 always fit.
                .max_length(Some(MAX_KEY_LEN / 4))
                .description(Some(format!(
                    "Partition / ordering key, 1 to {MAX_KEY_LEN} bytes of UTF-8 (any 64 \
                     characters fit); defaults to the job id."
                ))),
        )
        .examples([example]);
    if payload_required {
        object = object.required("payload");
    }
    object.into()
}

/// `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code, e.g. `invalid_job`, `malformed_json`, `broker_unavailable`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// JSON path of the offending field, e.g. `payload.ms` or `[3].kind`.
    pub field: Option<String>,
}

/// The document's frame: title, description and the shared schemas. The operations are
/// added by [`crate::app::routes`], one per route.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Surge",
        description = "Absorb request bursts without losing a job: 202 only once the broker holds the job durably."
    ),
    components(schemas(JobRequestDoc, ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;

/// The whole document, built once from the router.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(|| crate::app::routes().into_openapi())
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "This document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document().clone())
}
