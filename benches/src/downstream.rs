//! A stand-in for the service Surge protects: "an API that handles only `limit` requests
//! at a time". Every `POST /work` holds one of `limit` slots for `work` (the job's
//! duration), then answers `200` with a small JSON body; a request that finds every slot
//! taken is refused at once with `503` and `Retry-After: 1`, as an overloaded API does.
//!
//! It measures itself, so the demo's claims about it come from the service's own view, not
//! from Surge's: requests served and refused, the peak of requests in flight, and a
//! timeline of in-flight requests stamped on every change.
//!
//! With `work` zero and no timeline it is also the benchmark's "target that answers at
//! once" (see `scenarios::dispatch`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The path jobs are POSTed to.
pub const WORK_PATH: &str = "/work";

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct DownstreamConfig {
    /// Requests handled at once at most; the next one is answered 503 at once.
    pub limit: usize,
    /// Time each accepted request takes.
    pub work: Duration,
    /// Record the in-flight timeline (two entries per request).
    pub timeline: bool,
}

/// What the service saw since it started or was last [reset](Downstream::reset).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DownstreamStats {
    /// Requests answered 200.
    pub served: u64,
    /// Requests refused with 503.
    pub refused: u64,
    /// Requests whose client went away before the answer (none expected).
    pub abandoned: u64,
    /// Most requests in flight at once.
    pub peak: usize,
    /// `(seconds since the start or reset, requests in flight)` at every change, in order.
    pub timeline: Vec<(f64, usize)>,
}

struct Counters {
    epoch: Instant,
    in_flight: usize,
    stats: DownstreamStats,
}

struct Shared {
    config: DownstreamConfig,
    counters: Mutex<Counters>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Counters> {
        // A panic while holding the lock cannot leave the counters half-updated in a way
        // that matters more than losing them: keep going with what is there.
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, counters: &mut Counters) {
        if self.config.timeline {
            let at = counters.epoch.elapsed().as_secs_f64();
            let now = counters.in_flight;
            counters.stats.timeline.push((at, now));
        }
    }
}

/// One slot taken; given back when the request ends, however it ends.
struct Slot {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let mut counters = shared.lock();
        counters.in_flight -= 1;
        if self.done {
            counters.stats.served += 1;
        } else {
            counters.stats.abandoned += 1;
        }
        shared.record(&mut counters);
    }
}

/// The running service. [`Downstream::stop`] shuts it down.
pub struct Downstream {
    /// Where it listens (127.0.0.1, an ephemeral port).
    pub address: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Downstream {
    /// Starts the service on `127.0.0.1:0`.
    pub async fn start(config: DownstreamConfig) -> anyhow::Result<Downstream> {
        let shared = Arc::new(Shared {
            config,
            counters: Mutex::new(Counters {
                epoch: Instant::now(),
                in_flight: 0,
                stats: DownstreamStats::default(),
            }),
        });
        let router = Router::new()
            .route(WORK_PATH, post(work))
            .with_state(shared.clone());
        // A long accept queue, as the ingress has: the demo's burst connects all at once.
        let listener = surge_producer::server::bind(([127, 0, 0, 1], 0).into())?;
        let address = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "the downstream service stopped with an error");
            }
        });
        Ok(Downstream {
            address,
            shared,
            stop,
            task,
        })
    }

    /// The URL jobs are POSTed to.
    pub fn url(&self) -> String {
        format!("http://{}{WORK_PATH}", self.address)
    }

    /// The limit it was started with.
    pub fn limit(&self) -> usize {
        self.shared.config.limit
    }

    /// What it saw so far.
    pub fn stats(&self) -> DownstreamStats {
        self.shared.lock().stats.clone()
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Forgets what it saw and restarts the timeline's clock (requests still in flight
    /// stay counted as in flight).
    pub fn reset(&self) {
        let mut counters = self.shared.lock();
        counters.epoch = Instant::now();
        counters.stats = DownstreamStats {
            peak: counters.in_flight,
            ..DownstreamStats::default()
        };
        self.shared.record(&mut counters);
    }

    /// Stops listening and waits for the server task (open requests are finished first).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn work(State(shared): State<Arc<Shared>>) -> Response {
    let slot = {
        let mut counters = shared.lock();
        if counters.in_flight >= shared.config.limit {
            counters.stats.refused += 1;
            None
        } else {
            counters.in_flight += 1;
            counters.stats.peak = counters.stats.peak.max(counters.in_flight);
            shared.record(&mut counters);
            Some(Slot {
                shared: shared.clone(),
                done: false,
            })
        }
    };
    let Some(mut slot) = slot else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "busy: this API handles only so many requests at a time\n",
        )
            .into_response();
    };
    if !shared.config.work.is_zero() {
        tokio::time::sleep(shared.config.work).await;
    }
    // Give the slot back before answering: a client that gets the answer and sends its
    // next request at once must find the slot free, as with a real server's worker pool.
    slot.done = true;
    drop(slot);
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(
            "{{\"worked_ms\":{}}}",
            shared.config.work.as_millis().min(u128::from(u64::MAX))
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_the_limit_and_counts_itself() {
        let service = Downstream::start(DownstreamConfig {
            limit: 2,
            work: Duration::from_secs(2),
            timeline: true,
        })
        .await
        .unwrap();
        let client = reqwest::Client::new();
        let url = service.url();
        let held = (0..2).map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { client.post(url).send().await.unwrap().status() })
        });
        let held: Vec<_> = held.collect();
        // Both slots taken (held for 2 s): the next requests are refused at once.
        while service.in_flight() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..3 {
            let busy = client.post(&url).send().await.unwrap();
            assert_eq!(busy.status(), 503);
            assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        }
        for answer in held {
            assert_eq!(answer.await.unwrap(), 200);
        }
        let stats = service.stats();
        assert_eq!((stats.served, stats.refused, stats.peak), (2, 3, 2));
        assert_eq!(stats.timeline.last().map(|p| p.1), Some(0));
        assert_eq!(stats.timeline.iter().map(|p| p.1).max(), Some(2));
        service.reset();
        let stats = service.stats();
        assert_eq!((stats.served, stats.refused, stats.peak), (0, 0, 0));
        service.stop().await;
    }
}
