//! [`LedgerStore`] on the object's SQLite storage, and the schema it keeps. `exec` is
//! synchronous, so the writes of one ledger step commit together.

use crate::core::audit::AuditRow;
use crate::core::clock::utc_day;
use crate::core::keys::KeyConfig;
use crate::core::money::Micros;
use crate::core::token::SecretHash;
use crate::ledger::protocol::Replay;
use crate::ledger::tree::{IssuerRecord, KeyTree, TreeStore};
use crate::ledger::{Denials, KeyRecord, Ledger, LedgerStore, Reconciliation, Remembered, Reservation};
use serde::Deserialize;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;
use worker::{Result, SqlStorage, SqlStorageValue};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tree (id INTEGER PRIMARY KEY CHECK (id = 1), issuer TEXT, members INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  key_id TEXT PRIMARY KEY, config TEXT NOT NULL, secret_hash TEXT NOT NULL,
  revoked_at_ms INTEGER, day INTEGER NOT NULL, spent INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
  key_id TEXT NOT NULL, id INTEGER NOT NULL, amount INTEGER NOT NULL, day INTEGER NOT NULL,
  method TEXT NOT NULL, path TEXT NOT NULL, started_ms INTEGER NOT NULL, idempotency_key TEXT,
  replay INTEGER NOT NULL, unresolved TEXT, PRIMARY KEY (key_id, id));
CREATE TABLE IF NOT EXISTS key_reconciliations (key_id TEXT NOT NULL, id INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (key_id, id));
CREATE TABLE IF NOT EXISTS key_idempotency (
  key_id TEXT NOT NULL, key TEXT NOT NULL, record TEXT NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (key_id, key));
CREATE INDEX IF NOT EXISTS key_idempotency_by_age ON key_idempotency (created_ms);
CREATE TABLE IF NOT EXISTS key_denials (key_id TEXT PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS key_replays (key_id TEXT NOT NULL, id INTEGER NOT NULL, record TEXT NOT NULL, PRIMARY KEY (key_id, id));
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, row TEXT NOT NULL);
";

/// Objects made before they could hold several keys kept one key in single-key tables: move
/// it into the keyed tables, once. Run when `key_record` exists.
pub(super) const FROM_ONE_KEY: &str = "
CREATE TABLE IF NOT EXISTS audit_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, row TEXT NOT NULL);
INSERT OR REPLACE INTO outbox (id, row) SELECT json_extract(row, '$.id'), row FROM audit_outbox ORDER BY seq;
DROP TABLE audit_outbox;
CREATE TABLE IF NOT EXISTS reconciliations (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
  id INTEGER PRIMARY KEY, amount INTEGER NOT NULL, day INTEGER NOT NULL, method TEXT NOT NULL,
  path TEXT NOT NULL, started_ms INTEGER NOT NULL, idempotency_key TEXT, replay INTEGER NOT NULL, unresolved TEXT);
CREATE TABLE IF NOT EXISTS idempotency_keys (key TEXT PRIMARY KEY, record TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS denials (id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replays (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
INSERT OR IGNORE INTO keys SELECT json_extract(config, '$.key_id'), config, secret_hash, revoked_at_ms, day, spent, seq FROM key_record;
INSERT OR IGNORE INTO holds SELECT (SELECT json_extract(config, '$.key_id') FROM key_record), * FROM reservations;
INSERT OR IGNORE INTO key_reconciliations SELECT (SELECT json_extract(config, '$.key_id') FROM key_record), id, record FROM reconciliations;
INSERT OR IGNORE INTO key_idempotency SELECT (SELECT json_extract(config, '$.key_id') FROM key_record), key, record, created_ms FROM idempotency_keys;
INSERT OR IGNORE INTO key_denials SELECT (SELECT json_extract(config, '$.key_id') FROM key_record), record FROM denials;
INSERT OR IGNORE INTO key_replays SELECT (SELECT json_extract(config, '$.key_id') FROM key_record), id, record FROM replays;
DROP TABLE reservations; DROP TABLE reconciliations; DROP TABLE idempotency_keys; DROP TABLE denials;
DROP TABLE replays; DROP TABLE key_record;
";

/// The object's SQLite storage: the tree's own records, and a [`KeyStore`] per key.
pub(super) struct SqlStore {
    pub(super) sql: SqlStorage,
    /// Whether this step wrote audit rows, so the object arms a flush.
    pub(super) appended: Rc<Cell<bool>>,
}

/// One key's rows in the object's storage.
pub(super) struct KeyStore {
    sql: SqlStorage,
    key_id: String,
    appended: Rc<Cell<bool>>,
}

pub(super) fn int(n: u64) -> SqlStorageValue {
    // Every stored integer (micro-dollars, ms timestamps, counters) is far below 2^53.
    SqlStorageValue::Integer(n as i64)
}

#[derive(Deserialize)]
struct RecordRow {
    record: String,
}

impl TreeStore for SqlStore {
    type Error = worker::Error;
    type Key = KeyStore;

    fn key(&self, key_id: &str) -> KeyStore {
        KeyStore { sql: self.sql.clone(), key_id: key_id.to_string(), appended: self.appended.clone() }
    }

    fn put_issuer(&self, issuer: &IssuerRecord) -> Result<()> {
        self.sql.exec(
            "INSERT INTO tree (id, issuer, members) VALUES (1, ?, 0) ON CONFLICT (id) DO UPDATE SET issuer = excluded.issuer",
            vec![serde_json::to_string(issuer)?.into()],
        )?;
        Ok(())
    }

    fn load_key(&self, key_id: &str) -> Result<Option<Ledger>> {
        Ok(self.ledgers("key_id = ?", vec![key_id.into()])?.into_iter().next())
    }

    fn put_members(&self, members: u64) -> Result<()> {
        self.sql.exec(
            "INSERT INTO tree (id, issuer, members) VALUES (1, NULL, ?) ON CONFLICT (id) DO UPDATE SET members = excluded.members",
            vec![int(members)],
        )?;
        Ok(())
    }
}

impl KeyStore {
    fn id(&self) -> SqlStorageValue {
        self.key_id.clone().into()
    }

    fn record<T: serde::de::DeserializeOwned>(&self, query: &str, id: SqlStorageValue) -> Result<Option<T>> {
        let rows: Vec<RecordRow> = self.sql.exec(query, vec![self.id(), id])?.to_array()?;
        rows.first().map(|r| serde_json::from_str(&r.record)).transpose().map_err(Into::into)
    }
}

impl LedgerStore for KeyStore {
    type Error = worker::Error;

    fn put_key(&self, key: &KeyRecord) -> Result<()> {
        let config = serde_json::to_string(&key.config)?;
        self.sql.exec(
            "INSERT OR REPLACE INTO keys (key_id, config, secret_hash, revoked_at_ms, day, spent, seq) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                self.id(),
                config.into(),
                key.secret_hash.0.clone().into(),
                key.revoked_at_ms.map(|t| t as i64).into(),
                int(key.day),
                int(key.spent.0),
                int(key.seq),
            ],
        )?;
        Ok(())
    }

    fn put_counters(&self, key: &KeyRecord) -> Result<()> {
        self.sql.exec(
            "UPDATE keys SET revoked_at_ms = ?, day = ?, spent = ?, seq = ? WHERE key_id = ?",
            vec![key.revoked_at_ms.map(|t| t as i64).into(), int(key.day), int(key.spent.0), int(key.seq), self.id()],
        )?;
        Ok(())
    }

    fn put_reservation(&self, r: &Reservation) -> Result<()> {
        let unresolved = r.unknown.as_ref().map(serde_json::to_string).transpose()?;
        self.sql.exec(
            "INSERT OR REPLACE INTO holds \
             (key_id, id, amount, day, method, path, started_ms, idempotency_key, replay, unresolved) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
                self.id(),
                int(r.id),
                int(r.amount.0),
                int(r.day),
                r.method.clone().into(),
                r.path.clone().into(),
                int(r.started_ms),
                r.idempotency_key.clone().into(),
                int(u64::from(r.replay)),
                unresolved.into(),
            ],
        )?;
        Ok(())
    }

    fn delete_reservation(&self, id: u64) -> Result<()> {
        self.sql.exec("DELETE FROM holds WHERE key_id = ? AND id = ?", vec![self.id(), int(id)])?;
        Ok(())
    }

    fn append_audit(&self, row: &AuditRow) -> Result<()> {
        // A row still waiting is replaced, so it goes to D1 once. It takes a new, later `seq`:
        // a flush under way deletes only what it read, never a newer snapshot.
        self.sql.exec(
            "INSERT OR REPLACE INTO outbox (id, row) VALUES (?, ?)",
            vec![row.id.clone().into(), serde_json::to_string(row)?.into()],
        )?;
        self.appended.set(true);
        Ok(())
    }

    fn put_reconciliation(&self, r: &Reconciliation) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO key_reconciliations (key_id, id, record) VALUES (?, ?, ?)",
            vec![self.id(), int(r.id), serde_json::to_string(r)?.into()],
        )?;
        Ok(())
    }

    fn delete_reconciliation(&self, id: u64) -> Result<()> {
        self.sql.exec("DELETE FROM key_reconciliations WHERE key_id = ? AND id = ?", vec![self.id(), int(id)])?;
        Ok(())
    }

    fn get_idempotency(&self, key: &str) -> Result<Option<Remembered>> {
        self.record("SELECT record FROM key_idempotency WHERE key_id = ? AND key = ?", key.into())
    }

    fn put_idempotency(&self, r: &Remembered) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO key_idempotency (key_id, key, record, created_ms) VALUES (?, ?, ?, ?)",
            vec![self.id(), r.key.clone().into(), serde_json::to_string(r)?.into(), int(r.created_ms)],
        )?;
        Ok(())
    }

    fn put_replay(&self, id: u64, replay: &Replay) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO key_replays (key_id, id, record) VALUES (?, ?, ?)",
            vec![self.id(), int(id), serde_json::to_string(replay)?.into()],
        )?;
        Ok(())
    }

    fn get_replay(&self, id: u64) -> Result<Option<Replay>> {
        self.record("SELECT record FROM key_replays WHERE key_id = ? AND id = ?", int(id))
    }

    fn delete_replay(&self, id: u64) -> Result<()> {
        self.sql.exec("DELETE FROM key_replays WHERE key_id = ? AND id = ?", vec![self.id(), int(id)])?;
        Ok(())
    }

    fn put_denials(&self, denials: &Denials) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO key_denials (key_id, record) VALUES (?, ?)",
            vec![self.id(), serde_json::to_string(denials)?.into()],
        )?;
        Ok(())
    }
}

impl SqlStore {
    pub(super) fn new(sql: SqlStorage) -> SqlStore {
        SqlStore { sql, appended: Rc::new(Cell::new(false)) }
    }

    /// Creates the tables, moving an object made before keys could nest, and loads the tree:
    /// every key that may still count, not the dead ones with nothing left to do
    /// ([`KeyTree::evict`] drops the same ones from memory).
    pub(super) fn open(&self, now_ms: u64) -> Result<KeyTree> {
        self.sql.exec(SCHEMA, None)?;
        #[derive(Deserialize)]
        struct Count {
            n: u64,
        }
        let old = self
            .sql
            .exec("SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'key_record'", None)?
            .one::<Count>()?;
        if old.n > 0 {
            self.sql.exec(FROM_ONE_KEY, None)?;
        }
        #[derive(Deserialize)]
        struct TreeRow {
            issuer: Option<String>,
            members: u64,
        }
        let tree: Vec<TreeRow> = self.sql.exec("SELECT issuer, members FROM tree", None)?.to_array()?;
        let (issuer, members) = match tree.into_iter().next() {
            Some(t) => (t.issuer.as_deref().map(serde_json::from_str::<IssuerRecord>).transpose()?, t.members),
            None => (None, 0),
        };
        let may_count = "(revoked_at_ms IS NULL AND json_extract(config, '$.expires_at_ms') > ?) OR day >= ? \
             OR key_id IN (SELECT key_id FROM holds) OR key_id IN (SELECT key_id FROM key_reconciliations)";
        let ledgers = self.ledgers(may_count, vec![int(now_ms), int(utc_day(now_ms))])?;
        Ok(KeyTree::load(issuer, members, ledgers))
    }

    /// The ledgers of the keys that match `filter` (a condition on `keys`), with their holds,
    /// reconciliations and refusal counts.
    fn ledgers(&self, filter: &str, params: Vec<SqlStorageValue>) -> Result<Vec<Ledger>> {
        #[derive(Deserialize)]
        struct KeyRow {
            key_id: String,
            config: String,
            secret_hash: String,
            revoked_at_ms: Option<u64>,
            day: u64,
            spent: u64,
            seq: u64,
        }
        #[derive(Deserialize)]
        struct HoldRow {
            key_id: String,
            id: u64,
            amount: u64,
            day: u64,
            method: String,
            path: String,
            started_ms: u64,
            idempotency_key: Option<String>,
            replay: u8,
            unresolved: Option<String>,
        }
        #[derive(Deserialize)]
        struct KeyedRecord {
            key_id: String,
            record: String,
        }
        let keyed = |table: &str, columns: &str| {
            format!("SELECT {columns} FROM {table} WHERE key_id IN (SELECT key_id FROM keys WHERE {filter})")
        };
        let mut holds: BTreeMap<String, Vec<Reservation>> = BTreeMap::new();
        for r in self.sql.exec(&keyed("holds", "*"), params.clone())?.to_array::<HoldRow>()? {
            holds.entry(r.key_id).or_default().push(Reservation {
                id: r.id,
                amount: Micros(r.amount),
                day: r.day,
                method: r.method,
                path: r.path,
                started_ms: r.started_ms,
                idempotency_key: r.idempotency_key,
                replay: r.replay != 0,
                unknown: r.unresolved.as_deref().map(serde_json::from_str).transpose()?,
            });
        }
        let mut reconciling: BTreeMap<String, Vec<Reconciliation>> = BTreeMap::new();
        for r in
            self.sql.exec(&keyed("key_reconciliations", "key_id, record"), params.clone())?.to_array::<KeyedRecord>()?
        {
            reconciling.entry(r.key_id).or_default().push(serde_json::from_str(&r.record)?);
        }
        let mut denials: BTreeMap<String, Denials> = BTreeMap::new();
        for r in self.sql.exec(&keyed("key_denials", "key_id, record"), params.clone())?.to_array::<KeyedRecord>()? {
            denials.insert(r.key_id, serde_json::from_str(&r.record)?);
        }
        let mut ledgers = Vec::new();
        for k in self.sql.exec(&format!("SELECT * FROM keys WHERE {filter}"), params)?.to_array::<KeyRow>()? {
            let config: KeyConfig = serde_json::from_str(&k.config)?;
            let key = KeyRecord {
                config,
                secret_hash: SecretHash(k.secret_hash),
                revoked_at_ms: k.revoked_at_ms,
                day: k.day,
                spent: Micros(k.spent),
                seq: k.seq,
            };
            ledgers.push(Ledger::load(
                key,
                holds.remove(&k.key_id).unwrap_or_default(),
                reconciling.remove(&k.key_id).unwrap_or_default(),
                denials.remove(&k.key_id).unwrap_or_default(),
            ));
        }
        Ok(ledgers)
    }

    pub(super) fn outbox_len(&self) -> Result<u64> {
        #[derive(Deserialize)]
        struct Count {
            n: u64,
        }
        Ok(self.sql.exec("SELECT COUNT(*) AS n FROM outbox", None)?.one::<Count>()?.n)
    }

    pub(super) fn outbox_batch(&self, limit: usize) -> Result<Vec<(i64, AuditRow)>> {
        #[derive(Deserialize)]
        struct OutboxRow {
            seq: i64,
            row: String,
        }
        let rows: Vec<OutboxRow> =
            self.sql.exec("SELECT seq, row FROM outbox ORDER BY seq LIMIT ?", vec![int(limit as u64)])?.to_array()?;
        rows.into_iter().map(|r| Ok((r.seq, serde_json::from_str(&r.row)?))).collect()
    }
}
