//! Sending one attempt: the pooled client, the request's headers, and reading the answer
//! with a size cap.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, RETRY_AFTER};
use reqwest::StatusCode;

use super::config::HttpKindConfig;
use crate::job::Job;

/// The attempt number header (1-based), so the target can tell a retry from a first try.
pub const ATTEMPT_HEADER: &str = "Surge-Attempt";
/// The header carrying the job id: the same on every attempt of a job.
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";
/// Most bytes of a non-2xx body read (for the error excerpt).
pub const ERROR_BODY_BYTES: usize = 4096;
/// How long an idle pooled connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest connect time (or the kind's timeout, when shorter).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The client of one kind: connections pooled and kept alive, at most `concurrency` idle
/// per host, redirects NOT followed (a 3xx is an answer: a POST redirected would lose its
/// body on 301/302/303 and carry its headers — secrets included — to another address).
pub fn client(config: &HttpKindConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("surge/", env!("CARGO_PKG_VERSION")))
        .timeout(config.timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(config.timeout))
        .pool_max_idle_per_host(usize::try_from(config.concurrency).unwrap_or(usize::MAX))
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .tcp_keepalive(Duration::from_secs(60))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// What the target answered.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The raw `Retry-After` value, if any.
    pub retry_after: Option<HeaderValue>,
    /// The body, at most the cap given to [`send`].
    pub body: Vec<u8>,
    /// Whether the body was longer than the cap (the rest was not read).
    pub truncated: bool,
    /// The declared `Content-Length`, if any.
    pub content_length: Option<u64>,
}

/// POSTs `job`'s payload (attempt `attempt`) and reads the answer: up to
/// `max_result_bytes` of a 2xx body, [`ERROR_BODY_BYTES`] of any other. The kind's
/// timeout covers the whole exchange, body included.
pub async fn send(
    client: &reqwest::Client,
    config: &HttpKindConfig,
    job: &Job,
    attempt: u32,
) -> Result<Answer, reqwest::Error> {
    let mut headers = HeaderMap::with_capacity(config.headers.len() + 3);
    // Configured headers first: ours below replace any of the same name.
    for (name, value) in &config.headers {
        if let Ok(mut value) = HeaderValue::from_str(&value.0) {
            value.set_sensitive(true);
            headers.insert(name.clone(), value);
        }
    }
    if let Ok(id) = HeaderValue::try_from(job.id.to_string()) {
        headers.insert(IDEMPOTENCY_HEADER, id);
    }
    headers.insert(ATTEMPT_HEADER, HeaderValue::from(attempt));
    if let Some(traceparent) = job
        .traceparent
        .as_deref()
        .and_then(|t| HeaderValue::from_str(t).ok())
    {
        headers.insert("traceparent", traceparent);
    }
    let mut response = client
        .post(config.url.clone())
        .headers(headers)
        .json(&job.payload)
        .send()
        .await?;
    let status = response.status();
    let retry_after = response.headers().get(RETRY_AFTER).cloned();
    let content_length = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let cap = if status.is_success() {
        config.max_result_bytes
    } else {
        ERROR_BODY_BYTES
    };
    let mut body = Vec::new();
    let mut truncated = false;
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            truncated = true;
            // Stop reading: the connection is dropped rather than drained.
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        retry_after,
        body,
        truncated,
        content_length,
    })
}
