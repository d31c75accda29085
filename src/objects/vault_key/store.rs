//! [`LedgerStore`] on the object's SQLite storage, and the schema it keeps. `exec` is
//! synchronous, so the writes of one ledger step commit together.

use crate::core::audit::AuditRow;
use crate::core::keys::KeyConfig;
use crate::core::money::Micros;
use crate::core::token::SecretHash;
use crate::ledger::protocol::Replay;
use crate::ledger::{Denials, KeyRecord, Ledger, LedgerStore, Reconciliation, Remembered, Reservation};
use serde::Deserialize;
use std::cell::Cell;
use worker::{Result, SqlStorage, SqlStorageValue};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_record (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  config TEXT NOT NULL, secret_hash TEXT NOT NULL,
  revoked_at_ms INTEGER, day INTEGER NOT NULL, spent INTEGER NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
  id INTEGER PRIMARY KEY, amount INTEGER NOT NULL, day INTEGER NOT NULL, method TEXT NOT NULL,
  path TEXT NOT NULL, started_ms INTEGER NOT NULL, idempotency_key TEXT, replay INTEGER NOT NULL,
  unresolved TEXT);
CREATE TABLE IF NOT EXISTS reconciliations (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency_keys (key TEXT PRIMARY KEY, record TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS idempotency_keys_by_age ON idempotency_keys (created_ms);
CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS denials (id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, row TEXT NOT NULL);
INSERT OR REPLACE INTO outbox (id, row) SELECT json_extract(row, '$.id'), row FROM audit_outbox ORDER BY seq;
DELETE FROM audit_outbox;
CREATE TABLE IF NOT EXISTS replays (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
";

pub(super) struct SqlStore {
    pub(super) sql: SqlStorage,
    /// Whether this step wrote audit rows, so the object arms a flush.
    pub(super) appended: Cell<bool>,
}

pub(super) fn int(n: u64) -> SqlStorageValue {
    // Every stored integer (micro-dollars, ms timestamps, counters) is far below 2^53.
    SqlStorageValue::Integer(n as i64)
}

impl LedgerStore for SqlStore {
    type Error = worker::Error;

    fn put_key(&self, key: &KeyRecord) -> Result<()> {
        let config = serde_json::to_string(&key.config)?;
        self.sql.exec(
            "INSERT OR REPLACE INTO key_record (id, config, secret_hash, revoked_at_ms, day, spent, seq) \
             VALUES (1, ?, ?, ?, ?, ?, ?)",
            vec![
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
            "UPDATE key_record SET revoked_at_ms = ?, day = ?, spent = ?, seq = ? WHERE id = 1",
            vec![key.revoked_at_ms.map(|t| t as i64).into(), int(key.day), int(key.spent.0), int(key.seq)],
        )?;
        Ok(())
    }

    fn put_reservation(&self, r: &Reservation) -> Result<()> {
        let unresolved = r.unknown.as_ref().map(serde_json::to_string).transpose()?;
        self.sql.exec(
            "INSERT OR REPLACE INTO reservations \
             (id, amount, day, method, path, started_ms, idempotency_key, replay, unresolved) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            vec![
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
        self.sql.exec("DELETE FROM reservations WHERE id = ?", vec![int(id)])?;
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
        let record = serde_json::to_string(r)?;
        self.sql.exec(
            "INSERT OR REPLACE INTO reconciliations (id, record) VALUES (?, ?)",
            vec![int(r.id), record.into()],
        )?;
        Ok(())
    }

    fn delete_reconciliation(&self, id: u64) -> Result<()> {
        self.sql.exec("DELETE FROM reconciliations WHERE id = ?", vec![int(id)])?;
        Ok(())
    }

    fn get_idempotency(&self, key: &str) -> Result<Option<Remembered>> {
        #[derive(Deserialize)]
        struct RecordRow {
            record: String,
        }
        let rows: Vec<RecordRow> =
            self.sql.exec("SELECT record FROM idempotency_keys WHERE key = ?", vec![key.into()])?.to_array()?;
        rows.first().map(|r| serde_json::from_str(&r.record)).transpose().map_err(Into::into)
    }

    fn put_replay(&self, id: u64, replay: &Replay) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO replays (id, record) VALUES (?, ?)",
            vec![int(id), serde_json::to_string(replay)?.into()],
        )?;
        Ok(())
    }

    fn get_replay(&self, id: u64) -> Result<Option<Replay>> {
        #[derive(Deserialize)]
        struct RecordRow {
            record: String,
        }
        let rows: Vec<RecordRow> =
            self.sql.exec("SELECT record FROM replays WHERE id = ?", vec![int(id)])?.to_array()?;
        rows.first().map(|r| serde_json::from_str(&r.record)).transpose().map_err(Into::into)
    }

    fn put_denials(&self, denials: &Denials) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO denials (id, record) VALUES (1, ?)",
            vec![serde_json::to_string(denials)?.into()],
        )?;
        Ok(())
    }

    fn delete_replay(&self, id: u64) -> Result<()> {
        self.sql.exec("DELETE FROM replays WHERE id = ?", vec![int(id)])?;
        Ok(())
    }

    fn put_idempotency(&self, r: &Remembered) -> Result<()> {
        self.sql.exec(
            "INSERT OR REPLACE INTO idempotency_keys (key, record, created_ms) VALUES (?, ?, ?)",
            vec![r.key.clone().into(), serde_json::to_string(r)?.into(), int(r.created_ms)],
        )?;
        Ok(())
    }
}

impl SqlStore {
    pub(super) fn load(&self) -> Result<Option<Ledger>> {
        #[derive(Deserialize)]
        struct KeyRow {
            config: String,
            secret_hash: String,
            revoked_at_ms: Option<u64>,
            day: u64,
            spent: u64,
            seq: u64,
        }
        #[derive(Deserialize)]
        struct ReservationRow {
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
        struct RecordRow {
            record: String,
        }
        let keys: Vec<KeyRow> = self.sql.exec("SELECT * FROM key_record", None)?.to_array()?;
        let Some(k) = keys.into_iter().next() else {
            return Ok(None);
        };
        let config: KeyConfig = serde_json::from_str(&k.config)?;
        let key = KeyRecord {
            config,
            secret_hash: SecretHash(k.secret_hash),
            revoked_at_ms: k.revoked_at_ms,
            day: k.day,
            spent: Micros(k.spent),
            seq: k.seq,
        };
        let rows: Vec<ReservationRow> = self.sql.exec("SELECT * FROM reservations", None)?.to_array()?;
        let open = rows
            .into_iter()
            .map(|r| {
                Ok(Reservation {
                    id: r.id,
                    amount: Micros(r.amount),
                    day: r.day,
                    method: r.method,
                    path: r.path,
                    started_ms: r.started_ms,
                    idempotency_key: r.idempotency_key,
                    replay: r.replay != 0,
                    unknown: r.unresolved.as_deref().map(serde_json::from_str).transpose()?,
                })
            })
            .collect::<serde_json::Result<Vec<_>>>()?;
        let records: Vec<RecordRow> = self.sql.exec("SELECT record FROM reconciliations", None)?.to_array()?;
        let reconciling = records
            .iter()
            .map(|r| serde_json::from_str::<Reconciliation>(&r.record))
            .collect::<serde_json::Result<Vec<_>>>()?;
        let denials: Vec<RecordRow> = self.sql.exec("SELECT record FROM denials", None)?.to_array()?;
        let denials =
            denials.first().map(|r| serde_json::from_str::<Denials>(&r.record)).transpose()?.unwrap_or_default();
        Ok(Some(Ledger::load(key, open, reconciling, denials)))
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
