-- One decision per job the ingress published: accepted (the client got a 202) or cancelled
-- (the publish failed and the client got an error, though the broker may have kept the job).
-- The first decision wins. A job's result commits only once it is accepted (or a worker,
-- after a long wait, records the missing decision as accepted itself); a cancelled job
-- never gets a result. Replaces cancelled_jobs, whose rows become cancelled decisions.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).
CREATE TABLE IF NOT EXISTS job_acceptance (
    job_id          TEXT PRIMARY KEY,
    accepted        BIGINT NOT NULL,        -- 1 accepted, 0 cancelled
    decided_at_us   BIGINT NOT NULL         -- µs since the epoch
);
INSERT INTO job_acceptance (job_id, accepted, decided_at_us)
    SELECT job_id, 0, cancelled_at_us FROM cancelled_jobs;
DROP TABLE cancelled_jobs;

-- Set while POST /jobs/{id}/replay publishes a dead job again: the replayed run's result
-- may then replace this dead row. Cleared if the publish fails, so the job stays dead.
ALTER TABLE job_results ADD COLUMN replaying_since_us BIGINT;
