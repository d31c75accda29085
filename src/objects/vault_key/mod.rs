//! The `VaultKey` Durable Object class: a thin wrapper that keeps a [`Ledger`] in SQLite
//! storage ([`store`]) and answers [`LedgerCall`]s, one uninterrupted step each. Its alarm
//! ([`alarm`]) does the work that must not sit on a request path: copying the audit outbox to
//! D1, asking vendors for late prices, and replaying calls whose outcome is unknown.

mod alarm;
mod alerts;
mod store;

use crate::core::error::ProxyError;
use crate::core::keys::KeyState;
use crate::core::settings::Settings;
use crate::ledger::protocol::{LedgerCall, LedgerReply};
use crate::ledger::Ledger;
use crate::runtime::settings;
use std::cell::{Cell, RefCell};
use std::time::Duration;
use store::{SqlStore, SCHEMA};
use worker::{durable_object, Date, Delay, DurableObject, Env, Request, Response, Result, State};

/// How long audit rows wait in the outbox before a flush, so a burst goes to D1 in a few batches.
const FLUSH_DELAY_MS: u64 = 100;
/// Beyond the upstream timeout, how long after its admission a call may still be under way:
/// the Worker aborts its vendor call at the timeout, so past this it has ended, or its Worker
/// has died and the connection with it.
const CUT_OFF_MARGIN_MS: u64 = 1_000;

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
        let hint = alerts::Hint::of(&call);
        // Everything from here to the reply is synchronous: no other call can interleave.
        let (reply, wrote_audit) = self.handle(call)?;
        // Alerts are decided in the same step; a failure to queue one never fails the call.
        let alert_at = self.alert_after(hint, &reply).unwrap_or_else(|e| {
            worker::console_error!("queueing an alert failed: {e}");
            None
        });
        self.arm(alert_at).await?;
        let now = Date::now().as_millis();
        if wrote_audit {
            self.arm(Some(now + FLUSH_DELAY_MS)).await?;
        }
        if matches!(reply, LedgerReply::Reserved { .. }) {
            // Should its Worker never report back, the alarm sweeps the hold to unknown.
            self.arm(Some(now + self.settings().stale_after_ms())).await?;
        }
        if revoking && matches!(reply, LedgerReply::State { .. }) {
            self.drain_in_flight().await;
        }
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> Result<Response> {
        self.on_alarm().await
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
            LedgerCall::Authenticate { vendor, secret_hash } => match ledger.authenticates(vendor, &secret_hash) {
                true => LedgerReply::Authenticated,
                false => LedgerReply::Denied { error: ProxyError::InvalidKey },
            },
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

    fn settings(&self) -> Settings {
        settings(&self.env)
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
        let cut_off = self.settings().upstream_timeout_ms + CUT_OFF_MARGIN_MS;
        loop {
            let now = Date::now().as_millis();
            let calls = self.ledger.borrow().as_ref().map_or(0, |l| l.in_flight(now, cut_off));
            if calls == 0 && self.replaying.get() == 0 {
                return;
            }
            Delay::from(Duration::from_millis(5)).await;
        }
    }
}

fn ledger_state(ledger: &mut Ledger, now: u64, store: &SqlStore) -> Result<KeyState> {
    Ok(ledger.state(now, store.outbox_len()?))
}
