//! The admin API: issue, inspect and revoke vault keys, and read the audit trail.
//! The key's Durable Object is the authority; D1 holds the registry and the audit rows.

use crate::core::audit::{AuditPage, AuditQuery, AuditRow, AuditView, OutcomeCounts, SqlValue};
use crate::core::error::{ProxyError, MIN_ADMIN_KEY_CHARS};
use crate::core::keys::{parse_new_key, parse_refresh, IssuedKeyView, KeyView, MAX_BODY_BYTES};
use crate::core::lockout::{self, Failure};
use crate::core::money::Micros;
use crate::core::token::{self, bearer_matches, Authorization, SECRET_BYTES};
use crate::ledger::protocol::{LedgerCall, LedgerReply};
use crate::runtime::{js_number, now_ms, settings};
use crate::shell::errors::internal;
use crate::shell::objects::{admin_failure, LedgerClient};
use crate::shell::request::{authorization, read_body};
use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{console_error, D1Database, Env, Request, Response};

type AdminResult = Result<Response, ProxyError>;

/// Checks the admin token, in constant time. The right token always works: failures are
/// counted per client, and only further *failures* past the limit are answered 429, so an
/// agent that shares the operator's address can never lock the operator out of a revoke.
pub async fn authorize(req: &Request, env: &Env) -> Result<(), ProxyError> {
    let expected = env.secret("KEYBRAKE_API_KEY").map(|s| s.to_string()).unwrap_or_default();
    if expected.chars().count() < MIN_ADMIN_KEY_CHARS {
        console_error!(
            "KEYBRAKE_API_KEY is unset or shorter than {MIN_ADMIN_KEY_CHARS} characters; the admin API is off"
        );
        return Err(ProxyError::AdminNotConfigured);
    }
    let presented = authorization(req).and_then(Authorization::bearer);
    if presented.is_some_and(|presented| bearer_matches(&presented, &expected)) {
        return Ok(());
    }
    let ip = req.headers().get("cf-connecting-ip").ok().flatten().unwrap_or_default();
    let limit = settings(env).admin_failure_limit;
    match admin_failure(env, &lockout::client_bucket(&ip), &Failure { limit }).await?.locked_for_secs {
        Some(retry_after_secs) => Err(ProxyError::TooManyAttempts { retry_after_secs }),
        None => Err(ProxyError::Unauthorized),
    }
}

fn db(env: &Env) -> Result<D1Database, ProxyError> {
    env.d1("DB").map_err(internal("D1 binding"))
}

fn json(value: &impl serde::Serialize, status: u16) -> AdminResult {
    Ok(Response::from_json(value).map_err(internal("encode response"))?.with_status(status))
}

/// `POST /vault/keys`
pub async fn issue_key(mut req: Request, env: &Env) -> AdminResult {
    authorize(&req, env).await?;
    let body = read_body(&mut req, MAX_BODY_BYTES).await?;
    let new_key = parse_new_key(&body)?;

    let (key_id, ledger) = LedgerClient::fresh(env)?;
    let mut random = [0u8; SECRET_BYTES];
    getrandom::fill(&mut random).map_err(|_| ProxyError::Internal)?;
    let (vault_key, secret_hash) = token::issue(new_key.vendor, &key_id, &random);
    let config = new_key.into_config(key_id, now_ms());

    match ledger.call(&LedgerCall::Create { config: config.clone(), secret_hash }).await? {
        LedgerReply::State { .. } => {}
        _ => return Err(ProxyError::Internal),
    }
    let c = &config;
    let endpoints = serde_json::to_string(&c.allowed_endpoints).map_err(|_| ProxyError::Internal)?;
    db(env)?
        .prepare(
            "INSERT INTO vault_keys (key_id, vendor, agent_run_label, daily_cap_micros, max_per_call_micros, \
             allowed_endpoints, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&[
            c.key_id.as_str().into(),
            c.vendor.name().into(),
            c.agent_run_label.as_deref().map_or(JsValue::NULL, JsValue::from),
            js_number(c.daily_cap.0),
            c.max_per_call.map_or(JsValue::NULL, |m| js_number(m.0)),
            endpoints.into(),
            js_number(c.created_at_ms),
            js_number(c.expires_at_ms),
        ])
        .map_err(internal("bind registry insert"))?
        .run()
        .await
        .map_err(internal("registry insert"))?;
    json(&IssuedKeyView::new(c, &vault_key), 201)
}

/// `GET /vault/keys/{id}`
pub async fn get_key(req: &Request, env: &Env, key_id: &str) -> AdminResult {
    authorize(req, env).await?;
    let ledger = LedgerClient::existing(env, key_id).ok_or(ProxyError::NotFound)?;
    match ledger.call(&LedgerCall::Status).await? {
        LedgerReply::State { state } => json(&KeyView::new(&state, now_ms()), 200),
        LedgerReply::NotFound => Err(ProxyError::NotFound),
        _ => Err(ProxyError::Internal),
    }
}

/// `DELETE /vault/keys/{id}`: takes effect in the key's object before it answers; the
/// registry copy in D1 follows.
pub async fn revoke_key(req: &Request, env: &Env, key_id: &str) -> AdminResult {
    authorize(req, env).await?;
    let ledger = LedgerClient::existing(env, key_id).ok_or(ProxyError::NotFound)?;
    let state = match ledger.call(&LedgerCall::Revoke).await? {
        LedgerReply::State { state } => state,
        LedgerReply::NotFound => return Err(ProxyError::NotFound),
        _ => return Err(ProxyError::Internal),
    };
    let revoked_at_ms = state.revoked_at_ms.unwrap_or_else(now_ms);
    update_registry(env, "revoked_at_ms", revoked_at_ms, key_id).await;
    let view = KeyView::new(&state, now_ms());
    json(&serde_json::json!({"key_id": key_id, "status": view.status, "revoked_at": view.revoked_at}), 200)
}

/// `POST /vault/keys/{id}/refresh`: a long run outlives its key, so extend it in place
/// rather than issue a new one (which would start a fresh cap).
pub async fn refresh_key(mut req: Request, env: &Env, key_id: &str) -> AdminResult {
    authorize(&req, env).await?;
    let ledger = LedgerClient::existing(env, key_id).ok_or(ProxyError::NotFound)?;
    let body = read_body(&mut req, MAX_BODY_BYTES).await?;
    let ttl_secs = parse_refresh(&body)?;
    let state = match ledger.call(&LedgerCall::Refresh { ttl_secs }).await? {
        LedgerReply::State { state } => state,
        LedgerReply::Denied { error } => return Err(error),
        LedgerReply::NotFound => return Err(ProxyError::NotFound),
        _ => return Err(ProxyError::Internal),
    };
    update_registry(env, "expires_at_ms", state.config.expires_at_ms, key_id).await;
    json(&KeyView::new(&state, now_ms()), 200)
}

/// `GET /vault/audit?key_id=…` or `?agent_run_label=…`: the running totals (one row, whatever
/// the number of calls) and one page of rows, read from one index range.
pub async fn audit(req: &Request, env: &Env) -> AdminResult {
    authorize(req, env).await?;
    let url = req.url().map_err(|_| ProxyError::InvalidRequest("bad URL".into()))?;
    let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let query =
        AuditQuery::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(ProxyError::InvalidRequest)?;
    let db = db(env)?;
    let (scope, value) = query.scope();
    let cursor_ts = match query.cursor_id() {
        None => None,
        Some(id) => {
            #[derive(Deserialize)]
            struct Ts {
                ts_ms: u64,
            }
            let column = if scope == "key" { "key_id" } else { "agent_run_label" };
            let found: Option<Ts> = db
                .prepare(format!("SELECT ts_ms FROM audit WHERE id = ?1 AND {column} = ?2"))
                .bind(&[id.into(), value.into()])
                .map_err(internal("bind audit cursor"))?
                .first(None)
                .await
                .map_err(internal("audit cursor"))?;
            let found =
                found.ok_or_else(|| ProxyError::InvalidRequest(format!("no audit row {id} in this listing")))?;
            Some(found.ts_ms)
        }
    };
    let totals = db
        .prepare("SELECT * FROM audit_totals WHERE scope = ?1 AND value = ?2")
        .bind(&[scope.into(), value.into()])
        .map_err(internal("bind audit totals"))?;
    let (sql, binds) = query.page_sql(cursor_ts);
    let binds: Vec<JsValue> = binds
        .into_iter()
        .map(|b| match b {
            SqlValue::Text(t) => JsValue::from(t),
            SqlValue::Int(n) => js_number(n),
        })
        .collect();
    let rows = db.prepare(sql).bind(&binds).map_err(internal("bind audit rows"))?;
    let results = db.batch(vec![totals, rows]).await.map_err(internal("audit query"))?;

    #[derive(Default, Deserialize)]
    struct Totals {
        calls: u64,
        cost_micros: u64,
        settled: u64,
        released: u64,
        unknown: u64,
        denied: u64,
        replayed: u64,
    }
    let (Some(totals), Some(rows)) = (results.first(), results.get(1)) else {
        return Err(ProxyError::Internal);
    };
    let totals: Totals =
        totals.results::<Totals>().map_err(internal("decode audit totals"))?.into_iter().next().unwrap_or_default();
    let rows: Vec<AuditRow> = rows.results().map_err(internal("decode audit rows"))?;
    let (rows, has_more) = query.in_order(rows);
    let page = AuditPage {
        count: totals.calls,
        total_usd: Micros(totals.cost_micros),
        outcomes: OutcomeCounts {
            settled: totals.settled,
            released: totals.released,
            unknown: totals.unknown,
            denied: totals.denied,
            replayed: totals.replayed,
        },
        has_more,
        calls: rows.iter().map(AuditView::from).collect(),
    };
    json(&page, 200)
}

/// Copies a change the key's object has already made to the D1 registry. The object is the
/// authority, so a failure here is logged, not answered: it only leaves the listing stale.
async fn update_registry(env: &Env, column: &'static str, value: u64, key_id: &str) {
    let update = async {
        db(env)
            .map_err(|_| worker::Error::from("D1 binding"))?
            .prepare(format!("UPDATE vault_keys SET {column} = ?1 WHERE key_id = ?2"))
            .bind(&[js_number(value), key_id.into()])?
            .run()
            .await
    };
    if let Err(e) = update.await {
        worker::console_error!("registry update of {column} failed: {e}");
    }
}
