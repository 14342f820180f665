//! Load generation: open loop (a fixed arrival rate) and closed loop (a burst, or `K`
//! clients each sending back to back).
//!
//! **Open loop and coordinated omission.** Request `i` is *due* at `t0 + i / rate`,
//! whatever happened to the earlier ones, and its latency is measured from that intended
//! time, not from when it was actually written. A stalled server therefore shows up as the
//! queueing delay every client would have seen, instead of silently slowing the generator
//! down (Gil Tene's "coordinated omission"). Send times come from a dedicated OS thread
//! sleeping with `nanosleep` (tens of µs of slack, where tokio's timer wheel has 1 ms), and
//! how late each request actually left is reported separately as the generator's *lag*.
//!
//! Latencies go into HdrHistograms (µs, 3 significant digits).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use surge_common::clock::now_micros;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::http::{Pool, Request};

/// Give up on one request after this long (it counts as failed).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One accepted job: its id, when it was due and when its `202` arrived (µs since the
/// epoch).
#[derive(Debug, Clone, Copy)]
pub struct AcceptedJob {
    /// The id the ingress returned.
    pub id: Uuid,
    /// When the request was due (open loop) or the burst started (closed loop).
    pub intended_us: i64,
    /// When the `202` was read.
    pub accepted_us: i64,
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Requests sent.
    pub sent: u64,
    /// `202` answers.
    pub accepted: u64,
    /// Other answers, by status.
    pub rejected: BTreeMap<u16, u64>,
    /// No answer (connection error or timeout).
    pub failed: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Latency of every answer, µs, from the intended send time.
    pub latency: Histogram<u64>,
    /// How late requests left the generator, µs (open loop; 0 otherwise).
    pub lag: Histogram<u64>,
    /// Every accepted job.
    pub jobs: Vec<AcceptedJob>,
    /// From the first intended send to the last answer.
    pub elapsed: Duration,
    /// When the first send was due, µs since the epoch.
    pub start_us: i64,
    /// Connections the pool opened while this run was measured.
    pub connections_opened: u64,
}

impl LoadResult {
    fn new() -> LoadResult {
        LoadResult {
            sent: 0,
            accepted: 0,
            rejected: BTreeMap::new(),
            failed: 0,
            first_error: None,
            latency: histogram(),
            lag: histogram(),
            jobs: Vec::new(),
            elapsed: Duration::ZERO,
            start_us: 0,
            connections_opened: 0,
        }
    }

    fn add(&mut self, outcome: Outcome) {
        self.sent += 1;
        self.lag.saturating_record(outcome.lag_us);
        match outcome.answer {
            Ok((status, id)) => {
                self.latency.saturating_record(outcome.latency_us);
                if status == 202 {
                    self.accepted += 1;
                    if let Some(id) = id {
                        self.jobs.push(AcceptedJob {
                            id,
                            intended_us: outcome.intended_us,
                            accepted_us: outcome.intended_us + outcome.latency_us as i64,
                        });
                    }
                } else {
                    *self.rejected.entry(status).or_default() += 1;
                }
            }
            Err(error) => {
                self.failed += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }

    /// Requests not answered `202`.
    pub fn not_accepted(&self) -> u64 {
        self.rejected.values().sum::<u64>() + self.failed
    }

    /// Answers per second over the run.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Accept latency at quantile `q`, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A histogram of microseconds up to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

struct Outcome {
    intended_us: i64,
    latency_us: u64,
    lag_us: u64,
    answer: Result<(u16, Option<Uuid>), String>,
}

async fn one(pool: &Pool, request: &[u8], due: Instant, intended_us: i64) -> Outcome {
    let lag_us = due.elapsed().as_micros() as u64;
    let answer = match tokio::time::timeout(REQUEST_TIMEOUT, pool.send(request)).await {
        Ok(Ok(response)) => Ok((response.status, response.job_id())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    };
    Outcome {
        intended_us,
        latency_us: due.elapsed().as_micros() as u64,
        lag_us,
        answer,
    }
}

/// Sends `request` at `rate` per second for `duration` (open loop; see the module docs)
/// and waits for every answer. `label` names the progress line on stderr (`None`: quiet).
pub async fn open_loop(
    pool: &Arc<Pool>,
    request: &Request,
    rate: f64,
    duration: Duration,
    label: Option<&str>,
) -> LoadResult {
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let opened_before = pool.opened();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outcome>();
    let runtime = tokio::runtime::Handle::current();
    // Start a little in the future so the first sends are not already late.
    let t0 = Instant::now() + Duration::from_millis(5);
    let wall0 = now_micros() + 5_000;
    let scheduler = {
        let pool = pool.clone();
        let request = request.clone();
        std::thread::Builder::new()
            .name("surge-bench-scheduler".into())
            .spawn(move || {
                for i in 0..total {
                    let offset = Duration::from_secs_f64(i as f64 / rate);
                    let due = t0 + offset;
                    let now = Instant::now();
                    if due > now + Duration::from_micros(20) {
                        std::thread::sleep(due - now);
                    }
                    let (pool, request, tx) = (pool.clone(), request.clone(), tx.clone());
                    let intended_us = wall0 + offset.as_micros() as i64;
                    runtime.spawn(async move {
                        let _ = tx.send(one(&pool, &request, due, intended_us).await);
                    });
                }
            })
            .expect("spawning the scheduler thread")
    };
    let mut result = LoadResult::new();
    result.start_us = wall0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while result.sent < total {
        tokio::select! {
            outcome = rx.recv() => match outcome {
                Some(outcome) => result.add(outcome),
                None => break,
            },
            _ = ticker.tick() => if let Some(label) = label {
                progress(label, &result, total, t0);
            },
        }
    }
    let _ = scheduler.join();
    result.elapsed = t0.elapsed();
    result.connections_opened = pool.opened() - opened_before;
    if let Some(label) = label {
        progress(label, &result, total, t0);
        eprintln!();
    }
    result
}

/// Sends `n` requests at once, each on its own (pre-warmed) connection, and waits for every
/// answer. Latency runs from the burst's start: that is when every client meant to send.
pub async fn burst(pool: &Arc<Pool>, request: &Request, n: usize) -> LoadResult {
    let opened_before = pool.opened();
    let t0 = Instant::now();
    let wall0 = now_micros();
    let sends: Vec<_> = (0..n)
        .map(|_| {
            let (pool, request) = (pool.clone(), request.clone());
            tokio::spawn(async move { one(&pool, &request, t0, wall0).await })
        })
        .collect();
    let mut result = LoadResult::new();
    result.start_us = wall0;
    for send in sends {
        match send.await {
            Ok(outcome) => result.add(outcome),
            Err(e) => {
                result.sent += 1;
                result.failed += 1;
                result.first_error.get_or_insert(e.to_string());
            }
        }
    }
    result.elapsed = t0.elapsed();
    result.connections_opened = pool.opened() - opened_before;
    result
}

/// `clients` connections each sending `request` back to back for `duration` (closed loop:
/// the most the server answers with that many requests outstanding). Latency runs from
/// each actual send; ids are not kept.
pub async fn closed_loop(
    pool: &Arc<Pool>,
    request: &Request,
    clients: usize,
    duration: Duration,
) -> LoadResult {
    let opened_before = pool.opened();
    let t0 = Instant::now();
    let wall0 = now_micros();
    let deadline = t0 + duration;
    let loops: Vec<_> = (0..clients)
        .map(|_| {
            let (pool, request) = (pool.clone(), request.clone());
            tokio::spawn(async move {
                let mut mine = LoadResult::new();
                while Instant::now() < deadline {
                    let mut outcome = one(&pool, &request, Instant::now(), 0).await;
                    if let Ok((_, id)) = &mut outcome.answer {
                        *id = None;
                    }
                    mine.add(outcome);
                }
                mine
            })
        })
        .collect();
    let mut result = LoadResult::new();
    result.start_us = wall0;
    for handle in loops {
        if let Ok(mine) = handle.await {
            result.sent += mine.sent;
            result.accepted += mine.accepted;
            result.failed += mine.failed;
            for (status, n) in mine.rejected {
                *result.rejected.entry(status).or_default() += n;
            }
            if result.first_error.is_none() {
                result.first_error = mine.first_error;
            }
            let _ = result.latency.add(&mine.latency);
        }
    }
    result.elapsed = t0.elapsed();
    result.connections_opened = pool.opened() - opened_before;
    result
}

fn progress(label: &str, result: &LoadResult, total: u64, t0: Instant) {
    eprint!(
        "\r    {label}: {:>5.1}s  answered {:>7}/{total}  accepted {:>7}  errors {:>5}   ",
        t0.elapsed().as_secs_f64(),
        result.sent,
        result.accepted,
        result.not_accepted(),
    );
    let _ = std::io::stderr().flush();
}
