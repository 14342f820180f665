//! The schemas the OpenAPI document shares, named by the handlers' `#[utoipa::path]`
//! annotations: a job request ([`JobRequestDoc`]) and an error ([`ErrorBody`]). The
//! document itself, `GET /openapi.json`, is generated from the router
//! ([`crate::app`](mod@crate::app)).
//!
//! - A job request is described per kind the ingress knows ([`for_kinds`]): a `oneOf`
//!   discriminated by `kind`, each with its payload's JSON Schema as the kind declares it
//!   (the built-ins' limits, a configured kind's `schema`), so a request valid by the
//!   document is one the server accepts.
//! - Its optional fields are nullable because the server reads `null` as absent, and they
//!   say what the server takes (lengths, ranges): a request valid by the document is never
//!   refused for its form.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::json;
use surge_common::job::{MAX_DELAY, MAX_KEY_LEN};
use surge_common::kinds::{Kind, KindRegistry};
use utoipa::openapi::schema::{
    AdditionalProperties, Discriminator, KnownFormat, ObjectBuilder, OneOfBuilder, Schema,
    SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// A job submission (component `JobRequest`). In the served document it is a `oneOf`
/// with one variant per kind the ingress knows (built-in, `--config`, registered in
/// Rust), told apart by `kind`, each with its payload's JSON Schema: see [`for_kinds`].
/// This static placeholder only says the common shape.
#[derive(Debug)]
pub struct JobRequestDoc;

impl PartialSchema for JobRequestDoc {
    fn schema() -> RefOr<Schema> {
        closed_object()
            .property("kind", ObjectBuilder::new().schema_type(Type::String))
            .required("kind")
            .property(
                "payload",
                ObjectBuilder::new().schema_type(SchemaType::AnyValue),
            )
            .property("key", key_schema())
            .property(
                "priority",
                ObjectBuilder::new()
                    .schema_type(or_null(Type::Integer))
                    .minimum(Some(1))
                    .maximum(Some(f64::from(surge_common::job::MAX_PRIORITY))),
            )
            .into()
    }
}

impl ToSchema for JobRequestDoc {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("JobRequest")
    }
}

/// The component name of `kind`'s request schema (`JobRequest.thumbnail`).
fn component_name(kind: &str) -> String {
    format!("JobRequest.{kind}")
}

/// `ty`, or `null`: an optional field the server also takes as `null` (read as absent).
fn or_null(ty: Type) -> SchemaType {
    SchemaType::from_iter([ty, Type::Null])
}

/// The partition key's schema.
fn key_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(or_null(Type::String))
        .min_length(Some(1))
        // The server counts bytes; 4-byte characters at most make 64 always fit.
        .max_length(Some(MAX_KEY_LEN / 4))
        .description(Some(format!(
            "Fairness group (a tenant, a customer): with a backlog, jobs of different \
             keys are served in turn. Also the Kafka partition key. 1 to {MAX_KEY_LEN} \
             bytes of UTF-8 (any 64 characters fit); defaults to the job id (each job a \
             group of its own)."
        )))
}

/// An object with exactly these fields (`serde(deny_unknown_fields)` on the server).
fn closed_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

/// The kind's payload schema as an OpenAPI schema. OpenAPI 3.1 schemas are JSON Schemas,
/// but utoipa's model knows a subset of keywords: a schema it cannot read is described
/// as any value, with the JSON Schema quoted in its description.
fn payload_schema(kind: &dyn Kind) -> RefOr<Schema> {
    let document = kind.payload_schema();
    match serde_json::from_value::<RefOr<Schema>>(document.clone()) {
        Ok(schema) => schema,
        Err(_) => ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .description(Some(format!("JSON Schema: {document}")))
            .into(),
    }
}

/// The request schema of one kind: `kind` (that one value), its payload, the optional key.
fn kind_request(name: &str, kind: &dyn Kind) -> RefOr<Schema> {
    let mut object = closed_object()
        .description(Some(kind.description()))
        .property(
            "kind",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([name])),
        )
        .required("kind")
        .property("payload", payload_schema(kind))
        .property("key", key_schema())
        .property(
            "delay_ms",
            ObjectBuilder::new()
                .schema_type(or_null(Type::Integer))
                .minimum(Some(0))
                .maximum(Some(MAX_DELAY.as_millis() as f64))
                .description(Some(
                    "Run no earlier than this many milliseconds from now (at most 7 days); \
                     with `run_at` too, the later one counts.",
                )),
        )
        .property(
            "callback_url",
            ObjectBuilder::new()
                .schema_type(or_null(Type::String))
                .format(Some(SchemaFormat::Custom("uri".into())))
                // The server counts bytes; 4-byte characters at most make this always fit.
                .max_length(Some(surge_common::job::MAX_CALLBACK_URL_LEN / 4))
                .description(Some(
                    "Where the outcome is POSTed (signed) when the job succeeds or dies; \
                     http or https, a public address unless the operator allowed it \
                     (`--callback-allow`; 422 otherwise). Refused (422) while the ingress \
                     has no callback secret. Default: the kind's `callback_url`, if it has \
                     one.",
                )),
        )
        .property(
            "run_at",
            ObjectBuilder::new()
                .schema_type(or_null(Type::String))
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                .description(Some(
                    "Run no earlier than this RFC 3339 time (at most 7 days ahead; a past \
                     time runs now); with `delay_ms` too, the later one counts.",
                )),
        )
        .property(
            "priority",
            ObjectBuilder::new()
                .schema_type(or_null(Type::Integer))
                .minimum(Some(1))
                .maximum(Some(f64::from(surge_common::job::MAX_PRIORITY)))
                .description(Some(
                    "1 (lowest) to 5 (highest), default 3. With a backlog a worker runs \
                     higher priorities first among the jobs it holds; a waiting job gains a \
                     level every few seconds, so a low priority is never starved.",
                )),
        );
    if let Some(payload) = kind.example() {
        object = object.examples([json!({"kind": name, "payload": payload})]);
    }
    // A payload may be left out (it is `{}` then) when `{}` is a valid one.
    if kind.validate(&json!({})).is_err() {
        object = object.required("payload");
    }
    object.into()
}

/// `base` with `JobRequest` describing exactly the kinds in `kinds`.
pub fn for_kinds(
    mut base: utoipa::openapi::OpenApi,
    kinds: &KindRegistry,
) -> utoipa::openapi::OpenApi {
    let components = base.components.get_or_insert_with(Default::default);
    let mut one_of = OneOfBuilder::new().description(Some(
        "A job: `kind` picks the payload's shape. Unknown fields are refused.",
    ));
    let mut mapping = Vec::new();
    for (name, kind) in kinds.iter() {
        let component = component_name(name);
        one_of = one_of.item(Ref::from_schema_name(component.clone()));
        mapping.push((name.to_owned(), format!("#/components/schemas/{component}")));
        components
            .schemas
            .insert(component, kind_request(name, kind.as_ref()));
    }
    components.schemas.insert(
        "JobRequest".into(),
        one_of
            .discriminator(Some(Discriminator::with_mapping("kind", mapping)))
            .into(),
    );
    base
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
