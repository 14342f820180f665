-- One outcome callback per outcome, not per job: a dead job that is replayed and succeeds
-- has two outcomes, each delivered with an Idempotency-Key of its own ("<job id>:<n>",
-- n = 1 for the job's first outcome, 2 after a replay, …). Rows queued before keep their
-- key (the bare job id) so a receiver that already saw them still dedupes them.
CREATE TABLE IF NOT EXISTS callback_outbox (
    idempotency_key  TEXT PRIMARY KEY,       -- sent as the Idempotency-Key header
    job_id           TEXT NOT NULL,
    seq              BIGINT NOT NULL,        -- the job's n-th outcome
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,          -- the JSON POSTed (signed when sent)
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_at_us       BIGINT NOT NULL,        -- not before (backoff)
    claimed_until_us BIGINT,                 -- a sender is delivering it until then
    delivered_at_us  BIGINT,                 -- set once the receiver answered 2xx
    last_error       TEXT
);
INSERT INTO callback_outbox (idempotency_key, job_id, seq, url, body, attempts, next_at_us,
                             claimed_until_us, delivered_at_us, last_error)
    SELECT job_id, job_id, 1, url, body, attempts, next_at_us, claimed_until_us,
           delivered_at_us, last_error
    FROM callbacks;
DROP TABLE callbacks;
CREATE UNIQUE INDEX IF NOT EXISTS callback_outbox_job ON callback_outbox (job_id, seq);
CREATE INDEX IF NOT EXISTS callback_outbox_due ON callback_outbox (delivered_at_us, next_at_us);
