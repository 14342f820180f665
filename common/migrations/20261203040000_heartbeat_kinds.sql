-- Each worker's flow-control state per HTTP kind (adaptive limit, requests in flight,
-- circuit), as a JSON object, for the dashboard's per-kind rows.
ALTER TABLE worker_heartbeats ADD COLUMN kinds TEXT;
