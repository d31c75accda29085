//! The `VaultKey` Durable Object class: a thin wrapper that keeps a [`KeyTree`] (a key, every
//! key minted from it, or an issuer's keys; see [`crate::ledger::tree`]) in SQLite storage
//! ([`store`]) and answers [`LedgerCall`]s, one uninterrupted step each. Its alarm
//! ([`alarm`]) does the work that must not sit on a request path: copying the audit outbox to
//! D1, asking vendors for late prices, and replaying calls whose outcome is unknown.

mod alarm;
mod alerts;
mod store;

use crate::core::error::ProxyError;
use crate::core::settings::Settings;
use crate::ledger::protocol::{LedgerCall, LedgerReply};
use crate::ledger::tree::KeyTree;
use crate::runtime::settings;
use std::cell::{Cell, RefCell};
use std::time::Duration;
use store::SqlStore;
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
    /// `None` until loaded from storage.
    tree: RefCell<Option<KeyTree>>,
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
            tree: RefCell::new(None),
            alarm_at: Cell::new(None),
            flush_failures: Cell::new(0),
            replaying: Cell::new(0),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        // serde_json on the text: cheaper than converting a parsed JS object field by field.
        let call: LedgerCall = serde_json::from_str(&req.text().await?)?;
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
        if let LedgerReply::Revoked { key_ids, .. } = &reply {
            self.drain_in_flight(key_ids).await;
        }
        Response::from_json(&reply)
    }

    async fn alarm(&self) -> Result<Response> {
        self.on_alarm().await
    }
}

impl VaultKey {
    fn store(&self) -> SqlStore {
        SqlStore::new(self.state.storage().sql())
    }

    /// Answers one call and says whether it wrote audit rows to the outbox.
    fn handle(&self, call: LedgerCall) -> Result<(LedgerReply, bool)> {
        let store = self.store();
        let reply = self.in_tree(&store, |tree, now| apply(tree, &store, now, call))?;
        Ok((reply, store.appended.get()))
    }

    /// Runs `f` on the tree, loading it from storage first if it is not in memory.
    fn in_tree<T>(&self, store: &SqlStore, f: impl FnOnce(&mut KeyTree, u64) -> Result<T>) -> Result<T> {
        let mut slot = self.tree.borrow_mut();
        let tree = match slot.as_mut() {
            Some(tree) => tree,
            None => slot.insert(store.open(Date::now().as_millis())?),
        };
        f(tree, Date::now().as_millis())
    }

    /// Runs `f` on the loaded tree, if it has been loaded.
    fn with_tree<T: Default>(&self, f: impl FnOnce(&mut KeyTree, &SqlStore, u64) -> Result<T>) -> Result<T> {
        let store = self.store();
        let mut slot = self.tree.borrow_mut();
        match slot.as_mut() {
            Some(tree) => f(tree, &store, Date::now().as_millis()),
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

    /// After a revoke, waits until every call admitted before it on the revoked keys has
    /// finished its vendor call or been cut off, and every alarm replay under way is over:
    /// once the revoke has been answered, nothing more reaches the vendor on those keys.
    async fn drain_in_flight(&self, key_ids: &[String]) {
        let cut_off = self.settings().upstream_timeout_ms + CUT_OFF_MARGIN_MS;
        loop {
            let now = Date::now().as_millis();
            let calls = self.tree.borrow().as_ref().map_or(0, |t| t.in_flight(now, cut_off, key_ids));
            if calls == 0 && self.replaying.get() == 0 {
                return;
            }
            Delay::from(Duration::from_millis(5)).await;
        }
    }
}

/// One call, one synchronous step of the tree.
fn apply(tree: &mut KeyTree, store: &SqlStore, now: u64, call: LedgerCall) -> Result<LedgerReply> {
    let audit_pending = || store.outbox_len();
    let key_state = |tree: &mut KeyTree, key_id: &str| -> Result<LedgerReply> {
        Ok(match tree.state(store, now, key_id, audit_pending()?)? {
            Some(state) => LedgerReply::State { state },
            None => LedgerReply::NotFound,
        })
    };
    let denied = |error| LedgerReply::Denied { error };
    Ok(match call {
        LedgerCall::Create { config, secret_hash } => {
            let key_id = config.key_id.clone();
            match tree.create_root(store, config, secret_hash)? {
                Ok(()) => key_state(tree, &key_id)?,
                Err(error) => denied(error),
            }
        }
        LedgerCall::CreateIssuer { config, secret_hash } => match tree.create_issuer(store, config, secret_hash)? {
            Ok(()) => issuer_state(tree, now),
            Err(error) => denied(error),
        },
        LedgerCall::AuthenticateIssuer { secret_hash } => match tree.authenticates_issuer(&secret_hash) {
            true => LedgerReply::Authenticated,
            false => denied(ProxyError::Unauthorized),
        },
        LedgerCall::Issue { body, secret_hash } => match tree.issue(store, now, body.as_bytes(), secret_hash)? {
            Ok(config) => LedgerReply::Issued { config },
            Err(error) => denied(error),
        },
        LedgerCall::MintChild { parent_key_id, vendor, parent_secret, body, secret_hash } => {
            match tree.mint_child(store, now, &parent_key_id, (vendor, &parent_secret), body.as_bytes(), secret_hash)? {
                Ok(config) => LedgerReply::Issued { config },
                Err(error) => denied(error),
            }
        }
        LedgerCall::Authenticate { key_id, vendor, secret_hash } => {
            tree.resident(store, &key_id)?;
            match tree.ledger(&key_id).is_some_and(|l| l.authenticates(vendor, &secret_hash)) {
                true => LedgerReply::Authenticated,
                false => denied(ProxyError::InvalidKey),
            }
        }
        LedgerCall::Reserve { key_id, call } => match tree.reserve(store, now, &key_id, call)? {
            Ok((admitted, remaining)) => LedgerReply::Reserved {
                reservation_id: admitted.reservation.id,
                amount: admitted.reservation.amount,
                units: admitted.units,
                remaining,
                idempotency_key: admitted.idempotency_key,
                replay: admitted.reservation.replay,
                stripe_account: tree.ledger(&key_id).and_then(|l| l.stripe_account()).map(String::from),
                attempt: admitted.attempt,
            },
            Err(error) => denied(error),
        },
        LedgerCall::Finish { key_id, call } => {
            tree.finish(store, now, &key_id, call)?;
            LedgerReply::Finished
        }
        LedgerCall::Status { key_id } => key_state(tree, &key_id)?,
        LedgerCall::Revoke { key_ids } => {
            LedgerReply::Revoked { key_ids: tree.revoke(store, now, &key_ids)?, at_ms: now }
        }
        LedgerCall::Refresh { key_id, ttl_secs } => match tree.refresh(store, now, &key_id, ttl_secs)? {
            Ok(()) => key_state(tree, &key_id)?,
            Err(error) => denied(error),
        },
        LedgerCall::IssuerStatus => issuer_state(tree, now),
        LedgerCall::RevokeIssuer => match tree.issuer() {
            Some(_) => LedgerReply::Revoked { key_ids: tree.revoke_issuer(store, now)?, at_ms: now },
            None => LedgerReply::NotFound,
        },
    })
}

fn issuer_state(tree: &KeyTree, now: u64) -> LedgerReply {
    match tree.issuer_state(now) {
        Some(state) => LedgerReply::Issuer { state },
        None => LedgerReply::NotFound,
    }
}
