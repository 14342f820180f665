#!/usr/bin/env bash
# Makes sure the services the tests need run on this machine: PostgreSQL and RabbitMQ
# (installed from Debian's packages when missing) and Apache Kafka (scripts/kafka.sh fetches
# its jars once from Maven Central; Java 17 and Maven are installed here when missing).
# Idempotent: harmless when everything already runs. Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[services] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL -----------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing PostgreSQL"
  apt_install postgresql
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  log "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
fi
for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
# The tests connect over TCP as user postgres without a password (trust auth on loopback).
if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
  log "PostgreSQL refuses postgres@127.0.0.1 without a password; allowing trust on loopback"
  hba=$(as_root runuser -u postgres -- psql -tAc 'show hba_file' 2>/dev/null || true)
  if [ -n "$hba" ]; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    as_root runuser -u postgres -- psql -tAc 'select pg_reload_conf()' >/dev/null
  fi
fi
psql -h 127.0.0.1 -U postgres -d postgres -tAc "select 1 from pg_database where datname='test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -qc 'create database test'

# --- RabbitMQ -------------------------------------------------------------------------
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  log "installing RabbitMQ"
  apt_install rabbitmq-server
fi
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  # Debian's `rabbitmq-server` wrapper starts the node through `su rabbitmq`, which gives it
  # a soft limit of 1,024 open files. Classic queues hold files open, and once the limit is
  # reached queue recovery waits for a handle forever: with the ~1,500 queues a test run
  # leaves, a restart (the fault suite's `start_app`, or this script after a reboot) never
  # finished. So start it the same way with the soft limit raised to the hard one.
  as_root su rabbitmq -s /bin/sh -c \
    'ulimit -S -n "$(ulimit -H -n)"; cd /var/lib/rabbitmq && exec /usr/lib/rabbitmq/bin/rabbitmq-server -detached' \
    || true
fi
# `await_startup` fails at once while the new node has not yet registered with epmd (seen on
# a fresh machine: the first call returns within a second), so ask again until a deadline.
deadline=$((SECONDS + 180))
until timeout 60 rabbitmqctl -q await_startup >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    log "RabbitMQ did not start within 180 s; last lines of its log:"
    tail -n 20 /var/log/rabbitmq/*.log >&2 2>/dev/null || true
    exit 1
  fi
  sleep 2
done
# A previous fault test may have left the app stopped while the node runs.
rabbitmqctl -q start_app >/dev/null 2>&1 || true

# --- Headless Chromium (the dashboard's browser test) -----------------------------------
bash scripts/chromium.sh

# --- Apache Kafka (KRaft, single node) ------------------------------------------------
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  log "installing Java 17 and Maven (Kafka's jars come from Maven Central)"
  apt_install openjdk-17-jre-headless maven
fi
bash scripts/kafka.sh

log "PostgreSQL, RabbitMQ, Apache Kafka and Chromium are ready"
