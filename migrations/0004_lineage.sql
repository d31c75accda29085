-- Budgets that nest: issuers, and the lineage of every key and audit row.
CREATE TABLE issuers (
  issuer_id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  config TEXT NOT NULL,
  created_at_ms INTEGER NOT NULL,
  revoked_at_ms INTEGER
);
ALTER TABLE vault_keys ADD COLUMN issuer_id TEXT;
ALTER TABLE vault_keys ADD COLUMN parent_key_id TEXT;
CREATE INDEX vault_keys_by_issuer ON vault_keys (issuer_id, created_at_ms);
CREATE INDEX vault_keys_by_parent ON vault_keys (parent_key_id);
ALTER TABLE audit ADD COLUMN issuer_id TEXT;
ALTER TABLE audit ADD COLUMN parent_key_id TEXT;
CREATE INDEX audit_by_issuer ON audit (issuer_id, ts_ms, id);
