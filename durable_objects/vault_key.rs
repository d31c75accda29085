//! The `VaultKey` Durable Object class: a thin wrapper that keeps a [`Ledger`] in SQLite
//! storage and answers [`LedgerCall`]s. Its alarm does the work that must not sit on a
//! request path: copying the audit outbox to D1 and asking vendors for late prices.

use crate::core::answer::Attempt;
use crate::core::audit::AuditRow;
use crate::core::keys::{KeyConfig, KeyState};
use crate::core::money::Micros;
use crate::core::token::SecretHash;
use crate::core::vendor::PricePoll;
use crate::durable_objects::ledger::{
    KeyRecord, Ledger, LedgerStore, Reconciliation, Remembered, Reservation, IDEMPOTENCY_RETENTION_MS,
};
use crate::durable_objects::protocol::{CallResult, LedgerCall, LedgerReply, Replay};
use crate::shell::{js_number, upstream};
use serde::Deserialize;
use std::cell::{Cell, RefCell};
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{
    console_error, durable_object, Date, Delay, DurableObject, Env, Method, Request, Response, Result, SqlStorage,
    SqlStorageValue, State,
};

/// How long audit rows wait in the outbox before a flush, so a burst goes to D1 in a few batches.
const FLUSH_DELAY_MS: u64 = 100;
const FLUSH_BATCH: usize = 100;
const MAX_BACKOFF_MS: u64 = 3_600_000;
/// First wait before the alarm asks a vendor again, for a price it has not set or an outcome
/// it has not told (`ALARM_BACKOFF_MS`); it doubles on each try.
const DEFAULT_ALARM_BACKOFF_MS: u64 = 60_000;
const ALARM_CALL_TIMEOUT_MS: u64 = 10_000;
/// Beyond the upstream timeout, how long after its admission a call may still be under way:
/// the Worker aborts its vendor call at the timeout, so past this it has ended, or its Worker
/// has died and the connection with it.
const CUT_OFF_MARGIN_MS: u64 = 1_000;

const SCHEMA: &str = "
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
CREATE TABLE IF NOT EXISTS audit_outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, row TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replays (id INTEGER PRIMARY KEY, record TEXT NOT NULL);
";

#[durable_object]
pub struct VaultKey {
    state: State,
    env: Env,
    /// `None` until loaded from storage; stays `None` for an object that holds no key.
    ledger: RefCell<Option<Ledger>>,
    loaded: Cell<bool>,
    /// When the alarm is set for, so a burst does not re-arm it on every call.
    alarm_at: Cell<Option<u64>>,
    flush_failures: Cell<u32>,
    /// Alarm replays under way: a revoke answers only once they are over.
    replaying: Cell<u32>,
}

impl DurableObject for VaultKey {
    fn new(state: State, env: Env) -> Self {
        VaultKey {
            state,
            env,
            ledger: RefCell::new(None),
            loaded: Cell::new(false),
            alarm_at: Cell::new(None),
            flush_failures: Cell::new(0),
            replaying: Cell::new(0),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        // serde_json on the text: cheaper than converting a parsed JS object field by field.
        let call: LedgerCall = serde_json::from_str(&req.text().await?)?;
        let revoking = matches!(call, LedgerCall::Revoke);
        // Everything from here to the reply is synchronous: no other call can interleave.
        let (reply, wrote_audit) = self.handle(call)?;
        let now = Date::now().as_millis();
        if wrote_audit {
            self.arm(Some(now + FLUSH_DELAY_MS)).await?;
        }
        if matches!(reply, LedgerReply::Reserved { .. }) {
            // Should its Worker never report back, the alarm sweeps the hold to unknown.
            self.arm(Some(now + self.stale_after_ms())).await?;
        }
        if revoking && matches!(reply, LedgerReply::State { .. }) {
            self.drain_in_flight().await;
        }
        Response::from_json(&reply)
    }

    /// Each job stands alone: one that fails is logged and retried on the next wake, and the
    /// alarm is always set again for the next work, so no error can leave a hold unwatched.
    async fn alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let flushed = self.flush_outbox().await;
        if let Err(e) = &flushed {
            console_error!("audit flush to D1 failed, rows kept in the outbox: {e}");
        }
        self.flush_failures.set(if flushed.is_ok() { 0 } else { self.flush_failures.get().saturating_add(1) });
        let stale_after = self.stale_after_ms();
        let swept = self.with_ledger(|ledger, store, now| ledger.sweep_stale(store, now, stale_after).map(|_| ()));
        log_failure("sweep of lost calls", swept);
        log_failure("price reconciliation", self.reconcile_due().await);
        log_failure("replay of unknown calls", self.replay_due().await);
        let cutoff = Date::now().as_millis().saturating_sub(IDEMPOTENCY_RETENTION_MS);
        let pruned = self.store().sql.exec("DELETE FROM idempotency_keys WHERE created_ms < ?", vec![int(cutoff)]);
        log_failure("prune of idempotency keys", pruned.map(|_| ()));

        let now = Date::now().as_millis();
        let flush_at = match (self.store().outbox_len(), self.flush_failures.get()) {
            (Ok(0), _) => None,
            (Ok(_), 0) => Some(now + FLUSH_DELAY_MS),
            (Ok(_), failures) => Some(now + backoff(1_000, failures)),
            (Err(e), _) => {
                console_error!("reading the outbox failed: {e}");
                Some(now + backoff(1_000, 1))
            }
        };
        let ledger_at = self.ledger.borrow().as_ref().and_then(|l| l.next_alarm_at(now, stale_after));
        self.arm(earliest(flush_at, ledger_at)).await?;
        Response::ok("")
    }
}

fn log_failure(job: &str, result: Result<()>) {
    if let Err(e) = result {
        console_error!("alarm: {job} failed, tried again on the next wake: {e}");
    }
}

impl VaultKey {
    fn store(&self) -> SqlStore {
        SqlStore { sql: self.state.storage().sql(), appended: Cell::new(false) }
    }

    /// Answers one call and says whether it wrote audit rows to the outbox.
    fn handle(&self, call: LedgerCall) -> Result<(LedgerReply, bool)> {
        let store = self.store();
        let reply = self.apply(&store, call)?;
        Ok((reply, store.appended.get()))
    }

    fn apply(&self, store: &SqlStore, call: LedgerCall) -> Result<LedgerReply> {
        let now = Date::now().as_millis();
        let mut slot = self.ledger.borrow_mut();
        if !self.loaded.get() {
            store.sql.exec(SCHEMA, None)?;
            *slot = store.load()?;
            self.loaded.set(true);
        }
        let (ledger, call) = match (slot.as_mut(), call) {
            (None, LedgerCall::Create { config, secret_hash }) => {
                let mut ledger = Ledger::create(store, config, secret_hash)?;
                let state = ledger_state(&mut ledger, now, store)?;
                *slot = Some(ledger);
                return Ok(LedgerReply::State { state });
            }
            (Some(_), LedgerCall::Create { .. }) => return Err("vault key object already holds a key".into()),
            (None, _) => return Ok(LedgerReply::NotFound),
            (Some(ledger), call) => (ledger, call),
        };
        Ok(match call {
            LedgerCall::Create { .. } => return Err("vault key object already holds a key".into()), // matched above
            LedgerCall::Reserve(reserve) => match ledger.reserve(store, now, reserve)? {
                Ok(admitted) => LedgerReply::Reserved {
                    reservation_id: admitted.reservation.id,
                    amount: admitted.reservation.amount,
                    units: admitted.units,
                    remaining: ledger.remaining(),
                    idempotency_key: admitted.idempotency_key,
                    replay: admitted.reservation.replay,
                    stripe_account: ledger.stripe_account().map(String::from),
                    attempt: admitted.attempt,
                },
                Err(error) => LedgerReply::Denied { error },
            },
            LedgerCall::Finish(finish) => {
                ledger.finish(store, now, finish)?;
                LedgerReply::Finished
            }
            LedgerCall::Status => LedgerReply::State { state: ledger_state(ledger, now, store)? },
            LedgerCall::Revoke => {
                ledger.revoke(store, now)?;
                LedgerReply::State { state: ledger_state(ledger, now, store)? }
            }
            LedgerCall::Refresh { ttl_secs } => match ledger.refresh(store, now, ttl_secs)? {
                Ok(()) => LedgerReply::State { state: ledger_state(ledger, now, store)? },
                Err(error) => LedgerReply::Denied { error },
            },
        })
    }

    /// Runs `f` on the loaded ledger, if this object holds a key.
    fn with_ledger<T: Default>(&self, f: impl FnOnce(&mut Ledger, &SqlStore, u64) -> Result<T>) -> Result<T> {
        let store = self.store();
        let mut slot = self.ledger.borrow_mut();
        match slot.as_mut() {
            Some(ledger) => f(ledger, &store, Date::now().as_millis()),
            None => Ok(T::default()),
        }
    }

    /// After how long a held call whose Worker has not reported back counts as lost: twice
    /// the upstream timeout, by which time any live Worker has given up on the vendor.
    fn stale_after_ms(&self) -> u64 {
        2 * upstream::timeout_ms(&self.env) + 1_000
    }

    fn alarm_backoff_ms(&self) -> u64 {
        upstream::env_value(&self.env, "ALARM_BACKOFF_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_ALARM_BACKOFF_MS)
    }

    /// Sets the alarm for `at` unless it is already set for an earlier time.
    async fn arm(&self, at: Option<u64>) -> Result<()> {
        let Some(at) = at else { return Ok(()) };
        if self.alarm_at.get().is_some_and(|current| current <= at) {
            return Ok(());
        }
        self.alarm_at.set(Some(at));
        let offset = at.saturating_sub(Date::now().as_millis());
        self.state.storage().set_alarm(offset as i64).await
    }

    /// After a revoke, waits until every call admitted before it has finished its vendor call
    /// or been cut off, and every alarm replay under way is over: once the revoke has been
    /// answered, nothing more reaches the vendor on this key.
    async fn drain_in_flight(&self) {
        let cut_off = upstream::timeout_ms(&self.env) + CUT_OFF_MARGIN_MS;
        loop {
            let now = Date::now().as_millis();
            let calls = self.ledger.borrow().as_ref().map_or(0, |l| l.in_flight(now, cut_off));
            if calls == 0 && self.replaying.get() == 0 {
                return;
            }
            Delay::from(Duration::from_millis(5)).await;
        }
    }

    /// Copies outbox rows to D1, oldest first. Each row is a whole snapshot keyed by its id, so
    /// a repeated copy is harmless and a later snapshot (a reconciled price, a resolved
    /// outcome) replaces the earlier one. Rows leave the outbox only after D1 has them.
    async fn flush_outbox(&self) -> Result<()> {
        let db = self.env.d1("DB")?;
        loop {
            let rows = self.store().outbox_batch(FLUSH_BATCH)?;
            let Some(last) = rows.last().map(|(seq, _)| *seq) else {
                return Ok(());
            };
            let statements = rows
                .iter()
                .map(|(_, row)| {
                    db.prepare(
                        "INSERT OR REPLACE INTO audit (id, ts_ms, key_id, agent_run_label, vendor, method, path, \
                         status, decision, reserved_micros, cost_micros, outcome, vendor_object_id, idempotency_key, \
                         latency_ms, estimated_micros, reconciled_at_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                    )
                    .bind(&audit_values(row))
                })
                .collect::<Result<Vec<_>>>()?;
            db.batch(statements).await?;
            self.store().sql.exec("DELETE FROM audit_outbox WHERE seq <= ?", vec![SqlStorageValue::Integer(last)])?;
        }
    }

    /// Asks the vendor for the real price of each estimate that is due, and moves the ledger
    /// to it. The vendor call happens here, in the alarm, never on a client's request path.
    async fn reconcile_due(&self) -> Result<()> {
        let now = Date::now().as_millis();
        let (due, vendor) = match self.ledger.borrow().as_ref() {
            Some(ledger) => (ledger.due_reconciliations(now), ledger.vendor()),
            None => return Ok(()),
        };
        let Some(reconciler) = &vendor.spec().reconcile else { return Ok(()) };
        let first_backoff = self.alarm_backoff_ms();
        for rec in due {
            let answer =
                upstream::send(&self.env, vendor.spec(), Method::Get, &rec.poll_path, &[], None, ALARM_CALL_TIMEOUT_MS)
                    .await;
            let poll = match &answer {
                Ok(a) if (200..300).contains(&a.status) => (reconciler.read_price)(&a.body),
                _ => PricePoll::NotYet,
            };
            let store = self.store();
            let now = Date::now().as_millis();
            let mut slot = self.ledger.borrow_mut();
            let Some(ledger) = slot.as_mut() else { return Ok(()) };
            match poll {
                PricePoll::Priced(actual) => ledger.reconcile(&store, now, rec.id, actual)?,
                PricePoll::NotYet => {
                    ledger.reconcile_later(&store, now, rec.id, backoff(first_backoff, rec.attempts))?
                }
            }
        }
        Ok(())
    }
}

impl VaultKey {
    /// Sends each due ambiguous call again, under its original `Idempotency-Key`: the vendor
    /// either replays the first outcome or runs the call now, once. Either way the answer
    /// settles the hold; an answer that tells nothing (`core::answer`) is tried again later.
    /// Nothing is sent once the key is revoked or expired, checked right before each send.
    async fn replay_due(&self) -> Result<()> {
        let (due, vendor) = match self.ledger.borrow().as_ref() {
            Some(ledger) => (ledger.due_replays(Date::now().as_millis()), ledger.vendor()),
            None => return Ok(()),
        };
        let first_backoff = self.alarm_backoff_ms();
        for id in due {
            let may = self.ledger.borrow().as_ref().is_some_and(|l| l.may_replay(id, Date::now().as_millis()));
            let Some(replay) = self.store().get_replay(id)?.filter(|_| may) else { continue };
            self.replaying.set(self.replaying.get() + 1);
            let answer = upstream::send(
                &self.env,
                vendor.spec(),
                Method::Post,
                &replay.path_and_query,
                &replay.headers,
                Some(replay.body.clone().into_bytes()),
                ALARM_CALL_TIMEOUT_MS,
            )
            .await;
            self.replaying.set(self.replaying.get() - 1);
            self.with_ledger(|ledger, store, now| {
                let held = ledger.held(id);
                let (status, body) = match &answer {
                    Ok(a) => (Some(a.status), a.body.as_slice()),
                    Err(_) => (None, &[][..]),
                };
                match CallResult::from_answer(vendor, replay.settlement, held, Attempt::Repeat, status, body) {
                    (CallResult::Unknown, _) => {
                        let attempts = ledger.attempts(id);
                        ledger.resolve_later(store, now, id, backoff(first_backoff, attempts))
                    }
                    (result, vendor_object_id) => ledger.resolve(store, now, id, result, status, vendor_object_id),
                }
            })?;
        }
        Ok(())
    }
}

/// Doubling backoff from `first_ms`, at most an hour.
fn backoff(first_ms: u64, attempts: u32) -> u64 {
    first_ms.saturating_mul(1 << attempts.min(12)).min(MAX_BACKOFF_MS)
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn ledger_state(ledger: &mut Ledger, now: u64, store: &SqlStore) -> Result<KeyState> {
    Ok(ledger.state(now, store.outbox_len()?))
}

fn audit_values(row: &AuditRow) -> Vec<JsValue> {
    let opt_str = |s: &Option<String>| s.as_deref().map_or(JsValue::NULL, JsValue::from);
    let num = js_number;
    let opt_num = |n: Option<u64>| n.map_or(JsValue::NULL, num);
    vec![
        JsValue::from(row.id.as_str()),
        num(row.ts_ms),
        JsValue::from(row.key_id.as_str()),
        opt_str(&row.agent_run_label),
        JsValue::from(row.vendor.as_str()),
        JsValue::from(row.method.as_str()),
        JsValue::from(row.path.as_str()),
        opt_num(row.status.map(u64::from)),
        JsValue::from(row.decision.as_str()),
        num(row.reserved_micros),
        num(row.cost_micros),
        JsValue::from(row.outcome.as_str()),
        opt_str(&row.vendor_object_id),
        opt_str(&row.idempotency_key),
        opt_num(row.latency_ms),
        opt_num(row.estimated_micros),
        opt_num(row.reconciled_at_ms),
    ]
}

/// [`LedgerStore`] on the object's SQLite storage. `exec` is synchronous, so the writes of one
/// ledger step commit together.
struct SqlStore {
    sql: SqlStorage,
    appended: Cell<bool>,
}

fn int(n: u64) -> SqlStorageValue {
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
        self.sql.exec("INSERT INTO audit_outbox (row) VALUES (?)", vec![serde_json::to_string(row)?.into()])?;
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
    fn load(&self) -> Result<Option<Ledger>> {
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
        Ok(Some(Ledger::load(key, open, reconciling)))
    }

    fn outbox_len(&self) -> Result<u64> {
        #[derive(Deserialize)]
        struct Count {
            n: u64,
        }
        Ok(self.sql.exec("SELECT COUNT(*) AS n FROM audit_outbox", None)?.one::<Count>()?.n)
    }

    fn outbox_batch(&self, limit: usize) -> Result<Vec<(i64, AuditRow)>> {
        #[derive(Deserialize)]
        struct OutboxRow {
            seq: i64,
            row: String,
        }
        let rows: Vec<OutboxRow> = self
            .sql
            .exec("SELECT seq, row FROM audit_outbox ORDER BY seq LIMIT ?", vec![int(limit as u64)])?
            .to_array()?;
        rows.into_iter().map(|r| Ok((r.seq, serde_json::from_str(&r.row)?))).collect()
    }
}
