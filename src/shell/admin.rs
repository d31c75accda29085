//! The admin API: issue, inspect and revoke vault keys and issuers, and read the audit trail.
//! The key's Durable Object is the authority; D1 holds the registry and the audit rows.
//!
//! Two bearers are accepted: the root `KEYBRAKE_API_KEY`, which may do anything, and an
//! issuer token (`kbi_…`), which sees only the keys in its own object: the keys it issued
//! and their descendants. Anything else of another issuer is answered 404, as if absent.

use crate::core::audit::{AuditFilter, AuditPage, AuditQuery, AuditRow, AuditView, OutcomeCounts};
use crate::core::error::{ProxyError, MIN_ADMIN_KEY_CHARS};
use crate::core::keys::{
    parse_new_key, parse_refresh, IssuedKeyView, KeyConfig, KeyState, KeyView, MAX_BODY_BYTES, MAX_LABEL_CHARS,
};
use crate::core::lineage::{parse_new_issuer, IssuerConfig, IssuerView};
use crate::core::lockout::{self, Failure};
use crate::core::money::Micros;
use crate::core::token::{
    self, bearer_matches, is_key_id, object_of, Authorization, IssuerToken, SecretHash, VaultToken, SECRET_BYTES,
};
use crate::ledger::protocol::{LedgerCall, LedgerReply};
use crate::runtime::{d1_binds, js_number, now_ms, settings};
use crate::shell::errors::internal;
use crate::shell::objects::{admin_failure, LedgerClient};
use crate::shell::request::{authorization, read_body};
use futures_util::future::join_all;
use serde::Deserialize;
use std::collections::BTreeMap;
use wasm_bindgen::JsValue;
use worker::{console_error, D1Database, Env, Request, Response};

type AdminResult = Result<Response, ProxyError>;

/// Who an admin call comes from.
#[derive(Debug, PartialEq, Eq)]
pub enum Principal {
    Root,
    /// The issuer with this id (its object's id).
    Issuer(String),
}

impl Principal {
    /// Whether the caller may see the key: an issuer sees only keys in its own object.
    pub fn sees(&self, key_id: &str) -> bool {
        match self {
            Principal::Root => true,
            Principal::Issuer(id) => is_key_id(key_id) && object_of(key_id) == id,
        }
    }

    /// The webhook owner the principal is: `root`, or the issuer's id.
    pub fn owner(&self) -> &str {
        match self {
            Principal::Root => "root",
            Principal::Issuer(id) => id,
        }
    }

    fn root_only(&self) -> Result<(), ProxyError> {
        match self {
            Principal::Root => Ok(()),
            Principal::Issuer(_) => Err(ProxyError::Unauthorized),
        }
    }
}

/// Checks the admin token: the root key in constant time, or an issuer token by its object.
/// A right token always works: failures are counted per client, and only further *failures*
/// past the limit are answered 429, so an agent that shares the operator's address can never
/// lock the operator out of a revoke.
pub async fn authorize(req: &Request, env: &Env) -> Result<Principal, ProxyError> {
    let expected = env.secret("KEYBRAKE_API_KEY").map(|s| s.to_string()).unwrap_or_default();
    if expected.chars().count() < MIN_ADMIN_KEY_CHARS {
        console_error!(
            "KEYBRAKE_API_KEY is unset or shorter than {MIN_ADMIN_KEY_CHARS} characters; the admin API is off"
        );
        return Err(ProxyError::AdminNotConfigured);
    }
    let presented = authorization(req).and_then(Authorization::bearer);
    if presented.as_deref().is_some_and(|presented| bearer_matches(presented, &expected)) {
        return Ok(Principal::Root);
    }
    if let Some(issuer) = presented.as_deref().and_then(IssuerToken::parse) {
        if let Some(object) = LedgerClient::issuer(env, issuer.issuer_id) {
            let call = LedgerCall::AuthenticateIssuer { secret_hash: issuer.secret_hash() };
            if matches!(object.call(&call).await?, LedgerReply::Authenticated) {
                return Ok(Principal::Issuer(issuer.issuer_id.to_string()));
            }
        }
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

/// Fresh random bytes for a secret, and the hash to store.
fn new_secret() -> Result<([u8; SECRET_BYTES], SecretHash), ProxyError> {
    let mut random = [0u8; SECRET_BYTES];
    getrandom::fill(&mut random).map_err(|_| ProxyError::Internal)?;
    Ok((random, token::hash_of_secret(&random)))
}

/// `POST /vault/keys`: by the root key, a key in an object of its own; by an issuer, a key
/// in the issuer's object, if it fits the issuer's ceiling.
pub async fn issue_key(mut req: Request, env: &Env) -> AdminResult {
    let principal = authorize(&req, env).await?;
    let body = read_body(&mut req, MAX_BODY_BYTES).await?;
    let (random, secret_hash) = new_secret()?;
    let config = match principal {
        Principal::Root => {
            let new_key = parse_new_key(&body)?;
            let (key_id, ledger) = LedgerClient::fresh(env)?;
            let config = new_key.into_config(key_id, now_ms());
            match ledger.call(&LedgerCall::Create { config: config.clone(), secret_hash }).await? {
                LedgerReply::State { .. } => config,
                LedgerReply::Denied { error } => return Err(error),
                _ => return Err(ProxyError::Internal),
            }
        }
        Principal::Issuer(issuer_id) => {
            let object = LedgerClient::issuer(env, &issuer_id).ok_or(ProxyError::Internal)?;
            let body =
                String::from_utf8(body).map_err(|_| ProxyError::InvalidRequest("body must be UTF-8 JSON".into()))?;
            issued(object.call(&LedgerCall::Issue { body, secret_hash }).await?)?
        }
    };
    register_and_answer(env, &config, &random).await
}

/// `POST /vault/keys/{id}/children`: a child key, minted with the parent's own vault key (no
/// admin credential), in the parent's object.
pub async fn mint_child(mut req: Request, env: &Env, parent_id: &str) -> AdminResult {
    let presented = authorization(&req).map(Authorization::vault_key);
    let token = presented.as_deref().and_then(VaultToken::parse).ok_or(ProxyError::InvalidKey)?;
    // Only the parent's own vault key mints its children.
    if token.key_id != parent_id {
        return Err(ProxyError::InvalidKey);
    }
    let object = LedgerClient::existing(env, parent_id).ok_or(ProxyError::InvalidKey)?;
    let body = read_body(&mut req, MAX_BODY_BYTES).await?;
    let body = String::from_utf8(body).map_err(|_| ProxyError::InvalidRequest("body must be UTF-8 JSON".into()))?;
    let (random, secret_hash) = new_secret()?;
    let call = LedgerCall::MintChild {
        parent_key_id: parent_id.to_string(),
        vendor: token.vendor,
        parent_secret: token.secret_hash(),
        body,
        secret_hash,
    };
    let config = issued(object.call(&call).await?)?;
    register_and_answer(env, &config, &random).await
}

fn issued(reply: LedgerReply) -> Result<KeyConfig, ProxyError> {
    match reply {
        LedgerReply::Issued { config } => Ok(config),
        LedgerReply::Denied { error } => Err(error),
        LedgerReply::NotFound => Err(ProxyError::InvalidKey),
        _ => Err(ProxyError::Internal),
    }
}

/// Copies a new key to the D1 registry, then shows its vault key, once. The registry row is
/// written before the answer, so any key a caller holds can be found by its run label.
async fn register_and_answer(env: &Env, c: &KeyConfig, random: &[u8; SECRET_BYTES]) -> AdminResult {
    let (vault_key, _) = token::issue(c.vendor, &c.key_id, random);
    let endpoints = serde_json::to_string(&c.allowed_endpoints).map_err(|_| ProxyError::Internal)?;
    let opt = |v: Option<&str>| v.map_or(JsValue::NULL, JsValue::from);
    db(env)?
        .prepare(
            "INSERT INTO vault_keys (key_id, vendor, agent_run_label, daily_cap_micros, max_per_call_micros, \
             allowed_endpoints, created_at_ms, expires_at_ms, issuer_id, parent_key_id) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .bind(&[
            c.key_id.as_str().into(),
            c.vendor.name().into(),
            opt(c.agent_run_label.as_deref()),
            js_number(c.daily_cap.0),
            c.max_per_call.map_or(JsValue::NULL, |m| js_number(m.0)),
            endpoints.into(),
            js_number(c.created_at_ms),
            js_number(c.expires_at_ms),
            opt(c.issuer_id.as_deref()),
            opt(c.parent_key_id.as_deref()),
        ])
        .map_err(internal("bind registry insert"))?
        .run()
        .await
        .map_err(internal("registry insert"))?;
    json(&IssuedKeyView::new(c, &vault_key), 201)
}

/// The object of a key the caller may see; any other is 404.
fn visible(principal: &Principal, env: &Env, key_id: &str) -> Result<LedgerClient, ProxyError> {
    if !principal.sees(key_id) {
        return Err(ProxyError::NotFound);
    }
    LedgerClient::existing(env, key_id).ok_or(ProxyError::NotFound)
}

async fn key_state(ledger: &LedgerClient) -> Result<KeyState, ProxyError> {
    match ledger.call(&LedgerCall::Status { key_id: ledger.key_id().to_string() }).await? {
        LedgerReply::State { state } => Ok(state),
        LedgerReply::NotFound => Err(ProxyError::NotFound),
        _ => Err(ProxyError::Internal),
    }
}

/// `GET /vault/keys/{id}`
pub async fn get_key(req: &Request, env: &Env, key_id: &str) -> AdminResult {
    let principal = authorize(req, env).await?;
    let state = key_state(&visible(&principal, env, key_id)?).await?;
    json(&KeyView::new(&state, now_ms()), 200)
}

/// Revokes keys of one object and all their descendants. The object answers once none of
/// them can reach a vendor; the registry copy in D1 follows.
async fn revoke_in(env: &Env, object: &LedgerClient, key_ids: Vec<String>) -> Result<Vec<String>, ProxyError> {
    let revoked = match object.call(&LedgerCall::Revoke { key_ids }).await? {
        LedgerReply::Revoked { key_ids, at_ms } => {
            mark_revoked(env, &key_ids, at_ms).await;
            key_ids
        }
        LedgerReply::NotFound => Vec::new(),
        _ => return Err(ProxyError::Internal),
    };
    Ok(revoked)
}

/// `DELETE /vault/keys/{id}`: revokes the key and its descendants.
pub async fn revoke_key(req: &Request, env: &Env, key_id: &str) -> AdminResult {
    let principal = authorize(req, env).await?;
    let ledger = visible(&principal, env, key_id)?;
    let revoked = revoke_in(env, &ledger, vec![key_id.to_string()]).await?;
    if revoked.is_empty() {
        return Err(ProxyError::NotFound);
    }
    let view_state = key_state(&ledger).await?;
    let view = KeyView::new(&view_state, now_ms());
    json(
        &serde_json::json!({"key_id": key_id, "status": view.status, "revoked_at": view.revoked_at, "revoked_key_ids": revoked}),
        200,
    )
}

/// `DELETE /vault/keys?agent_run_label=…`: revokes every key of the run the caller may see,
/// and their descendants, one call per object, all at once. Answers when none of them can
/// reach a vendor.
pub async fn revoke_run(req: &Request, env: &Env) -> AdminResult {
    let principal = authorize(req, env).await?;
    let url = req.url().map_err(|_| ProxyError::InvalidRequest("bad URL".into()))?;
    let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let label = match pairs.as_slice() {
        [(k, v)] if k == "agent_run_label" && !v.is_empty() && v.chars().count() <= MAX_LABEL_CHARS => v.clone(),
        _ => return Err(ProxyError::InvalidRequest("give exactly one parameter: agent_run_label".into())),
    };
    #[derive(Deserialize)]
    struct Row {
        key_id: String,
    }
    let (sql, binds): (&str, Vec<JsValue>) = match &principal {
        Principal::Root => ("SELECT key_id FROM vault_keys WHERE agent_run_label = ?1", vec![label.as_str().into()]),
        Principal::Issuer(id) => (
            "SELECT key_id FROM vault_keys WHERE agent_run_label = ?1 AND issuer_id = ?2",
            vec![label.as_str().into(), id.as_str().into()],
        ),
    };
    let rows: Vec<Row> = db(env)?
        .prepare(sql)
        .bind(&binds)
        .map_err(internal("bind run lookup"))?
        .all()
        .await
        .map_err(internal("run lookup"))?
        .results()
        .map_err(internal("decode run lookup"))?;
    let mut by_object: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows.into_iter().filter(|r| principal.sees(&r.key_id)) {
        by_object.entry(object_of(&row.key_id).to_string()).or_default().push(row.key_id);
    }
    let revokes = by_object.into_values().filter_map(|key_ids| {
        let object = LedgerClient::existing(env, &key_ids[0])?;
        Some(async move { revoke_in(env, &object, key_ids).await })
    });
    let mut key_ids = Vec::new();
    for revoked in join_all(revokes).await {
        key_ids.extend(revoked?);
    }
    key_ids.sort();
    key_ids.dedup();
    json(&serde_json::json!({"revoked": key_ids.len(), "key_ids": key_ids}), 200)
}

/// `POST /vault/keys/{id}/refresh`: a long run outlives its key, so extend it in place
/// rather than issue a new one (which would start a fresh cap).
pub async fn refresh_key(mut req: Request, env: &Env, key_id: &str) -> AdminResult {
    let principal = authorize(&req, env).await?;
    let ledger = visible(&principal, env, key_id)?;
    let body = read_body(&mut req, MAX_BODY_BYTES).await?;
    let ttl_secs = parse_refresh(&body)?;
    let state = match ledger.call(&LedgerCall::Refresh { key_id: key_id.to_string(), ttl_secs }).await? {
        LedgerReply::State { state } => state,
        LedgerReply::Denied { error } => return Err(error),
        LedgerReply::NotFound => return Err(ProxyError::NotFound),
        _ => return Err(ProxyError::Internal),
    };
    update_registry(env, "expires_at_ms", state.config.expires_at_ms, key_id).await;
    json(&KeyView::new(&state, now_ms()), 200)
}

/// `POST /vault/issuers` (root only): a new issuer in an object of its own.
pub async fn create_issuer(mut req: Request, env: &Env) -> AdminResult {
    authorize(&req, env).await?.root_only()?;
    let body = read_body(&mut req, MAX_BODY_BYTES).await?;
    let (issuer_id, object) = LedgerClient::fresh(env)?;
    let config = parse_new_issuer(&body, issuer_id.clone(), now_ms())?;
    let (random, secret_hash) = new_secret()?;
    let state = match object.call(&LedgerCall::CreateIssuer { config: config.clone(), secret_hash }).await? {
        LedgerReply::Issuer { state } => state,
        LedgerReply::Denied { error } => return Err(error),
        _ => return Err(ProxyError::Internal),
    };
    let (issuer_token, _) = token::issue_issuer(&issuer_id, &random);
    let stored = serde_json::to_string(&config).map_err(|_| ProxyError::Internal)?;
    db(env)?
        .prepare("INSERT INTO issuers (issuer_id, name, config, created_at_ms) VALUES (?1, ?2, ?3, ?4)")
        .bind(&[issuer_id.as_str().into(), config.name.as_str().into(), stored.into(), js_number(config.created_at_ms)])
        .map_err(internal("bind issuer insert"))?
        .run()
        .await
        .map_err(internal("issuer insert"))?;
    json(&IssuerView { issuer_token: Some(&issuer_token), ..IssuerView::new(&state) }, 201)
}

/// `GET /vault/issuers` (root only): every issuer, from the registry.
pub async fn list_issuers(req: &Request, env: &Env) -> AdminResult {
    authorize(req, env).await?.root_only()?;
    #[derive(Deserialize)]
    struct Row {
        config: String,
        revoked_at_ms: Option<u64>,
    }
    let rows: Vec<Row> = db(env)?
        .prepare("SELECT config, revoked_at_ms FROM issuers ORDER BY created_at_ms")
        .all()
        .await
        .map_err(internal("issuer list"))?
        .results()
        .map_err(internal("decode issuer list"))?;
    let configs: Vec<(IssuerConfig, Option<u64>)> = rows
        .into_iter()
        .map(|r| Ok((serde_json::from_str(&r.config).map_err(|_| ProxyError::Internal)?, r.revoked_at_ms)))
        .collect::<Result<_, ProxyError>>()?;
    let issuers: Vec<IssuerView> = configs.iter().map(|(c, revoked)| IssuerView::of_config(c, *revoked)).collect();
    json(&serde_json::json!({ "issuers": issuers }), 200)
}

/// `GET /vault/issuers/{id}`: by the root key, or by the issuer itself.
pub async fn get_issuer(req: &Request, env: &Env, issuer_id: &str) -> AdminResult {
    let principal = authorize(req, env).await?;
    if !matches!(&principal, Principal::Root) && principal != Principal::Issuer(issuer_id.to_string()) {
        return Err(ProxyError::NotFound);
    }
    let object = LedgerClient::issuer(env, issuer_id).ok_or(ProxyError::NotFound)?;
    match object.call(&LedgerCall::IssuerStatus).await? {
        LedgerReply::Issuer { state } => json(&IssuerView::new(&state), 200),
        LedgerReply::NotFound => Err(ProxyError::NotFound),
        _ => Err(ProxyError::Internal),
    }
}

/// `DELETE /vault/issuers/{id}` (root only): revokes the issuer and every key it made, with
/// their descendants. Answers when none of them can reach a vendor.
pub async fn revoke_issuer(req: &Request, env: &Env, issuer_id: &str) -> AdminResult {
    authorize(req, env).await?.root_only()?;
    let object = LedgerClient::issuer(env, issuer_id).ok_or(ProxyError::NotFound)?;
    let (key_ids, now) = match object.call(&LedgerCall::RevokeIssuer).await? {
        LedgerReply::Revoked { key_ids, at_ms } => (key_ids, at_ms),
        LedgerReply::NotFound => return Err(ProxyError::NotFound),
        _ => return Err(ProxyError::Internal),
    };
    mark_revoked(env, &key_ids, now).await;
    let update = async {
        db(env)
            .map_err(|_| worker::Error::from("D1 binding"))?
            .prepare("UPDATE issuers SET revoked_at_ms = ?1 WHERE issuer_id = ?2 AND revoked_at_ms IS NULL")
            .bind(&[js_number(now), issuer_id.into()])?
            .run()
            .await
    };
    if let Err(e) = update.await {
        console_error!("issuer registry update failed: {e}");
    }
    json(
        &serde_json::json!({"issuer_id": issuer_id, "status": "revoked", "revoked": key_ids.len(), "key_ids": key_ids}),
        200,
    )
}

/// `GET /vault/audit?key_id=…`, `?agent_run_label=…` or `?issuer_id=…`: the running totals
/// (one row, whatever the number of calls) and one page of rows, read from one index range.
/// An issuer reads only rows of its own keys.
pub async fn audit(req: &Request, env: &Env) -> AdminResult {
    let principal = authorize(req, env).await?;
    let url = req.url().map_err(|_| ProxyError::InvalidRequest("bad URL".into()))?;
    let pairs: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let mut query =
        AuditQuery::parse(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(ProxyError::InvalidRequest)?;
    if let Principal::Issuer(id) = &principal {
        let own = match &query.filter {
            AuditFilter::KeyId(key_id) => principal.sees(key_id),
            AuditFilter::Issuer(issuer_id) => issuer_id == id,
            AuditFilter::Label(_) => true,
        };
        if !own {
            return Err(ProxyError::NotFound);
        }
        query.within_issuer = Some(id.clone());
    }
    let db = db(env)?;
    let (scope, value) = query.scope();
    let cursor_ts = match query.cursor_id() {
        None => None,
        Some(id) => {
            #[derive(Deserialize)]
            struct Ts {
                ts_ms: u64,
            }
            let (column, value) = query.filter_column();
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
        .bind(&[scope.into(), value.as_str().into()])
        .map_err(internal("bind audit totals"))?;
    let (sql, binds) = query.page_sql(cursor_ts);
    let rows = db.prepare(sql).bind(&d1_binds(binds)).map_err(internal("bind audit rows"))?;
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

/// Copies revocations the objects have already made to the D1 registry (see below).
async fn mark_revoked(env: &Env, key_ids: &[String], at_ms: u64) {
    let Ok(ids) = serde_json::to_string(key_ids) else { return };
    let update = async {
        db(env)
            .map_err(|_| worker::Error::from("D1 binding"))?
            .prepare(
                "UPDATE vault_keys SET revoked_at_ms = ?1 \
                 WHERE key_id IN (SELECT value FROM json_each(?2)) AND revoked_at_ms IS NULL",
            )
            .bind(&[js_number(at_ms), ids.into()])?
            .run()
            .await
    };
    if let Err(e) = update.await {
        worker::console_error!("registry update of revocations failed: {e}");
    }
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
