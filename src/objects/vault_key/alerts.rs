//! The key's alerts: events decided in the same uninterrupted step as the call that caused
//! them, kept in the object's own `alert_events` table, and delivered by its alarm, signed,
//! with retries. Nothing here is on a request path: a call only writes a row.
//!
//! The object holds a tree of keys (or an issuer's keys), so every row names its key, or for
//! an `issuer.*` event its issuer. Each threshold fires once per key (or issuer) and UTC day,
//! and a cap hit once per key and day: the step that finds one due records it in
//! `alert_fired` before anything can interleave, so a burst of parallel calls sends each once. Delivery is at least once: an event keeps its id across
//! retries, so a receiver can drop repeats.

use super::store::{int, SqlStore};
use super::VaultKey;
use crate::core::alerts::{
    day_text, due_thresholds, event_body, retry_after_ms, signature_header, threshold_amount, EventData, EventType,
    MAX_ATTEMPTS,
};
use crate::core::clock::{rfc3339, utc_day};
use crate::core::error::CapScope;
use crate::core::keys::{KeyConfig, KeyState};
use crate::core::money::Micros;
use crate::ledger::protocol::{CallResult, LedgerCall, LedgerReply};
use crate::ledger::tree::KeyTree;
use futures_util::future::{select, Either};
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{
    console_error, AbortController, Date, Delay, Fetch, Headers, Method, Request, RequestInit, RequestRedirect, Result,
    SqlCursor, SqlStorageValue,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_fired (scope TEXT NOT NULL, day INTEGER NOT NULL, kind TEXT NOT NULL,
  threshold INTEGER NOT NULL, PRIMARY KEY (scope, day, kind, threshold));
CREATE TABLE IF NOT EXISTS alert_events (id TEXT PRIMARY KEY, key_id TEXT, issuer_id TEXT, kind TEXT NOT NULL,
  body TEXT, created_ms INTEGER NOT NULL, due_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  delivered TEXT NOT NULL DEFAULT '[]');
";
/// A moment's wait before the first delivery, so a burst's events go out in one alarm.
const DELIVERY_DELAY_MS: u64 = 50;
const DELIVERY_TIMEOUT_MS: u64 = 10_000;
const DELIVERY_BATCH: u64 = 20;

/// What a call was, with the key it names, kept before the call is handed to the ledger.
/// A revoke's keys are those of its reply: the named keys and all their descendants.
pub(super) enum Hint {
    /// `Create`, `Issue`, `MintChild`: the new key is in the reply.
    Created,
    Refresh(String),
    Revoke,
    Reserve(String),
    Finish {
        key_id: String,
        reservation_id: u64,
        unknown: bool,
        status: Option<u16>,
    },
    Other,
}

impl Hint {
    pub(super) fn of(call: &LedgerCall) -> Hint {
        match call {
            LedgerCall::Create { .. } | LedgerCall::Issue { .. } | LedgerCall::MintChild { .. } => Hint::Created,
            LedgerCall::Refresh { key_id, .. } => Hint::Refresh(key_id.clone()),
            LedgerCall::Revoke { .. } | LedgerCall::RevokeIssuer => Hint::Revoke,
            LedgerCall::Reserve { key_id, .. } => Hint::Reserve(key_id.clone()),
            LedgerCall::Finish { key_id, call } => Hint::Finish {
                key_id: key_id.clone(),
                reservation_id: call.reservation_id,
                unknown: matches!(call.result, CallResult::Unknown),
                status: call.status,
            },
            _ => Hint::Other,
        }
    }
}

/// Every key event's `data` starts with the key it is about.
fn data(state: &KeyState) -> EventData<'_> {
    let c = &state.config;
    EventData {
        key_id: Some(&c.key_id),
        issuer_id: c.issuer_id.as_deref(),
        parent_key_id: c.parent_key_id.as_deref(),
        vendor: Some(c.vendor.name()),
        agent_run_label: c.agent_run_label.as_deref(),
        daily_usd_cap: Some(c.daily_cap),
        spent_usd: state.spent,
        ..Default::default()
    }
}

/// A cursor's rows as plain values: no row type to decode, which keeps the wasm small.
fn rows(cursor: SqlCursor) -> Result<Vec<Vec<SqlStorageValue>>> {
    cursor.raw().collect()
}

fn integer(row: &[SqlStorageValue], i: usize) -> u64 {
    match row.get(i) {
        Some(SqlStorageValue::Integer(n)) => *n as u64,
        _ => 0,
    }
}

fn text(row: &[SqlStorageValue], i: usize) -> Option<String> {
    match row.get(i) {
        Some(SqlStorageValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn opt(v: Option<&str>) -> SqlStorageValue {
    v.map_or(SqlStorageValue::Null, |s| s.into())
}

/// Who an event is about: a key (and its issuer, if any), or an issuer alone.
#[derive(Clone, Copy)]
struct About<'a> {
    key_id: Option<&'a str>,
    issuer_id: Option<&'a str>,
}

impl<'a> About<'a> {
    fn key(c: &'a KeyConfig) -> About<'a> {
        About { key_id: Some(&c.key_id), issuer_id: c.issuer_id.as_deref() }
    }
}

/// Queues an event unless one with its id exists. Returns whether it was queued.
fn enqueue(
    store: &SqlStore,
    id: &str,
    about: About,
    kind: EventType,
    body: Option<String>,
    now: u64,
    due: u64,
) -> Result<bool> {
    let cursor = store.sql.exec(
        "INSERT OR IGNORE INTO alert_events (id, key_id, issuer_id, kind, body, created_ms, due_ms) \
         VALUES (?, ?, ?, ?, ?, ?, ?)",
        vec![id.into(), opt(about.key_id), opt(about.issuer_id), kind.name().into(), body.into(), int(now), int(due)],
    )?;
    Ok(cursor.rows_written() > 0)
}

/// Records that `kind` (with a threshold, or 0) fired on `day` for `scope` (a key or an
/// issuer); false if it already had.
fn first_time(store: &SqlStore, scope: &str, day: u64, kind: &str, threshold: u32) -> Result<bool> {
    let cursor = store.sql.exec(
        "INSERT OR IGNORE INTO alert_fired (scope, day, kind, threshold) VALUES (?, ?, ?, ?)",
        vec![scope.into(), int(day), kind.into(), int(u64::from(threshold))],
    )?;
    Ok(cursor.rows_written() > 0)
}

fn queue_now(store: &SqlStore, id: String, about: About, kind: EventType, data: &EventData, now: u64) -> Result<bool> {
    let body = event_body(&id, kind, now, data);
    enqueue(store, &id, about, kind, Some(body), now, now + DELIVERY_DELAY_MS)
}

/// The thresholds fired today for a scope.
fn fired_today(store: &SqlStore, scope: &str, day: u64) -> Result<Vec<u32>> {
    Ok(rows(store.sql.exec(
        "SELECT threshold FROM alert_fired WHERE scope = ? AND day = ? AND kind = 'threshold'",
        vec![scope.into(), int(day)],
    )?)?
    .iter()
    .map(|r| integer(r, 0) as u32)
    .collect())
}

/// Queues the thresholds of `key_id` that today's spend of the key and its descendants has
/// reached (its cap binds them all) and that have not fired today.
fn thresholds(store: &SqlStore, tree: &mut KeyTree, key_id: &str, now: u64) -> Result<bool> {
    if tree.ledger(key_id).is_none_or(|l| l.config().alert_thresholds.is_empty()) {
        return Ok(false);
    }
    let Some(state) = key_state(tree, store, now, key_id)? else { return Ok(false) };
    let spent = tree.subtree_spent(key_id, now);
    let c = &state.config;
    let day = utc_day(now);
    let fired = fired_today(store, key_id, day)?;
    let mut queued = false;
    for t in due_thresholds(&c.alert_thresholds, c.daily_cap, spent, &fired) {
        first_time(store, key_id, day, "threshold", t)?;
        let data = EventData {
            spent_usd: spent,
            threshold: Some(t),
            threshold_usd: Some(threshold_amount(c.daily_cap, t)),
            day: Some(day_text(day)),
            ..data(&state)
        };
        let id = format!("evt_{key_id}_{day}_t{t}");
        queued |= queue_now(store, id, About::key(c), EventType::ThresholdCrossed, &data, now)?;
    }
    Ok(queued)
}

/// After money moved on `key_id`: the thresholds of the key, of each ancestor (their caps
/// count its spend), and of the issuer.
fn thresholds_above(store: &SqlStore, tree: &mut KeyTree, key_id: &str, now: u64) -> Result<bool> {
    let mut queued = false;
    for k in tree.chain(key_id) {
        queued |= thresholds(store, tree, &k, now)?;
    }
    Ok(queued | issuer_thresholds(store, tree, now)?)
}

/// Queues the thresholds of the issuer's budget that today's spend of all its keys has reached
/// and that have not fired today. The issuer's object holds every one of its keys, so this is
/// decided in the step that moved the money: exact under any concurrency.
fn issuer_thresholds(store: &SqlStore, tree: &KeyTree, now: u64) -> Result<bool> {
    let Some(issuer) = tree.issuer().filter(|i| !i.config.alert_thresholds.is_empty()) else { return Ok(false) };
    let Some(state) = tree.issuer_state(now) else { return Ok(false) };
    let c = &issuer.config;
    let day = utc_day(now);
    let fired = fired_today(store, &c.issuer_id, day)?;
    let about = About { key_id: None, issuer_id: Some(&c.issuer_id) };
    let mut queued = false;
    for t in due_thresholds(&c.alert_thresholds, c.daily_budget, state.spent, &fired) {
        first_time(store, &c.issuer_id, day, "threshold", t)?;
        let data = EventData {
            issuer_id: Some(&c.issuer_id),
            daily_usd_budget: Some(c.daily_budget),
            spent_usd: state.spent,
            threshold: Some(t),
            threshold_usd: Some(threshold_amount(c.daily_budget, t)),
            day: Some(day_text(day)),
            ..Default::default()
        };
        let id = format!("evt_{}_{day}_t{t}", c.issuer_id);
        queued |= queue_now(store, id, about, EventType::IssuerThresholdCrossed, &data, now)?;
    }
    Ok(queued)
}

fn expired_id(key_id: &str) -> String {
    format!("evt_{key_id}_expired")
}

/// A key's state as events show it (its own spend), bringing it back into memory if evicted.
/// Without its descendants' sums: a revoke of thousands of keys reads each once, cheaply.
fn key_state(tree: &mut KeyTree, store: &SqlStore, now: u64, key_id: &str) -> Result<Option<KeyState>> {
    tree.resident(store, key_id)?;
    Ok(tree.ledger_mut(key_id).map(|l| l.state(now, 0)))
}

/// Whether a settled call on `key_id` can cross any threshold: the key's, an ancestor's or
/// the issuer's. Most trees have none, and then nothing more is read.
fn has_thresholds(tree: &KeyTree, key_id: &str) -> bool {
    let has = |k: &String| tree.ledger(k).is_some_and(|l| !l.config().alert_thresholds.is_empty());
    tree.issuer().is_some_and(|i| !i.config.alert_thresholds.is_empty()) || tree.chain(key_id).iter().any(has)
}

/// The events one call causes, decided in its step (see [`VaultKey::alert_after`]).
fn event_after(tree: &mut KeyTree, store: &SqlStore, now: u64, hint: Hint, reply: &LedgerReply) -> Result<Option<u64>> {
    let queued = match (hint, reply) {
        // The expiry event waits, unsent, for the key's expiry; the alarm wakes for it.
        (Hint::Created, LedgerReply::State { state: KeyState { config, .. } } | LedgerReply::Issued { config }) => {
            let id = expired_id(&config.key_id);
            enqueue(store, &id, About::key(config), EventType::Expired, None, now, config.expires_at_ms)?;
            return Ok(Some(config.expires_at_ms));
        }
        (Hint::Refresh(key_id), LedgerReply::State { state }) => {
            store.sql.exec(
                "UPDATE alert_events SET due_ms = ? WHERE id = ? AND body IS NULL",
                vec![int(state.config.expires_at_ms), expired_id(&key_id).into()],
            )?;
            return Ok(Some(state.config.expires_at_ms));
        }
        // Each key the revoke reached, the named ones and their descendants, once.
        (Hint::Revoke, LedgerReply::Revoked { key_ids, .. }) => {
            let mut queued = false;
            for key_id in key_ids {
                if !first_time(store, key_id, 0, "revoked", 0)? {
                    continue;
                }
                store
                    .sql
                    .exec("DELETE FROM alert_events WHERE id = ? AND body IS NULL", vec![expired_id(key_id).into()])?;
                let Some(state) = key_state(tree, store, now, key_id)? else { continue };
                let data = EventData { revoked_at: state.revoked_at_ms.map(rfc3339), ..data(&state) };
                let id = format!("evt_{key_id}_revoked");
                queued |= queue_now(store, id, About::key(&state.config), EventType::Revoked, &data, now)?;
            }
            queued
        }
        (Hint::Reserve(key_id), LedgerReply::Denied { error }) => {
            let day = utc_day(now);
            match error.cap_scope() {
                Some(scope) if first_time(store, &key_id, day, "cap_hit", 0)? => {
                    let Some(state) = key_state(tree, store, now, &key_id)? else { return Ok(None) };
                    let scope = match scope {
                        CapScope::Key => "key",
                        CapScope::Parent => "parent",
                        CapScope::Issuer => "issuer",
                    };
                    let data = EventData {
                        reserved_usd: Some(state.reserved),
                        day: Some(day_text(day)),
                        scope: Some(scope),
                        ..data(&state)
                    };
                    let id = format!("evt_{key_id}_{day}_cap");
                    queue_now(store, id, About::key(&state.config), EventType::CapHit, &data, now)?
                }
                _ => false,
            }
        }
        (Hint::Finish { key_id, reservation_id, unknown, status }, LedgerReply::Finished) => {
            let mut queued = thresholds_above(store, tree, &key_id, now)?;
            if unknown {
                let Some(state) = key_state(tree, store, now, &key_id)? else { return Ok(None) };
                let data = EventData { reservation_id: Some(reservation_id), status, ..data(&state) };
                let id = format!("evt_{key_id}_unknown_{reservation_id}");
                queued |= queue_now(store, id, About::key(&state.config), EventType::UnknownOutcome, &data, now)?;
            }
            queued
        }
        _ => false,
    };
    Ok(queued.then_some(now + DELIVERY_DELAY_MS))
}

impl VaultKey {
    /// Right after a call was handled, in the same step: the events it causes. Returns when
    /// the alarm should next deliver, if anything was queued.
    pub(super) fn alert_after(&self, hint: Hint, reply: &LedgerReply) -> Result<Option<u64>> {
        // Most calls cause nothing: an admitted reserve never does, and a settled call only on
        // a key or issuer with thresholds. They return here, before any state is read.
        let relevant = match (&hint, reply) {
            (Hint::Reserve(_), LedgerReply::Denied { error }) => error.cap_scope().is_some(),
            (Hint::Finish { .. }, LedgerReply::Finished) => true,
            (Hint::Created, LedgerReply::State { .. } | LedgerReply::Issued { .. }) => true,
            (Hint::Refresh(_), LedgerReply::State { .. }) => true,
            (Hint::Revoke, LedgerReply::Revoked { .. }) => true,
            _ => false,
        };
        if !relevant {
            return Ok(None);
        }
        self.with_tree(|tree, store, now| {
            if let Hint::Finish { key_id, unknown: false, .. } = &hint {
                if !has_thresholds(tree, key_id) {
                    return Ok(None);
                }
            }
            store.sql.exec(SCHEMA, None)?;
            event_after(tree, store, now, hint, reply)
        })
    }

    /// When the alarm should wake for alerts: the earliest event due.
    pub(super) fn alerts_next_at(&self) -> Option<u64> {
        let store = self.store();
        store.sql.exec(SCHEMA, None).ok()?;
        let next = rows(store.sql.exec("SELECT MIN(due_ms) FROM alert_events", None).ok()?).ok()?;
        match next.first()?.first()? {
            SqlStorageValue::Integer(at) => Some(*at as u64),
            _ => None,
        }
    }

    /// Delivers every event that is due to every webhook subscribed to it that has not had it
    /// yet, then logs each attempt to D1. A failed attempt is tried again with backoff.
    pub(super) async fn deliver_alerts(&self) -> Result<()> {
        struct Event {
            id: String,
            key_id: Option<String>,
            issuer_id: Option<String>,
            kind: String,
            body: Option<String>,
            attempts: u32,
            delivered: String,
        }
        struct Hook {
            id: String,
            url: String,
            events: Vec<String>,
            secret: String,
            owner: String,
        }
        let store = self.store();
        store.sql.exec(SCHEMA, None)?;
        let now = Date::now().as_millis();
        let due: Vec<Event> = rows(store.sql.exec(
            "SELECT id, kind, body, attempts, delivered, key_id, issuer_id FROM alert_events WHERE due_ms <= ? \
             ORDER BY due_ms LIMIT ?",
            vec![int(now), int(DELIVERY_BATCH)],
        )?)?
        .iter()
        .map(|r| Event {
            id: text(r, 0).unwrap_or_default(),
            kind: text(r, 1).unwrap_or_default(),
            body: text(r, 2),
            attempts: integer(r, 3) as u32,
            delivered: text(r, 4).unwrap_or_default(),
            key_id: text(r, 5),
            issuer_id: text(r, 6),
        })
        .collect();
        if due.is_empty() {
            return Ok(());
        }
        let db = self.env.d1("DB")?;
        // Root's webhooks hear of every key; an issuer's hear of its own keys and itself only.
        // As one JSON text built by SQLite: no row type to decode.
        let issuers: Vec<&str> = due.iter().filter_map(|e| e.issuer_id.as_deref()).collect();
        let hooks: Option<String> = db
            .prepare(
                "SELECT json_group_array(json_array(id, url, json(events), secret, owner)) AS j FROM webhooks \
                 WHERE deleted_at_ms IS NULL AND (owner = 'root' OR owner IN (SELECT value FROM json_each(?1)))",
            )
            .bind(&[serde_json::to_string(&issuers)?.into()])?
            .first(Some("j"))
            .await?;
        let hooks: Vec<Hook> = serde_json::from_str::<serde_json::Value>(hooks.as_deref().unwrap_or("[]"))?
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|h| {
                        let field = |i: usize| h.get(i).and_then(|v| v.as_str()).unwrap_or_default().to_string();
                        let events = h
                            .get(2)
                            .and_then(|e| e.as_array())
                            .map_or(Vec::new(), |e| e.iter().filter_map(|n| n.as_str().map(String::from)).collect());
                        Hook { id: field(0), url: field(1), events, secret: field(3), owner: field(4) }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let first_backoff = self.settings().alarm_backoff_ms;
        let mut log = Vec::new();
        for event in due {
            let Some(kind) = EventType::from_name(&event.kind) else { continue };
            let body = match event.body {
                Some(body) => body,
                // The expiry event, now due: sent only if the key did expire.
                None => match self.expiry_body(&store, &event.id, event.key_id.as_deref().unwrap_or_default(), now)? {
                    Some(body) => body,
                    None => continue,
                },
            };
            let mut delivered: Vec<String> = serde_json::from_str(&event.delivered).unwrap_or_default();
            let owned = |h: &Hook| h.owner == "root" || event.issuer_id.as_deref() == Some(h.owner.as_str());
            let subscribed: Vec<&Hook> =
                hooks.iter().filter(|h| owned(h) && h.events.iter().any(|n| n == kind.name())).collect();
            let attempt = event.attempts + 1;
            let targets: Vec<&Hook> = subscribed.iter().copied().filter(|h| !delivered.contains(&h.id)).collect();
            for hook in targets {
                let answer = post(&hook.url, &hook.secret, &body).await;
                let ok = matches!(answer, Ok(status) if (200..300).contains(&status));
                if ok {
                    delivered.push(hook.id.clone());
                }
                let (status, error) = match answer {
                    Ok(status) => {
                        (JsValue::from(status), if ok { JsValue::NULL } else { JsValue::from("not a 2xx answer") })
                    }
                    Err(why) => (JsValue::NULL, JsValue::from(why)),
                };
                log.push(db.prepare(
                    "INSERT INTO webhook_deliveries (event_id, type, webhook_id, key_id, issuer_id, ts_ms, attempt, \
                     status, ok, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                ).bind(&[
                    event.id.as_str().into(),
                    kind.name().into(),
                    hook.id.as_str().into(),
                    event.key_id.as_deref().map_or(JsValue::NULL, JsValue::from),
                    event.issuer_id.as_deref().map_or(JsValue::NULL, JsValue::from),
                    crate::runtime::js_number(Date::now().as_millis()),
                    JsValue::from(attempt),
                    status,
                    JsValue::from(u8::from(ok)),
                    error,
                ])?);
            }
            let pending = subscribed.iter().any(|h| !delivered.contains(&h.id));
            if !pending || attempt >= MAX_ATTEMPTS {
                if pending {
                    console_error!("alert {} given up after {attempt} attempts", event.id);
                }
                store.sql.exec("DELETE FROM alert_events WHERE id = ?", vec![event.id.into()])?;
            } else {
                store.sql.exec(
                    "UPDATE alert_events SET attempts = ?, due_ms = ?, delivered = ?, body = ? WHERE id = ?",
                    vec![
                        int(u64::from(attempt)),
                        int(Date::now().as_millis() + retry_after_ms(first_backoff, event.attempts)),
                        serde_json::to_string(&delivered)?.into(),
                        body.into(),
                        event.id.into(),
                    ],
                )?;
            }
        }
        if !log.is_empty() {
            db.batch(log).await?;
        }
        Ok(())
    }

    /// The body of the due expiry event, or `None` when it is not to be sent: the key was
    /// revoked (the event is dropped) or refreshed (it waits for the new expiry).
    fn expiry_body(&self, store: &SqlStore, id: &str, key_id: &str, now: u64) -> Result<Option<String>> {
        // An alarm after an eviction finds the tree unloaded: it is loaded here.
        let Some(state) = self.in_tree(store, |tree, now| key_state(tree, store, now, key_id))? else {
            store.sql.exec("DELETE FROM alert_events WHERE id = ?", vec![id.into()])?;
            return Ok(None);
        };
        if state.revoked_at_ms.is_some() {
            store.sql.exec("DELETE FROM alert_events WHERE id = ?", vec![id.into()])?;
            return Ok(None);
        }
        if state.config.expires_at_ms > now {
            store.sql.exec(
                "UPDATE alert_events SET due_ms = ? WHERE id = ?",
                vec![int(state.config.expires_at_ms), id.into()],
            )?;
            return Ok(None);
        }
        let data = EventData { expires_at: Some(rfc3339(state.config.expires_at_ms)), ..data(&state) };
        Ok(Some(event_body(id, EventType::Expired, state.config.expires_at_ms, &data)))
    }
}

/// A late price came in (from the alarm): `call.reconciled`, in the same step as the ledger's
/// move, and any threshold the new spend reaches, the key's or its issuer's.
pub(super) fn reconciled(
    store: &SqlStore,
    tree: &mut KeyTree,
    now: u64,
    key_id: &str,
    id: u64,
    actual: Micros,
) -> Result<()> {
    let Some(state) = key_state(tree, store, now, key_id)? else { return Ok(()) };
    store.sql.exec(SCHEMA, None)?;
    let data = EventData { reconciliation_id: Some(id), cost_usd: Some(actual), ..data(&state) };
    let event = format!("evt_{key_id}_reconciled_{id}");
    queue_now(store, event, About::key(&state.config), EventType::Reconciled, &data, now)?;
    thresholds_above(store, tree, key_id, now)?;
    Ok(())
}

/// A replay from the alarm settled a call of `key_id`: the thresholds its spend now reaches.
pub(super) fn settled_later(store: &SqlStore, tree: &mut KeyTree, now: u64, key_id: &str) -> Result<()> {
    if has_thresholds(tree, key_id) {
        store.sql.exec(SCHEMA, None)?;
        thresholds_above(store, tree, key_id, now)?;
    }
    Ok(())
}

/// POSTs one signed event. `Ok(status)` for any answer; `Err` says why there was none.
async fn post(url: &str, secret: &str, body: &str) -> std::result::Result<u16, String> {
    let headers = Headers::new();
    let signature = signature_header(secret, Date::now().as_millis() / 1_000, body);
    for (name, value) in [
        ("content-type", "application/json"),
        ("user-agent", "Keybrake-Webhooks/1"),
        ("keybrake-signature", signature.as_str()),
    ] {
        headers.set(name, value).map_err(|_| "could not build the request".to_string())?;
    }
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers).with_redirect(RequestRedirect::Manual);
    init.with_body(Some(body.into()));
    let request = Request::new_with_init(url, &init).map_err(|_| "could not build the request".to_string())?;
    let controller = AbortController::default();
    let signal = controller.signal();
    let call = async move { Fetch::Request(request).send_with_signal(&signal).await.map(|r| r.status_code()) };
    match select(Box::pin(call), Delay::from(Duration::from_millis(DELIVERY_TIMEOUT_MS))).await {
        Either::Left((Ok(status), _)) => Ok(status),
        // The runtime's message may name the URL, which is the operator's own: kept short anyway.
        Either::Left((Err(_), _)) => Err("no answer (connection failed)".into()),
        Either::Right(_) => {
            controller.abort();
            Err(format!("no answer within {DELIVERY_TIMEOUT_MS} ms"))
        }
    }
}
