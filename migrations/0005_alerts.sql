-- Webhooks that receive alert events. `owner` is who set it: 'root' for the admin key, which
-- hears of every key, or an issuer's id, which hears only of the issuer and its own keys. The secret signs
-- every delivery: it is shown once, at creation, and never answered again.
CREATE TABLE webhooks (
  id TEXT PRIMARY KEY,
  owner TEXT NOT NULL DEFAULT 'root',
  url TEXT NOT NULL,
  events TEXT NOT NULL,
  secret TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  deleted_at_ms INTEGER
);

-- One row per delivery attempt, written by the key's object after the attempt: the log the
-- API and the console show. No body and no signature: the event id says which event it was.
CREATE TABLE webhook_deliveries (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  event_id TEXT NOT NULL,
  type TEXT NOT NULL,
  webhook_id TEXT NOT NULL,
  key_id TEXT,
  issuer_id TEXT,
  ts_ms INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  status INTEGER,
  ok INTEGER NOT NULL,
  error TEXT
);
CREATE INDEX webhook_deliveries_by_key ON webhook_deliveries (key_id, seq);
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id, seq);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, seq);
CREATE INDEX webhooks_by_owner ON webhooks (owner, deleted_at_ms);
