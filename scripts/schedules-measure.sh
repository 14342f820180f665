#!/usr/bin/env bash
# Recurring jobs, measured (issue 20, item 4): three ingress replicas (surge-producer) and
# one worker on PostgreSQL and RabbitMQ, two schedules "@every 1s" (kind echo), one with
# catch_up = "1h" and one without, for --duration seconds. At a third of the run one
# replica is SIGKILLed and restarted 20 s later; at two thirds all three are SIGKILLed,
# stay down --outage seconds, and are restarted. At the end the replicas are stopped, the
# worker drains, and the database says: ticks, jobs, duplicates, gaps.
#
#   scripts/schedules-measure.sh [--duration 600] [--outage 20]
#
# Expected: every_catchup has one tick per second from its first to its last (the outage's
# ticks are caught up when the replicas return), every_skip the same except the ticks of
# the outage older than 3 s when the first replica returned (missed, skipped); one job per
# tick, each succeeded once; no duplicate. Exits non-zero when a promise is broken.
#
# Stops itself: every process it starts is killed on exit. Uses a fresh database (dropped
# at the end unless KEEP=1) and a fresh queue (deleted at the end). Loopback only.
# Env: POSTGRES_URL (postgres://postgres@127.0.0.1:5432/test), AMQP_URL
# (amqp://guest:guest@127.0.0.1:5672/%2f), CARGO (cargo), BIN (target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=600
OUTAGE=20
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --outage) OUTAGE=$2; shift 2 ;;
    *) echo "usage: $0 [--duration SECONDS] [--outage SECONDS]" >&2; exit 2 ;;
  esac
done
[ "$DURATION" -ge 90 ] || { echo "--duration: at least 90 s" >&2; exit 2; }
[ "$OUTAGE" -ge 5 ] && [ "$OUTAGE" -lt $((DURATION / 4)) ] || { echo "--outage: 5 s to a quarter of the duration" >&2; exit 2; }

POSTGRES_URL=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
BIN=${BIN:-target/debug}
log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

${CARGO:-cargo} build -q -p surge-producer -p surge-worker

run_id=$(date +%s)$$
db_name="surge_schedules_$run_id"
queue="surge.jobs.schedules-$run_id"
base=${POSTGRES_URL%/*}
DATABASE_URL="$base/$db_name"
psql "$POSTGRES_URL" -qc "CREATE DATABASE $db_name"
work=$(mktemp -d)
config="$work/surge.toml"
cat >"$config" <<'EOF'
builtin_kinds = true

[schedules.every_catchup]
cron = "@every 1s"
kind = "echo"
payload = { schedule = "every_catchup" }
catch_up = "1h"

[schedules.every_skip]
cron = "@every 1s"
kind = "echo"
payload = { schedule = "every_skip" }
EOF

declare -A pids
ports=(0 0 0)
worker_pid=""
cleanup() {
  for i in 0 1 2; do [ -n "${pids[$i]:-}" ] && kill -9 "${pids[$i]}" 2>/dev/null || true; done
  [ -n "$worker_pid" ] && kill -9 "$worker_pid" 2>/dev/null || true
  rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
  for suffix in retry dead; do rabbitmqctl -q delete_queue "$queue.$suffix" >/dev/null 2>&1 || true; done
  if [ "${KEEP:-0}" != 1 ]; then psql "$POSTGRES_URL" -qc "DROP DATABASE IF EXISTS $db_name" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

common=(--broker rabbitmq --amqp-url "$AMQP_URL" --queue "$queue" --builtin-kinds true)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start_replica() {
  local i=$1
  [ "${ports[$i]}" != 0 ] || ports[$i]=$(free_port)
  DATABASE_URL=$DATABASE_URL RUST_LOG=${RUST_LOG:-warn} "$BIN/surge-producer" "${common[@]}" \
    --config "$config" --listen "127.0.0.1:${ports[$i]}" >>"$work/replica-$i.log" 2>&1 &
  pids[$i]=$!
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:${ports[$i]}/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "replica $i did not become ready"; tail -n 20 "$work/replica-$i.log" >&2; exit 1
}
kill_replica() { kill -9 "${pids[$1]}" 2>/dev/null || true; wait "${pids[$1]}" 2>/dev/null || true; pids[$1]=""; }
q() { psql "$DATABASE_URL" -tAc "$1"; }

log "database $db_name, queue $queue, ${DURATION}s, outage ${OUTAGE}s"
start_replica 0; start_replica 1; start_replica 2
DATABASE_URL=$DATABASE_URL RUST_LOG=${RUST_LOG:-warn} "$BIN/surge-worker" "${common[@]}" \
  --config "$config" --capacity 50 --group "$queue" >>"$work/worker.log" 2>&1 &
worker_pid=$!
started=$(date +%s)
at() { local wait=$((started + $1 - $(date +%s))); [ "$wait" -le 0 ] || sleep "$wait"; }

third=$((DURATION / 3))
at "$third"; log "SIGKILL replica 0"; kill_replica 0
at $((third + 20)); log "restart replica 0"; start_replica 0
at $((2 * third)); log "SIGKILL all three replicas for ${OUTAGE}s"
outage_start_us=$(($(date +%s%N) / 1000))
kill_replica 0; kill_replica 1; kill_replica 2
sleep "$OUTAGE"
log "restart all three"
outage_end_us=$(($(date +%s%N) / 1000))
start_replica 0; start_replica 1; start_replica 2
at "$DURATION"
log "stop the replicas (SIGTERM), let the worker drain"
for i in 0 1 2; do kill -TERM "${pids[$i]}"; done
for i in 0 1 2; do wait "${pids[$i]}" 2>/dev/null || true; pids[$i]=""; done

# Every tick's job finished (published by the scheduler of some replica before it stopped).
for _ in $(seq 1 600); do
  pending=$(q "SELECT COUNT(*) FROM schedule_ticks t WHERE NOT EXISTS (SELECT 1 FROM jobs r WHERE r.job_id = t.job_id AND r.finished_at_us IS NOT NULL)")
  [ "$pending" = 0 ] && break
  sleep 0.1
done
kill -TERM "$worker_pid"; wait "$worker_pid" 2>/dev/null || true; worker_pid=""

status=0
report() {
  local s=$1
  local ticks first last span jobs succeeded dup_ticks redelivered gaps missing
  ticks=$(q "SELECT COUNT(*) FROM schedule_ticks WHERE schedule = '$s' AND manual = 0")
  first=$(q "SELECT MIN(tick_us) FROM schedule_ticks WHERE schedule = '$s'")
  last=$(q "SELECT MAX(tick_us) FROM schedule_ticks WHERE schedule = '$s'")
  span=$(((last - first) / 1000000 + 1))
  jobs=$(q "SELECT COUNT(*) FROM jobs r JOIN schedule_ticks t ON t.job_id = r.job_id WHERE t.schedule = '$s' AND r.finished_at_us IS NOT NULL")
  succeeded=$(q "SELECT COUNT(*) FROM jobs r JOIN schedule_ticks t ON t.job_id = r.job_id WHERE t.schedule = '$s' AND r.state = 'succeeded'")
  dup_ticks=$(q "SELECT COUNT(*) - COUNT(DISTINCT job_id) FROM schedule_ticks WHERE schedule = '$s'")
  redelivered=$(q "SELECT COUNT(*) FROM jobs r JOIN schedule_ticks t ON t.job_id = r.job_id WHERE t.schedule = '$s' AND r.deliveries > 1")
  gaps=$(q "SELECT COALESCE(string_agg(((tick_us - prev) / 1000000 - 1)::text || ' ticks missing after ' || to_char(to_timestamp(prev / 1e6) AT TIME ZONE 'UTC', 'HH24:MI:SS'), ', '), 'none') FROM (SELECT tick_us, LAG(tick_us) OVER (ORDER BY tick_us) AS prev FROM schedule_ticks WHERE schedule = '$s') g WHERE tick_us - prev <> 1000000")
  missing=$((span - ticks))
  printf '%-14s ticks %5d  seconds %5d  missing %3d  jobs %5d  succeeded %5d  duplicate jobs %d  redelivered %d  gaps: %s\n' \
    "$s" "$ticks" "$span" "$missing" "$jobs" "$succeeded" "$dup_ticks" "$redelivered" "$gaps"
  [ "$jobs" = "$ticks" ] && [ "$succeeded" = "$ticks" ] && [ "$dup_ticks" = 0 ] || status=1
  eval "${s}_missing=$missing"
}
echo
echo "3 ingress replicas, @every 1s for ${DURATION}s; replica 0 SIGKILLed at ${third}s for 20 s; all three down ${OUTAGE}s at $((2 * third))s (PostgreSQL, RabbitMQ)"
report every_catchup
report every_skip
others=$(q "SELECT COUNT(*) FROM jobs r WHERE r.finished_at_us IS NOT NULL AND NOT EXISTS (SELECT 1 FROM schedule_ticks t WHERE t.job_id = r.job_id)")
echo "jobs that are no tick's: $others"
down_s=$(((outage_end_us - outage_start_us) / 1000000))
echo "outage: ${down_s}s with no replica up (then the first replica was ready after its start-up)"
# catch_up = 1h: nothing missing. No catch_up: the outage's ticks missing, less the 3 s a
# tick may be late and still run.
[ "$others" = 0 ] && [ "$every_catchup_missing" = 0 ] || status=1
if [ "$every_skip_missing" -lt $((down_s - 3)) ] || [ "$every_skip_missing" -gt $((down_s + 10)) ]; then status=1; fi
if [ "$status" = 0 ]; then echo "verdict: OK"; else echo "verdict: BROKEN (see above)"; fi
exit "$status"
