-- One row per job for its whole life (issue 19): `jobs` replaces `job_status` (stages),
-- `job_acceptance` (the ingress's decision) and `job_results` (outcomes). A job's row is
-- written at acceptance (`queued`) and once more with its outcome; a `running` or
-- `retrying` mark in between updates the same row. Nothing is deleted on the way, so no
-- dead tuple per job beyond the updates themselves.
-- Portable between SQLite and PostgreSQL (the storage layer uses sqlx's Any driver).
CREATE TABLE IF NOT EXISTS jobs (
    job_id             TEXT PRIMARY KEY,
    kind               TEXT NOT NULL,          -- '' for a refused job (its kind is not kept)
    -- scheduled | queued | running | retrying | waiting   (not finished)
    -- succeeded | dead | cancelled                         (finished: finished_at_us set)
    -- refused: its publish failed and its client got an error; never listed, never run
    state              TEXT NOT NULL,
    -- The ingress's decision: 1 accepted (the client got a 202), 0 refused, NULL not yet
    -- recorded (a worker got the job before the ingress heard the broker's confirm).
    accepted           BIGINT,
    attempts           BIGINT NOT NULL,        -- attempt running or next; when finished, the one that settled it
    result             TEXT,                   -- JSON, when succeeded
    error              TEXT,                   -- the last error
    deliveries         BIGINT NOT NULL DEFAULT 0, -- times an outcome was written (>1: redelivered)
    worker             TEXT,                   -- who wrote the outcome
    enqueued_at_us     BIGINT,                 -- the ingress's stamp
    started_at_us      BIGINT,                 -- the settling attempt's start
    finished_at_us     BIGINT,                 -- set exactly when finished
    updated_at_us      BIGINT NOT NULL,        -- last change; = finished_at_us once finished
    job                TEXT,                   -- the job itself, kept on dead rows for replay
    replaying_since_us BIGINT                  -- a replay of this dead job is being published
);

INSERT INTO jobs (job_id, kind, state, accepted, attempts, result, error, deliveries, worker,
                  enqueued_at_us, started_at_us, finished_at_us, updated_at_us, job,
                  replaying_since_us)
    SELECT job_id, kind, status, 1, attempts, result, error, deliveries, worker,
           enqueued_at_us, started_at_us, finished_at_us, finished_at_us, job,
           replaying_since_us
    FROM job_results;

INSERT INTO jobs (job_id, kind, state, accepted, attempts, error, deliveries, updated_at_us)
    SELECT s.job_id, s.kind, s.status, a.accepted, s.attempt, s.error, 0, s.updated_at_us
    FROM job_status s LEFT JOIN job_acceptance a ON a.job_id = s.job_id
    WHERE NOT EXISTS (SELECT 1 FROM job_results r WHERE r.job_id = s.job_id)
      AND (a.accepted IS NULL OR a.accepted = 1);

INSERT INTO jobs (job_id, kind, state, accepted, attempts, deliveries, updated_at_us)
    SELECT a.job_id, '', CASE WHEN a.accepted = 0 THEN 'refused' ELSE 'queued' END,
           a.accepted, 1, 0, a.decided_at_us
    FROM job_acceptance a
    WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = a.job_id);

DROP TABLE job_status;
DROP TABLE job_acceptance;
DROP TABLE job_results;

-- A finished row's updated_at_us is its finished_at_us (every write keeps them equal), so
-- one time column orders every state: each listing filter reads one index range backwards
-- (common/src/storage/listing.rs), and retention, totals and the dashboard's rates read
-- ranges of the same indexes. Four indexes besides the key, where the three tables had
-- eight.
-- Jobs in a state (finished or not, also refused decisions pruned by age), by last change:
CREATE INDEX IF NOT EXISTS jobs_state
    ON jobs (state, updated_at_us, job_id);
-- The same within one kind:
CREATE INDEX IF NOT EXISTS jobs_state_kind
    ON jobs (state, kind, updated_at_us, job_id);
-- Finished jobs of one kind, whatever their outcome:
CREATE INDEX IF NOT EXISTS jobs_kind_finished
    ON jobs (kind, finished_at_us, job_id) WHERE finished_at_us IS NOT NULL;
-- Finished jobs, whatever their kind and outcome (the dashboard's recent results):
CREATE INDEX IF NOT EXISTS jobs_finished
    ON jobs (finished_at_us, job_id) WHERE finished_at_us IS NOT NULL;
