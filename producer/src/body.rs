//! [`JsonBody`]: a JSON request body extractor whose every failure is an [`ApiError`].
//!
//! Order of checks: content type (415), size (413), syntax (400), shape (422 naming the
//! field by its JSON path, e.g. `payload.ms` or `[3].kind`).

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;
use surge_common::job::InvalidJob;

/// A request body decoded from JSON into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Whether `content_type` declares JSON (`application/json` or `application/…+json`).
pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let declared_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !declared_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.limits.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::BodyTooLarge { limit })?;
        decode(&bytes).map(JsonBody)
    }
}

/// Decodes `bytes` as JSON into `T`, classifying the failure.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let message = inner.to_string();
                ApiError::Invalid(InvalidJob::new(field_of(&path, &message), message))
            }
            _ => ApiError::MalformedJson(inner.to_string()),
        }
    })?;
    // Trailing characters after the value make the body malformed, not merely odd.
    deserializer
        .end()
        .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    Ok(value)
}

/// The JSON path of the field a data error is about. serde reports a missing field at its
/// parent's path, naming the field in backticks in the message.
fn field_of(path: &str, message: &str) -> String {
    let parent = if path == "." { "" } else { path };
    let named = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match named {
        Some(name) if parent.is_empty() => name.to_owned(),
        Some(name) => format!("{parent}.{name}"),
        None => parent.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surge_common::job::JobRequest;

    #[test]
    fn content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.surge+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    #[test]
    fn failures_are_classified() {
        let syntax = decode::<JobRequest>(b"{\"kind\": ").unwrap_err();
        assert!(matches!(syntax, ApiError::MalformedJson(_)), "{syntax:?}");
        let utf8 = decode::<JobRequest>(b"{\"kind\": \"\xff\"}").unwrap_err();
        assert!(matches!(utf8, ApiError::MalformedJson(_)), "{utf8:?}");
        let trailing = decode::<JobRequest>(b"{\"kind\": \"echo\"} x").unwrap_err();
        assert!(
            matches!(trailing, ApiError::MalformedJson(_)),
            "{trailing:?}"
        );
        match decode::<JobRequest>(b"{}").unwrap_err() {
            ApiError::Invalid(e) => assert_eq!(e.field, "kind"),
            other => panic!("{other:?}"),
        }
        match decode::<JobRequest>(b"{\"kind\": \"echo\", \"colour\": 1}").unwrap_err() {
            ApiError::Invalid(e) => assert_eq!(e.field, "colour"),
            other => panic!("{other:?}"),
        }
        match decode::<JobRequest>(b"{\"kind\": 5}").unwrap_err() {
            ApiError::Invalid(e) => assert_eq!(e.field, "kind"),
            other => panic!("{other:?}"),
        }
        match decode::<Vec<JobRequest>>(b"[{\"kind\": \"echo\"}, {\"payload\": {}}]").unwrap_err() {
            ApiError::Invalid(e) => assert_eq!(e.field, "[1].kind", "{e}"),
            other => panic!("{other:?}"),
        }
    }
}
