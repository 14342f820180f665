//! Jobs: what a client submits, how it is validated, and how it travels through a broker.
//!
//! A request names a `kind` and a `payload`. The ingress validates the payload with the
//! kind's handler (through [`KindRules`], which the kinds registry implements) *before*
//! anything is published,
//! so a job on the broker is one a worker can run; the worker validates it again (a message
//! could have been written by someone else) and dead-letters what does not pass.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::netpolicy::AddressPolicy;

/// Longest accepted `key` (partition / ordering key), in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Longest accepted `callback_url`, in bytes.
pub const MAX_CALLBACK_URL_LEN: usize = 2048;
/// Furthest ahead a job may be scheduled (`delay_ms` / `run_at`): seven days.
pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// Longest kind name, in bytes.
pub const MAX_KIND_NAME_LEN: usize = 64;

/// Whether `name` can be a kind's name: 1 to [`MAX_KIND_NAME_LEN`] of `a-z 0-9 _ - .`,
/// starting with a letter or digit (it appears in URLs, metrics labels and logs).
pub fn is_valid_kind_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    name.len() <= MAX_KIND_NAME_LEN
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

/// A request that does not describe a runnable job; names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidJob {
    /// JSON path of the offending field, e.g. `payload.ms` or `[3].kind`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl InvalidJob {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidJob {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, with its field path placed under `prefix` (e.g. a batch index).
    pub fn under(self, prefix: &str) -> Self {
        InvalidJob {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}

/// What a client POSTs: `{"kind": "...", "payload": {...}, "key"?: "..."}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// A registered kind's name.
    pub kind: String,
    /// The kind's payload; `{}` when absent.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// Partition / ordering key; defaults to the job id.
    #[serde(default)]
    pub key: Option<String>,
    /// Run no earlier than this many milliseconds from now (at most [`MAX_DELAY`]). With
    /// `run_at` too, both hold (the later one counts).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// Where to POST the job's outcome when it succeeds or dies (signed; see the
    /// worker's callback sender). `http` or `https`, at most [`MAX_CALLBACK_URL_LEN`], a
    /// public address unless allowed (see [`CallbackPolicy`]).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Run no earlier than this RFC 3339 time (at most [`MAX_DELAY`] ahead; a past time
    /// runs now).
    #[serde(default)]
    pub run_at: Option<String>,
    /// 1 (lowest) to 5 (highest); [`DEFAULT_PRIORITY`] when absent. With a backlog, a
    /// worker runs higher priorities first, aged so a low one is never starved.
    #[serde(default)]
    pub priority: Option<i64>,
}

/// Where a kind takes a job's fairness key from when the request names none (`key_from`
/// in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JSON pointer into the payload (`/tenant_id`, `/customer/id`): a string is the key,
    /// a number its decimal text; anything else, or nothing there, leaves the job keyless.
    Payload(String),
    /// A request header (`header:X-Tenant-Id`): its value, when it is text.
    Header(String),
}

impl KeySource {
    /// Reads `"/json/pointer"` or `"header:Name"`.
    pub fn parse(text: &str) -> Result<KeySource, String> {
        if let Some(name) = text.strip_prefix("header:") {
            let name = name.trim();
            let valid = !name.is_empty()
                && name.len() <= 100
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !valid {
                return Err(format!(
                    "{name:?} is not a header name (letters, digits, '-' and '_')"
                ));
            }
            return Ok(KeySource::Header(name.to_ascii_lowercase()));
        }
        if text.starts_with('/') && text.len() <= 200 {
            return Ok(KeySource::Payload(text.to_owned()));
        }
        Err(
            "must be a JSON pointer into the payload (\"/tenant_id\") or \"header:<Name>\""
                .to_owned(),
        )
    }

    /// The key `payload` gives, for [`KeySource::Payload`].
    fn key_in(&self, payload: &Value) -> Option<String> {
        let KeySource::Payload(pointer) = self else {
            return None;
        };
        match payload.pointer(pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// What turning a request into a job needs to know of the kinds a process runs. The kinds
/// registry (`crate::kinds::KindRegistry`) implements it; the trait lives here so that
/// jobs do not depend on the kinds that run them.
pub trait KindRules {
    /// Checks `payload` against the kind named `kind` (unknown kinds are refused).
    fn validate(&self, kind: &str, payload: &Value) -> Result<(), InvalidJob>;
    /// Where the kind takes a job's key from when the request names none.
    fn key_from(&self, kind: &str) -> Option<&KeySource>;
    /// The kind's own callback URL, for jobs that name none.
    fn callback_url(&self, kind: &str) -> Option<String>;
    /// Which `callback_url`s a request may carry.
    fn callback_policy(&self) -> &CallbackPolicy;
}

/// The priority of a job that names none.
pub const DEFAULT_PRIORITY: u8 = 3;
/// The highest priority (the lowest is 1).
pub const MAX_PRIORITY: u8 = 5;

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl JobRequest {
    /// For a request that names no `key`, of a kind whose `key_from` is a request header:
    /// takes the key from `header(name)` (the ingress passes its request's headers).
    pub fn take_key_from_header<'h>(
        &mut self,
        kinds: &impl KindRules,
        header: impl Fn(&str) -> Option<&'h str>,
    ) {
        if self.key.is_some() {
            return;
        }
        if let Some(KeySource::Header(name)) = kinds.key_from(&self.kind) {
            self.key = header(name).map(str::to_owned);
        }
    }

    /// Validates the request against the kinds in `kinds` and turns it into a [`Job`]
    /// with a fresh id.
    pub fn into_job(mut self, kinds: &impl KindRules) -> Result<Job, InvalidJob> {
        kinds.validate(&self.kind, &self.payload)?;
        let mut key_field = "key".to_owned();
        if self.key.is_none() {
            if let Some(source @ KeySource::Payload(pointer)) = kinds.key_from(&self.kind) {
                self.key = source.key_in(&self.payload);
                key_field = format!("payload{pointer}");
            }
        }
        if let Some(key) = &self.key {
            if key.is_empty() || key.len() > MAX_KEY_LEN {
                return Err(InvalidJob::new(
                    key_field,
                    format!("must be 1 to {MAX_KEY_LEN} bytes long (a fairness key)"),
                ));
            }
        }
        if let Some(url) = &self.callback_url {
            kinds.callback_policy().check(url)?;
        }
        let priority = match self.priority {
            None => None,
            Some(p) => Some(
                u8::try_from(p)
                    .ok()
                    .filter(|p| (1..=MAX_PRIORITY).contains(p))
                    .ok_or_else(|| {
                        InvalidJob::new("priority", format!("must be 1 to {MAX_PRIORITY}"))
                    })?,
            ),
        };
        let run_at_us = self.run_at_us()?;
        let callback_url = self
            .callback_url
            .clone()
            .or_else(|| kinds.callback_url(&self.kind));
        let mut job = Job::new(self.kind, self.payload, self.key);
        job.callback_url = callback_url;
        job.run_at_us = run_at_us.filter(|at| *at > job.enqueued_at_us);
        job.priority = priority;
        Ok(job)
    }

    /// When the job may run (µs since the epoch), if the request schedules it.
    fn run_at_us(&self) -> Result<Option<i64>, InvalidJob> {
        let now = crate::clock::now_micros();
        let max_us = i64::try_from(MAX_DELAY.as_micros()).unwrap_or(i64::MAX);
        let too_far = |field: &str| {
            InvalidJob::new(
                field,
                format!("at most {} days ahead", MAX_DELAY.as_secs() / 86_400),
            )
        };
        let after_delay = match self.delay_ms {
            Some(delay_ms) => {
                let delay_us = i64::try_from(delay_ms)
                    .ok()
                    .and_then(|ms| ms.checked_mul(1000))
                    .filter(|us| *us <= max_us)
                    .ok_or_else(|| too_far("delay_ms"))?;
                Some(now + delay_us)
            }
            None => None,
        };
        let at_time = match &self.run_at {
            Some(text) => {
                let at = time::OffsetDateTime::parse(
                    text,
                    &time::format_description::well_known::Rfc3339,
                )
                .map_err(|e| {
                    InvalidJob::new(
                        "run_at",
                        format!("not an RFC 3339 time like 2026-12-24T18:00:00Z ({e})"),
                    )
                })?;
                let at_us = i64::try_from(at.unix_timestamp_nanos() / 1000)
                    .map_err(|_| too_far("run_at"))?;
                if at_us - now > max_us {
                    return Err(too_far("run_at"));
                }
                Some(at_us)
            }
            None => None,
        };
        // Both given: both hold, so the later one.
        Ok(after_delay.max(at_time))
    }
}

/// Which `callback_url`s this process accepts on a job (see [`crate::netpolicy`]).
#[derive(Debug, Clone, Default)]
pub struct CallbackPolicy {
    /// Where callbacks may go: public addresses plus what `--callback-allow` allows.
    pub targets: Arc<AddressPolicy>,
    /// Whether callbacks can be signed (this process has `--callback-secret`): without
    /// the key no callback could be sent, so a job asking for one is refused.
    pub signed: bool,
}

impl CallbackPolicy {
    /// An `http`/`https` URL with a host, not too long, that may be reached, while
    /// callbacks can be signed: else a 422-ready error naming `callback_url` (never
    /// repeating the URL).
    pub fn check(&self, url: &str) -> Result<(), InvalidJob> {
        let bad = |message: String| InvalidJob::new("callback_url", message);
        if url.len() > MAX_CALLBACK_URL_LEN {
            return Err(bad(format!("at most {MAX_CALLBACK_URL_LEN} bytes")));
        }
        let parsed = parse_http_url(url).map_err(bad)?;
        if !self.signed {
            return Err(bad(
                "callbacks are off: the ingress has no --callback-secret \
                 (SURGE_CALLBACK_SECRET) to sign them"
                    .into(),
            ));
        }
        self.targets
            .check_url(&parsed)
            .map_err(|refused| bad(refused.to_string()))
    }
}

/// Parses an `http://` or `https://` URL with a host (a target, a callback); the error
/// says what is wrong without repeating the URL, which may carry credentials.
pub fn parse_http_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

/// A validated job as it travels through a broker (JSON-encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Unique id (UUIDv7: time-ordered), assigned by the ingress.
    pub id: Uuid,
    /// The name of its kind in the [`crate::kinds::KindRegistry`].
    pub kind: String,
    /// The kind's payload, already validated once at the ingress.
    pub payload: Value,
    /// Partition / ordering key, when the client gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// When the ingress accepted the job (µs since the epoch).
    pub enqueued_at_us: i64,
    /// W3C trace context of the request that submitted the job (see [`crate::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Set by the ingress: whether the job stands is decided after its publish (a publish
    /// can fail with the message stored), so its result commits only once the ingress
    /// recorded it accepted (see [`crate::storage::acceptance`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaits_acceptance: bool,
    /// Run no earlier than this (µs since the epoch): a scheduled job, which waits in the
    /// database until then (see [`crate::storage::schedule`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at_us: Option<i64>,
    /// Where the outcome is POSTed when the job succeeds or dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// 1 to [`MAX_PRIORITY`]; absent means [`DEFAULT_PRIORITY`] (see [`Job::priority`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
}

impl Job {
    /// A new job with a fresh UUIDv7 id, stamped now.
    pub fn new(kind: impl Into<String>, payload: Value, key: Option<String>) -> Job {
        Job {
            id: Uuid::now_v7(),
            kind: kind.into(),
            payload,
            key,
            enqueued_at_us: crate::clock::now_micros(),
            traceparent: None,
            awaits_acceptance: false,
            run_at_us: None,
            callback_url: None,
            priority: None,
        }
    }

    /// The job's priority, 1 to [`MAX_PRIORITY`] (out-of-range values from a message are
    /// clamped: a message may carry anything).
    pub fn priority(&self) -> u8 {
        self.priority
            .unwrap_or(DEFAULT_PRIORITY)
            .clamp(1, MAX_PRIORITY)
    }

    /// The job's fairness group: its key, or, without one, the job itself.
    pub fn fairness_key(&self) -> std::borrow::Cow<'_, str> {
        match &self.key {
            Some(key) => std::borrow::Cow::Borrowed(key),
            None => std::borrow::Cow::Owned(self.id.to_string()),
        }
    }

    /// The trace id of the job's trace context, when it has a valid one.
    pub fn trace_id(&self) -> Option<String> {
        self.traceparent
            .as_deref()
            .and_then(crate::trace::TraceContext::parse)
            .map(|ctx| ctx.trace_id())
    }

    /// The key that picks a partition: the client's key, else the job id.
    pub fn partition_key(&self) -> String {
        self.key.clone().unwrap_or_else(|| self.id.to_string())
    }

    /// The job's wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising a struct of plain fields into a Vec cannot fail.
        serde_json::to_vec(self).expect("a Job always serialises")
    }

    /// Decodes a job from its wire encoding.
    pub fn decode(bytes: &[u8]) -> Result<Job, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::KindRegistry;
    use serde_json::json;

    fn request(kind: &str, payload: Value) -> JobRequest {
        JobRequest {
            kind: kind.into(),
            payload,
            key: None,
            delay_ms: None,
            run_at: None,
            callback_url: None,
            priority: None,
        }
    }

    #[test]
    fn priorities_are_1_to_5_and_travel_with_the_job() {
        let kinds = KindRegistry::builtin();
        let mut with = request("echo", json!({}));
        with.priority = Some(5);
        let job = with.into_job(&kinds).unwrap();
        assert_eq!(job.priority(), 5);
        assert_eq!(Job::decode(&job.encode()).unwrap().priority(), 5);
        assert_eq!(
            request("echo", json!({}))
                .into_job(&kinds)
                .unwrap()
                .priority(),
            DEFAULT_PRIORITY
        );
        for bad in [0, 6, -1, 300, i64::MAX] {
            let mut r = request("echo", json!({}));
            r.priority = Some(bad);
            let e = r.into_job(&kinds).unwrap_err();
            assert_eq!(e.field, "priority", "{bad}");
        }
        // A message may carry anything: out of range is clamped, never a panic.
        let odd = br#"{"id":"0190a6b4-0000-7000-8000-000000000000","kind":"echo","payload":{},"enqueued_at_us":1,"priority":9}"#;
        assert_eq!(Job::decode(odd).unwrap().priority(), MAX_PRIORITY);
    }

    #[test]
    fn valid_requests_become_jobs_that_round_trip() {
        let kinds = KindRegistry::builtin();
        let job = request("sleep", json!({"ms": 5})).into_job(&kinds).unwrap();
        assert_eq!(job.kind, "sleep");
        assert_eq!(Job::decode(&job.encode()).unwrap(), job);
        assert_eq!(job.partition_key(), job.id.to_string());
        // The wire format of the closed-enum days still decodes.
        let old = br#"{"id":"0190a6b4-0000-7000-8000-000000000000","kind":"echo","payload":{},"enqueued_at_us":1}"#;
        assert_eq!(Job::decode(old).unwrap().kind, "echo");
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let kinds = KindRegistry::builtin();
        assert_eq!(
            request("nope", json!({}))
                .into_job(&kinds)
                .unwrap_err()
                .field,
            "kind"
        );
        assert_eq!(
            request("sleep", json!({}))
                .into_job(&kinds)
                .unwrap_err()
                .field,
            "payload"
        );
        let mut keyed = request("echo", json!(null));
        keyed.key = Some(String::new());
        assert_eq!(keyed.into_job(&kinds).unwrap_err().field, "key");
    }

    /// The built-in kinds, with callbacks that can be signed.
    fn signing_kinds(allow: &[&str]) -> KindRegistry {
        KindRegistry::builder()
            .with_builtins()
            .with_callback_policy(CallbackPolicy {
                targets: Arc::new(AddressPolicy::new(
                    allow.iter().map(|entry| entry.parse().unwrap()),
                )),
                signed: true,
            })
            .build()
    }

    #[test]
    fn callback_urls_are_checked() {
        let kinds = signing_kinds(&[]);
        for bad in [
            "not a url",
            "ftp://x/y",
            "file:///etc/passwd",
            &format!("http://x/{}", "a".repeat(3000)),
            "http://127.0.0.1:8080/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.5/hook",
            "http://[::1]:9/",
            "http://localhost:8080/hook",
            "http://user:pw@192.168.1.1/hook?token=t",
        ] {
            let mut r = request("echo", json!({}));
            r.callback_url = Some(bad.to_owned());
            assert_eq!(
                r.into_job(&kinds).unwrap_err().field,
                "callback_url",
                "{bad}"
            );
        }
        let mut r = request("echo", json!({}));
        r.callback_url = Some("https://hooks.example.com/surge".into());
        assert!(r.into_job(&kinds).unwrap().callback_url.is_some());
    }

    #[test]
    fn refusals_never_repeat_the_url() {
        let kinds = signing_kinds(&[]);
        let mut r = request("echo", json!({}));
        r.callback_url = Some("http://user:pw@10.1.2.3:81/hook?token=t0ps3cret".into());
        let refused = r.into_job(&kinds).unwrap_err();
        assert_eq!(refused.field, "callback_url");
        for leak in ["user", "pw", "10.1.2.3", "t0ps3cret", "hook"] {
            assert!(!refused.message.contains(leak), "{refused}");
        }
    }

    #[test]
    fn an_allowed_internal_receiver_is_accepted() {
        let kinds = signing_kinds(&["127.0.0.1/32", "hooks.internal"]);
        for good in [
            "http://127.0.0.1:8080/hook",
            "http://localhost:8080/hook",
            "http://hooks.internal/x",
        ] {
            let mut r = request("echo", json!({}));
            r.callback_url = Some(good.into());
            assert!(r.into_job(&kinds).is_ok(), "{good}");
        }
        let mut r = request("echo", json!({}));
        r.callback_url = Some("http://10.0.0.1/".into());
        assert_eq!(r.into_job(&kinds).unwrap_err().field, "callback_url");
    }

    #[test]
    fn without_a_signing_key_callbacks_are_refused() {
        let kinds = KindRegistry::builtin();
        let mut r = request("echo", json!({}));
        r.callback_url = Some("https://hooks.example.com/surge".into());
        let refused = r.into_job(&kinds).unwrap_err();
        assert_eq!(refused.field, "callback_url");
        assert!(refused.message.contains("--callback-secret"), "{refused}");
    }

    #[test]
    fn a_kind_may_give_its_jobs_a_default_callback() {
        struct Hooked;
        #[async_trait::async_trait]
        impl crate::kinds::Kind for Hooked {
            fn validate(&self, _: &Value) -> Result<(), InvalidJob> {
                Ok(())
            }
            async fn run(&self, _: &Job, _: u32) -> Result<Value, crate::kinds::JobError> {
                Ok(Value::Null)
            }
            fn callback_url(&self) -> Option<String> {
                Some("http://hooks.example/kind".into())
            }
        }
        let kinds = KindRegistry::builder()
            .register("hooked", Hooked)
            .with_callback_policy(CallbackPolicy {
                signed: true,
                ..CallbackPolicy::default()
            })
            .try_build()
            .unwrap();
        let job = request("hooked", json!({})).into_job(&kinds).unwrap();
        assert_eq!(
            job.callback_url.as_deref(),
            Some("http://hooks.example/kind")
        );
        let mut own = request("hooked", json!({}));
        own.callback_url = Some("http://hooks.example/job".into());
        let job = own.into_job(&kinds).unwrap();
        assert_eq!(
            job.callback_url.as_deref(),
            Some("http://hooks.example/job")
        );
    }

    #[test]
    fn delays_are_bounded_and_name_their_field() {
        let kinds = KindRegistry::builtin();
        let with = |delay_ms: Option<u64>, run_at: Option<&str>| {
            let mut r = request("echo", json!({}));
            r.delay_ms = delay_ms;
            r.run_at = run_at.map(str::to_owned);
            r.into_job(&kinds)
        };
        let week_ms = MAX_DELAY.as_millis() as u64;
        let job = with(Some(60_000), None).unwrap();
        let ahead = job.run_at_us.unwrap() - job.enqueued_at_us;
        assert!((59_000_000..=61_000_000).contains(&ahead), "{ahead}");
        assert_eq!(
            with(Some(0), None).unwrap().run_at_us,
            None,
            "now is not later"
        );
        assert_eq!(with(Some(week_ms + 1), None).unwrap_err().field, "delay_ms");
        assert_eq!(with(Some(u64::MAX), None).unwrap_err().field, "delay_ms");
        assert_eq!(with(None, Some("tomorrow")).unwrap_err().field, "run_at");
        assert_eq!(
            with(None, Some("2999-01-01T00:00:00Z")).unwrap_err().field,
            "run_at"
        );
        // Both: the later one holds.
        let both = with(Some(60_000), Some("2020-01-01T00:00:00Z")).unwrap();
        assert!(both.run_at_us.unwrap() > both.enqueued_at_us);
        // A past time runs now; an offset is understood.
        assert_eq!(
            with(None, Some("2020-01-01T00:00:00+02:00"))
                .unwrap()
                .run_at_us,
            None
        );
    }
}
