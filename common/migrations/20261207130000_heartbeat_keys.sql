-- The fairness keys each worker started most jobs of in the last seconds (a JSON array of
-- at most 10 {"key", "started"}), for the dashboard's busiest keys.
ALTER TABLE worker_heartbeats ADD COLUMN busy_keys TEXT;
