//! Helpers for tests that need real services (RabbitMQ, Kafka, PostgreSQL).
//!
//! A test asks for a service by environment variable. With the variable set, the test runs
//! against it (and fails if it is unreachable). Without it, the test fails when `CI=true`
//! — in CI a missing service is an error, never a skip — and otherwise is skipped.
//!
//! Skipped means *reported as ignored* by the test runner, not passed: each service test
//! carries, e.g.,
//! `#[cfg_attr(not(surge_amqp), ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)")]`,
//! and the crate's build script (`build/test_services.rs`, shared by every crate) sets
//! `cfg(surge_amqp)`, `cfg(surge_kafka)`, `cfg(surge_postgres)` when the variable is set
//! or `CI=true`. [`service`] is the run-time half: it reads the variable, panics in CI when
//! it is missing, and prints a loud notice and skips when an ignored test is run anyway
//! (`--include-ignored`) without it.

use uuid::Uuid;

/// RabbitMQ URL for tests, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub const AMQP_URL_VAR: &str = "SURGE_TEST_AMQP_URL";
/// Kafka bootstrap servers for tests, e.g. `127.0.0.1:9092`.
pub const KAFKA_BROKERS_VAR: &str = "SURGE_TEST_KAFKA_BROKERS";
/// PostgreSQL URL for tests, e.g. `postgres://postgres@127.0.0.1:5432/test`.
pub const POSTGRES_URL_VAR: &str = "SURGE_TEST_POSTGRES_URL";

/// Whether this run is CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(
        std::env::var("CI").as_deref(),
        Ok("true") | Ok("1") | Ok("TRUE")
    )
}

/// The value of `var`, or `None` (skip) outside CI. Panics in CI when it is missing.
pub fn service(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Some(value),
        _ if in_ci() => panic!("CI=true but {var} is not set: this test needs {what}"),
        _ => {
            eprintln!(
                "\n!!!!! SKIPPED: this test needs {what}; set {var} to run it \
                 (scripts/test.sh sets it for you) !!!!!\n"
            );
            None
        }
    }
}

/// A name no other test run uses, e.g. `surge-test-<prefix>-<uuid>`.
pub fn unique_name(prefix: &str) -> String {
    format!("surge-test-{prefix}-{}", Uuid::new_v4().simple())
}

/// A fresh PostgreSQL database for one test, next to `SURGE_TEST_POSTGRES_URL`'s: its URL,
/// or `None` when PostgreSQL is not configured outside CI (see [`service`]: in CI a
/// missing one fails). Panics when the database cannot be created.
pub async fn fresh_postgres() -> Option<String> {
    let base = service(POSTGRES_URL_VAR, "PostgreSQL")?;
    Some(
        fresh_postgres_database(&base)
            .await
            .expect("a fresh PostgreSQL database"),
    )
}

/// Creates a fresh PostgreSQL database next to `base_url`'s and returns its URL.
pub async fn fresh_postgres_database(base_url: &str) -> Result<String, sqlx::Error> {
    use sqlx::Connection;
    let name = format!("surge_test_{}", Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(base_url).await?;
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {name}").as_str()).await?;
    admin.close().await?;
    let (prefix, _) = base_url
        .split_once('?')
        .map_or((base_url, ""), |(p, q)| (p, q));
    let cut = prefix.rfind('/').map_or(prefix.len(), |i| i);
    let authority_ends = prefix.find("://").map_or(0, |i| i + 3);
    let url = if cut > authority_ends {
        format!("{}/{name}", &prefix[..cut])
    } else {
        format!("{prefix}/{name}")
    };
    Ok(url)
}

/// A URL for a fresh SQLite file in the temp folder.
pub fn temp_sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("sqlite")));
    format!("sqlite://{}", path.display())
}

/// Tuning for the Kafka brokers tests open in-process: the defaults, with
/// `SURGE_KAFKA_ASSIGNMENT`, `SURGE_KAFKA_LINGER_MS` and `SURGE_KAFKA_FETCH_WAIT_MS`
/// applied as the binaries read them. So one run of a Kafka test exercises another
/// assignment (`SURGE_KAFKA_ASSIGNMENT=consumer cargo test …`), and the worker processes a
/// test spawns inherit the same variables. Panics on a malformed value (a test set-up
/// error).
pub fn kafka_tuning() -> crate::broker::KafkaTuning {
    let mut tuning = crate::broker::KafkaTuning::default();
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(value) = var("SURGE_KAFKA_ASSIGNMENT") {
        tuning.assignment = value
            .parse()
            .unwrap_or_else(|e| panic!("SURGE_KAFKA_ASSIGNMENT: {e}"));
    }
    let number = |name: &str, default: u32| {
        var(name).map_or(default, |v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
        })
    };
    tuning.linger_ms = number("SURGE_KAFKA_LINGER_MS", tuning.linger_ms);
    tuning.fetch_wait_ms = number("SURGE_KAFKA_FETCH_WAIT_MS", tuning.fetch_wait_ms);
    tuning
}

/// The acceptances of jobs known by id alone (kind `echo`, stamped now): what the ingress
/// records after a publish, for tests that write results of such jobs.
pub fn accepted(ids: &[Uuid]) -> Vec<crate::storage::acceptance::AcceptedJob> {
    let now = crate::clock::now_micros();
    ids.iter()
        .map(|&job_id| crate::storage::acceptance::AcceptedJob {
            job_id,
            kind: "echo".to_owned(),
            enqueued_at_us: now,
        })
        .collect()
}

/// The outcome row of a fresh `echo` job that ended with `status` at `finished_at_us`
/// (a result when it succeeded, an error when it died), for tests that store results.
pub fn finished_row(
    status: crate::storage::JobStatus,
    finished_at_us: i64,
) -> crate::storage::JobResult {
    use crate::storage::JobStatus;
    crate::storage::JobResult {
        job_id: Uuid::now_v7(),
        kind: "echo".into(),
        status,
        result: (status == JobStatus::Succeeded).then(|| serde_json::json!({"ok": true})),
        error: (status == JobStatus::Dead).then(|| "boom".to_owned()),
        attempts: 1,
        deliveries: 1,
        worker: "w".into(),
        enqueued_at_us: finished_at_us - 10,
        started_at_us: finished_at_us - 5,
        finished_at_us,
        job: None,
    }
}
