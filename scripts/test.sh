#!/usr/bin/env bash
# The whole test suite, as CI runs it: start the services, check formatting and lints,
# then run every test against real PostgreSQL, RabbitMQ and Apache Kafka.
#
# With CI=true a test whose service is missing fails; without CI (plain `cargo test`) it is
# reported ignored, naming the variable to set. This script sets the service variables
# itself, so run this way nothing is ignored.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/services.sh

export SURGE_TEST_AMQP_URL="${SURGE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export SURGE_TEST_POSTGRES_URL="${SURGE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
export SURGE_TEST_KAFKA_BROKERS="${SURGE_TEST_KAFKA_BROKERS:-127.0.0.1:9092}"
# producer/tests/cluster.rs starts (and stops) its own 3-node RabbitMQ cluster on loopback
# ports 5681-5683 through scripts/rabbitmq-cluster.sh; services.sh installed rabbitmq-server.
export SURGE_TEST_RABBITMQ_CLUSTER="${SURGE_TEST_RABBITMQ_CLUSTER:-1}"
# producer/tests/kafka_cluster.rs starts (and stops) its own 3-broker Kafka cluster on
# loopback ports 9192-9197 through scripts/kafka-cluster.sh, on the jars scripts/kafka.sh
# resolved for the single node.
export SURGE_TEST_KAFKA_CLUSTER="${SURGE_TEST_KAFKA_CLUSTER:-1}"

# Each service test creates its own surge_test_<uuid> database; drop those of earlier runs
# (run one test suite at a time per machine).
for db in $(psql -h 127.0.0.1 -U postgres -d postgres -tAc \
    "select datname from pg_database where datname like 'surge\_test\_%'"); do
  psql -h 127.0.0.1 -U postgres -d postgres -qc "drop database if exists \"$db\" with (force)"
done

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the RabbitMQ-only build: no librdkafka, and it lints clean"
if cargo tree -e normal --locked --no-default-features --features rabbitmq \
    -p surge-producer -p surge-worker | grep -q rdkafka; then
  echo "rdkafka is in the build with --no-default-features --features rabbitmq" >&2
  exit 1
fi
cargo clippy -p surge-common -p surge-producer -p surge-worker --all-targets --locked \
  --no-default-features --features rabbitmq -- -D warnings
echo "== the OTLP build (cargo feature otlp) lints clean"
cargo clippy -p surge-common -p surge-producer -p surge-worker --all-targets --locked \
  --features otlp -- -D warnings
echo "== docker-compose.yml, Dockerfile and deploy/ manifests"
bash scripts/check-deploy.sh
echo "== cargo test"
cargo test --workspace --locked
echo "== spans exported over OTLP (cargo feature otlp)"
cargo test -p surge-producer --features otlp --test otlp --locked
