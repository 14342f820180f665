-- One row per worker process, upserted by the worker every second (its "heartbeat"): the
-- live dashboard lists workers from here, so it sees workers in every process.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).
CREATE TABLE IF NOT EXISTS worker_heartbeats (
    worker_id       TEXT PRIMARY KEY,
    capacity        BIGINT NOT NULL,        -- most jobs it runs at once
    in_flight       BIGINT NOT NULL,        -- jobs it was running at last_seen_us
    succeeded       BIGINT NOT NULL,        -- jobs it settled as succeeded since it started
    dead            BIGINT NOT NULL,        -- jobs it dead-lettered since it started
    started_at_us   BIGINT NOT NULL,        -- µs since the epoch
    last_seen_us    BIGINT NOT NULL         -- µs since the epoch of the latest heartbeat
);

-- The dashboard reads the most recent results (rates, end-to-end latency) by finish time.
CREATE INDEX IF NOT EXISTS job_results_finished_at ON job_results (finished_at_us);
