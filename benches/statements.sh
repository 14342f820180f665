#!/usr/bin/env bash
# Counts what one job costs PostgreSQL on the happy path (POST /jobs -> run -> result):
# statements (pg_stat_statements), commits (pg_stat_database.xact_commit) and row writes
# (pg_stat_user_tables) and the server's CPU time, per job, for the surge-producer and surge-worker binaries in BIN.
#
#   benches/statements.sh BIN [JOBS] [BROKER]
#
# BIN: a directory holding surge-producer and surge-worker (e.g. target/release, or an older
# build from a git worktree, to compare side by side). JOBS: default 2000. BROKER: rabbitmq
# (default) or memory. Needs a PostgreSQL with pg_stat_statements loaded at
# $STATEMENTS_PG (default postgres://postgres@127.0.0.1:5433), RabbitMQ on loopback, curl.
# Everything it starts listens on loopback and is stopped on exit; a fresh database per run.
set -euo pipefail

BIN=${1:?usage: benches/statements.sh BIN [JOBS] [BROKER]}
JOBS=${2:-2000}
BROKER=${3:-rabbitmq}
PG=${STATEMENTS_PG:-postgres://postgres@127.0.0.1:5433}
AMQP=${SURGE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
PORT=${STATEMENTS_PORT:-18090}
DB="surge_statements_$$"
QUEUE="surge.statements.$$"
psql_() { psql "$PG/postgres" -Atq "$@"; }
# CPU ticks the server's processes have used: the postmaster's own and its exited children's,
# plus every live child's (backends, WAL writer, autovacuum), from /proc.
pg_ticks() {
    local data postmaster
    data=$(psql_ -c "SHOW data_directory")
    postmaster=$(head -1 "$data/postmaster.pid")
    { awk '{print $14 + $15 + $16 + $17}' "/proc/$postmaster/stat"
      for child in $(pgrep -P "$postmaster"); do
          awk '{print $14 + $15}' "/proc/$child/stat" 2>/dev/null || true
      done; } | awk '{t += $1} END {print t}'
}

psql_ -c "CREATE DATABASE $DB"
URL="$PG/$DB"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql_ -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
}
trap cleanup EXIT

common=(--broker "$BROKER" --amqp-url "$AMQP" --queue "$QUEUE" --database-url "$URL" --builtin-kinds true)
RUST_LOG=warn "$BIN/surge-producer" "${common[@]}" --listen "127.0.0.1:$PORT" >/tmp/statements-producer.log 2>&1 &
pids+=($!)
if [ "$BROKER" != memory ]; then
    RUST_LOG=warn "$BIN/surge-worker" "${common[@]}" --capacity 64 >/tmp/statements-worker.log 2>&1 &
    pids+=($!)
fi
for _ in $(seq 1 300); do
    curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
# One warm-up job, so migrations and connection set-up are not counted.
curl -fsS -X POST "http://127.0.0.1:$PORT/jobs" -H 'content-type: application/json' \
    -d '{"kind":"echo","payload":{}}' >/dev/null
# Finished jobs: one table since the one-row-per-job schema, job_results before it (the
# script measures either build, side by side).
if [ "$(psql "$URL" -Atqc "SELECT to_regclass('public.jobs') IS NOT NULL")" = t ]; then
    FINISHED="SELECT COUNT(*) FROM jobs WHERE finished_at_us IS NOT NULL"
else
    FINISHED="SELECT COUNT(*) FROM job_results"
fi
until [ "$(psql "$URL" -Atqc "$FINISHED")" = 1 ]; do sleep 0.1; done
sleep 2
psql_ -c "SELECT pg_stat_statements_reset()" >/dev/null
psql "$URL" -Atqc "SELECT pg_stat_reset()" >/dev/null
sleep 1

ticks_before=$(pg_ticks)
seq 1 "$JOBS" | xargs -P 32 -I{} curl -fsS -o /dev/null -X POST "http://127.0.0.1:$PORT/jobs" \
    -H 'content-type: application/json' -d '{"kind":"echo","payload":{"n":{}}}'
until [ "$(psql "$URL" -Atqc "$FINISHED")" = $((JOBS + 1)) ]; do sleep 0.2; done
sleep 3 # let stage writes and pg_stat flushes land
ticks_after=$(pg_ticks)
echo -e "PostgreSQL CPU-ms/job\t$(awk -v a="$ticks_before" -v b="$ticks_after" -v hz="$(getconf CLK_TCK)" -v n="$JOBS" \
    'BEGIN {printf "%.3f (all server processes, the 3 s settle included)", (b - a) * 1000 / hz / n}')"

psql_ -F $'\t' <<SQL
SELECT 'statements/job', round(SUM(calls)::numeric / $JOBS, 2)
  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
 WHERE d.datname = '$DB' AND s.query NOT ILIKE '%pg_stat%' AND s.query NOT ILIKE 'SELECT \$1'
   AND s.query NOT ILIKE 'BEGIN%' AND s.query NOT ILIKE 'COMMIT%'
   AND s.query <> '$FINISHED';
SQL
psql "$URL" -Atq -F $'\t' <<SQL
SELECT 'commits/job', round(xact_commit::numeric / $JOBS, 2) FROM pg_stat_database WHERE datname = '$DB';
SELECT 'rows written/job', round(SUM(n_tup_ins + n_tup_upd + n_tup_del)::numeric / $JOBS, 2) FROM pg_stat_user_tables;
SELECT 'by table (ins/upd/del per job)', string_agg(relname || ' ' || round(n_tup_ins::numeric / $JOBS, 2) || '/' || round(n_tup_upd::numeric / $JOBS, 2) || '/' || round(n_tup_del::numeric / $JOBS, 2), ', ' ORDER BY relname)
  FROM pg_stat_user_tables WHERE n_tup_ins + n_tup_upd + n_tup_del > 0;
SQL
echo "top statements (calls per job, execution ms per job):"
psql_ -F $'\t' -c "SELECT round(calls::numeric / $JOBS, 2), round((total_exec_time / $JOBS)::numeric, 3), left(regexp_replace(query, '\s+', ' ', 'g'), 100)
  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
 WHERE d.datname = '$DB' AND calls >= $JOBS / 20 ORDER BY calls DESC LIMIT 12"
