//! The key's alerts: events decided in the same uninterrupted step as the call that caused
//! them, kept in the object's own `alert_events` table, and delivered by its alarm, signed,
//! with retries. Nothing here is on a request path: a call only writes a row.
//!
//! Each threshold fires once per key and UTC day, and a cap hit once per day: the step that
//! finds one due records it in `alert_fired` before anything can interleave, so a burst of
//! parallel calls sends each once. Delivery is at least once: an event keeps its id across
//! retries, so a receiver can drop repeats.

use super::store::{int, SqlStore};
use super::VaultKey;
use crate::core::alerts::{
    day_text, due_thresholds, event_body, retry_after_ms, signature_header, threshold_amount, EventData, EventType,
    MAX_ATTEMPTS,
};
use crate::core::clock::{rfc3339, utc_day};
use crate::core::error::ProxyError;
use crate::core::keys::KeyState;
use crate::core::money::Micros;
use crate::ledger::protocol::{CallResult, LedgerCall, LedgerReply};
use crate::ledger::Ledger;
use futures_util::future::{select, Either};
use std::time::Duration;
use wasm_bindgen::JsValue;
use worker::{
    console_error, AbortController, Date, Delay, Fetch, Headers, Method, Request, RequestInit, RequestRedirect, Result,
    SqlCursor, SqlStorageValue,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alert_fired (day INTEGER NOT NULL, kind TEXT NOT NULL, threshold INTEGER NOT NULL,
  PRIMARY KEY (day, kind, threshold));
CREATE TABLE IF NOT EXISTS alert_events (id TEXT PRIMARY KEY, kind TEXT NOT NULL, body TEXT, created_ms INTEGER NOT NULL,
  due_ms INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, delivered TEXT NOT NULL DEFAULT '[]');
";
/// A moment's wait before the first delivery, so a burst's events go out in one alarm.
const DELIVERY_DELAY_MS: u64 = 50;
const DELIVERY_TIMEOUT_MS: u64 = 10_000;
const DELIVERY_BATCH: u64 = 20;

/// What a call was, kept before the call is handed to the ledger.
pub(super) enum Hint {
    Create,
    Refresh,
    Revoke,
    Reserve,
    Finish { reservation_id: u64, unknown: bool, status: Option<u16> },
    Other,
}

impl Hint {
    pub(super) fn of(call: &LedgerCall) -> Hint {
        match call {
            LedgerCall::Create { .. } => Hint::Create,
            LedgerCall::Refresh { .. } => Hint::Refresh,
            LedgerCall::Revoke => Hint::Revoke,
            LedgerCall::Reserve(_) => Hint::Reserve,
            LedgerCall::Finish(f) => Hint::Finish {
                reservation_id: f.reservation_id,
                unknown: matches!(f.result, CallResult::Unknown),
                status: f.status,
            },
            _ => Hint::Other,
        }
    }
}

/// Every event's `data` starts with the key it is about.
fn data(state: &KeyState) -> EventData<'_> {
    let c = &state.config;
    EventData {
        key_id: &c.key_id,
        vendor: c.vendor.name(),
        agent_run_label: c.agent_run_label.as_deref(),
        daily_usd_cap: c.daily_cap,
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

/// Queues an event unless one with its id exists. Returns whether it was queued.
fn enqueue(store: &SqlStore, id: &str, kind: EventType, body: Option<String>, now: u64, due: u64) -> Result<bool> {
    let cursor = store.sql.exec(
        "INSERT OR IGNORE INTO alert_events (id, kind, body, created_ms, due_ms) VALUES (?, ?, ?, ?, ?)",
        vec![id.into(), kind.name().into(), body.into(), int(now), int(due)],
    )?;
    Ok(cursor.rows_written() > 0)
}

/// Records that `kind` (with a threshold, or 0) fired on `day`; false if it already had.
fn first_time(store: &SqlStore, day: u64, kind: &str, threshold: u32) -> Result<bool> {
    let cursor = store.sql.exec(
        "INSERT OR IGNORE INTO alert_fired (day, kind, threshold) VALUES (?, ?, ?)",
        vec![int(day), kind.into(), int(u64::from(threshold))],
    )?;
    Ok(cursor.rows_written() > 0)
}

fn queue_now(store: &SqlStore, id: String, kind: EventType, data: &EventData, now: u64) -> Result<bool> {
    let body = event_body(&id, kind, now, data);
    enqueue(store, &id, kind, Some(body), now, now + DELIVERY_DELAY_MS)
}

/// Queues the thresholds today's spend has reached that have not fired today.
fn thresholds(store: &SqlStore, state: &KeyState, now: u64) -> Result<bool> {
    let c = &state.config;
    if c.alert_thresholds.is_empty() {
        return Ok(false);
    }
    let day = utc_day(now);
    let fired: Vec<u32> = rows(
        store.sql.exec("SELECT threshold FROM alert_fired WHERE day = ? AND kind = 'threshold'", vec![int(day)])?,
    )?
    .iter()
    .map(|r| integer(r, 0) as u32)
    .collect();
    let mut queued = false;
    for t in due_thresholds(&c.alert_thresholds, c.daily_cap, state.spent, &fired) {
        first_time(store, day, "threshold", t)?;
        let data = EventData {
            threshold: Some(t),
            threshold_usd: Some(threshold_amount(c.daily_cap, t)),
            day: Some(day_text(day)),
            ..data(state)
        };
        queued |= queue_now(store, format!("evt_{}_{day}_t{t}", c.key_id), EventType::ThresholdCrossed, &data, now)?;
    }
    Ok(queued)
}

impl VaultKey {
    fn key_state(&self) -> Result<Option<KeyState>> {
        self.with_ledger(|ledger, _, now| Ok(Some(ledger.state(now, 0))))
    }

    /// Right after a call was handled, in the same step: the events it causes. Returns when
    /// the alarm should next deliver, if anything was queued.
    pub(super) fn alert_after(&self, hint: Hint, reply: &LedgerReply) -> Result<Option<u64>> {
        // Most calls cause nothing: an admitted reserve never does, and a settled call only on
        // a key with thresholds. They return here, before any state is read.
        let relevant = matches!(
            (&hint, reply),
            (Hint::Reserve, LedgerReply::Denied { error: ProxyError::CapExhausted { .. } })
                | (Hint::Finish { .. }, LedgerReply::Finished)
                | (Hint::Create | Hint::Refresh | Hint::Revoke, LedgerReply::State { .. })
        );
        if !relevant {
            return Ok(None);
        }
        let Some(state) = self.key_state()? else { return Ok(None) };
        if matches!(hint, Hint::Finish { unknown: false, .. }) && state.config.alert_thresholds.is_empty() {
            return Ok(None);
        }
        let store = self.store();
        store.sql.exec(SCHEMA, None)?;
        let now = Date::now().as_millis();
        let key_id = state.config.key_id.clone();
        let expired_id = format!("evt_{key_id}_expired");
        let queued = match (hint, reply) {
            // The expiry event waits, unsent, for the key's expiry; the alarm wakes for it.
            (Hint::Create, LedgerReply::State { .. }) => {
                enqueue(&store, &expired_id, EventType::Expired, None, now, state.config.expires_at_ms)?;
                return Ok(Some(state.config.expires_at_ms));
            }
            (Hint::Refresh, LedgerReply::State { .. }) => {
                store.sql.exec(
                    "UPDATE alert_events SET due_ms = ? WHERE id = ? AND body IS NULL",
                    vec![int(state.config.expires_at_ms), expired_id.into()],
                )?;
                return Ok(Some(state.config.expires_at_ms));
            }
            (Hint::Revoke, LedgerReply::State { .. }) if first_time(&store, 0, "revoked", 0)? => {
                store.sql.exec("DELETE FROM alert_events WHERE id = ? AND body IS NULL", vec![expired_id.into()])?;
                let data = EventData { revoked_at: state.revoked_at_ms.map(rfc3339), ..data(&state) };
                queue_now(&store, format!("evt_{key_id}_revoked"), EventType::Revoked, &data, now)?
            }
            (Hint::Reserve, LedgerReply::Denied { error: ProxyError::CapExhausted { .. } }) => {
                let day = utc_day(now);
                if first_time(&store, day, "cap_hit", 0)? {
                    let data =
                        EventData { reserved_usd: Some(state.reserved), day: Some(day_text(day)), ..data(&state) };
                    queue_now(&store, format!("evt_{key_id}_{day}_cap"), EventType::CapHit, &data, now)?
                } else {
                    false
                }
            }
            (Hint::Finish { reservation_id, unknown, status }, LedgerReply::Finished) => {
                let mut queued = thresholds(&store, &state, now)?;
                if unknown {
                    let data = EventData { reservation_id: Some(reservation_id), status, ..data(&state) };
                    let id = format!("evt_{key_id}_unknown_{reservation_id}");
                    queued |= queue_now(&store, id, EventType::UnknownOutcome, &data, now)?;
                }
                queued
            }
            _ => false,
        };
        Ok(queued.then_some(now + DELIVERY_DELAY_MS))
    }

    /// From the alarm, after it has moved money (late prices, replays): thresholds now reached.
    pub(super) fn alert_thresholds_now(&self) -> Result<()> {
        let Some(state) = self.key_state()? else { return Ok(()) };
        let store = self.store();
        store.sql.exec(SCHEMA, None)?;
        thresholds(&store, &state, Date::now().as_millis())?;
        Ok(())
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
        }
        let store = self.store();
        store.sql.exec(SCHEMA, None)?;
        let now = Date::now().as_millis();
        let due: Vec<Event> = rows(store.sql.exec(
            "SELECT id, kind, body, attempts, delivered FROM alert_events WHERE due_ms <= ? ORDER BY due_ms LIMIT ?",
            vec![int(now), int(DELIVERY_BATCH)],
        )?)?
        .iter()
        .map(|r| Event {
            id: text(r, 0).unwrap_or_default(),
            kind: text(r, 1).unwrap_or_default(),
            body: text(r, 2),
            attempts: integer(r, 3) as u32,
            delivered: text(r, 4).unwrap_or_default(),
        })
        .collect();
        if due.is_empty() {
            return Ok(());
        }
        let db = self.env.d1("DB")?;
        // Root's webhooks hear of every key; an issuer's will hear of its own keys only.
        // As one JSON text built by SQLite: no row type to decode.
        let hooks: Option<String> = db
            .prepare(
                "SELECT json_group_array(json_array(id, url, json(events), secret)) AS j FROM webhooks \
                 WHERE deleted_at_ms IS NULL AND owner = 'root'",
            )
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
                        Hook { id: field(0), url: field(1), events, secret: field(3) }
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
                None => match self.expiry_body(&store, &event.id, now)? {
                    Some(body) => body,
                    None => continue,
                },
            };
            let mut delivered: Vec<String> = serde_json::from_str(&event.delivered).unwrap_or_default();
            let subscribed: Vec<&Hook> = hooks.iter().filter(|h| h.events.iter().any(|n| n == kind.name())).collect();
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
                    "INSERT INTO webhook_deliveries (event_id, type, webhook_id, key_id, ts_ms, attempt, status, ok, error) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                ).bind(&[
                    event.id.as_str().into(),
                    kind.name().into(),
                    hook.id.as_str().into(),
                    self.key_id_of(&event.id).into(),
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

    /// The key id inside an event id (`evt_<key_id>_…`).
    fn key_id_of<'a>(&self, event_id: &'a str) -> &'a str {
        event_id.get(4..68).unwrap_or("")
    }

    /// The body of the due expiry event, or `None` when it is not to be sent: the key was
    /// revoked (the event is dropped) or refreshed (it waits for the new expiry).
    fn expiry_body(&self, store: &SqlStore, id: &str, now: u64) -> Result<Option<String>> {
        // An alarm after an eviction finds the ledger unloaded: a status call loads it.
        let state = match self.key_state()? {
            Some(state) => state,
            None => match self.handle(LedgerCall::Status)?.0 {
                LedgerReply::State { state } => state,
                _ => return Ok(None),
            },
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
/// move, and any threshold the new spend reaches.
pub(super) fn reconciled(store: &SqlStore, ledger: &mut Ledger, now: u64, id: u64, actual: Micros) -> Result<()> {
    store.sql.exec(SCHEMA, None)?;
    let state = ledger.state(now, 0);
    let data = EventData { reconciliation_id: Some(id), cost_usd: Some(actual), ..data(&state) };
    queue_now(store, format!("evt_{}_reconciled_{id}", state.config.key_id), EventType::Reconciled, &data, now)?;
    thresholds(store, &state, now)?;
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
