//! The key's alarm: each job stands alone, and the alarm is always set again for the next
//! work, so no error can leave a hold unwatched.

use super::store::int;
use super::{VaultKey, FLUSH_DELAY_MS};
use crate::core::answer::Attempt;
use crate::core::audit::{issuer_label, AuditRow};
use crate::core::vendor::PricePoll;
use crate::core::vendor::Vendor;
use crate::ledger::protocol::CallResult;
use crate::ledger::tree::TreeStore;
use crate::ledger::{Ledger, LedgerStore, IDEMPOTENCY_RETENTION_MS};
use crate::runtime::{js_number, upstream};
use std::collections::BTreeMap;
use wasm_bindgen::JsValue;
use worker::{console_error, Date, Method, Response, Result, SqlStorageValue};

/// Rows per D1 batch, written with two statements for the totals.
const FLUSH_BATCH: usize = 100;

const UPSERT_ROW: &str = "INSERT OR REPLACE INTO audit (id, ts_ms, key_id, agent_run_label, vendor, method, path, \
     status, decision, reserved_micros, cost_micros, outcome, vendor_object_id, idempotency_key, latency_ms, \
     estimated_micros, reconciled_at_ms, count, last_ts_ms, idempotency_key_truncated, issuer_id, parent_key_id) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)";

/// Adds a batch of row snapshots (given as JSON) to a scope's totals, less the snapshots they
/// replace: one statement per scope value and batch, read in the same transaction before the
/// rows themselves are written.
const TOTALS_DELTA: &str = "INSERT INTO audit_totals \
     (scope, value, calls, cost_micros, settled, released, unknown, denied, replayed) \
     SELECT ?1, ?2, SUM(n.count - COALESCE(o.count, 0)), SUM(n.cost - COALESCE(o.cost_micros, 0)), \
     SUM((n.outcome = 'settled') * n.count - COALESCE((o.outcome = 'settled') * o.count, 0)), \
     SUM((n.outcome = 'released') * n.count - COALESCE((o.outcome = 'released') * o.count, 0)), \
     SUM((n.outcome = 'unknown') * n.count - COALESCE((o.outcome = 'unknown') * o.count, 0)), \
     SUM((n.outcome = 'denied') * n.count - COALESCE((o.outcome = 'denied') * o.count, 0)), \
     SUM((n.outcome = 'replayed') * n.count - COALESCE((o.outcome = 'replayed') * o.count, 0)) \
     FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS count, \
     json_extract(value, '$[2]') AS cost, json_extract(value, '$[3]') AS outcome FROM json_each(?3)) AS n \
     LEFT JOIN audit AS o ON o.id = n.id WHERE true \
     ON CONFLICT (scope, value) DO UPDATE SET calls = calls + excluded.calls, \
     cost_micros = cost_micros + excluded.cost_micros, settled = settled + excluded.settled, \
     released = released + excluded.released, unknown = unknown + excluded.unknown, \
     denied = denied + excluded.denied, replayed = replayed + excluded.replayed";
const MAX_BACKOFF_MS: u64 = 3_600_000;
const ALARM_CALL_TIMEOUT_MS: u64 = 10_000;

impl VaultKey {
    /// One failed job is logged and tried again on the next wake.
    pub(super) async fn on_alarm(&self) -> Result<Response> {
        self.alarm_at.set(None);
        let flushed = self.flush_outbox().await;
        if let Err(e) = &flushed {
            console_error!("audit flush to D1 failed, rows kept in the outbox: {e}");
        }
        self.flush_failures.set(if flushed.is_ok() { 0 } else { self.flush_failures.get().saturating_add(1) });
        let settings = self.settings();
        let stale_after = settings.stale_after_ms();
        let swept = self.with_tree(|tree, store, now| {
            for ledger in tree.ledgers_mut() {
                let key = store.key(&ledger.config().key_id);
                ledger.sweep_stale(&key, now, stale_after)?;
            }
            Ok(())
        });
        log_failure("sweep of lost calls", swept);
        log_failure("price reconciliation", self.reconcile_due().await);
        log_failure("replay of unknown calls", self.replay_due().await);
        // Dead keys with nothing left to do leave memory; storage keeps them for lookups.
        self.with_tree(|tree, _, now| Ok(tree.evict(now)))?;
        let cutoff = Date::now().as_millis().saturating_sub(IDEMPOTENCY_RETENTION_MS);
        let pruned = self.store().sql.exec("DELETE FROM key_idempotency WHERE created_ms < ?", vec![int(cutoff)]);
        log_failure("prune of idempotency keys", pruned.map(|_| ()));
        log_failure("alert delivery", self.deliver_alerts().await);

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
        let ledger_at = self
            .tree
            .borrow()
            .as_ref()
            .and_then(|t| t.ledgers().filter_map(|l| l.next_alarm_at(now, stale_after)).min());
        self.arm(earliest(earliest(flush_at, ledger_at), self.alerts_next_at())).await?;
        Response::ok("")
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
            // [id, count, cost, outcome] of each row, for the totals of each scope it counts in.
            let mut deltas: BTreeMap<(&str, String), Vec<Delta>> = BTreeMap::new();
            for (_, r) in &rows {
                let delta = (r.id.as_str(), r.count, r.cost_micros, r.outcome.as_str());
                for scope in totals_scopes(r) {
                    deltas.entry(scope).or_default().push(delta);
                }
            }
            let mut statements = Vec::with_capacity(rows.len() + deltas.len());
            for ((scope, value), rows) in &deltas {
                statements.push(db.prepare(TOTALS_DELTA).bind(&[
                    (*scope).into(),
                    value.as_str().into(),
                    serde_json::to_string(rows)?.into(),
                ])?);
            }
            for (_, row) in &rows {
                statements.push(db.prepare(UPSERT_ROW).bind(&audit_values(row))?);
            }
            db.batch(statements).await?;
            self.store().sql.exec("DELETE FROM outbox WHERE seq <= ?", vec![SqlStorageValue::Integer(last)])?;
        }
    }

    /// The work `due` finds on every key in memory, with the key and its vendor.
    fn due<T>(&self, due: impl Fn(&Ledger, u64) -> Vec<T>) -> Vec<(String, Vendor, T)> {
        let now = Date::now().as_millis();
        let tree = self.tree.borrow();
        let ledgers = tree.as_ref().into_iter().flat_map(|t| t.ledgers());
        ledgers.flat_map(|l| due(l, now).into_iter().map(|t| (l.config().key_id.clone(), l.vendor(), t))).collect()
    }

    /// Asks the vendor for the real price of each estimate that is due, and moves the ledger
    /// to it. The vendor call happens here, in the alarm, never on a client's request path.
    async fn reconcile_due(&self) -> Result<()> {
        let due = self.due(Ledger::due_reconciliations);
        let first_backoff = self.settings().alarm_backoff_ms;
        for (key_id, vendor, rec) in due {
            let Some(reconciler) = &vendor.spec().reconcile else { continue };
            let answer =
                upstream::send(&self.env, vendor.spec(), Method::Get, &rec.poll_path, &[], &[], ALARM_CALL_TIMEOUT_MS)
                    .await;
            let poll = match &answer {
                Ok(a) if (200..300).contains(&a.status) => (reconciler.read_price)(&a.body),
                _ => PricePoll::NotYet,
            };
            self.with_tree(|tree, store, now| {
                let key = store.key(&key_id);
                let Some(ledger) = tree.ledger_mut(&key_id) else { return Ok(()) };
                match poll {
                    PricePoll::Priced(actual) => {
                        ledger.reconcile(&key, now, rec.id, actual)?;
                        log_failure(
                            "alert of a late price",
                            super::alerts::reconciled(store, tree, now, &key_id, rec.id, actual),
                        );
                        Ok(())
                    }
                    PricePoll::NotYet => {
                        ledger.reconcile_later(&key, now, rec.id, backoff(first_backoff, rec.attempts))
                    }
                }
            })?;
        }
        Ok(())
    }

    /// Sends each due ambiguous call again, under its original `Idempotency-Key`: the vendor
    /// either replays the first outcome or runs the call now, once. Either way the answer
    /// settles the hold; an answer that tells nothing (`core::answer`) is tried again later.
    /// Nothing is sent once the key is revoked or expired, checked right before each send.
    async fn replay_due(&self) -> Result<()> {
        let due = self.due(Ledger::due_replays);
        let first_backoff = self.settings().alarm_backoff_ms;
        for (key_id, vendor, id) in due {
            let may = self
                .tree
                .borrow()
                .as_ref()
                .and_then(|t| t.ledger(&key_id))
                .is_some_and(|l| l.may_replay(id, Date::now().as_millis()));
            let Some(replay) = self.store().key(&key_id).get_replay(id)?.filter(|_| may) else { continue };
            self.replaying.set(self.replaying.get() + 1);
            let answer = upstream::send(
                &self.env,
                vendor.spec(),
                Method::Post,
                &replay.path_and_query,
                &replay.headers,
                replay.body.as_bytes(),
                ALARM_CALL_TIMEOUT_MS,
            )
            .await;
            self.replaying.set(self.replaying.get() - 1);
            self.with_tree(|tree, store, now| {
                let (Some(ledger), key) = (tree.ledger_mut(&key_id), store.key(&key_id)) else { return Ok(()) };
                let held = ledger.held(id);
                let (status, body) = match &answer {
                    Ok(a) => (Some(a.status), a.body.as_slice()),
                    Err(_) => (None, &[][..]),
                };
                match CallResult::from_answer(vendor, replay.settlement, held, Attempt::Repeat, status, body) {
                    (CallResult::Unknown, _) => {
                        let attempts = ledger.attempts(id);
                        ledger.resolve_later(&key, now, id, backoff(first_backoff, attempts))
                    }
                    (result, vendor_object_id) => {
                        ledger.resolve(&key, now, id, result, status, vendor_object_id)?;
                        if matches!(result, CallResult::Settled { .. }) {
                            log_failure(
                                "alert of a replayed call",
                                super::alerts::settled_later(store, tree, now, &key_id),
                            );
                        }
                        Ok(())
                    }
                }
            })?;
        }
        Ok(())
    }
}

fn log_failure(job: &str, result: Result<()>) {
    if let Err(e) = result {
        console_error!("alarm: {job} failed, tried again on the next wake: {e}");
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

/// `[id, count, cost, outcome]` of a row, as `TOTALS_DELTA` reads it.
type Delta<'a> = (&'a str, u64, u64, &'a str);

/// The totals a row counts in: its key, its label, its issuer, and its label as its issuer sees
/// it (so an issuer's view of a label shared with others counts only its own rows).
fn totals_scopes(r: &AuditRow) -> impl Iterator<Item = (&'static str, String)> {
    let label = r.agent_run_label.as_deref();
    let issuer = r.issuer_id.as_deref();
    [
        Some(("key", r.key_id.clone())),
        label.map(|l| ("label", l.to_string())),
        issuer.map(|i| ("issuer", i.to_string())),
        issuer.zip(label).map(|(i, l)| ("issuer_label", issuer_label(i, l))),
    ]
    .into_iter()
    .flatten()
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
        num(row.count),
        opt_num(row.last_ts_ms),
        num(u64::from(row.idempotency_key_truncated)),
        opt_str(&row.issuer_id),
        opt_str(&row.parent_key_id),
    ]
}
