//! The per-key ledger: the state one `VaultKey` Durable Object guards.
//!
//! Every method is synchronous and runs to completion before the next call is delivered, so a
//! check and the debit it guards can never interleave with another request. Each change is
//! written through a [`LedgerStore`] in the same step, audit row included, so a crash leaves
//! either all of it or none.

use crate::core::allowlist;
use crate::core::audit::{AuditRow, Outcome};
use crate::core::clock::{secs_until_next_utc_day, utc_day};
use crate::core::cost::Quote;
use crate::core::error::ProxyError;
use crate::core::keys::{KeyConfig, KeyState};
use crate::core::money::Micros;
use crate::core::token::SecretHash;
use crate::durable_objects::protocol::{CallResult, FinishCall, ReserveCall};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The durable part of a key other than its open reservations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub config: KeyConfig,
    pub secret_hash: SecretHash,
    pub revoked_at_ms: Option<u64>,
    /// The UTC day `spent` belongs to.
    pub day: u64,
    pub spent: Micros,
    /// Source of reservation ids and audit row ids; never reused.
    pub seq: u64,
}

/// Money held for a call that has been let through and not yet finished.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub id: u64,
    pub amount: Micros,
    /// The UTC day whose cap this reservation counts against.
    pub day: u64,
    pub method: String,
    pub path: String,
    pub started_ms: u64,
    pub idempotency_key: Option<String>,
    /// Set once the call ended ambiguously; the money stays held.
    pub unknown: bool,
}

/// A debited estimate waiting for the vendor's real price.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconciliation {
    pub id: u64,
    /// Where the vendor publishes the price, e.g. `.../Messages/SM123.json`.
    pub poll_path: String,
    pub day: u64,
    pub estimate: Micros,
    pub started_ms: u64,
    pub attempts: u32,
    pub next_at_ms: u64,
    /// The call's audit row, re-sent with the real cost once it is known.
    pub row: AuditRow,
}

/// How long a vendor has to publish a price before the estimate is kept for good.
pub const RECONCILE_GIVE_UP_MS: u64 = 24 * 3_600_000;

/// Where the ledger's state lives. The Durable Object implements it on its SQLite storage;
/// tests use [`MemoryStore`].
pub trait LedgerStore {
    type Error;
    fn put_key(&self, key: &KeyRecord) -> Result<(), Self::Error>;
    fn put_reservation(&self, r: &Reservation) -> Result<(), Self::Error>;
    fn delete_reservation(&self, id: u64) -> Result<(), Self::Error>;
    /// Appends to the audit outbox, from which rows are copied to D1. A row with an id already
    /// sent replaces it there (a reconciled cost).
    fn append_audit(&self, row: &AuditRow) -> Result<(), Self::Error>;
    fn put_reconciliation(&self, r: &Reconciliation) -> Result<(), Self::Error>;
    fn delete_reconciliation(&self, id: u64) -> Result<(), Self::Error>;
}

#[derive(Debug)]
pub struct Ledger {
    key: KeyRecord,
    open: BTreeMap<u64, Reservation>,
    reconciling: BTreeMap<u64, Reconciliation>,
    /// Sum of open reservations made on `key.day`.
    reserved_today: Micros,
}

impl Ledger {
    pub fn create<S: LedgerStore>(store: &S, config: KeyConfig, secret_hash: SecretHash) -> Result<Ledger, S::Error> {
        let day = utc_day(config.created_at_ms);
        let key = KeyRecord { config, secret_hash, revoked_at_ms: None, day, spent: Micros::ZERO, seq: 0 };
        store.put_key(&key)?;
        Ok(Ledger { key, open: BTreeMap::new(), reconciling: BTreeMap::new(), reserved_today: Micros::ZERO })
    }

    /// Rebuilds the ledger from what a store holds.
    pub fn load(
        key: KeyRecord,
        open: impl IntoIterator<Item = Reservation>,
        reconciling: impl IntoIterator<Item = Reconciliation>,
    ) -> Ledger {
        let open: BTreeMap<u64, Reservation> = open.into_iter().map(|r| (r.id, r)).collect();
        let reconciling = reconciling.into_iter().map(|r| (r.id, r)).collect();
        let mut ledger = Ledger { key, open, reconciling, reserved_today: Micros::ZERO };
        ledger.recount_reserved();
        ledger
    }

    pub fn vendor(&self) -> crate::core::vendor::Vendor {
        self.key.config.vendor
    }

    /// Runs the contract's checks in order and, if all pass, holds the price against today's cap.
    /// A refusal of an authenticated call is audited; a failed authentication writes nothing.
    pub fn reserve<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        call: ReserveCall,
    ) -> Result<Result<(Reservation, u64), ProxyError>, S::Error> {
        if call.vendor != self.key.config.vendor || !self.key.secret_hash.matches(&call.secret_hash) {
            return Ok(Err(ProxyError::InvalidKey));
        }
        self.roll_day(now_ms);
        let checked = self.check(now_ms, &call);
        let seq = self.next_seq();
        match checked {
            Err(error) => {
                let row = self.audit_row(seq, now_ms, &call.method, &call.path, call.idempotency_key);
                store.put_key(&self.key)?;
                store.append_audit(&AuditRow { status: Some(error.status()), decision: error.kind().into(), ..row })?;
                Ok(Err(error))
            }
            Ok((amount, units)) => {
                let r = Reservation {
                    id: seq,
                    amount,
                    day: self.key.day,
                    method: call.method,
                    path: call.path,
                    started_ms: now_ms,
                    idempotency_key: call.idempotency_key,
                    unknown: false,
                };
                store.put_key(&self.key)?;
                store.put_reservation(&r)?;
                self.reserved_today = self.reserved_today.checked_add(amount).unwrap_or(Micros(u64::MAX));
                self.open.insert(r.id, r.clone());
                Ok(Ok((r, units)))
            }
        }
    }

    /// The contract's checks, in order. Returns the amount to hold and, for a per-unit quote,
    /// how many units it buys.
    fn check(&self, now_ms: u64, call: &ReserveCall) -> Result<(Micros, u64), ProxyError> {
        let config = &self.key.config;
        if self.key.revoked_at_ms.is_some() {
            return Err(ProxyError::KeyRevoked);
        }
        if now_ms >= config.expires_at_ms {
            return Err(ProxyError::KeyExpired);
        }
        if !allowlist::allows(&config.allowed_endpoints, &call.method, &call.path) {
            return Err(ProxyError::EndpointNotAllowed);
        }
        let cap_hit = || ProxyError::CapExhausted { retry_after_secs: secs_until_next_utc_day(now_ms) };
        let available = config.daily_cap.saturating_sub(self.key.spent).saturating_sub(self.reserved_today);
        match call.price.clone()? {
            Quote::Fixed { amount } => {
                if config.max_per_call.is_some_and(|max| amount > max) {
                    return Err(ProxyError::PerCallLimit);
                }
                if amount > available {
                    return Err(cap_hit());
                }
                Ok((amount, 1))
            }
            Quote::PerUnit { unit, max_units } => {
                if config.max_per_call.is_some_and(|max| unit > max) {
                    return Err(ProxyError::PerCallLimit);
                }
                let budget = config.max_per_call.map_or(available, |max| max.min(available));
                let units = budget.0.checked_div(unit.0).map_or(max_units, |u| u.min(max_units));
                if units == 0 {
                    return Err(cap_hit());
                }
                Ok((Micros(unit.0 * units), units))
            }
        }
    }

    /// Records how a reserved call ended and writes its audit row. Finishing a reservation that
    /// is no longer open (a repeated report) changes nothing.
    pub fn finish<S: LedgerStore>(&mut self, store: &S, now_ms: u64, call: FinishCall) -> Result<(), S::Error> {
        self.roll_day(now_ms);
        let Some(r) = self.open.get(&call.reservation_id).filter(|r| !r.unknown).cloned() else {
            return Ok(());
        };
        let cost = match call.result {
            CallResult::Settled { cost } => cost,
            CallResult::Released | CallResult::Unknown => Micros::ZERO,
        };
        let seq = self.next_seq();
        let row = AuditRow {
            status: call.status,
            decision: "forwarded".into(),
            reserved_micros: r.amount.0,
            cost_micros: cost.0,
            outcome: call.result.outcome(),
            vendor_object_id: call.vendor_object_id,
            latency_ms: Some(call.latency_ms),
            ..self.audit_row(seq, now_ms, &r.method, &r.path, r.idempotency_key.clone())
        };
        if call.result == CallResult::Unknown {
            let held = Reservation { unknown: true, ..r };
            store.put_key(&self.key)?;
            store.put_reservation(&held)?;
            store.append_audit(&row)?;
            self.open.insert(held.id, held);
            return Ok(());
        }
        if r.day == self.key.day {
            self.key.spent = self.key.spent.checked_add(cost).unwrap_or(Micros(u64::MAX));
            self.reserved_today = self.reserved_today.saturating_sub(r.amount);
        }
        let reconciliation = match (call.result, call.reconcile_path) {
            (CallResult::Settled { cost }, Some(poll_path)) => Some(Reconciliation {
                id: r.id,
                poll_path,
                day: r.day,
                estimate: cost,
                started_ms: now_ms,
                attempts: 0,
                next_at_ms: now_ms,
                row: AuditRow { estimated_micros: Some(cost.0), ..row.clone() },
            }),
            _ => None,
        };
        store.put_key(&self.key)?;
        store.delete_reservation(r.id)?;
        match &reconciliation {
            Some(rec) => {
                store.append_audit(&rec.row)?;
                store.put_reconciliation(rec)?;
            }
            None => store.append_audit(&row)?,
        }
        self.open.remove(&r.id);
        if let Some(rec) = reconciliation {
            self.reconciling.insert(rec.id, rec);
        }
        Ok(())
    }

    /// Estimates whose real price should be asked for now.
    pub fn due_reconciliations(&self, now_ms: u64) -> Vec<Reconciliation> {
        self.reconciling.values().filter(|r| r.next_at_ms <= now_ms).cloned().collect()
    }

    /// When the next reconciliation is due, if any.
    pub fn next_reconciliation_at(&self) -> Option<u64> {
        self.reconciling.values().map(|r| r.next_at_ms).min()
    }

    /// Moves a debited estimate to the vendor's real price. The difference is debited or
    /// credited to the day the call was made; an actual cost above the estimate is debited
    /// even past the cap, and the key's state shows by how much.
    pub fn reconcile<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        id: u64,
        actual: Micros,
    ) -> Result<(), S::Error> {
        self.roll_day(now_ms);
        let Some(rec) = self.reconciling.remove(&id) else {
            return Ok(());
        };
        if rec.day == self.key.day {
            self.key.spent =
                self.key.spent.saturating_sub(rec.estimate).checked_add(actual).unwrap_or(Micros(u64::MAX));
        }
        let row = AuditRow { cost_micros: actual.0, reconciled_at_ms: Some(now_ms), ..rec.row };
        store.put_key(&self.key)?;
        store.delete_reconciliation(id)?;
        store.append_audit(&row)?;
        Ok(())
    }

    /// The price is not published yet: ask again after `backoff_ms`, or keep the estimate for
    /// good once the vendor has had a day.
    pub fn reconcile_later<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        id: u64,
        backoff_ms: u64,
    ) -> Result<(), S::Error> {
        let Some(rec) = self.reconciling.get_mut(&id) else {
            return Ok(());
        };
        if now_ms.saturating_sub(rec.started_ms) >= RECONCILE_GIVE_UP_MS {
            store.delete_reconciliation(id)?;
            self.reconciling.remove(&id);
            return Ok(());
        }
        rec.attempts += 1;
        rec.next_at_ms = now_ms + backoff_ms;
        store.put_reconciliation(rec)?;
        Ok(())
    }

    /// Revokes the key. Idempotent: a second revoke keeps the first time.
    pub fn revoke<S: LedgerStore>(&mut self, store: &S, now_ms: u64) -> Result<u64, S::Error> {
        if let Some(at) = self.key.revoked_at_ms {
            return Ok(at);
        }
        self.key.revoked_at_ms = Some(now_ms);
        store.put_key(&self.key)?;
        Ok(now_ms)
    }

    /// Calls let through and not yet finished (ambiguous ones excluded: their vendor call is over).
    pub fn in_flight(&self) -> usize {
        self.open.values().filter(|r| !r.unknown).count()
    }

    pub fn state(&mut self, now_ms: u64, audit_pending: u64) -> KeyState {
        self.roll_day(now_ms);
        KeyState {
            config: self.key.config.clone(),
            revoked_at_ms: self.key.revoked_at_ms,
            spent: self.key.spent,
            reserved: self.reserved_today,
            audit_pending,
            reconciling: self.reconciling.len() as u64,
        }
    }

    pub fn remaining(&self) -> Micros {
        self.key.config.daily_cap.saturating_sub(self.key.spent).saturating_sub(self.reserved_today)
    }

    /// At 00:00 UTC the day's spend starts again from zero. Reservations still open from an
    /// earlier day settle into that day, not into today's cap.
    fn roll_day(&mut self, now_ms: u64) {
        let today = utc_day(now_ms);
        if today > self.key.day {
            self.key.day = today;
            self.key.spent = Micros::ZERO;
            self.recount_reserved();
        }
    }

    fn recount_reserved(&mut self) {
        let day = self.key.day;
        self.reserved_today = self
            .open
            .values()
            .filter(|r| r.day == day)
            .fold(Micros::ZERO, |sum, r| sum.checked_add(r.amount).unwrap_or(Micros(u64::MAX)));
    }

    fn next_seq(&mut self) -> u64 {
        self.key.seq += 1;
        self.key.seq
    }

    fn audit_row(&self, seq: u64, now_ms: u64, method: &str, path: &str, idempotency_key: Option<String>) -> AuditRow {
        let config = &self.key.config;
        AuditRow {
            id: format!("{}-{seq:010}", config.key_id),
            ts_ms: now_ms,
            key_id: config.key_id.clone(),
            agent_run_label: config.agent_run_label.clone(),
            vendor: config.vendor.name().into(),
            method: method.into(),
            path: path.into(),
            status: None,
            decision: String::new(),
            reserved_micros: 0,
            cost_micros: 0,
            outcome: Outcome::Denied,
            vendor_object_id: None,
            idempotency_key,
            latency_ms: None,
            estimated_micros: None,
            reconciled_at_ms: None,
        }
    }
}

/// An in-memory [`LedgerStore`] for tests: it keeps exactly what a real store would.
#[derive(Default, Debug)]
pub struct MemoryStore {
    pub key: std::cell::RefCell<Option<KeyRecord>>,
    pub reservations: std::cell::RefCell<BTreeMap<u64, Reservation>>,
    pub audit: std::cell::RefCell<Vec<AuditRow>>,
    pub reconciliations: std::cell::RefCell<BTreeMap<u64, Reconciliation>>,
}

impl LedgerStore for MemoryStore {
    type Error = std::convert::Infallible;
    fn put_key(&self, key: &KeyRecord) -> Result<(), Self::Error> {
        *self.key.borrow_mut() = Some(key.clone());
        Ok(())
    }
    fn put_reservation(&self, r: &Reservation) -> Result<(), Self::Error> {
        self.reservations.borrow_mut().insert(r.id, r.clone());
        Ok(())
    }
    fn delete_reservation(&self, id: u64) -> Result<(), Self::Error> {
        self.reservations.borrow_mut().remove(&id);
        Ok(())
    }
    fn append_audit(&self, row: &AuditRow) -> Result<(), Self::Error> {
        self.audit.borrow_mut().push(row.clone());
        Ok(())
    }
    fn put_reconciliation(&self, r: &Reconciliation) -> Result<(), Self::Error> {
        self.reconciliations.borrow_mut().insert(r.id, r.clone());
        Ok(())
    }
    fn delete_reconciliation(&self, id: u64) -> Result<(), Self::Error> {
        self.reconciliations.borrow_mut().remove(&id);
        Ok(())
    }
}

impl MemoryStore {
    /// The ledger a fresh object would load from this store.
    pub fn reload(&self) -> Option<Ledger> {
        let key = self.key.borrow().clone()?;
        Some(Ledger::load(
            key,
            self.reservations.borrow().values().cloned(),
            self.reconciliations.borrow().values().cloned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::clock::MS_PER_DAY;
    use crate::core::vendor::Vendor;

    const T0: u64 = 1_795_838_767_000; // 2026-11-28T04:06:07Z
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn config(cap: u64, max_per_call: Option<u64>) -> KeyConfig {
        KeyConfig {
            key_id: ID.into(),
            vendor: Vendor::Stripe,
            daily_cap: Micros(cap),
            max_per_call: max_per_call.map(Micros),
            allowed_endpoints: vec!["POST /v1/payment_intents".into(), "GET /v1/payment_intents/{id}".into()],
            created_at_ms: T0,
            expires_at_ms: T0 + 7 * MS_PER_DAY,
            agent_run_label: Some("run-1".into()),
        }
    }

    fn hash() -> SecretHash {
        SecretHash::of(b"secret")
    }

    fn new_ledger(cap: u64) -> (MemoryStore, Ledger) {
        let store = MemoryStore::default();
        let ledger = Ledger::create(&store, config(cap, None), hash()).unwrap();
        (store, ledger)
    }

    fn call(price: Result<u64, ProxyError>) -> ReserveCall {
        ReserveCall {
            vendor: Vendor::Stripe,
            secret_hash: hash(),
            method: "POST".into(),
            path: "/v1/payment_intents".into(),
            price: price.map(|amount| Quote::Fixed { amount: Micros(amount) }),
            idempotency_key: None,
        }
    }

    fn reserve(ledger: &mut Ledger, store: &MemoryStore, now: u64, amount: u64) -> Result<Reservation, ProxyError> {
        ledger.reserve(store, now, call(Ok(amount))).unwrap().map(|(r, _)| r)
    }

    fn finish(ledger: &mut Ledger, store: &MemoryStore, now: u64, id: u64, result: CallResult) {
        let call = FinishCall {
            reservation_id: id,
            result,
            status: Some(200),
            vendor_object_id: Some("pi_1".into()),
            latency_ms: 4,
            reconcile_path: None,
        };
        ledger.finish(store, now, call).unwrap();
    }

    fn settle(ledger: &mut Ledger, store: &MemoryStore, now: u64, r: &Reservation) {
        finish(ledger, store, now, r.id, CallResult::Settled { cost: r.amount });
    }

    #[test]
    fn a_thirty_cent_cap_admits_exactly_three_ten_cent_calls() {
        let (store, mut ledger) = new_ledger(300_000);
        for _ in 0..3 {
            let r = reserve(&mut ledger, &store, T0, 100_000).unwrap();
            settle(&mut ledger, &store, T0, &r);
        }
        let err = reserve(&mut ledger, &store, T0, 100_000).unwrap_err();
        assert!(matches!(err, ProxyError::CapExhausted { .. }));
        let state = ledger.state(T0, 0);
        assert_eq!((state.spent, state.reserved, state.remaining()), (Micros(300_000), Micros::ZERO, Micros::ZERO));
    }

    #[test]
    fn open_reservations_count_against_the_cap() {
        let (store, mut ledger) = new_ledger(300_000);
        let held: Vec<_> = (0..3).map(|_| reserve(&mut ledger, &store, T0, 100_000).unwrap()).collect();
        assert!(reserve(&mut ledger, &store, T0, 1).is_err(), "spent + reserved is at the cap");
        finish(&mut ledger, &store, T0, held[0].id, CallResult::Released);
        assert!(reserve(&mut ledger, &store, T0, 100_000).is_ok(), "a release frees its money");
    }

    #[test]
    fn cap_hits_say_when_the_day_resets() {
        let (store, mut ledger) = new_ledger(0);
        assert_eq!(
            reserve(&mut ledger, &store, T0, 1),
            Err(ProxyError::CapExhausted { retry_after_secs: secs_until_next_utc_day(T0) })
        );
        assert!(reserve(&mut ledger, &store, T0, 0).is_ok(), "free calls pass a zero cap");
    }

    #[test]
    fn checks_run_in_the_contract_order() {
        let store = MemoryStore::default();
        let mut ledger = Ledger::create(&store, config(100, Some(50)), hash()).unwrap();
        let unpriceable = || Err(ProxyError::CostUnknown("x".into()));
        let mut outside = call(unpriceable());
        outside.path = "/v1/payouts".into();

        // Cap before per-call, per-call before price, price before allowlist, and so on.
        assert_eq!(reserve(&mut ledger, &store, T0, 60), Err(ProxyError::PerCallLimit));
        reserve(&mut ledger, &store, T0, 50).unwrap();
        reserve(&mut ledger, &store, T0, 50).unwrap();
        assert_eq!(reserve(&mut ledger, &store, T0, 60), Err(ProxyError::PerCallLimit));
        assert!(matches!(reserve(&mut ledger, &store, T0, 1), Err(ProxyError::CapExhausted { .. })));
        assert_eq!(
            ledger.reserve(&store, T0, call(Err(ProxyError::CurrencyNotAllowed))).unwrap(),
            Err(ProxyError::CurrencyNotAllowed)
        );
        assert_eq!(ledger.reserve(&store, T0, call(unpriceable())).unwrap().unwrap_err().kind(), "cost_unknown");
        assert_eq!(ledger.reserve(&store, T0, outside).unwrap().unwrap_err(), ProxyError::EndpointNotAllowed);
        let expired = T0 + 7 * MS_PER_DAY;
        assert_eq!(reserve(&mut ledger, &store, expired, 1), Err(ProxyError::KeyExpired));
        ledger.revoke(&store, T0).unwrap();
        assert_eq!(reserve(&mut ledger, &store, expired, 1), Err(ProxyError::KeyRevoked));
        let mut forged = call(Ok(1));
        forged.secret_hash = SecretHash::of(b"guess");
        assert_eq!(ledger.reserve(&store, T0, forged).unwrap().unwrap_err(), ProxyError::InvalidKey);
    }

    #[test]
    fn denials_are_audited_but_failed_authentication_writes_nothing() {
        let (store, mut ledger) = new_ledger(0);
        let before = (store.key.borrow().clone(), store.audit.borrow().len());
        let mut forged = call(Ok(1));
        forged.secret_hash = SecretHash::of(b"guess");
        assert_eq!(ledger.reserve(&store, T0, forged).unwrap().unwrap_err(), ProxyError::InvalidKey);
        assert_eq!((store.key.borrow().clone(), store.audit.borrow().len()), before);

        reserve(&mut ledger, &store, T0, 1).unwrap_err();
        let audit = store.audit.borrow();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (audit[0].decision.as_str(), audit[0].outcome, audit[0].status),
            ("cap_exhausted", Outcome::Denied, Some(429))
        );
        assert_eq!(audit[0].agent_run_label.as_deref(), Some("run-1"));
    }

    #[test]
    fn spend_resets_at_utc_midnight() {
        let (store, mut ledger) = new_ledger(1_000);
        let r = reserve(&mut ledger, &store, T0, 1_000).unwrap();
        settle(&mut ledger, &store, T0, &r);
        assert!(reserve(&mut ledger, &store, T0, 1).is_err());
        let midnight = (T0 / MS_PER_DAY + 1) * MS_PER_DAY;
        assert!(reserve(&mut ledger, &store, midnight - 1, 1).is_err(), "still the same UTC day");
        let r = reserve(&mut ledger, &store, midnight, 1_000).unwrap();
        assert_eq!(ledger.state(midnight, 0).reserved, Micros(1_000));
        settle(&mut ledger, &store, midnight, &r);
        assert_eq!(ledger.state(midnight, 0).spent, Micros(1_000));
    }

    #[test]
    fn a_reservation_from_yesterday_settles_into_yesterday() {
        let (store, mut ledger) = new_ledger(1_000);
        let late = (T0 / MS_PER_DAY + 1) * MS_PER_DAY - 10;
        let r = reserve(&mut ledger, &store, late, 600).unwrap();
        let next_day = late + 20;
        assert_eq!(ledger.state(next_day, 0).reserved, Micros::ZERO, "yesterday's hold is not today's");
        settle(&mut ledger, &store, next_day, &r);
        let state = ledger.state(next_day, 0);
        assert_eq!((state.spent, state.reserved), (Micros::ZERO, Micros::ZERO));
        assert!(reserve(&mut ledger, &store, next_day, 1_000).is_ok());
    }

    #[test]
    fn ambiguous_outcomes_keep_the_money_held() {
        let (store, mut ledger) = new_ledger(1_000);
        let r = reserve(&mut ledger, &store, T0, 700).unwrap();
        finish(&mut ledger, &store, T0, r.id, CallResult::Unknown);
        assert_eq!(store.audit.borrow().last().unwrap().outcome, Outcome::Unknown);
        let state = ledger.state(T0, 0);
        assert_eq!((state.spent, state.reserved), (Micros::ZERO, Micros(700)));
        assert!(reserve(&mut ledger, &store, T0, 301).is_err());
        assert_eq!(ledger.in_flight(), 0, "the vendor call itself is over");
        assert!(store.reload().unwrap().open[&r.id].unknown);
    }

    #[test]
    fn a_repeated_finish_changes_nothing() {
        let (store, mut ledger) = new_ledger(1_000);
        let r = reserve(&mut ledger, &store, T0, 700).unwrap();
        settle(&mut ledger, &store, T0, &r);
        settle(&mut ledger, &store, T0, &r);
        finish(&mut ledger, &store, T0, r.id, CallResult::Released);
        assert_eq!(ledger.state(T0, 0).spent, Micros(700));
        assert_eq!(store.audit.borrow().len(), 1);
    }

    #[test]
    fn settlement_debits_what_the_vendor_reports() {
        let (store, mut ledger) = new_ledger(1_000);
        let r = reserve(&mut ledger, &store, T0, 700).unwrap();
        finish(&mut ledger, &store, T0, r.id, CallResult::Settled { cost: Micros(650) });
        assert_eq!(ledger.state(T0, 0).spent, Micros(650));
        let row = store.audit.borrow().last().unwrap().clone();
        assert_eq!((row.reserved_micros, row.cost_micros, row.vendor_object_id.as_deref()), (700, 650, Some("pi_1")));
        assert_eq!((row.decision.as_str(), row.outcome, row.latency_ms), ("forwarded", Outcome::Settled, Some(4)));
    }

    #[test]
    fn revoke_is_idempotent_and_final() {
        let (store, mut ledger) = new_ledger(1_000);
        assert_eq!(ledger.revoke(&store, T0 + 5).unwrap(), T0 + 5);
        assert_eq!(ledger.revoke(&store, T0 + 9).unwrap(), T0 + 5);
        assert_eq!(reserve(&mut ledger, &store, T0 + 10, 0), Err(ProxyError::KeyRevoked));
        assert_eq!(store.reload().unwrap().key.revoked_at_ms, Some(T0 + 5));
    }

    #[test]
    fn audit_row_ids_are_unique_and_ordered() {
        let (store, mut ledger) = new_ledger(1_000);
        for _ in 0..3 {
            let r = reserve(&mut ledger, &store, T0, 1).unwrap();
            settle(&mut ledger, &store, T0, &r);
            let _ = reserve(&mut ledger, &store, T0, 5_000);
        }
        let ids: Vec<String> = store.audit.borrow().iter().map(|r| r.id.clone()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(ids, sorted);
    }

    fn per_minute(unit: u64, max_units: u64) -> ReserveCall {
        ReserveCall { price: Ok(Quote::PerUnit { unit: Micros(unit), max_units }), ..call(Ok(0)) }
    }

    #[test]
    fn per_unit_quotes_hold_what_the_budget_allows() {
        let (store, mut ledger) = new_ledger(100_000);
        let (r, units) = ledger.reserve(&store, T0, per_minute(14_000, 240)).unwrap().unwrap();
        assert_eq!((units, r.amount), (7, Micros(98_000)), "7 whole minutes fit in $0.10");
        let (_, units) = ledger.reserve(&store, T0, per_minute(1_000, 240)).unwrap().unwrap();
        assert_eq!(units, 2, "the rest of the budget");
        assert!(matches!(
            ledger.reserve(&store, T0, per_minute(1_000, 240)).unwrap(),
            Err(ProxyError::CapExhausted { .. })
        ));

        let (store, mut ledger) = new_ledger(10_000_000);
        let (_, units) = ledger.reserve(&store, T0, per_minute(14_000, 240)).unwrap().unwrap();
        assert_eq!(units, 240, "bounded by the vendor's maximum");

        let store = MemoryStore::default();
        let mut ledger = Ledger::create(&store, config(10_000_000, Some(50_000)), hash()).unwrap();
        let (_, units) = ledger.reserve(&store, T0, per_minute(14_000, 240)).unwrap().unwrap();
        assert_eq!(units, 3, "bounded by max_usd_per_call");
        assert_eq!(ledger.reserve(&store, T0, per_minute(60_000, 240)).unwrap().unwrap_err(), ProxyError::PerCallLimit);
    }

    fn settle_estimate(ledger: &mut Ledger, store: &MemoryStore, now: u64, amount: u64) -> u64 {
        let r = reserve(ledger, store, now, amount).unwrap();
        let call = FinishCall {
            reservation_id: r.id,
            result: CallResult::Settled { cost: r.amount },
            status: Some(201),
            vendor_object_id: Some("SM1".into()),
            latency_ms: 3,
            reconcile_path: Some("/2010-04-01/Accounts/AC1/Messages/SM1.json".into()),
        };
        ledger.finish(store, now, call).unwrap();
        r.id
    }

    #[test]
    fn reconciliation_moves_spend_from_the_estimate_to_the_real_price() {
        let (store, mut ledger) = new_ledger(100_000);
        let id = settle_estimate(&mut ledger, &store, T0, 14_300);
        assert_eq!(ledger.state(T0, 0).spent, Micros(14_300));
        assert_eq!(ledger.due_reconciliations(T0).len(), 1);
        assert_eq!(store.audit.borrow().last().unwrap().estimated_micros, Some(14_300));

        ledger.reconcile_later(&store, T0 + 1, id, 30_000).unwrap();
        assert!(ledger.due_reconciliations(T0 + 1).is_empty());
        assert_eq!(ledger.next_reconciliation_at(), Some(T0 + 30_001));
        assert_eq!(store.reload().unwrap().reconciling[&id].attempts, 1, "the backoff is stored");

        ledger.reconcile(&store, T0 + 40_000, id, Micros(8_300)).unwrap();
        let state = ledger.state(T0 + 40_000, 0);
        assert_eq!((state.spent, state.reconciling), (Micros(8_300), 0));
        let row = store.audit.borrow().last().unwrap().clone();
        assert_eq!(
            (row.cost_micros, row.estimated_micros, row.reconciled_at_ms),
            (8_300, Some(14_300), Some(T0 + 40_000))
        );
        assert_eq!(row.id, store.audit.borrow()[0].id, "the same audit row, updated");
        ledger.reconcile(&store, T0 + 50_000, id, Micros(1)).unwrap();
        assert_eq!(ledger.state(T0 + 50_000, 0).spent, Micros(8_300), "reconciling twice changes nothing");
    }

    #[test]
    fn a_real_price_above_the_estimate_is_still_debited() {
        let (store, mut ledger) = new_ledger(20_000);
        let id = settle_estimate(&mut ledger, &store, T0, 20_000);
        ledger.reconcile(&store, T0 + 1, id, Micros(26_000)).unwrap();
        let state = ledger.state(T0 + 1, 0);
        assert_eq!(state.spent, Micros(26_000), "over the cap by exactly the difference");
        assert!(reserve(&mut ledger, &store, T0 + 2, 0).is_ok(), "free calls still pass");
        assert!(reserve(&mut ledger, &store, T0 + 2, 1).is_err());
    }

    #[test]
    fn reconciliation_gives_up_after_a_day_and_keeps_the_estimate() {
        let (store, mut ledger) = new_ledger(100_000);
        let id = settle_estimate(&mut ledger, &store, T0, 14_300);
        ledger.reconcile_later(&store, T0 + RECONCILE_GIVE_UP_MS, id, 1).unwrap();
        assert_eq!(ledger.state(T0 + RECONCILE_GIVE_UP_MS, 0).reconciling, 0);
        assert!(store.reconciliations.borrow().is_empty());
    }

    /// xorshift64*: deterministic, dependency-free randomness for the property test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn spent_plus_reserved_never_exceeds_the_cap_over_random_operations() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let cap = rng.below(5_000_000);
            let (store, mut ledger) = new_ledger(cap);
            let mut now = T0;
            let mut open: Vec<Reservation> = Vec::new();
            for _ in 0..300 {
                now += rng.below(600_000); // spans day boundaries and, eventually, expiry
                match rng.below(10) {
                    0..=4 => {
                        if let Ok(r) = reserve(&mut ledger, &store, now, rng.below(1_000_000)) {
                            open.push(r);
                        }
                    }
                    5..=7 if !open.is_empty() => {
                        let r = open.swap_remove(rng.below(open.len() as u64) as usize);
                        let cost = Micros(rng.below(r.amount.0 + 1)); // vendors never report more than asked here
                        finish(&mut ledger, &store, now, r.id, CallResult::Settled { cost });
                    }
                    8 if !open.is_empty() => {
                        let r = open.swap_remove(rng.below(open.len() as u64) as usize);
                        let result = if rng.below(2) == 0 { CallResult::Released } else { CallResult::Unknown };
                        finish(&mut ledger, &store, now, r.id, result);
                    }
                    _ => {
                        if rng.below(50) == 0 {
                            ledger.revoke(&store, now).unwrap();
                        }
                    }
                }
                let state = ledger.state(now, 0);
                let committed = state.spent.0 + state.reserved.0;
                assert!(
                    committed <= cap,
                    "seed {seed}: spent {} + reserved {} > cap {cap}",
                    state.spent.0,
                    state.reserved.0
                );

                let mut reloaded = store.reload().unwrap();
                assert_eq!(reloaded.state(now, 0), state, "seed {seed}: the store lags the ledger");
                assert_eq!(reloaded.open, ledger.open);
            }
        }
    }
}
