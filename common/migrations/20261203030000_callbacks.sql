-- Outcome callbacks waiting to be delivered (a job's `callback_url`): written by the worker
-- after the result commits and before the ack, delivered by the workers' callback senders
-- (see common/src/storage/callbacks.rs).
CREATE TABLE IF NOT EXISTS callbacks (
    job_id           TEXT PRIMARY KEY,
    url              TEXT NOT NULL,
    body             TEXT NOT NULL,          -- the JSON POSTed (signed when sent)
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_at_us       BIGINT NOT NULL,        -- not before (backoff)
    claimed_until_us BIGINT,                 -- a sender is delivering it until then
    delivered_at_us  BIGINT,                 -- set once the receiver answered 2xx
    last_error       TEXT
);
CREATE INDEX IF NOT EXISTS callbacks_due ON callbacks (delivered_at_us, next_at_us);
