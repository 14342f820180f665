// The build script of every crate with service tests (each crate's `build.rs` includes
// this file), so that outside CI a test whose service is not configured is reported by
// the test runner as *ignored*, not as passed.
//
// It sets `cfg(surge_amqp)`, `cfg(surge_kafka)`, `cfg(surge_postgres)`,
// `cfg(surge_rabbitmq_cluster)` and `cfg(surge_kafka_cluster)` (the local 3-node clusters
// that `producer/tests/cluster.rs` and `producer/tests/kafka_cluster.rs` start themselves)
// when the run is CI (`CI=true`) or that service's test variable is set. A
// service test carries, e.g.,
//
//     #[cfg_attr(not(surge_amqp), ignore = "set SURGE_TEST_AMQP_URL to run (scripts/test.sh does)")]
//
// so libtest counts it under "N ignored" and prints the reason. In CI the cfg is always
// set: the test runs, and `surge_common::testing::service` panics when the variable is
// missing — a missing service fails CI, it never skips. Cargo re-runs this script (and
// rebuilds the crate) when `CI` or one of the variables changes.

/// (cfg name, environment variable) per service.
const SERVICES: [(&str, &str); 5] = [
    ("surge_amqp", "SURGE_TEST_AMQP_URL"),
    ("surge_kafka", "SURGE_TEST_KAFKA_BROKERS"),
    ("surge_postgres", "SURGE_TEST_POSTGRES_URL"),
    ("surge_rabbitmq_cluster", "SURGE_TEST_RABBITMQ_CLUSTER"),
    ("surge_kafka_cluster", "SURGE_TEST_KAFKA_CLUSTER"),
];

fn main() {
    println!("cargo::rerun-if-env-changed=CI");
    // The same test as `surge_common::testing::in_ci`.
    let ci = matches!(
        std::env::var("CI").as_deref(),
        Ok("true") | Ok("1") | Ok("TRUE")
    );
    for (cfg, var) in SERVICES {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo::rerun-if-env-changed={var}");
        let configured = std::env::var(var).is_ok_and(|value| !value.trim().is_empty());
        if ci || configured {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
