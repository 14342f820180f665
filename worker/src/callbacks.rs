//! Delivers outcome callbacks: when a job with a `callback_url` succeeds or dies, its
//! outcome is POSTed there, signed, retried with backoff, at least once.
//!
//! The runner queues a callback in the database (`surge_common::storage::callbacks`)
//! before it acks the job; this sender, a task of its own, claims due callbacks and POSTs
//! them, so a slow or dead receiver never holds up the next job.
//!
//! Each POST carries:
//! - `Surge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, keyed with
//!   `--callback-secret` (`SURGE_CALLBACK_SECRET`): the receiver recomputes it, compares in
//!   constant time, and refuses a `t` more than 5 minutes from its clock (a replayed
//!   request);
//! - `Idempotency-Key: <job id>:<n>`, the job's n-th outcome (1, then 2 after a replay,
//!   …): a callback may arrive more than once, dedupe on it; each outcome has its own.
//!
//! A 2xx answer delivers it; anything else (a redirect too: redirects are never followed,
//! they could re-send the signed body elsewhere), or no answer within [`TIMEOUT`], is tried
//! again after a doubling delay (1 s up to 1 h), [`MAX_TRIES`] times in all (about a day),
//! then left undelivered with its last error.
//!
//! Callbacks only reach public addresses and the internal receivers `--callback-allow`
//! names ([`surge_common::netpolicy`]): checked on the address actually connected to (the
//! client's resolver drops the others, so DNS rebinding does not get round it), and on an
//! address literal before sending. No proxy is used (it would resolve the name itself).
//! Errors never carry the URL (it may hold credentials) nor the address.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use surge_common::clock::now_micros;
use surge_common::config::Secret;
use surge_common::netpolicy::{AddressPolicy, PolicyResolver, Refused};
use surge_common::storage::callbacks::PendingCallback;
use surge_common::storage::{JobResult, Storage};
use tokio::task::JoinHandle;

/// How long one POST may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Tries in all before a callback is given up.
pub const MAX_TRIES: u32 = 30;
/// How long a claim keeps other senders off a callback.
const LEASE: Duration = Duration::from_secs(60);
/// Pause when nothing is due.
const IDLE: Duration = Duration::from_millis(250);
/// Most callbacks claimed, and sent concurrently, at once.
const BATCH: u32 = 32;

/// The JSON POSTed for a finished job.
pub fn body(row: &JobResult) -> Value {
    json!({
        "id": row.job_id,
        "kind": row.kind,
        "status": row.status.as_str(),
        "result": row.result,
        "error": row.error,
        "attempts": row.attempts,
        "finished_at_us": row.finished_at_us,
    })
}

/// `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &Secret, timestamp: i64, body: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The HTTP client callbacks are sent with: connects only to addresses `resolver` hands
/// out, never through a proxy, never follows a redirect, gives up after [`TIMEOUT`].
pub fn client(resolver: PolicyResolver) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(resolver))
        .build()
}

/// Starts the sender, delivering to what `targets` allows. Abort the handle to stop it.
pub fn spawn(
    storage: Storage,
    secret: Option<Secret>,
    targets: Arc<AddressPolicy>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let client = match client(PolicyResolver::new(targets.clone())) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %describe(e), "cannot build the callback HTTP client; callbacks wait undelivered");
                return;
            }
        };
        let sender = Sender { client, targets };
        let mut warned = false;
        loop {
            let sent = send_due(&storage, &sender, secret.as_ref(), &mut warned).await;
            if sent < BATCH as usize {
                tokio::time::sleep(IDLE).await;
            }
        }
    })
}

/// What a delivery goes through.
#[derive(Debug, Clone)]
pub struct Sender {
    /// Built by [`client`].
    pub client: reqwest::Client,
    /// The addresses allowed (literal addresses bypass the client's resolver).
    pub targets: Arc<AddressPolicy>,
}

/// Claims due callbacks and sends them; returns how many were claimed.
async fn send_due(
    storage: &Storage,
    sender: &Sender,
    secret: Option<&Secret>,
    warned: &mut bool,
) -> usize {
    let Some(secret) = secret else {
        // Nothing is signed without the key: leave the callbacks to a worker that has it.
        if !*warned && matches!(storage.callbacks_due().await, Ok(true)) {
            tracing::error!("jobs with a callback_url finished but this worker has no --callback-secret (SURGE_CALLBACK_SECRET): their callbacks wait undelivered");
            *warned = true;
        }
        return 0;
    };
    let lease_us = i64::try_from(LEASE.as_micros()).unwrap_or(i64::MAX);
    let due = match storage.claim_callbacks(lease_us, BATCH).await {
        Ok(due) => due,
        Err(e) => {
            tracing::warn!(error = %e, "reading due callbacks failed");
            return 0;
        }
    };
    let claimed = due.len();
    futures::stream::iter(due)
        .for_each_concurrent(None, |callback| async move {
            let outcome = deliver(sender, secret, &callback).await;
            let settled = match outcome {
                Ok(()) => storage.callback_delivered(&callback.key).await,
                Err(Failed { error, last }) => {
                    let tries = callback.attempts.saturating_add(1);
                    let next = if last || tries >= MAX_TRIES {
                        tracing::error!(job_id = %callback.job_id, key = %callback.key, %error, tries, "callback given up");
                        i64::MAX
                    } else {
                        tracing::info!(job_id = %callback.job_id, key = %callback.key, %error, tries, "callback failed; trying again later");
                        now_micros() + backoff_us(tries)
                    };
                    storage.callback_failed(&callback.key, &error, next).await
                }
            };
            if let Err(e) = settled {
                // The claim ends by itself: the callback is sent again (at least once).
                tracing::warn!(error = %e, "recording a callback's outcome failed");
            }
        })
        .await;
    claimed
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    /// A short reason, never the URL nor the address (no response body either: it may be
    /// large).
    pub error: String,
    /// Trying again would not help (the target is refused, or not a URL): give it up.
    pub last: bool,
}

impl Failed {
    fn retry(error: String) -> Failed {
        Failed { error, last: false }
    }

    fn last(error: String) -> Failed {
        Failed { error, last: true }
    }
}

/// One POST.
pub async fn deliver(
    sender: &Sender,
    secret: &Secret,
    callback: &PendingCallback,
) -> Result<(), Failed> {
    let url = surge_common::job::parse_http_url(&callback.url).map_err(Failed::last)?;
    // An address literal is connected to without resolving: checked here.
    sender
        .targets
        .check_url(&url)
        .map_err(|refused| Failed::last(refused.to_string()))?;
    let timestamp = now_micros() / 1_000_000;
    let response = sender
        .client
        .post(url)
        .header("content-type", "application/json")
        .header(
            "Surge-Signature",
            signature(secret, timestamp, &callback.body),
        )
        .header("Idempotency-Key", &callback.key)
        .body(callback.body.clone())
        .send()
        .await
        .map_err(|e| {
            // Every address the name resolved to was refused by the client's resolver.
            let refused = chain(&e).any(|cause| cause.is::<Refused>());
            let error = format!("request failed: {}", describe(e));
            if refused {
                Failed::last(error)
            } else {
                Failed::retry(error)
            }
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        Err(Failed::retry(format!(
            "receiver answered {status} (redirects are not followed)"
        )))
    } else {
        Err(Failed::retry(format!("receiver answered {status}")))
    }
}

/// The causes of `error`, outermost first.
fn chain(error: &reqwest::Error) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(error), |e| e.source())
}

/// `error` and its causes, without the URL reqwest puts in its own message (it may carry
/// credentials in its user info or query).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    std::iter::once(error.to_string())
        .chain(chain(&error).map(ToString::to_string))
        .collect::<Vec<_>>()
        .join(": ")
}

/// 1 s doubling per try, at most 1 h.
fn backoff_us(tries: u32) -> i64 {
    let seconds = 1i64 << tries.min(12);
    seconds.min(3600) * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        let secret: Secret = "0123456789abcdef".parse().unwrap();
        // Computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac 0123456789abcdef
        assert_eq!(
            signature(&secret, 1_700_000_000, "{}"),
            "t=1700000000,v1=e4f8e2ecae2295b2ddb2f0b5584c8275e226c0ebe9b3b819e70156bb67122e3e"
        );
    }

    /// A loopback HTTP server answering every request with `status` (and a `Location` to
    /// `location`, if given); counts what it received.
    async fn server(
        status: u16,
        location: Option<String>,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU32>) {
        use std::sync::atomic::{AtomicU32, Ordering};
        let hits = Arc::new(AtomicU32::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let hits = counted.clone();
            let location = location.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let mut response = axum::http::Response::builder().status(status);
                if let Some(location) = location {
                    response = response.header("location", location);
                }
                response.body(axum::body::Body::empty()).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (address, hits)
    }

    fn hits(counter: &std::sync::atomic::AtomicU32) -> u32 {
        counter.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A sender whose resolver answers every name with 127.0.0.1 (as a rebinding DNS
    /// server would), allowing `allow`.
    fn rebinding_sender(allow: &[&str]) -> Sender {
        let targets = Arc::new(AddressPolicy::new(
            allow.iter().map(|entry| entry.parse().unwrap()),
        ));
        let lookup: surge_common::netpolicy::Lookup = Arc::new(|_host: String| {
            Box::pin(async { Ok(vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))]) })
        });
        Sender {
            client: client(PolicyResolver::with_lookup(targets.clone(), lookup)).unwrap(),
            targets,
        }
    }

    fn pending(url: String) -> PendingCallback {
        PendingCallback {
            key: "0190a6b4-0000-7000-8000-000000000000:1".into(),
            job_id: uuid::Uuid::nil(),
            url,
            body: "{}".into(),
            attempts: 0,
        }
    }

    fn secret() -> Secret {
        "0123456789abcdef".parse().unwrap()
    }

    /// The check is on the address connected to: a public-looking name that resolves to
    /// loopback is refused (given up, nothing sent) unless loopback is allowed.
    #[tokio::test]
    async fn names_resolving_to_internal_addresses_are_refused_when_connecting() {
        let (address, received) = server(200, None).await;
        let url = format!("http://hooks.example.com:{}/hook", address.port());
        let failed = deliver(&rebinding_sender(&[]), &secret(), &pending(url.clone()))
            .await
            .unwrap_err();
        assert!(failed.last, "{failed:?}");
        assert!(failed.error.contains("not a public address"), "{failed:?}");
        assert_eq!(hits(&received), 0);
        deliver(
            &rebinding_sender(&["127.0.0.1/32"]),
            &secret(),
            &pending(url.clone()),
        )
        .await
        .unwrap();
        assert_eq!(hits(&received), 1);
        // Or allowed by name.
        deliver(
            &rebinding_sender(&["hooks.example.com"]),
            &secret(),
            &pending(url),
        )
        .await
        .unwrap();
        assert_eq!(hits(&received), 2);
    }

    /// Address literals never reach the resolver: they are checked before sending.
    #[tokio::test]
    async fn internal_address_literals_are_refused_before_sending() {
        let (address, received) = server(200, None).await;
        for url in [
            format!("http://{address}/hook"),
            format!("http://localhost:{}/hook", address.port()),
        ] {
            let failed = deliver(&rebinding_sender(&[]), &secret(), &pending(url))
                .await
                .unwrap_err();
            assert!(failed.last, "{failed:?}");
        }
        assert_eq!(hits(&received), 0);
    }

    /// A redirect is a failed delivery (tried again later), never followed: the signed
    /// body does not go to the second server.
    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (elsewhere, followed) = server(200, None).await;
        for status in [301, 302, 307, 308] {
            let (address, received) =
                server(status, Some(format!("http://{elsewhere}/stolen"))).await;
            let failed = deliver(
                &rebinding_sender(&["127.0.0.1/32"]),
                &secret(),
                &pending(format!("http://{address}/hook")),
            )
            .await
            .unwrap_err();
            assert!(!failed.last, "{failed:?}");
            assert!(failed.error.contains(&status.to_string()), "{failed:?}");
            assert!(failed.error.contains("not followed"), "{failed:?}");
            assert_eq!(hits(&received), 1);
        }
        assert_eq!(hits(&followed), 0);
    }

    /// Errors never show the URL: no user info, query, host or port.
    #[tokio::test]
    async fn errors_never_show_the_url() {
        // A port nothing listens on: bound, then closed.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("http://cb-user:cb-pass@127.0.0.1:{port}/secret-path?token=t0ps3cret");
        let failed = deliver(
            &rebinding_sender(&["127.0.0.1/32"]),
            &secret(),
            &pending(url),
        )
        .await
        .unwrap_err();
        assert!(!failed.last, "{failed:?}");
        assert!(failed.error.starts_with("request failed"), "{failed:?}");
        for leak in [
            "cb-user",
            "cb-pass",
            "t0ps3cret",
            "secret-path",
            "127.0.0.1",
            &port.to_string(),
        ] {
            assert!(!failed.error.contains(leak), "{failed:?} shows {leak}");
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_us(1), 2_000_000);
        assert_eq!(backoff_us(30), 3_600_000_000);
    }
}
