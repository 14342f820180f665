//! The burst report: what happened, and whether it kept Surge's promises.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Everything the burst measured.
#[derive(Debug, Clone)]
pub struct BurstReport {
    /// Backend name.
    pub broker: String,
    /// Requests fired.
    pub jobs: usize,
    /// Capacity (jobs in flight at most).
    pub capacity: u16,
    /// Duration of one job.
    pub job_ms: u64,
    /// The kind posted.
    pub kind: String,
    /// Requests answered 202.
    pub accepted: usize,
    /// Requests answered otherwise, by status code.
    pub rejected: BTreeMap<u16, usize>,
    /// Requests that got no HTTP answer.
    pub failed: usize,
    /// Accept latency, median.
    pub accept_p50: Duration,
    /// Accept latency, 99th percentile.
    pub accept_p99: Duration,
    /// Accept latency, slowest.
    pub accept_max: Duration,
    /// Time until every request of the burst was answered.
    pub burst_sent: Duration,
    /// Most jobs whose handlers overlapped in time (from stored timestamps).
    pub peak_in_flight: u64,
    /// Peak of the workers' own in-flight gauges.
    pub peak_in_flight_gauge: u64,
    /// From the first request to the last result committed.
    pub drain: Duration,
    /// `ceil(jobs / capacity) × job duration`.
    pub ideal: Duration,
    /// Accepted jobs with a stored result.
    pub persisted: usize,
    /// Stored results with status `succeeded`.
    pub succeeded: usize,
    /// Accepted jobs without one.
    pub lost: usize,
    /// Extra result writes caused by redeliveries (the stored rows stay one per job).
    pub duplicates: u64,
}

impl BurstReport {
    /// Requests not accepted, whatever the reason.
    pub fn not_accepted(&self) -> usize {
        self.rejected.values().sum::<usize>() + self.failed
    }

    /// The promises this run broke; empty when it kept them all.
    pub fn violations(&self) -> Vec<String> {
        let mut broken = Vec::new();
        if self.accepted != self.jobs {
            broken.push(format!(
                "{} of {} requests were not accepted",
                self.not_accepted(),
                self.jobs
            ));
        }
        if self.peak_in_flight > u64::from(self.capacity)
            || self.peak_in_flight_gauge > u64::from(self.capacity)
        {
            broken.push(format!(
                "peak in flight {} exceeded the capacity {}",
                self.peak_in_flight.max(self.peak_in_flight_gauge),
                self.capacity
            ));
        }
        if self.succeeded < self.persisted {
            broken.push(format!(
                "{} stored jobs did not succeed",
                self.persisted - self.succeeded
            ));
        }
        if self.lost > 0 {
            broken.push(format!("{} accepted jobs were lost", self.lost));
        }
        if self.duplicates > 0 {
            broken.push(format!("{} duplicate result writes", self.duplicates));
        }
        broken
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

impl fmt::Display for BurstReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rejected = if self.rejected.is_empty() {
            "0".to_owned()
        } else {
            let parts: Vec<String> = self
                .rejected
                .iter()
                .map(|(status, n)| format!("{n}×{status}"))
                .collect();
            parts.join(", ")
        };
        writeln!(
            f,
            "Surge burst: {} concurrent POSTs against capacity {} ({} broker, {} {} ms jobs)",
            self.jobs, self.capacity, self.broker, self.kind, self.job_ms
        )?;
        writeln!(f, "  accepted           {}", self.accepted)?;
        writeln!(f, "  rejected           {rejected}")?;
        writeln!(f, "  no answer          {}", self.failed)?;
        writeln!(
            f,
            "  accept latency     p50 {}  p99 {}  max {}  (whole burst answered in {})",
            ms(self.accept_p50),
            ms(self.accept_p99),
            ms(self.accept_max),
            ms(self.burst_sent)
        )?;
        writeln!(
            f,
            "  peak in flight     {} (capacity {}; workers' gauge {})",
            self.peak_in_flight, self.capacity, self.peak_in_flight_gauge
        )?;
        writeln!(
            f,
            "  drain time         {} (ideal {} → {:.2}× ideal)",
            ms(self.drain),
            ms(self.ideal),
            self.drain.as_secs_f64() / self.ideal.as_secs_f64().max(f64::EPSILON)
        )?;
        writeln!(
            f,
            "  results persisted  {} ({} succeeded)",
            self.persisted, self.succeeded
        )?;
        writeln!(f, "  lost               {}", self.lost)?;
        writeln!(f, "  duplicates         {}", self.duplicates)?;
        let broken = self.violations();
        if broken.is_empty() {
            write!(
                f,
                "  verdict            OK: every accepted job persisted exactly once"
            )
        } else {
            write!(f, "  verdict            FAILED: {}", broken.join("; "))
        }
    }
}
