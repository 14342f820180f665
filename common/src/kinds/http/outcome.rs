//! What an attempt's answer (or failure to get one) means: the job's outcome, the class
//! counted in metrics, and what the adaptive limit and the breaker learn from it.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::aimd::Signal;
use super::request::Answer;
use super::retry_after;
use crate::kinds::JobError;

/// Most characters of a body quoted in an error message.
pub const EXCERPT_CHARS: usize = 200;

/// An attempt, judged.
#[derive(Debug)]
pub struct Verdict {
    /// The job's outcome.
    pub result: Result<Value, JobError>,
    /// For metrics: 2xx | 3xx | 4xx | 408 | 429 | 5xx | timeout | connection.
    pub class: &'static str,
    /// For the adaptive limit.
    pub signal: Signal,
    /// For the breaker: a retryable failure.
    pub failed: bool,
    /// The target asked to pause the kind this long: a `429` or `503` with a
    /// `Retry-After` above zero.
    pub pause: Option<Duration>,
}

/// Judges an answer. `max_wait` bounds a `Retry-After`.
pub fn from_answer(answer: Answer, max_wait: Duration) -> Verdict {
    let status = answer.status;
    let code = status.as_u16();
    if status.is_success() {
        return Verdict {
            result: Ok(result_body(&answer)),
            class: "2xx",
            signal: Signal::Success,
            failed: false,
            pause: None,
        };
    }
    let excerpt = excerpt(&answer.body, answer.truncated);
    let what = if excerpt.is_empty() {
        format!("target answered {status}")
    } else {
        format!("target answered {status}: {excerpt}")
    };
    if code == 408 || code == 429 || status.is_server_error() {
        let retry_after = answer
            .retry_after
            .as_ref()
            .and_then(|v| retry_after::parse(v.as_bytes(), SystemTime::now(), max_wait));
        let (class, signal) = match code {
            408 => ("408", Signal::Neutral),
            429 => ("429", Signal::Overload),
            503 => ("5xx", Signal::Overload),
            _ => ("5xx", Signal::Neutral),
        };
        let pause = retry_after.filter(|wait| (code == 429 || code == 503) && !wait.is_zero());
        return Verdict {
            result: Err(JobError::Retryable {
                message: what,
                retry_after,
            }),
            class,
            signal,
            failed: true,
            pause,
        };
    }
    let (class, what) = if status.is_redirection() {
        (
            "3xx",
            format!("{what} (redirects are not followed: set the kind's url to the final address)"),
        )
    } else {
        ("4xx", what)
    };
    // The target answered: it is up, so this counts as a success for flow control.
    Verdict {
        result: Err(JobError::Permanent(what)),
        class,
        signal: Signal::Success,
        failed: false,
        pause: None,
    }
}

/// Judges a request that got no (complete) answer: retryable.
pub fn from_error(error: &reqwest::Error) -> Verdict {
    // Without the URL: it is in the configuration already, and may carry a token.
    let (class, signal, message) = if error.is_timeout() {
        (
            "timeout",
            Signal::Overload,
            "the request timed out".to_owned(),
        )
    } else if error.is_connect() {
        (
            "connection",
            Signal::Neutral,
            format!("could not connect: {}", source_chain(error)),
        )
    } else {
        (
            "connection",
            Signal::Neutral,
            format!("the request failed: {}", source_chain(error)),
        )
    };
    Verdict {
        result: Err(JobError::retryable(message)),
        class,
        signal,
        failed: true,
        pause: None,
    }
}

/// The error and its causes, without the URL reqwest puts in its own message.
fn source_chain(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    if parts.is_empty() {
        parts.push("unknown error".into());
    }
    parts.join(": ")
}

/// A 2xx body as the job's result: JSON if it parses, else text (lossy UTF-8); empty is
/// `null`; cut at the cap is `{"truncated": true, "bytes": kept, "content_length": declared
/// or null, "body": "<kept bytes as text>"}`.
pub fn result_body(answer: &Answer) -> Value {
    if answer.truncated {
        let mut text = String::from_utf8_lossy(&answer.body).into_owned();
        // Replacement characters can make the text longer than the bytes: cut it too.
        let mut end = answer.body.len().min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        return json!({
            "truncated": true,
            "bytes": answer.body.len(),
            "content_length": answer.content_length,
            "body": text,
        });
    }
    if answer.body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&answer.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.body).into_owned()))
}

/// At most [`EXCERPT_CHARS`] characters of `body`, control characters as spaces, `…` when
/// cut.
pub fn excerpt(body: &[u8], truncated: bool) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cut = truncated || text.chars().nth(EXCERPT_CHARS).is_some();
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    if cut {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    fn answer(status: u16, body: &[u8], truncated: bool) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            retry_after: None,
            body: body.to_vec(),
            truncated,
            content_length: None,
        }
    }

    #[test]
    fn bodies_become_results() {
        let judge = |a| from_answer(a, Duration::from_secs(60)).result.unwrap();
        assert_eq!(judge(answer(200, br#"{"a":1}"#, false)), json!({"a": 1}));
        assert_eq!(judge(answer(201, b"done", false)), json!("done"));
        assert_eq!(judge(answer(204, b"", false)), Value::Null);
        assert_eq!(
            judge(answer(200, b"\xff\xfeok", false)),
            json!("\u{fffd}\u{fffd}ok")
        );
        let cut = judge(answer(200, b"\xff\xff\xffabc", true));
        assert_eq!(cut["truncated"], json!(true));
        assert!(cut["body"].as_str().unwrap().len() <= 6);
    }

    #[test]
    fn only_429_and_503_with_a_retry_after_pause_the_kind() {
        let judge = |status: u16, retry_after: Option<&'static str>| {
            let mut a = answer(status, b"", false);
            a.retry_after = retry_after.map(reqwest::header::HeaderValue::from_static);
            from_answer(a, Duration::from_secs(60)).pause
        };
        assert_eq!(judge(429, Some("5")), Some(Duration::from_secs(5)));
        assert_eq!(
            judge(503, Some("600")),
            Some(Duration::from_secs(60)),
            "clamped"
        );
        assert_eq!(judge(429, Some("0")), None, "zero: retried as before");
        assert_eq!(judge(429, None), None);
        assert_eq!(judge(429, Some("soon")), None);
        assert_eq!(judge(500, Some("5")), None);
        assert_eq!(judge(408, Some("5")), None);
        assert_eq!(judge(200, Some("5")), None);
    }

    #[test]
    fn excerpts_are_short_and_clean() {
        let long = "x".repeat(1000);
        let e = excerpt(long.as_bytes(), false);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(excerpt(b"bad\r\nfield\x00", false), "bad  field");
        assert_eq!(excerpt(b"", false), "");
    }
}
