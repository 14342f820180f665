-- Retention (`surge_common::storage::retention`): what the pruner needs, all additive, so
-- processes of the previous release keep working beside this one during a rollout.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).

-- One pruner at a time across every ingress replica: a lease row per maintenance task.
CREATE TABLE IF NOT EXISTS maintenance_leases (
    name         TEXT PRIMARY KEY,
    holder       TEXT NOT NULL,
    until_us     BIGINT NOT NULL          -- µs since the epoch
);

-- Refused decisions (publish failed, the client got a 503) expire after the cancelled
-- window. Partial: accepted rows, one per job, never enter this index.
CREATE INDEX IF NOT EXISTS job_acceptance_refused
    ON job_acceptance (decided_at_us) WHERE accepted = 0;

-- Idempotency keys expire after their own window.
CREATE INDEX IF NOT EXISTS idempotency_keys_created
    ON idempotency_keys (created_at_us);
