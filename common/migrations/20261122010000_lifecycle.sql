-- Job lifecycle before a result exists, dead-letter replay, and idempotency keys.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).

-- The job itself (JSON), kept on `dead` rows so POST /jobs/{id}/replay can publish it again.
ALTER TABLE job_results ADD COLUMN job TEXT;

-- Non-terminal states: queued (written by the ingress after the broker confirmed),
-- running and retrying (written by workers). A row in job_results always wins over this.
CREATE TABLE IF NOT EXISTS job_status (
    job_id          TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    status          TEXT NOT NULL,          -- queued | running | retrying
    attempt         BIGINT NOT NULL,        -- attempt running or about to run (1-based)
    error           TEXT,                   -- last error, when retrying
    updated_at_us   BIGINT NOT NULL
);

-- Idempotency-Key header: the same key and body return the original job, never a second one.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idem_key        TEXT PRIMARY KEY,
    request_hash    TEXT NOT NULL,          -- SHA-256 of the canonical request
    job_id          TEXT NOT NULL,
    state           TEXT NOT NULL,          -- pending (publishing) | done
    created_at_us   BIGINT NOT NULL
);
