-- A row can stand for many refused calls on one key and day (a coalesced row): how many, and
-- when the last one came (`ts_ms` is the first).
ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit ADD COLUMN last_ts_ms INTEGER;
-- The client's Idempotency-Key was longer than the 255 characters stored.
ALTER TABLE audit ADD COLUMN idempotency_key_truncated INTEGER NOT NULL DEFAULT 0;

-- Running totals per key and per run label, kept by each key's object as it writes its rows:
-- an audit summary reads one row, whatever the number of calls behind it.
CREATE TABLE audit_totals (
  scope TEXT NOT NULL,
  value TEXT NOT NULL,
  calls INTEGER NOT NULL DEFAULT 0,
  cost_micros INTEGER NOT NULL DEFAULT 0,
  settled INTEGER NOT NULL DEFAULT 0,
  released INTEGER NOT NULL DEFAULT 0,
  unknown INTEGER NOT NULL DEFAULT 0,
  denied INTEGER NOT NULL DEFAULT 0,
  replayed INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (scope, value)
);
INSERT INTO audit_totals (scope, value, calls, cost_micros, settled, released, unknown, denied, replayed)
SELECT 'key', key_id, SUM(count), SUM(cost_micros), SUM((outcome = 'settled') * count),
  SUM((outcome = 'released') * count), SUM((outcome = 'unknown') * count),
  SUM((outcome = 'denied') * count), SUM((outcome = 'replayed') * count)
FROM audit GROUP BY key_id;
INSERT INTO audit_totals (scope, value, calls, cost_micros, settled, released, unknown, denied, replayed)
SELECT 'label', agent_run_label, SUM(count), SUM(cost_micros), SUM((outcome = 'settled') * count),
  SUM((outcome = 'released') * count), SUM((outcome = 'unknown') * count),
  SUM((outcome = 'denied') * count), SUM((outcome = 'replayed') * count)
FROM audit WHERE agent_run_label IS NOT NULL GROUP BY agent_run_label;
