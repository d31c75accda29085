//! The per-key ledger: the state one `VaultKey` Durable Object guards. Pure: it never imports
//! `worker`, and is tested natively against [`MemoryStore`].
//!
//! Every method is synchronous and runs to completion before the next call is delivered, so a
//! check and the debit it guards can never interleave with another request. Each change is
//! written through a [`LedgerStore`] in the same step, audit row included, so a crash leaves
//! either all of it or none.
//!
//! - this module: reserve, finish, revoke, refresh, the daily window and `Idempotency-Key`s;
//! - [`late`]: what is learned after a call has returned: real prices published later,
//!   ambiguous outcomes resolved by replay, calls whose Worker never reported back.

mod late;
pub mod protocol;
#[cfg(test)]
mod tests;
pub mod tree;
#[cfg(test)]
mod tree_tests;

use crate::core::allowlist;
use crate::core::answer::Attempt;
use crate::core::audit::{AuditRow, Outcome};
use crate::core::clock::{secs_until_next_utc_day, utc_day, MAX_TTL_SECS, MS_PER_SEC};
use crate::core::cost::Quote;
use crate::core::error::{CapScope, ProxyError};
use crate::core::keys::{KeyConfig, KeyState};
use crate::core::money::Micros;
use crate::core::token::SecretHash;
use crate::ledger::protocol::{CallResult, FinishCall, Replay, ReserveCall};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use late::{Reconciliation, RECONCILE_GIVE_UP_MS, REPLAY_WINDOW_MS};

/// How long an `Idempotency-Key` is remembered: the vendors' own retention (Stripe, Resend).
pub const IDEMPOTENCY_RETENTION_MS: u64 = 24 * 3_600_000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Refused calls on one key that get a row each per UTC day; the rest are counted on one row.
pub const DENIED_ROWS_PER_DAY: u32 = 100;

/// The refused calls of one UTC day on a key, as far as the audit trail is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denials {
    pub day: u64,
    /// Refusals that got a row of their own.
    pub rows: u32,
    /// The one row that counts the rest.
    pub coalesced: Option<AuditRow>,
}

/// Keys Keybrake makes up start with this. A client may send one back only if this vault key
/// made it: the vendor's idempotency namespace is account-wide, so a key made for another
/// vault key would reach that key's calls.
pub const MADE_UP_PREFIX: &str = "kb_";

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
    /// A repeat of a settled call: it debits nothing, whatever the vendor answers.
    pub replay: bool,
    /// Set once the call ended ambiguously; the money stays held until it is resolved.
    pub unknown: Option<Unresolved>,
}

/// What the ledger keeps about a call whose outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unresolved {
    /// The call's audit row, sent again with the real outcome once it is known.
    pub row: AuditRow,
    /// Until when the call may be sent again under the same `Idempotency-Key` (its
    /// [`Replay`] is kept in the store, apart, so that waking the object never loads bodies).
    /// `None` when it never may: the vendor has no idempotency (Twilio), the Worker never
    /// reported back, the key was revoked, or the vendor's window has passed. The hold then
    /// stays, and the key's state counts it as unresolved.
    #[serde(default)]
    pub replay_until_ms: Option<u64>,
    pub attempts: u32,
    pub next_at_ms: u64,
}

/// An `Idempotency-Key` the ledger has seen on this vault key, bound at first use to the
/// fingerprint of its call: a retry is admitted only if it is that same call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub key: String,
    /// See [`ReserveCall::fingerprint`].
    #[serde(default)]
    pub fingerprint: String,
    /// The reservation that holds, or held, the call's money.
    pub reservation_id: u64,
    pub state: KeyUse,
    pub status: Option<u16>,
    pub cost: Micros,
    pub vendor_object_id: Option<String>,
    /// The key's first use: the vendor's retention counts from here.
    pub created_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyUse {
    InFlight,
    Settled,
    Released,
    Unknown,
}

/// Where the ledger's state lives. The Durable Object implements it on its SQLite storage;
/// tests use [`MemoryStore`].
pub trait LedgerStore {
    type Error;
    /// Writes the whole record: at creation, and when the config changes (refresh).
    fn put_key(&self, key: &KeyRecord) -> Result<(), Self::Error>;
    /// Writes the record's counters (revocation, day, spend, sequence).
    fn put_counters(&self, key: &KeyRecord) -> Result<(), Self::Error>;
    fn put_reservation(&self, r: &Reservation) -> Result<(), Self::Error>;
    fn delete_reservation(&self, id: u64) -> Result<(), Self::Error>;
    /// Appends to the audit outbox, from which rows are copied to D1. A row with an id already
    /// sent replaces it there (a reconciled cost, a resolved outcome); one still waiting in the
    /// outbox is replaced in place, so a row updated often (a coalesced count) is sent once.
    fn append_audit(&self, row: &AuditRow) -> Result<(), Self::Error>;
    fn put_reconciliation(&self, r: &Reconciliation) -> Result<(), Self::Error>;
    fn delete_reconciliation(&self, id: u64) -> Result<(), Self::Error>;
    /// Looked up on demand, so thousands of remembered keys cost nothing until used.
    fn get_idempotency(&self, key: &str) -> Result<Option<Remembered>, Self::Error>;
    fn put_idempotency(&self, r: &Remembered) -> Result<(), Self::Error>;
    /// The request of an unknown call, kept apart from the ledger and read only to replay it.
    fn put_replay(&self, id: u64, replay: &Replay) -> Result<(), Self::Error>;
    fn put_denials(&self, denials: &Denials) -> Result<(), Self::Error>;
    fn get_replay(&self, id: u64) -> Result<Option<Replay>, Self::Error>;
    fn delete_replay(&self, id: u64) -> Result<(), Self::Error>;
}

/// A call the ledger let through.
#[derive(Debug, PartialEq, Eq)]
pub struct Admitted {
    pub reservation: Reservation,
    /// For a per-unit quote, how many units the hold buys.
    pub units: u64,
    /// The key to send upstream as `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// A repeat of a call whose outcome is unknown: a 429 then says nothing about the first.
    pub attempt: Attempt,
}

/// What the limits above a key's own leave it today: the least remaining of its own cap over
/// its whole subtree, each ancestor's cap over theirs, and its issuer's budget, with the
/// scope of the one that binds. A key alone in its object has no limit above its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headroom {
    pub amount: Micros,
    pub scope: CapScope,
}

impl Headroom {
    pub const UNBOUNDED: Headroom = Headroom { amount: Micros(u64::MAX), scope: CapScope::Key };
}

#[derive(Debug)]
pub struct Ledger {
    key: KeyRecord,
    open: BTreeMap<u64, Reservation>,
    reconciling: BTreeMap<u64, Reconciliation>,
    /// Sum of open reservations made on `key.day`.
    reserved_today: Micros,
    denials: Denials,
}

impl Ledger {
    pub fn create<S: LedgerStore>(store: &S, config: KeyConfig, secret_hash: SecretHash) -> Result<Ledger, S::Error> {
        let day = utc_day(config.created_at_ms);
        let key = KeyRecord { config, secret_hash, revoked_at_ms: None, day, spent: Micros::ZERO, seq: 0 };
        store.put_key(&key)?;
        Ok(Ledger {
            key,
            open: BTreeMap::new(),
            reconciling: BTreeMap::new(),
            reserved_today: Micros::ZERO,
            denials: Denials::default(),
        })
    }

    /// Rebuilds the ledger from what a store holds.
    pub fn load(
        key: KeyRecord,
        open: impl IntoIterator<Item = Reservation>,
        reconciling: impl IntoIterator<Item = Reconciliation>,
        denials: Denials,
    ) -> Ledger {
        let open: BTreeMap<u64, Reservation> = open.into_iter().map(|r| (r.id, r)).collect();
        let reconciling = reconciling.into_iter().map(|r| (r.id, r)).collect();
        let mut ledger = Ledger { key, open, reconciling, reserved_today: Micros::ZERO, denials };
        ledger.recount_reserved();
        ledger
    }

    pub fn vendor(&self) -> crate::core::vendor::Vendor {
        self.key.config.vendor
    }

    /// Whether `secret_hash` is this key's secret, for `vendor`.
    pub fn authenticates(&self, vendor: crate::core::vendor::Vendor, secret_hash: &SecretHash) -> bool {
        vendor == self.key.config.vendor && self.key.secret_hash.matches(secret_hash)
    }

    /// Runs the contract's checks in order and, if all pass, holds the price against today's cap.
    /// A refusal of an authenticated call is audited; a failed authentication writes nothing.
    ///
    /// One admission rule for every call, first try or retry: a retry under a remembered
    /// `Idempotency-Key` must be the same call (its fingerprint), and is then priced and checked
    /// like any call. It may reuse its own hold only because it is that same call.
    pub fn reserve<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        call: ReserveCall,
    ) -> Result<Result<Admitted, ProxyError>, S::Error> {
        self.reserve_within(store, now_ms, call, Headroom::UNBOUNDED)
    }

    /// [`Ledger::reserve`] for a key with limits above its own (see [`tree`]): the price must
    /// also fit `headroom`.
    pub fn reserve_within<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        call: ReserveCall,
        headroom: Headroom,
    ) -> Result<Result<Admitted, ProxyError>, S::Error> {
        if !self.authenticates(call.vendor, &call.secret_hash) {
            return Ok(Err(ProxyError::InvalidKey));
        }
        self.roll_day(now_ms);
        let seq = self.next_seq();
        let admitted = match self.check_key(now_ms, &call) {
            Err(error) => Err(error),
            Ok(()) => match self.recall(store, now_ms, &call)? {
                None if call.idempotent && call.idempotency_key.as_deref().is_some_and(is_made_up) => {
                    Err(ProxyError::InvalidRequest(format!(
                        "Idempotency-Key values starting with {MADE_UP_PREFIX} are made by Keybrake; \
                         send back only one it gave this vault key"
                    )))
                }
                Some(seen) if seen.fingerprint != call.fingerprint => Err(ProxyError::IdempotencyMismatch),
                Some(seen) if seen.state == KeyUse::InFlight => Err(ProxyError::IdempotencyInFlight),
                // The money moved the first time: the vendor replays its answer, nothing new is
                // held. The price is still checked, as for any call.
                Some(seen) if seen.state == KeyUse::Settled => match &call.price {
                    Ok(_) => Ok(self.admit_replay(seq, now_ms, &call, seen)),
                    Err(error) => Err(error.clone()),
                },
                Some(seen) if seen.state == KeyUse::Unknown && self.open.contains_key(&seen.reservation_id) => {
                    self.admit_retry_of_unknown(store, now_ms, &call, seen, headroom)?
                }
                _ => match self.check_price(now_ms, &call, Micros::ZERO, headroom) {
                    Ok((amount, units)) => Ok(self.admit(store, seq, now_ms, &call, amount, units)?),
                    Err(error) => Err(error),
                },
            },
        };
        match admitted {
            Ok(admitted) => {
                store.put_counters(&self.key)?;
                store.put_reservation(&admitted.reservation)?;
                Ok(Ok(admitted))
            }
            Err(error) => {
                let row = self.audit_row(seq, now_ms, &call.method, &call.path, call.idempotency_key);
                store.put_counters(&self.key)?;
                let row = AuditRow { status: Some(error.status()), decision: error.kind().into(), ..row };
                self.record_denial(store, now_ms, row)?;
                Ok(Err(error))
            }
        }
    }

    /// Audits a refused call. The day's first [`DENIED_ROWS_PER_DAY`] get a row each; past
    /// that, and on a revoked or expired key from the first, they are counted on one row per
    /// day (`count`, first and last time, the distinct error types), so a flood of refused
    /// calls costs D1 a bounded number of rows.
    fn record_denial<S: LedgerStore>(&mut self, store: &S, now_ms: u64, row: AuditRow) -> Result<(), S::Error> {
        let day = utc_day(now_ms);
        if self.denials.day != day {
            self.denials = Denials { day, rows: 0, coalesced: None };
        }
        let dead = self.key.revoked_at_ms.is_some() || now_ms >= self.key.config.expires_at_ms;
        if !dead && self.denials.rows < DENIED_ROWS_PER_DAY {
            self.denials.rows += 1;
            store.put_denials(&self.denials)?;
            return store.append_audit(&row);
        }
        let id = format!("{}-denied-{day}", self.key.config.key_id);
        let coalesced = self.denials.coalesced.get_or_insert_with(|| AuditRow {
            id,
            count: 0,
            decision: String::new(),
            idempotency_key: None,
            idempotency_key_truncated: false,
            ..row.clone()
        });
        coalesced.count += 1;
        coalesced.last_ts_ms = Some(now_ms);
        coalesced.status = row.status;
        if !coalesced.decision.split(',').any(|d| d == row.decision) {
            let mut kinds: Vec<&str> = coalesced.decision.split(',').filter(|d| !d.is_empty()).collect();
            kinds.push(&row.decision);
            kinds.sort_unstable();
            coalesced.decision = kinds.join(",");
        }
        store.put_denials(&self.denials)?;
        if let Some(c) = &self.denials.coalesced {
            store.append_audit(c)?;
        }
        Ok(())
    }

    /// What is remembered about the call's `Idempotency-Key`, within the vendor's retention.
    fn recall<S: LedgerStore>(
        &self,
        store: &S,
        now_ms: u64,
        call: &ReserveCall,
    ) -> Result<Option<Remembered>, S::Error> {
        match (&call.idempotency_key, call.idempotent) {
            (Some(key), true) => {
                Ok(store.get_idempotency(key)?.filter(|r| now_ms < r.created_ms + IDEMPOTENCY_RETENTION_MS))
            }
            _ => Ok(None),
        }
    }

    /// A new call: hold its price, and remember its `Idempotency-Key` (made up if need be).
    /// Vendors without idempotency get no key at all: theirs would be forwarded for nothing.
    fn admit<S: LedgerStore>(
        &mut self,
        store: &S,
        seq: u64,
        now_ms: u64,
        call: &ReserveCall,
        amount: Micros,
        units: u64,
    ) -> Result<Admitted, S::Error> {
        let idempotency_key = match (call.idempotent, &call.idempotency_key) {
            (true, None) => Some(format!("{MADE_UP_PREFIX}{}_{seq}", self.key.config.key_id)),
            (true, key) => key.clone(),
            (false, _) => None,
        };
        let reservation = Reservation {
            id: seq,
            amount,
            day: self.key.day,
            method: call.method.clone(),
            path: call.path.clone(),
            started_ms: now_ms,
            idempotency_key: idempotency_key.clone(),
            replay: false,
            unknown: None,
        };
        if let Some(key) = &idempotency_key {
            store.put_idempotency(&Remembered {
                key: key.clone(),
                fingerprint: call.fingerprint.clone(),
                reservation_id: seq,
                state: KeyUse::InFlight,
                status: None,
                cost: Micros::ZERO,
                vendor_object_id: None,
                created_ms: now_ms,
            })?;
        }
        self.reserved_today = self.reserved_today.checked_add(amount).unwrap_or(Micros(u64::MAX));
        self.open.insert(reservation.id, reservation.clone());
        Ok(Admitted { reservation, units, idempotency_key, attempt: Attempt::First })
    }

    /// The key's call was settled: forward so the vendor replays its stored answer, holding
    /// nothing, since the money was debited the first time.
    fn admit_replay(&mut self, seq: u64, now_ms: u64, call: &ReserveCall, seen: Remembered) -> Admitted {
        let reservation = Reservation {
            id: seq,
            amount: Micros::ZERO,
            day: self.key.day,
            method: call.method.clone(),
            path: call.path.clone(),
            started_ms: now_ms,
            idempotency_key: Some(seen.key.clone()),
            replay: true,
            unknown: None,
        };
        self.open.insert(reservation.id, reservation.clone());
        Admitted { reservation, units: 1, idempotency_key: Some(seen.key), attempt: Attempt::First }
    }

    /// The key's call ended ambiguously and its hold is still open: this retry is the same
    /// call (same fingerprint), and will learn the outcome (the vendor replays it or runs the
    /// call once). It is priced and checked like any call, counting its own hold as available,
    /// and takes that hold over, growing it should the price have grown.
    fn admit_retry_of_unknown<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        call: &ReserveCall,
        seen: Remembered,
        headroom: Headroom,
    ) -> Result<Result<Admitted, ProxyError>, S::Error> {
        let Some(mut reservation) = self.open.get(&seen.reservation_id).cloned() else {
            return Ok(Err(ProxyError::Internal));
        };
        let own_hold = if reservation.day == self.key.day { reservation.amount } else { Micros::ZERO };
        let (amount, _) = match self.check_price(now_ms, call, own_hold, headroom) {
            Ok(priced) => priced,
            Err(error) => return Ok(Err(error)),
        };
        if amount > reservation.amount {
            if reservation.day != self.key.day {
                // Yesterday's hold cannot grow into today's cap.
                return Ok(Err(ProxyError::key_cap(secs_until_next_utc_day(now_ms))));
            }
            self.reserved_today =
                self.reserved_today.saturating_sub(reservation.amount).checked_add(amount).unwrap_or(Micros(u64::MAX));
            reservation.amount = amount;
        }
        reservation.unknown = None;
        reservation.started_ms = now_ms;
        // The retry carries the same request: if it too ends unknown, it brings a new copy.
        store.delete_replay(reservation.id)?;
        store.put_idempotency(&Remembered { state: KeyUse::InFlight, ..seen.clone() })?;
        self.open.insert(reservation.id, reservation.clone());
        Ok(Ok(Admitted { reservation, units: 1, idempotency_key: Some(seen.key), attempt: Attempt::Repeat }))
    }

    /// The contract's checks 2 to 4: revocation, expiry, the allowlist (with the key's rules on
    /// connected accounts and `expand[]`).
    fn check_key(&self, now_ms: u64, call: &ReserveCall) -> Result<(), ProxyError> {
        let config = &self.key.config;
        if let Some(error) = &call.refused {
            return Err(error.clone());
        }
        if call.idempotency_key.as_ref().is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_LEN) {
            return Err(ProxyError::InvalidRequest(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"
            )));
        }
        if self.key.revoked_at_ms.is_some() {
            return Err(ProxyError::KeyRevoked);
        }
        if now_ms >= config.expires_at_ms {
            return Err(ProxyError::KeyExpired);
        }
        if !allowlist::allows(&config.allowed_endpoints, &call.method, &call.path) {
            return Err(ProxyError::EndpointNotAllowed);
        }
        if call.stripe_account.is_some() && call.stripe_account != config.stripe_account {
            return Err(ProxyError::HeaderNotAllowed("Stripe-Account".into()));
        }
        if call.expand && !config.allow_expand {
            return Err(ProxyError::ParameterNotAllowed("expand[]".into()));
        }
        Ok(())
    }

    /// The contract's checks 5 to 8: the price, the per-call limit, the daily cap and the limits
    /// above it (`headroom`), with `own_hold` (a retry's own hold, which it takes over) counted
    /// as available. Returns the amount to hold and, for a per-unit quote, how many units it buys.
    fn check_price(
        &self,
        now_ms: u64,
        call: &ReserveCall,
        own_hold: Micros,
        headroom: Headroom,
    ) -> Result<(Micros, u64), ProxyError> {
        let config = &self.key.config;
        let own = config
            .daily_cap
            .saturating_sub(self.key.spent)
            .saturating_sub(self.reserved_today.saturating_sub(own_hold));
        // The retry's own hold is in every sum above this key too.
        let above = headroom.amount.checked_add(own_hold).unwrap_or(Micros(u64::MAX));
        let (available, scope) = if above < own { (above, headroom.scope) } else { (own, CapScope::Key) };
        let cap_hit = || {
            let retry_after_secs = secs_until_next_utc_day(now_ms);
            match scope {
                CapScope::Issuer => ProxyError::BudgetExhausted { retry_after_secs },
                scope => ProxyError::CapExhausted { retry_after_secs, scope },
            }
        };
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
    /// is no longer in flight (a repeated report) changes nothing.
    pub fn finish<S: LedgerStore>(&mut self, store: &S, now_ms: u64, call: FinishCall) -> Result<(), S::Error> {
        self.roll_day(now_ms);
        let Some(r) = self.open.get(&call.reservation_id).filter(|r| r.unknown.is_none()).cloned() else {
            return Ok(());
        };
        let seq = self.next_seq();
        let mut row = AuditRow {
            status: call.status,
            decision: "forwarded".into(),
            reserved_micros: r.amount.0,
            outcome: call.result.outcome(),
            vendor_object_id: call.vendor_object_id.clone(),
            latency_ms: Some(call.latency_ms),
            ..self.audit_row(seq, now_ms, &r.method, &r.path, r.idempotency_key.clone())
        };
        if r.replay {
            // The money moved the first time; whatever the vendor says now, debit nothing.
            row.outcome = Outcome::Replayed;
            store.put_counters(&self.key)?;
            store.delete_reservation(r.id)?;
            store.append_audit(&row)?;
            self.open.remove(&r.id);
            return Ok(());
        }
        if call.result == CallResult::Unknown {
            let replay_until_ms = match call.replay {
                Some(replay) if self.key.revoked_at_ms.is_none() => {
                    let until = self.replay_window_end(store, &r)?;
                    if until.is_some() {
                        store.put_replay(r.id, &replay)?;
                    }
                    until
                }
                _ => None,
            };
            let unresolved = Unresolved { row: row.clone(), replay_until_ms, attempts: 0, next_at_ms: now_ms };
            self.remember(store, &r, KeyUse::Unknown, call.status, Micros::ZERO, None)?;
            self.hold_as_unknown(store, r, unresolved)?;
            return Ok(());
        }
        let cost = match call.result {
            CallResult::Settled { cost } => cost,
            _ => Micros::ZERO,
        };
        row.cost_micros = cost.0;
        let state = if call.result == CallResult::Released { KeyUse::Released } else { KeyUse::Settled };
        self.remember(store, &r, state, call.status, cost, call.vendor_object_id)?;
        self.close(store, &r, cost)?;
        match late::reconciliation_for(&r, &call.result, call.reconcile_path, now_ms, &row) {
            Some(rec) => {
                store.append_audit(&rec.row)?;
                store.put_reconciliation(&rec)?;
                self.reconciling.insert(rec.id, rec);
            }
            None => store.append_audit(&row)?,
        }
        Ok(())
    }

    /// Debits `cost` to the reservation's day and drops the hold.
    fn close<S: LedgerStore>(&mut self, store: &S, r: &Reservation, cost: Micros) -> Result<(), S::Error> {
        if r.day == self.key.day {
            self.key.spent = self.key.spent.checked_add(cost).unwrap_or(Micros(u64::MAX));
            self.reserved_today = self.reserved_today.saturating_sub(r.amount);
        }
        store.put_counters(&self.key)?;
        store.delete_reservation(r.id)?;
        self.open.remove(&r.id);
        Ok(())
    }

    /// Keeps the hold of a call whose outcome is unknown.
    fn hold_as_unknown<S: LedgerStore>(
        &mut self,
        store: &S,
        r: Reservation,
        unresolved: Unresolved,
    ) -> Result<(), S::Error> {
        let held = Reservation { unknown: Some(unresolved), ..r };
        store.put_counters(&self.key)?;
        store.put_reservation(&held)?;
        if let Some(u) = &held.unknown {
            store.append_audit(&u.row)?;
        }
        self.open.insert(held.id, held);
        Ok(())
    }

    /// Updates what is remembered about the reservation's `Idempotency-Key`, if it has one.
    fn remember<S: LedgerStore>(
        &self,
        store: &S,
        r: &Reservation,
        state: KeyUse,
        status: Option<u16>,
        cost: Micros,
        vendor_object_id: Option<String>,
    ) -> Result<(), S::Error> {
        let Some(key) = &r.idempotency_key else { return Ok(()) };
        let Some(seen) = store.get_idempotency(key)? else { return Ok(()) };
        if seen.reservation_id != r.id {
            return Ok(());
        }
        store.put_idempotency(&Remembered { state, status, cost, vendor_object_id, ..seen })
    }

    /// Revokes the key. Idempotent: a second revoke keeps the first time.
    ///
    /// A revoked key sends nothing more with a body: calls whose outcome is unknown are no
    /// longer replayed. Their holds stay, counted as unresolved, since the vendor may have
    /// charged. Calls in flight are waited for by the object before it answers.
    pub fn revoke<S: LedgerStore>(&mut self, store: &S, now_ms: u64) -> Result<u64, S::Error> {
        if let Some(at) = self.key.revoked_at_ms {
            return Ok(at);
        }
        self.key.revoked_at_ms = Some(now_ms);
        store.put_counters(&self.key)?;
        for r in self.open.values_mut() {
            if let Some(u) = r.unknown.as_mut().filter(|u| u.replay_until_ms.is_some()) {
                u.replay_until_ms = None;
                store.put_reservation(r)?;
                store.delete_replay(r.id)?;
            }
        }
        Ok(now_ms)
    }

    /// Moves an active key's expiry to `ttl_secs` from now, within 30 days of its creation.
    pub fn refresh<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        ttl_secs: u64,
    ) -> Result<Result<(), ProxyError>, S::Error> {
        if self.key.revoked_at_ms.is_some() {
            return Ok(Err(ProxyError::Conflict("This vault key is revoked; issue a new one.".into())));
        }
        if now_ms >= self.key.config.expires_at_ms {
            return Ok(Err(ProxyError::Conflict("This vault key has expired; issue a new one.".into())));
        }
        let expires_at_ms = now_ms + ttl_secs * MS_PER_SEC;
        if expires_at_ms > self.key.config.created_at_ms + MAX_TTL_SECS * MS_PER_SEC {
            return Ok(Err(ProxyError::InvalidRequest(
                "expires_in would take the key past 30 days from its creation".into(),
            )));
        }
        self.key.config.expires_at_ms = expires_at_ms;
        store.put_key(&self.key)?;
        Ok(Ok(()))
    }

    /// Calls let through whose vendor call may still be under way: not reported back, and
    /// admitted less than `cut_off_ms` ago. Past that the Worker has aborted its vendor call,
    /// or has died and its connection with it.
    pub fn in_flight(&self, now_ms: u64, cut_off_ms: u64) -> usize {
        self.open.values().filter(|r| r.unknown.is_none() && now_ms < r.started_ms + cut_off_ms).count()
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
            unresolved: self.open.values().filter(|r| r.unknown.is_some()).count() as u64,
            descendants: Micros::ZERO,
        }
    }

    pub fn config(&self) -> &KeyConfig {
        &self.key.config
    }

    pub fn is_revoked(&self) -> bool {
        self.key.revoked_at_ms.is_some()
    }

    /// Neither revoked nor expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        !self.is_revoked() && now_ms < self.key.config.expires_at_ms
    }

    /// Whether the ledger has nothing left to do and counts for nothing: the key is dead, no
    /// call of it is open or waiting for a price, and it spent nothing on `day`. Such a ledger
    /// may leave memory; its object reads it back from storage when it is asked about.
    pub fn is_settled_and_dead(&self, now_ms: u64, day: u64) -> bool {
        !self.is_live(now_ms)
            && self.open.is_empty()
            && self.reconciling.is_empty()
            && self.used_on(day).0 == Micros::ZERO
    }

    /// Spent on `day` plus what is held against it, as it counts against the caps above.
    pub fn used_on(&self, day: u64) -> (Micros, Micros) {
        if self.key.day == day {
            (self.key.spent, self.reserved_today)
        } else {
            // The day has not rolled here yet: nothing has been spent or held on `day`.
            (Micros::ZERO, Micros::ZERO)
        }
    }

    /// The connected account the key is pinned to, if any.
    pub fn stripe_account(&self) -> Option<&str> {
        self.key.config.stripe_account.as_deref()
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
        let idempotency_key_truncated = idempotency_key.as_ref().is_some_and(|k| k.len() > MAX_IDEMPOTENCY_KEY_LEN);
        AuditRow {
            id: format!("{}-{seq:010}", config.key_id),
            ts_ms: now_ms,
            key_id: config.key_id.clone(),
            agent_run_label: config.agent_run_label.clone(),
            vendor: config.vendor.name().into(),
            method: method.into(),
            // A refused path may be as long as the client made it.
            path: crate::core::cost::truncate(path, crate::core::allowlist::MAX_PATH_LEN),
            status: None,
            decision: String::new(),
            reserved_micros: 0,
            cost_micros: 0,
            outcome: Outcome::Denied,
            vendor_object_id: None,
            // Bounded whatever the client sent, and flagged when cut.
            idempotency_key: idempotency_key.map(|k| crate::core::cost::truncate(&k, MAX_IDEMPOTENCY_KEY_LEN)),
            latency_ms: None,
            estimated_micros: None,
            reconciled_at_ms: None,
            count: 1,
            last_ts_ms: None,
            idempotency_key_truncated,
            issuer_id: config.issuer_id.clone(),
            parent_key_id: config.parent_key_id.clone(),
        }
    }
}

/// Whether a client's `Idempotency-Key` is in the namespace of keys Keybrake makes up.
fn is_made_up(key: &str) -> bool {
    key.starts_with(MADE_UP_PREFIX)
}

/// An in-memory [`LedgerStore`] for tests: it keeps exactly what a real store would.
#[cfg(test)]
#[derive(Default, Debug)]
pub struct MemoryStore {
    pub key: std::cell::RefCell<Option<KeyRecord>>,
    pub reservations: std::cell::RefCell<BTreeMap<u64, Reservation>>,
    pub audit: std::cell::RefCell<Vec<AuditRow>>,
    pub reconciliations: std::cell::RefCell<BTreeMap<u64, Reconciliation>>,
    pub idempotency: std::cell::RefCell<BTreeMap<String, Remembered>>,
    pub replays: std::cell::RefCell<BTreeMap<u64, Replay>>,
    pub denials: std::cell::RefCell<Denials>,
}

#[cfg(test)]
impl LedgerStore for MemoryStore {
    type Error = std::convert::Infallible;
    fn put_key(&self, key: &KeyRecord) -> Result<(), Self::Error> {
        *self.key.borrow_mut() = Some(key.clone());
        Ok(())
    }
    fn put_counters(&self, key: &KeyRecord) -> Result<(), Self::Error> {
        let mut stored = self.key.borrow_mut();
        if let Some(stored) = stored.as_mut() {
            // Only the counters: a config change that skipped `put_key` would be lost.
            stored.revoked_at_ms = key.revoked_at_ms;
            stored.day = key.day;
            stored.spent = key.spent;
            stored.seq = key.seq;
        }
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
    fn get_idempotency(&self, key: &str) -> Result<Option<Remembered>, Self::Error> {
        Ok(self.idempotency.borrow().get(key).cloned())
    }
    fn put_idempotency(&self, r: &Remembered) -> Result<(), Self::Error> {
        self.idempotency.borrow_mut().insert(r.key.clone(), r.clone());
        Ok(())
    }
    fn put_replay(&self, id: u64, replay: &Replay) -> Result<(), Self::Error> {
        self.replays.borrow_mut().insert(id, replay.clone());
        Ok(())
    }
    fn get_replay(&self, id: u64) -> Result<Option<Replay>, Self::Error> {
        Ok(self.replays.borrow().get(&id).cloned())
    }
    fn put_denials(&self, denials: &Denials) -> Result<(), Self::Error> {
        *self.denials.borrow_mut() = denials.clone();
        Ok(())
    }
    fn delete_replay(&self, id: u64) -> Result<(), Self::Error> {
        self.replays.borrow_mut().remove(&id);
        Ok(())
    }
}

#[cfg(test)]
impl MemoryStore {
    /// The ledger a fresh object would load from this store.
    pub fn reload(&self) -> Option<Ledger> {
        let key = self.key.borrow().clone()?;
        Some(Ledger::load(
            key,
            self.reservations.borrow().values().cloned(),
            self.reconciliations.borrow().values().cloned(),
            self.denials.borrow().clone(),
        ))
    }
}

/// A shared [`MemoryStore`], as a tree's memory store hands one out per key.
#[cfg(test)]
impl LedgerStore for std::rc::Rc<MemoryStore> {
    type Error = std::convert::Infallible;
    fn put_key(&self, key: &KeyRecord) -> Result<(), Self::Error> {
        (**self).put_key(key)
    }
    fn put_counters(&self, key: &KeyRecord) -> Result<(), Self::Error> {
        (**self).put_counters(key)
    }
    fn put_reservation(&self, r: &Reservation) -> Result<(), Self::Error> {
        (**self).put_reservation(r)
    }
    fn delete_reservation(&self, id: u64) -> Result<(), Self::Error> {
        (**self).delete_reservation(id)
    }
    fn append_audit(&self, row: &AuditRow) -> Result<(), Self::Error> {
        (**self).append_audit(row)
    }
    fn put_reconciliation(&self, r: &Reconciliation) -> Result<(), Self::Error> {
        (**self).put_reconciliation(r)
    }
    fn delete_reconciliation(&self, id: u64) -> Result<(), Self::Error> {
        (**self).delete_reconciliation(id)
    }
    fn get_idempotency(&self, key: &str) -> Result<Option<Remembered>, Self::Error> {
        (**self).get_idempotency(key)
    }
    fn put_idempotency(&self, r: &Remembered) -> Result<(), Self::Error> {
        (**self).put_idempotency(r)
    }
    fn put_replay(&self, id: u64, replay: &Replay) -> Result<(), Self::Error> {
        (**self).put_replay(id, replay)
    }
    fn put_denials(&self, denials: &Denials) -> Result<(), Self::Error> {
        (**self).put_denials(denials)
    }
    fn get_replay(&self, id: u64) -> Result<Option<Replay>, Self::Error> {
        (**self).get_replay(id)
    }
    fn delete_replay(&self, id: u64) -> Result<(), Self::Error> {
        (**self).delete_replay(id)
    }
}
