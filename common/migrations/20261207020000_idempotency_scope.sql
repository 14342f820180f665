-- Idempotency keys per client (issue 18): a key is looked up in its client's scope, the
-- SHA-256 (hex) of its API key, so two clients using the same key get two jobs. With API
-- keys off every client shares the scope ''. The primary key becomes (scope, idem_key),
-- which needs a new table on SQLite; existing rows move to the shared scope ''.
-- (Numbered 20261207020000 by the `ingress` branch of issue 18: renumber freely at merge,
-- it depends only on 20261122010000_lifecycle.sql.)
CREATE TABLE IF NOT EXISTS idempotency_keys_scoped (
    scope           TEXT NOT NULL,          -- SHA-256 (hex) of the API key; '' without keys
    idem_key        TEXT NOT NULL,
    request_hash    TEXT NOT NULL,          -- SHA-256 of the canonical request
    job_id          TEXT NOT NULL,
    state           TEXT NOT NULL,          -- pending (publishing) | done
    created_at_us   BIGINT NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
INSERT INTO idempotency_keys_scoped (scope, idem_key, request_hash, job_id, state, created_at_us)
    SELECT '', idem_key, request_hash, job_id, state, created_at_us FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_keys_scoped RENAME TO idempotency_keys;
