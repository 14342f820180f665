//! `[kinds.NAME]` in the configuration file: an HTTP kind, each job POSTed to `url`.
//!
//! Everything is checked when the file is read (ingress and worker start-up), each error
//! naming the key at fault: a bad URL or a missing secret stops the process before it
//! takes a job, never at the first job.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::kinds::file::ConfigError;
use crate::kinds::schema::PayloadSchema;
use crate::retry::RetryPolicy;

/// Most requests in flight to one target, when the file does not say.
pub const DEFAULT_CONCURRENCY: u32 = 16;
/// Per-attempt timeout, when the file does not say.
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Largest response body stored as a job's result, when the file does not say (1 MiB).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 1 << 20;
/// Consecutive failures that open a target's circuit, when the file does not say.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How long an open circuit waits before probing the target, when the file does not say.
pub const DEFAULT_BREAKER_COOLDOWN_MS: u64 = 30_000;

/// An HTTP kind as written in the file (see the README's "Put Surge in front of your API").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpKindFile {
    /// Where each job is POSTed, its payload as the JSON body. `http` or `https`.
    pub url: String,
    /// Most requests in flight to this target across ALL worker replicas.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Most requests started per second across all replicas (unlimited when absent).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Most requests of one fairness key in flight across all replicas (1..=`concurrency`;
    /// unlimited when absent). See [`crate::kinds::http::per_key`].
    #[serde(default)]
    pub concurrency_per_key: Option<u32>,
    /// Most requests of one fairness key started per second across all replicas
    /// (unlimited when absent).
    #[serde(default)]
    pub rate_per_key: Option<f64>,
    /// Per-attempt timeout, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts in all (the first included); the worker's `--max-attempts` when absent.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Delay before the first retry (doubling, jittered); the worker's when absent.
    #[serde(default)]
    pub min_backoff_ms: Option<u64>,
    /// Longest delay between retries; the worker's when absent. A `Retry-After` from the
    /// target is honoured up to this bound.
    #[serde(default)]
    pub max_backoff_ms: Option<u64>,
    /// Largest response body kept as the result; a longer 2xx body is cut and flagged.
    #[serde(default = "default_max_result_bytes")]
    pub max_result_bytes: usize,
    /// Extra request headers. `${VAR}` in a value is replaced by the environment
    /// variable `VAR` at start-up (a missing one is an error), so secrets stay out of the
    /// file; values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Adaptive concurrency (AIMD) below `concurrency`: shrink on 429/503/timeouts, grow
    /// on success.
    #[serde(default = "yes")]
    pub adaptive: bool,
    /// Consecutive failed attempts (retryable ones: 408, 429, 5xx, timeouts, connection
    /// errors) that open the circuit; 0 turns the breaker off.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit keeps jobs waiting in the broker before one probe.
    #[serde(default = "default_breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
    /// A line for humans (OpenAPI, dashboard).
    #[serde(default)]
    pub description: Option<String>,
    /// Where the outcome of this kind's jobs is POSTed (signed) when they succeed or die,
    /// unless a job names its own `callback_url`.
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Where a job's fairness key comes from when its request names none: a JSON pointer
    /// into the payload (`"/tenant_id"`) or a request header (`"header:X-Tenant-Id"`).
    #[serde(default)]
    pub key_from: Option<String>,
    /// JSON Schema of the payload, checked at the ingress (422 naming the failing field).
    #[serde(default)]
    pub schema: Option<Value>,
}

fn default_concurrency() -> u32 {
    DEFAULT_CONCURRENCY
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_result_bytes() -> usize {
    DEFAULT_MAX_RESULT_BYTES
}
fn default_breaker_failures() -> u32 {
    DEFAULT_BREAKER_FAILURES
}
fn default_breaker_cooldown_ms() -> u64 {
    DEFAULT_BREAKER_COOLDOWN_MS
}
fn yes() -> bool {
    true
}

/// A header value that may hold a secret: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderSecret(pub String);

impl std::fmt::Debug for HeaderSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A checked HTTP kind, ready to build a dispatcher from.
#[derive(Debug, Clone)]
pub struct HttpKindConfig {
    /// The kind's name.
    pub name: String,
    /// Where jobs are POSTed.
    pub url: reqwest::Url,
    /// Most requests in flight across all replicas (≥ 1).
    pub concurrency: u32,
    /// Most requests started per second across all replicas.
    pub rate: Option<f64>,
    /// Most requests of one fairness key in flight across all replicas (1..=concurrency).
    pub concurrency_per_key: Option<u32>,
    /// Most requests of one fairness key started per second across all replicas.
    pub rate_per_key: Option<f64>,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// Attempts and backoff, when the file set any of them (missing parts come from the
    /// worker's policy: see [`HttpKindConfig::retry_policy`]).
    pub max_attempts: Option<u32>,
    /// See [`HttpKindFile::min_backoff_ms`].
    pub min_backoff: Option<Duration>,
    /// See [`HttpKindFile::max_backoff_ms`].
    pub max_backoff: Option<Duration>,
    /// Largest stored result body.
    pub max_result_bytes: usize,
    /// Extra headers, `${VAR}` already expanded.
    pub headers: Vec<(reqwest::header::HeaderName, HeaderSecret)>,
    /// AIMD on or off.
    pub adaptive: bool,
    /// Failures that open the circuit (0: never).
    pub breaker_failures: u32,
    /// Open-circuit cool-down.
    pub breaker_cooldown: Duration,
    /// For humans.
    pub description: Option<String>,
    /// The kind's default outcome callback.
    pub callback_url: Option<String>,
    /// Where a job's fairness key comes from when its request names none.
    pub key_from: Option<crate::job::KeySource>,
    /// The payload schema, compiled.
    pub schema: Option<PayloadSchema>,
}

/// Longest per-attempt timeout accepted (one hour).
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Most attempts accepted.
const MAX_ATTEMPTS: u32 = 100;
/// Highest `concurrency` accepted.
const MAX_CONCURRENCY: u32 = 10_000;

impl HttpKindConfig {
    /// Checks `file` (the table at `kinds.<name>`), resolving `${VAR}`s with `env`.
    pub fn check(
        name: &str,
        file: HttpKindFile,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<HttpKindConfig, ConfigError> {
        let key = |field: &str| format!("kinds.{name}.{field}");
        let bad = |field: &str, message: String| ConfigError::new(key(field), message);
        let url = crate::job::parse_http_url(&file.url).map_err(|e| bad("url", e))?;
        if !(1..=MAX_CONCURRENCY).contains(&file.concurrency) {
            return Err(bad(
                "concurrency",
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            ));
        }
        if let Some(rate) = file.rate {
            if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
                return Err(bad(
                    "rate",
                    "must be a number of requests per second above 0 (at most 1000000)".into(),
                ));
            }
        }
        if let Some(per_key) = file.concurrency_per_key {
            if !(1..=file.concurrency).contains(&per_key) {
                return Err(bad(
                    "concurrency_per_key",
                    format!(
                        "must be between 1 and the kind's concurrency ({})",
                        file.concurrency
                    ),
                ));
            }
        }
        if let Some(rate) = file.rate_per_key {
            if !(rate.is_finite() && rate > 0.0 && rate <= 1_000_000.0) {
                return Err(bad(
                    "rate_per_key",
                    "must be a number of requests per second above 0 (at most 1000000)".into(),
                ));
            }
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&file.timeout_ms) {
            return Err(bad(
                "timeout_ms",
                format!("must be between 1 and {MAX_TIMEOUT_MS}"),
            ));
        }
        if let Some(attempts) = file.max_attempts {
            if !(1..=MAX_ATTEMPTS).contains(&attempts) {
                return Err(bad(
                    "max_attempts",
                    format!("must be between 1 and {MAX_ATTEMPTS}"),
                ));
            }
        }
        if let (Some(min), Some(max)) = (file.min_backoff_ms, file.max_backoff_ms) {
            if min > max {
                return Err(bad(
                    "max_backoff_ms",
                    format!("must be at least min_backoff_ms ({min})"),
                ));
            }
        }
        if file.max_result_bytes == 0 {
            return Err(bad("max_result_bytes", "must be at least 1".into()));
        }
        let mut headers = Vec::with_capacity(file.headers.len());
        for (header, value) in &file.headers {
            let field = format!("headers.{header}");
            let header_name = reqwest::header::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| bad(&field, "not a valid HTTP header name".into()))?;
            let value = expand_env(value, env).map_err(|message| bad(&field, message))?;
            if reqwest::header::HeaderValue::from_str(&value).is_err() {
                // The value may be a secret: say what is wrong, never what it is.
                return Err(bad(
                    &field,
                    "not a valid HTTP header value (control characters or non-ASCII)".into(),
                ));
            }
            headers.push((header_name, HeaderSecret(value)));
        }
        if let Some(callback) = &file.callback_url {
            crate::job::parse_http_url(callback).map_err(|e| bad("callback_url", e))?;
        }
        let key_from = file
            .key_from
            .as_deref()
            .map(crate::job::KeySource::parse)
            .transpose()
            .map_err(|e| bad("key_from", e))?;
        let schema = match file.schema {
            Some(document) => Some(
                PayloadSchema::compile(&key("schema"), document)
                    .map_err(|e| ConfigError::new(e.key, e.message))?,
            ),
            None => None,
        };
        Ok(HttpKindConfig {
            name: name.to_owned(),
            url,
            concurrency: file.concurrency,
            rate: file.rate,
            concurrency_per_key: file.concurrency_per_key,
            rate_per_key: file.rate_per_key,
            timeout: Duration::from_millis(file.timeout_ms),
            max_attempts: file.max_attempts,
            min_backoff: file.min_backoff_ms.map(Duration::from_millis),
            max_backoff: file.max_backoff_ms.map(Duration::from_millis),
            max_result_bytes: file.max_result_bytes,
            headers,
            adaptive: file.adaptive,
            breaker_failures: file.breaker_failures,
            breaker_cooldown: Duration::from_millis(file.breaker_cooldown_ms),
            description: file.description,
            callback_url: file.callback_url,
            key_from,
            schema,
        })
    }

    /// The retry policy for this kind: the file's settings over the worker's `default`.
    pub fn retry_policy(&self, default: RetryPolicy) -> RetryPolicy {
        let base_delay = self.min_backoff.unwrap_or(default.base_delay);
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(default.max_attempts),
            base_delay,
            max_delay: self
                .max_backoff
                .unwrap_or(default.max_delay)
                .max(base_delay),
        }
    }
}

/// Replaces each `${VAR}` in `value` by the environment variable `VAR`.
fn expand_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "an unclosed ${ (write ${VAR})".to_owned())?;
        let var = &after[..end];
        if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("${{{var}}} is not an environment variable name"));
        }
        let resolved = env(var).ok_or_else(|| format!("environment variable {var} is not set"))?;
        out.push_str(&resolved);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(extra: &str) -> HttpKindFile {
        toml::from_str(&format!("url = \"http://127.0.0.1:9000/t\"\n{extra}")).unwrap()
    }

    fn env(var: &str) -> Option<String> {
        (var == "TOKEN").then(|| "s3cret".to_owned())
    }

    #[test]
    fn defaults_and_secrets() {
        let config = HttpKindConfig::check(
            "t",
            file("[headers]\nAuthorization = \"Bearer ${TOKEN}\""),
            &env,
        )
        .unwrap();
        assert_eq!(config.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(config.headers[0].1 .0, "Bearer s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    /// The README's example kinds pass the checks (their per-key lines included).
    #[test]
    fn the_readme_examples_are_valid() {
        let readme = include_str!("../../../../README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|rest| rest.split("```").next())
            .collect();
        for (name, per_key) in [
            ("thumbnail", (Some(20), Some(50.0))),
            ("report", (Some(5), Some(2.5))),
        ] {
            let header = format!("[kinds.{name}]");
            let block = blocks
                .iter()
                .find(|b| b.contains(&header))
                .unwrap_or_else(|| panic!("no README block with {header}"));
            let table: toml::Table = toml::from_str(block).unwrap();
            let kind = table["kinds"][name].clone();
            let file: HttpKindFile = kind.try_into().unwrap();
            let config = HttpKindConfig::check(name, file, &|_| Some("x".into())).unwrap();
            assert_eq!((config.concurrency_per_key, config.rate_per_key), per_key);
        }
    }

    #[test]
    fn each_error_names_its_key() {
        let cases = [
            ("concurrency = 0", "kinds.t.concurrency"),
            ("rate = -1.0", "kinds.t.rate"),
            ("concurrency_per_key = 0", "kinds.t.concurrency_per_key"),
            (
                "concurrency = 4\nconcurrency_per_key = 5",
                "kinds.t.concurrency_per_key",
            ),
            ("rate_per_key = 0.0", "kinds.t.rate_per_key"),
            ("rate_per_key = -2.5", "kinds.t.rate_per_key"),
            ("rate_per_key = nan", "kinds.t.rate_per_key"),
            ("rate_per_key = inf", "kinds.t.rate_per_key"),
            ("timeout_ms = 0", "kinds.t.timeout_ms"),
            ("max_attempts = 0", "kinds.t.max_attempts"),
            (
                "min_backoff_ms = 10\nmax_backoff_ms = 5",
                "kinds.t.max_backoff_ms",
            ),
            ("[headers]\nX-Key = \"${MISSING}\"", "kinds.t.headers.X-Key"),
            (
                "[headers]\n\"bad header\" = \"x\"",
                "kinds.t.headers.bad header",
            ),
            ("[schema]\ntype = 5", "kinds.t.schema"),
            ("callback_url = \"ftp://x/\"", "kinds.t.callback_url"),
        ];
        for (extra, key) in cases {
            let err = HttpKindConfig::check("t", file(extra), &env).unwrap_err();
            assert_eq!(err.key, key, "{extra}: {err}");
        }
        let per_key = HttpKindConfig::check(
            "t",
            file("concurrency = 4\nconcurrency_per_key = 4\nrate_per_key = 0.5"),
            &env,
        )
        .unwrap();
        assert_eq!(
            (per_key.concurrency_per_key, per_key.rate_per_key),
            (Some(4), Some(0.5))
        );
        let none = HttpKindConfig::check("t", file(""), &env).unwrap();
        assert_eq!((none.concurrency_per_key, none.rate_per_key), (None, None));
        let mut ftp = file("");
        ftp.url = "ftp://x/y".into();
        assert_eq!(
            HttpKindConfig::check("t", ftp, &env).unwrap_err().key,
            "kinds.t.url"
        );
    }
}
