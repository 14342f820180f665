//! Optional API-key authentication for the job endpoints.
//!
//! With keys configured, `POST /jobs`, `POST /jobs/batch`, `GET /jobs/{id}` and
//! `POST /jobs/{id}/replay` need `Authorization: Bearer <key>` or `X-Api-Key: <key>`;
//! health, readiness, metrics, the dashboard and the OpenAPI document stay open. Keys are
//! compared in constant time and never logged.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// The configured keys; empty means authentication is off.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.keys.len())
    }
}

impl ApiKeys {
    /// Keys from a comma- or newline-separated list (blank entries ignored).
    pub fn parse(list: &str) -> ApiKeys {
        ApiKeys {
            keys: list
                .split([',', '\n'])
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The presented key, when it matches one of ours; `Err` says why not.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<String>, &'static str> {
        if !self.enabled() {
            return Ok(None);
        }
        let presented = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            })
            .map(str::trim)
            .ok_or("missing API key: send Authorization: Bearer <key> or X-Api-Key")?;
        // Check every key, so the time taken does not tell which one was close.
        let matched = self
            .keys
            .iter()
            .fold(subtle::Choice::from(0u8), |found, key| {
                found | key.as_slice().ct_eq(presented.as_bytes())
            });
        if bool::from(matched) {
            Ok(Some(presented.to_owned()))
        } else {
            Err("invalid API key")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let keys = ApiKeys::parse("alpha, beta\n\n");
        let mut headers = HeaderMap::new();
        assert!(keys.authenticate(&headers).is_err());
        headers.insert("authorization", "Bearer beta".parse().unwrap());
        assert_eq!(keys.authenticate(&headers), Ok(Some("beta".into())));
        headers.insert("x-api-key", "gamma".parse().unwrap());
        assert!(keys.authenticate(&headers).is_err());
        assert_eq!(ApiKeys::default().authenticate(&headers), Ok(None));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 configured)");
    }
}
