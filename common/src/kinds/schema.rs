//! JSON Schemas of payloads: compiled once at start-up, checked at the ingress (a failing
//! payload gets 422 naming the failing location) and again in the worker.
//!
//! Built on the `jsonschema` crate without its default features: a schema cannot fetch a
//! remote `$ref`, so checking a payload never leaves the process.

use serde_json::Value;

use crate::job::InvalidJob;

/// Longest error message taken from the validator (it may quote the payload).
const MAX_MESSAGE_LEN: usize = 300;

/// A compiled JSON Schema for a kind's payload.
#[derive(Clone)]
pub struct PayloadSchema {
    document: Value,
    validator: std::sync::Arc<jsonschema::Validator>,
}

impl std::fmt::Debug for PayloadSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PayloadSchema")
            .field(&self.document)
            .finish()
    }
}

/// A schema that does not compile; `key` says where it was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: not a valid JSON Schema: {message}")]
pub struct SchemaError {
    /// Where the schema came from, e.g. `kinds.thumbnail.schema`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl PayloadSchema {
    /// Compiles `document`; `key` names its place in the configuration for errors.
    pub fn compile(key: &str, document: Value) -> Result<PayloadSchema, SchemaError> {
        let validator = jsonschema::validator_for(&document).map_err(|e| SchemaError {
            key: key.to_owned(),
            message: truncate(e.to_string()),
        })?;
        Ok(PayloadSchema {
            document,
            validator: std::sync::Arc::new(validator),
        })
    }

    /// The schema as written.
    pub fn document(&self) -> &Value {
        &self.document
    }

    /// Checks `payload`; the error's field is the failing location under `payload`
    /// (`payload.image.size`, `payload.tags[2]`; for a missing required property, the
    /// property itself).
    pub fn validate(&self, payload: &Value) -> Result<(), InvalidJob> {
        let Err(error) = self.validator.validate(payload) else {
            return Ok(());
        };
        let mut field = String::from("payload");
        for segment in error.instance_path().as_str().split('/').skip(1) {
            push_segment(&mut field, &unescape(segment));
        }
        if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind() {
            if let Some(name) = property.as_str() {
                push_segment(&mut field, name);
            }
        }
        Err(InvalidJob::new(field, truncate(error.to_string())))
    }
}

/// Appends a JSON Pointer segment: an index as `[n]`, a name as `.name`.
fn push_segment(field: &mut String, segment: &str) {
    if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
        field.push('[');
        field.push_str(segment);
        field.push(']');
    } else {
        field.push('.');
        field.push_str(segment);
    }
}

/// JSON Pointer unescaping (`~1` → `/`, `~0` → `~`).
fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_LEN {
        let mut end = MAX_MESSAGE_LEN;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> PayloadSchema {
        PayloadSchema::compile(
            "kinds.t.schema",
            json!({
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "object", "properties": {"size": {"type": "integer", "maximum": 10}}},
                    "tags": {"type": "array", "items": {"type": "string"}}
                }
            }),
        )
        .unwrap()
    }

    #[test]
    fn failing_locations_become_fields() {
        let s = schema();
        assert!(s.validate(&json!({"image": {"size": 3}})).is_ok());
        let cases = [
            (json!({}), "payload.image"),
            (json!({"image": {"size": 11}}), "payload.image.size"),
            (json!({"image": {}, "tags": ["a", 2]}), "payload.tags[1]"),
            (json!([1]), "payload"),
        ];
        for (payload, field) in cases {
            assert_eq!(s.validate(&payload).unwrap_err().field, field, "{payload}");
        }
    }

    #[test]
    fn a_bad_schema_names_its_key() {
        let err = PayloadSchema::compile("kinds.t.schema", json!({"type": 12})).unwrap_err();
        assert_eq!(err.key, "kinds.t.schema");
    }
}
