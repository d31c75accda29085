-- The key registry: a copy for listing and lookup. The key's Durable Object is the authority
-- on spend and revocation.
CREATE TABLE vault_keys (
  key_id TEXT PRIMARY KEY,
  vendor TEXT NOT NULL,
  agent_run_label TEXT,
  daily_cap_micros INTEGER NOT NULL,
  max_per_call_micros INTEGER,
  allowed_endpoints TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  expires_at_ms INTEGER NOT NULL,
  revoked_at_ms INTEGER
);
CREATE INDEX vault_keys_by_label ON vault_keys (agent_run_label, created_at_ms);

-- One row per call made with a real key, forwarded or denied. Money is integer micro-dollars.
CREATE TABLE audit (
  id TEXT PRIMARY KEY,
  ts_ms INTEGER NOT NULL,
  key_id TEXT NOT NULL,
  agent_run_label TEXT,
  vendor TEXT NOT NULL,
  method TEXT NOT NULL,
  path TEXT NOT NULL,
  status INTEGER,
  decision TEXT NOT NULL,
  reserved_micros INTEGER NOT NULL,
  cost_micros INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  vendor_object_id TEXT,
  idempotency_key TEXT,
  latency_ms INTEGER
);
-- Both audit queries read an index range in order: cost grows with the rows returned, not
-- with the table.
CREATE INDEX audit_by_key ON audit (key_id, ts_ms, id);
CREATE INDEX audit_by_label ON audit (agent_run_label, ts_ms, id);
