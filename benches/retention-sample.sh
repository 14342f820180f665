#!/usr/bin/env bash
# Samples what retention keeps flat, once per interval, while a load runs elsewhere (e.g.
# `SURGE_RETAIN_SUCCEEDED=1m surge-bench --scenarios soak --soak-secs 1800`): per table
# its size on disk, live and dead tuples, rows inserted since the last sample, and how
# long ago autovacuum last ran. One line per table per sample, tab-separated.
#
#   benches/retention-sample.sh [DB_URL] [INTERVAL_S] [SAMPLES]
#
# DB_URL defaults to the database of the newest running surge-producer (the benchmark's),
# INTERVAL_S to 60, SAMPLES to 31 (half an hour, both ends included).
set -euo pipefail

DB_URL=${1:-}
INTERVAL=${2:-60}
SAMPLES=${3:-31}
if [ -z "$DB_URL" ]; then
    # The running benchmark's ingress names its database on its command line or in its
    # environment.
    for _ in $(seq 1 300); do
        pid=$(pgrep -n -f 'surge-producer.*--database-url' || pgrep -n -x surge-producer || true)
        if [ -n "$pid" ]; then
            DB_URL=$(tr '\0' '\n' < "/proc/$pid/cmdline" | grep -A1 -x -- '--database-url' | tail -1 || true)
            [ -n "$DB_URL" ] || DB_URL=$(tr '\0' '\n' < "/proc/$pid/environ" | sed -n 's/^DATABASE_URL=//p')
            [ -n "$DB_URL" ] && break
        fi
        sleep 1
    done
    [ -n "$DB_URL" ] || { echo "no running surge-producer with a database found" >&2; exit 1; }
fi
echo -e "minute\ttable\tsize_mb\tlive\tdead\tinserted\tautovacuum_s_ago"
for i in $(seq 0 $((SAMPLES - 1))); do
    psql "$DB_URL" -Atq -F $'\t' -c "
        SELECT $i, relname,
               round(pg_total_relation_size(relid) / 1048576.0, 1),
               n_live_tup, n_dead_tup, n_tup_ins,
               COALESCE(round(EXTRACT(EPOCH FROM now() - GREATEST(last_autovacuum, last_vacuum)))::text, 'never')
          FROM pg_stat_user_tables
         WHERE relname IN ('jobs', 'job_results', 'job_acceptance', 'job_status', 'idempotency_keys', 'callback_outbox')
         ORDER BY relname" || true
    [ "$i" -lt $((SAMPLES - 1)) ] && sleep "$INTERVAL"
done
