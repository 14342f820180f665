//! What the report says about the run itself.

use surge_benches::scenarios::Sizes;

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn notes(sizes: &Sizes) -> Vec<String> {
    vec![
        "Accept latency is measured from the *intended* send time (open loop: `t0 + i/rate`, \
         coordinated omission corrected; burst: the burst's start), HdrHistogram."
            .into(),
        format!(
            "Keep-alive connections are opened and used once before measuring ({} for the \
             burst, {} for open loop, one per client for closed loop), so connection set-up is \
             not counted as accept latency; `conns opened` counts any opened while measuring.",
            sizes.burst_jobs, sizes.prewarm
        ),
        "End-to-end = intended send → result row written (a `clock_timestamp()` default of an \
         extra column in the benchmark's own database, inside the committing transaction); \
         the ack follows the commit."
            .into(),
        "A rate is sustainable when every request got a 202, the answers kept pace (at most \
         max(0.5 s, 10 %) late) and, when the last answer arrived, the backlog was at most \
         max(capacity, 0.5 s of arrivals); between steps the backlog drains."
            .into(),
        "The ingress and every worker are separate processes: CPU s per 1,000 jobs is their \
         /proc utime+stime over the step (workers summed), peak RSS their VmHWM (reset with \
         clear_refs before each step; workers: the largest). `bench` = a broker or database \
         ceiling measured in a child process of its own (getrusage, VmHWM). The servers' CPU \
         (`rabbitmq-server` = beam.smp, `kafka-server` = the Kafka JVM, `postgres` = all its \
         processes) is included; other users of those servers on the machine count too."
            .into(),
        "Memory broker: the workers run inside the ingress process (as surge-producer does), \
         so its scaling rows are capacity × replicas in one process and its ingress-only \
         ceiling still has consumers."
            .into(),
    ]
}
