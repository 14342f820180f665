//! The benchmark harness works: `surge-bench --smoke` runs every scenario on every backend
//! with tiny counts and writes its report. Benchmarks are not tests: nothing here asserts
//! a timing, only the structure of the results (every scenario has rows for every backend,
//! nothing accepted was lost, the files exist).

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;
use surge_common::testing::{self, AMQP_URL_VAR, KAFKA_BROKERS_VAR, POSTGRES_URL_VAR};

fn backends_of(rows: &Value) -> BTreeSet<String> {
    rows.as_array()
        .expect("an array of rows")
        .iter()
        .map(|r| r["backend"].as_str().expect("a backend").to_owned())
        .collect()
}

#[test]
fn smoke_run_covers_every_scenario_and_backend() {
    // In CI every service must be there (testing::service panics otherwise); elsewhere
    // the run covers what is available.
    let mut backends = vec!["memory"];
    let mut command = Command::new(env!("CARGO_BIN_EXE_surge-bench"));
    if let Some(url) = testing::service(AMQP_URL_VAR, "RabbitMQ") {
        backends.push("rabbitmq");
        command.arg("--amqp-url").arg(url);
    }
    if let Some(brokers) = testing::service(KAFKA_BROKERS_VAR, "Kafka") {
        backends.push("kafka");
        command.arg("--kafka-brokers").arg(brokers);
    }
    let engines = match testing::service(POSTGRES_URL_VAR, "PostgreSQL") {
        Some(url) => {
            command
                .arg("--postgres-url")
                .arg(url)
                .arg("--database")
                .arg("postgres");
            vec!["sqlite", "postgres"]
        }
        None => {
            command.arg("--database").arg("sqlite");
            vec!["sqlite"]
        }
    };
    let out = std::env::temp_dir().join(testing::unique_name("bench-smoke"));
    command
        .arg("--smoke")
        .arg("--backends")
        .arg(backends.join(","))
        .arg("--db-ceilings")
        .arg(engines.join(","))
        .arg("--out")
        .arg(&out);
    let started = std::time::Instant::now();
    let output = command.output().expect("running surge-bench");
    println!(
        "surge-bench --smoke took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "surge-bench failed:\n{stderr}");

    for file in [
        "results.md",
        "results.json",
        "burst.svg",
        "latency.svg",
        "scaling.svg",
        "ceilings.svg",
    ] {
        let path = out.join(file);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{} missing or empty", path.display());
    }
    let json: Value = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap())
        .expect("results.json is JSON");
    let want: BTreeSet<String> = backends.iter().map(|b| (*b).to_owned()).collect();
    assert_eq!(
        json["errors"].as_array().map(Vec::len),
        Some(0),
        "{}",
        json["errors"]
    );

    // 1. Burst: a row per backend, every job accepted and stored once.
    assert_eq!(backends_of(&json["burst"]), want, "burst rows");
    for row in json["burst"].as_array().unwrap() {
        assert_eq!(row["accepted"], row["jobs"], "{row}");
        assert_eq!(row["lost"], 0, "{row}");
        assert_eq!(row["duplicates"], 0, "{row}");
        assert!(
            row["peak_in_flight"].as_u64() <= row["capacity"].as_u64(),
            "{row}"
        );
        assert!(!row["timeline"].as_array().unwrap().is_empty(), "{row}");
    }
    // 2. Rate: a ramp and measured steps per backend, nothing lost.
    assert_eq!(backends_of(&json["rate"]), want, "rate rows");
    for summary in json["rate"].as_array().unwrap() {
        let steps = summary["steps"].as_array().unwrap();
        assert!(steps.iter().any(|s| s["phase"] == "ramp"), "{summary}");
        assert!(steps.iter().any(|s| s["phase"] == "measure"), "{summary}");
        for step in steps {
            assert_eq!(step["lost"], 0, "{step}");
        }
    }
    // 3. Scaling: every replica count per backend, nothing lost.
    assert_eq!(backends_of(&json["scaling"]), want, "scaling rows");
    for row in json["scaling"].as_array().unwrap() {
        assert_eq!(row["lost"], 0, "{row}");
        assert!(row["throughput"].as_f64().unwrap() > 0.0, "{row}");
    }
    // 4. Ceilings: HTTP, ingress and broker per backend, database per engine.
    let ceilings = json["ceilings"].as_array().unwrap();
    let has = |subject: &str, starts: &str| {
        ceilings
            .iter()
            .any(|c| c["subject"] == subject && c["ceiling"].as_str().unwrap().starts_with(starts))
    };
    assert!(has("http", "axum handler"), "HTTP ceiling");
    for backend in &backends {
        for what in [
            "ingress accept",
            "raw confirmed publish",
            "raw consume",
            "raw publish + consume",
        ] {
            assert!(has(backend, what), "{backend}: {what}");
        }
    }
    for engine in &engines {
        for what in ["Storage::record,", "ResultWriter", "Storage::record_many"] {
            assert!(has(engine, what), "{engine}: {what}");
        }
    }
    // 5. Soak: a row per backend with RSS samples of the ingress (and, on real brokers,
    // the worker), nothing lost.
    assert_eq!(backends_of(&json["soak"]), want, "soak rows");
    for row in json["soak"].as_array().unwrap() {
        assert_eq!(row["lost"], 0, "{row}");
        let samples = row["samples"].as_array().unwrap();
        assert!(samples.len() >= 2, "{row}");
        assert!(
            samples[0]["rss_mb"]["ingress"].as_f64().unwrap() > 0.0,
            "{row}"
        );
    }
    // 6. HTTP dispatch: echo and http runs per backend, every job stored and succeeded.
    assert_eq!(backends_of(&json["dispatch"]), want, "dispatch rows");
    for row in json["dispatch"].as_array().unwrap() {
        assert_eq!(row["lost"], 0, "{row}");
        assert_eq!(row["failed"], 0, "{row}");
        let kinds: BTreeSet<&str> = row["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, BTreeSet::from(["echo", "http"]), "{row}");
        assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
    }
    // Every report carries CPU and memory figures.
    for row in json["burst"].as_array().unwrap().iter().chain(ceilings) {
        assert!(
            !row["cost"]["cpu_s_per_1k"].as_object().unwrap().is_empty(),
            "{row}"
        );
        assert!(
            !row["cost"]["peak_rss_mb"].as_object().unwrap().is_empty(),
            "{row}"
        );
    }
    assert!(
        !json["targets"].as_array().unwrap().is_empty(),
        "targets evaluated"
    );
    let _ = std::fs::remove_dir_all(&out);
}
