//! Optional API-key authentication.
//!
//! With keys configured, the job endpoints (`/jobs…`) need `Authorization: Bearer <key>` or
//! `X-Api-Key: <key>`. What else needs one is the [`AuthScope`] (`--auth-scope`): by
//! default health, readiness, metrics, the dashboard's data and the OpenAPI document stay
//! open; with `all` only `/healthz`, `/readyz` and the dashboard page itself (static HTML
//! and script, no data: it asks for a key) do. Keys are compared in constant time and
//! never logged.
//!
//! This module holds the keys and what they protect; they are checked by the job handlers
//! and, for the other endpoints, by the router's middleware
//! ([`crate::app::require_key_beyond_jobs`]).

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// Which endpoints the API keys protect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthScope {
    /// The job endpoints only (submit, status, list, replay, cancel).
    #[default]
    Jobs,
    /// Every endpoint but [`OPEN_WITH_SCOPE_ALL`]: the dashboard's data, `/metrics` and
    /// `/openapi.json` too.
    All,
}

/// The paths that stay open with `--auth-scope all`: load balancers' probes and the
/// dashboard page (which holds no data and asks for a key).
pub const OPEN_WITH_SCOPE_ALL: [&str; 3] = ["/healthz", "/readyz", "/"];

/// The configured keys (empty means authentication is off) and what they protect.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<Vec<u8>>,
    scope: AuthScope,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ApiKeys({} configured, {:?})",
            self.keys.len(),
            self.scope
        )
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
            scope: AuthScope::default(),
        }
    }

    /// The same keys protecting `scope`.
    pub fn with_scope(mut self, scope: AuthScope) -> ApiKeys {
        self.scope = scope;
        self
    }

    /// What the keys protect.
    pub fn scope(&self) -> AuthScope {
        self.scope
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
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 configured, Jobs)");
    }
}
