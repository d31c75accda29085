//! What the ledger learns after a call has returned, all driven by the object's alarm:
//!
//! - **late prices**: an estimate debited at once (Twilio) moves to the vendor's real price
//!   when it is published;
//! - **ambiguous outcomes**: a call that ended in a 5xx, a timeout or a reset keeps its hold
//!   until it is sent again under the same `Idempotency-Key`, which tells what happened;
//! - **lost reports**: a call whose Worker never reported back is swept, after a bound, to an
//!   unknown outcome. It is never silently released: the vendor may have charged.

use super::{KeyUse, Ledger, LedgerStore, Reservation, Unresolved};
use crate::core::audit::{AuditRow, Outcome};
use crate::core::money::Micros;
use crate::ledger::protocol::CallResult;
use serde::{Deserialize, Serialize};

/// How long a vendor has to publish a price before the estimate is kept for good.
pub const RECONCILE_GIVE_UP_MS: u64 = 24 * 3_600_000;

/// How long after a key's first use its call may be sent again: an hour inside the vendors'
/// 24 h idempotency retention, so that a last replay, and its timeout, land within it. After
/// that a replay could run the call a second time.
pub const REPLAY_WINDOW_MS: u64 = 23 * 3_600_000;

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

/// The reconciliation a settled estimate starts, if the vendor publishes its price later.
pub(super) fn reconciliation_for(
    r: &Reservation,
    result: &CallResult,
    poll_path: Option<String>,
    now_ms: u64,
    row: &AuditRow,
) -> Option<Reconciliation> {
    let (CallResult::Settled { cost }, Some(poll_path)) = (result, poll_path) else {
        return None;
    };
    Some(Reconciliation {
        id: r.id,
        poll_path,
        day: r.day,
        estimate: *cost,
        started_ms: now_ms,
        attempts: 0,
        next_at_ms: now_ms,
        row: AuditRow { estimated_micros: Some(cost.0), ..row.clone() },
    })
}

impl Ledger {
    /// Estimates whose real price should be asked for now.
    pub fn due_reconciliations(&self, now_ms: u64) -> Vec<Reconciliation> {
        self.reconciling.values().filter(|r| r.next_at_ms <= now_ms).cloned().collect()
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
        store.put_counters(&self.key)?;
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

    /// Calls let through more than `stale_after_ms` ago whose Worker never reported back (it
    /// was killed, or lost its connection to this object). Their outcome is unknown: the hold
    /// stays, the audit says so, and a client retry under the same key can still resolve it.
    pub fn sweep_stale<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        stale_after_ms: u64,
    ) -> Result<usize, S::Error> {
        self.roll_day(now_ms);
        let stale: Vec<Reservation> = self
            .open
            .values()
            .filter(|r| r.unknown.is_none() && r.started_ms + stale_after_ms <= now_ms)
            .cloned()
            .collect();
        for r in &stale {
            let seq = self.next_seq();
            let row = AuditRow {
                decision: "forwarded".into(),
                reserved_micros: r.amount.0,
                outcome: Outcome::Unknown,
                ..self.audit_row(seq, now_ms, &r.method, &r.path, r.idempotency_key.clone())
            };
            if r.replay {
                // It held nothing; there is nothing to keep.
                self.close(store, r, Micros::ZERO)?;
                store.append_audit(&row)?;
                continue;
            }
            self.remember(store, r, KeyUse::Unknown, None, Micros::ZERO, None)?;
            let unresolved = Unresolved { row, replay_until_ms: None, attempts: 0, next_at_ms: now_ms };
            self.hold_as_unknown(store, r.clone(), unresolved)?;
        }
        Ok(stale.len())
    }

    /// Until when the reservation's call may be replayed: its key's first use plus
    /// [`REPLAY_WINDOW_MS`], or `None` if that has passed or it has no key.
    pub(super) fn replay_window_end<S: LedgerStore>(
        &self,
        store: &S,
        r: &Reservation,
    ) -> Result<Option<u64>, S::Error> {
        let Some(key) = &r.idempotency_key else { return Ok(None) };
        let first_use =
            store.get_idempotency(key)?.filter(|seen| seen.reservation_id == r.id).map(|seen| seen.created_ms);
        Ok(first_use.map(|t| t + REPLAY_WINDOW_MS).filter(|end| *end > r.started_ms))
    }

    /// Whether the key may still send calls: not revoked, not expired.
    fn may_send(&self, now_ms: u64) -> bool {
        self.key.revoked_at_ms.is_none() && now_ms < self.key.config.expires_at_ms
    }

    /// Ambiguous calls that can be sent again now. None once the key is revoked or expired:
    /// a replay of a call that never reached the vendor would run it.
    pub fn due_replays(&self, now_ms: u64) -> Vec<u64> {
        if !self.may_send(now_ms) {
            return Vec::new();
        }
        self.open
            .values()
            .filter(|r| {
                r.unknown
                    .as_ref()
                    .is_some_and(|u| u.replay_until_ms.is_some_and(|end| now_ms < end) && u.next_at_ms <= now_ms)
            })
            .map(|r| r.id)
            .collect()
    }

    /// Whether the reservation may be replayed at `now_ms`; checked again right before sending.
    pub fn may_replay(&self, id: u64, now_ms: u64) -> bool {
        self.may_send(now_ms)
            && self
                .open
                .get(&id)
                .and_then(|r| r.unknown.as_ref())
                .is_some_and(|u| u.replay_until_ms.is_some_and(|end| now_ms < end))
    }

    /// The vendor's answer to a replay settles an ambiguous call: a 2xx debits what it reports,
    /// a definite refusal releases the hold. The call's audit row is updated in place.
    pub fn resolve<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        id: u64,
        result: CallResult,
        status: Option<u16>,
        vendor_object_id: Option<String>,
    ) -> Result<(), S::Error> {
        self.roll_day(now_ms);
        let Some(r) = self.open.get(&id).filter(|r| r.unknown.is_some()).cloned() else {
            return Ok(()); // resolved meanwhile, e.g. by a client retry under the same key
        };
        let Some(unresolved) = r.unknown.clone() else { return Ok(()) };
        let (cost, state) = match result {
            CallResult::Settled { cost } => (cost, KeyUse::Settled),
            CallResult::Released => (Micros::ZERO, KeyUse::Released),
            CallResult::Unknown => return Ok(()),
        };
        self.remember(store, &r, state, status, cost, vendor_object_id.clone())?;
        self.close(store, &r, cost)?;
        store.delete_replay(id)?;
        store.append_audit(&AuditRow {
            status,
            outcome: result.outcome(),
            cost_micros: cost.0,
            vendor_object_id,
            reconciled_at_ms: Some(now_ms),
            ..unresolved.row
        })?;
        Ok(())
    }

    /// The replay did not tell (still a 5xx, a 409 while the first call runs, a timeout): try
    /// again after `backoff_ms`. Past the replay window (counted from the key's first use) a
    /// replay could charge again, so it stops: the hold stays, counted as unresolved.
    pub fn resolve_later<S: LedgerStore>(
        &mut self,
        store: &S,
        now_ms: u64,
        id: u64,
        backoff_ms: u64,
    ) -> Result<(), S::Error> {
        let Some(r) = self.open.get_mut(&id) else { return Ok(()) };
        let Some(u) = r.unknown.as_mut() else { return Ok(()) };
        u.attempts += 1;
        u.next_at_ms = now_ms + backoff_ms;
        if u.replay_until_ms.is_some_and(|end| u.next_at_ms >= end) {
            u.replay_until_ms = None;
            store.delete_replay(id)?;
        }
        store.put_reservation(r)?;
        Ok(())
    }

    /// The amount held for a reservation (zero once it is closed).
    pub fn held(&self, id: u64) -> Micros {
        self.open.get(&id).map_or(Micros::ZERO, |r| r.amount)
    }

    /// How many times an ambiguous call has been sent again.
    pub fn attempts(&self, id: u64) -> u32 {
        self.open.get(&id).and_then(|r| r.unknown.as_ref()).map_or(0, |u| u.attempts)
    }

    /// When the alarm next has work: a price to ask for, a replay to send (while the key may
    /// send), or a held call to sweep once it is `stale_after_ms` old.
    pub fn next_alarm_at(&self, now_ms: u64, stale_after_ms: u64) -> Option<u64> {
        let may_send = self.may_send(now_ms);
        let reconciling = self.reconciling.values().map(|r| r.next_at_ms);
        let open = self.open.values().filter_map(|r| match &r.unknown {
            None => Some(r.started_ms + stale_after_ms),
            Some(u) => u.replay_until_ms.filter(|_| may_send).map(|_| u.next_at_ms),
        });
        reconciling.chain(open).min()
    }
}
