//! The ingress's HTTP API as the command line sees it: one request, its JSON answer, and
//! every failure as a [`CliError`] whose class decides the exit code.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

/// Why a command failed; [`CliError::exit_code`] says how the process ends.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line itself is wrong (a bad payload, a bad time): nothing was sent.
    #[error("{0}")]
    Usage(String),
    /// The ingress could not be reached, or did not answer in time.
    #[error("cannot reach the ingress at {url}: {reason}")]
    Unreachable {
        /// The ingress's address, without credentials.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The ingress answered with an error (its JSON error, when it sent one).
    #[error("{status}: {detail}")]
    Refused {
        /// The HTTP status.
        status: StatusCode,
        /// `code`, the field at fault and the message, from the ingress's JSON error.
        detail: String,
    },
    /// The job finished, but did not succeed (`submit --wait`).
    #[error("job {id} ended {status}")]
    JobFailed {
        /// The job.
        id: String,
        /// `dead` or `cancelled`.
        status: String,
    },
    /// The ingress answered something that is not the JSON it documents.
    #[error("unexpected answer from the ingress: {0}")]
    Unexpected(String),
}

impl CliError {
    /// The exit code of this class of failure (documented in `surge --help`).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Unexpected(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Refused { status, .. } => match status.as_u16() {
                401 => 5,
                404 => 4,
                s if s >= 500 => 6,
                _ => 3,
            },
            CliError::Unreachable { .. } => 6,
            CliError::JobFailed { .. } => 7,
        }
    }
}

/// A client of one ingress.
pub struct Client {
    base: Url,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the ingress at `url` (`http://host:port`), sending `api_key` when given.
    pub fn new(url: &str, api_key: Option<String>, timeout: Duration) -> Result<Client, CliError> {
        let base = Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                CliError::Usage(
                    "SURGE_URL / --url is not an http(s) URL like http://127.0.0.1:8080".into(),
                )
            })?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| CliError::Unexpected(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            base,
            api_key: api_key.filter(|k| !k.is_empty()),
            http,
        })
    }

    /// The ingress's address as shown to people: no user, password, path or query.
    fn shown(&self) -> String {
        let host = self.base.host_str().unwrap_or("?");
        match self.base.port() {
            Some(port) => format!("{}://{host}:{port}", self.base.scheme()),
            None => format!("{}://{host}", self.base.scheme()),
        }
    }

    /// Sends `method path?query` with an optional JSON `body` and extra `headers`; the
    /// answer's status and JSON body on success (2xx).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<(StatusCode, Value), CliError> {
        let mut url = self.base.clone();
        url.set_path(path);
        url.set_query(None);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut request = self.http.request(method, url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| CliError::Unreachable {
            url: self.shown(),
            reason: describe(&e),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| CliError::Unreachable {
            url: self.shown(),
            reason: describe(&e),
        })?;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return json
                .map(|v| (status, v))
                .ok_or_else(|| CliError::Unexpected(format!("{status} without a JSON body")));
        }
        Err(CliError::Refused {
            status,
            detail: json.as_ref().map_or_else(
                || {
                    String::from_utf8_lossy(&bytes)
                        .trim()
                        .chars()
                        .take(200)
                        .collect()
                },
                error_detail,
            ),
        })
    }
}

/// `code (field): message` from the ingress's `{"error": {...}}`.
fn error_detail(body: &Value) -> String {
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or("error");
    let message = error["message"].as_str().unwrap_or("");
    match error["field"].as_str() {
        Some(field) if !field.is_empty() => format!("{code} ({field}): {message}"),
        _ => format!("{code}: {message}"),
    }
}

/// reqwest's error without the URL it carries (it may hold credentials).
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".into();
    }
    if error.is_connect() {
        return "connection refused or unreachable".into();
    }
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "the ingress");
    }
    text
}
