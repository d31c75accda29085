//! `GET /vault/keys` and `GET /vault/spend`: what the console lists, read from D1 only. The
//! queries, built in [`crate::core::listing`], answer their JSON whole; this runs them and
//! sends it on.

use crate::core::audit::SqlValue;
use crate::core::error::ProxyError;
use crate::core::listing::{timestamp_sql, BudgetScope, KeyListQuery, SpendQuery};
use crate::core::token::is_key_id;
use crate::runtime::{d1_binds, now_ms};
use crate::shell::admin::{authorize, Principal};
use crate::shell::errors::internal;
use worker::{Env, Headers, Request, Response};

/// The admin reads that are one D1 statement answering its own JSON.
pub enum Read {
    /// `GET /vault/keys`: one statement for the page, whatever its size. Live figures (today's
    /// spend, held money) are each key's object's: the console asks `GET /vault/keys/{id}` for
    /// the active keys it shows, so a listing never waits on a hundred objects.
    Keys,
    /// `GET /vault/spend`: cost per UTC day over the last `days` days.
    Spend,
    Webhooks,
    Deliveries,
}

/// Runs one [`Read`]: authorize, build its statement, send SQLite's JSON on. One async path for
/// all of them keeps the wasm small. An issuer's token reads only its own keys, spend,
/// webhooks and deliveries; naming anything else is answered 404, as if absent.
pub async fn read(req: &Request, env: &Env, which: Read) -> Result<Response, ProxyError> {
    let principal = authorize(req, env).await?;
    let own = match &principal {
        Principal::Root => None,
        Principal::Issuer(id) => Some(id.clone()),
    };
    let pairs = pairs(req)?;
    let query = || pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let no_params = || match pairs.first() {
        Some((k, _)) => Err(ProxyError::InvalidRequest(format!("unknown parameter {k:?}"))),
        None => Ok(()),
    };
    let (sql, binds) = match which {
        Read::Keys => {
            let mut q = KeyListQuery::parse(query()).map_err(ProxyError::InvalidRequest)?;
            if own.is_some() && q.issuer_id.is_some() && q.issuer_id != own {
                return Err(ProxyError::NotFound);
            }
            q.issuer_id = q.issuer_id.or(own);
            q.sql(now_ms())
        }
        Read::Spend => {
            let mut q = SpendQuery::parse(query()).map_err(ProxyError::InvalidRequest)?;
            let visible = match &q.scope {
                BudgetScope::Key(id) => principal.sees(id),
                BudgetScope::Issuer(id) => own.as_ref().is_none_or(|own| own == id),
                BudgetScope::Label(_) => true,
            };
            if !visible {
                return Err(ProxyError::NotFound);
            }
            q.within_issuer = own;
            q.sql(now_ms())
        }
        Read::Webhooks => no_params().map(|()| webhooks_sql(own.as_deref()))?,
        Read::Deliveries => {
            if pairs.iter().any(|(k, v)| k == "key_id" && is_key_id(v) && !principal.sees(v)) {
                return Err(ProxyError::NotFound);
            }
            deliveries_sql(pairs.clone(), own.as_deref())?
        }
    };
    json_answer(json_query(env, &sql, binds).await?)
}

pub fn pairs(req: &Request) -> Result<Vec<(String, String)>, ProxyError> {
    let url = req.url().map_err(|_| ProxyError::InvalidRequest("bad URL".into()))?;
    Ok(url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
}

/// Runs a statement whose one row has one text column `j`, and returns it.
pub async fn json_query(env: &Env, sql: &str, binds: Vec<SqlValue>) -> Result<String, ProxyError> {
    let binds = d1_binds(binds);
    env.d1("DB")
        .map_err(internal("D1 binding"))?
        .prepare(sql)
        .bind(&binds)
        .map_err(internal("bind listing"))?
        .first::<String>(Some("j"))
        .await
        .map_err(internal("listing query"))?
        .ok_or(ProxyError::Internal)
}

/// A JSON text as a `200` answer.
pub fn json_answer(text: String) -> Result<Response, ProxyError> {
    let headers = Headers::new();
    headers.set("content-type", "application/json").map_err(internal("listing headers"))?;
    Ok(Response::from_bytes(text.into_bytes()).map_err(internal("listing body"))?.with_headers(headers))
}

/// The webhooks an issuer's token may see: its own. The root key sees every one.
fn owned(issuer: Option<&str>) -> (&'static str, Vec<SqlValue>) {
    match issuer {
        Some(id) => (" AND owner = ?1", vec![SqlValue::Text(id.to_string())]),
        None => ("", vec![]),
    }
}

/// `GET /vault/webhooks`: without secrets.
fn webhooks_sql(issuer: Option<&str>) -> (String, Vec<SqlValue>) {
    let (filter, binds) = owned(issuer);
    let sql = format!(
        "SELECT json_object('data', json_group_array(json_object('id', id, 'owner', owner, 'url', url, \
         'events', json(events), 'created_at', {created}) ORDER BY created_at_ms, id)) AS j FROM webhooks \
         WHERE deleted_at_ms IS NULL{filter}",
        created = timestamp_sql("created_at_ms"),
    );
    (sql, binds)
}

/// `GET /vault/webhooks/deliveries?key_id=&event_id=&limit=`: attempts, newest first; for an
/// issuer's token, only those to its own webhooks (deleted ones included).
fn deliveries_sql(pairs: Vec<(String, String)>, issuer: Option<&str>) -> Result<(String, Vec<SqlValue>), ProxyError> {
    let (filter, mut binds) = owned(issuer);
    let mut sql = String::from("SELECT * FROM webhook_deliveries WHERE 1");
    if !filter.is_empty() {
        sql.push_str(" AND webhook_id IN (SELECT id FROM webhooks WHERE 1");
        sql.push_str(filter);
        sql.push(')');
    }
    let mut limit = 100u64;
    let mut seen = Vec::new();
    for (k, v) in pairs {
        if seen.contains(&k) {
            return Err(ProxyError::InvalidRequest(format!("{k} is given more than once")));
        }
        match k.as_str() {
            "key_id" if is_key_id(&v) => {
                binds.push(SqlValue::Text(v.clone()));
                sql.push_str(&format!(" AND key_id = ?{}", binds.len()));
            }
            "event_id" if v.starts_with("evt_") && v.len() <= 128 => {
                binds.push(SqlValue::Text(v.clone()));
                sql.push_str(&format!(" AND event_id = ?{}", binds.len()));
            }
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|l| (1..=500).contains(l))
                    .ok_or_else(|| ProxyError::InvalidRequest("limit must be between 1 and 500".into()))?
            }
            "key_id" | "event_id" => return Err(ProxyError::InvalidRequest(format!("{k} is not a valid id"))),
            _ => return Err(ProxyError::InvalidRequest(format!("unknown parameter {k:?}"))),
        }
        seen.push(k);
    }
    binds.push(SqlValue::Int(limit));
    sql.push_str(&format!(" ORDER BY seq DESC LIMIT ?{}", binds.len()));
    let sql = format!(
        "SELECT json_object('data', json_group_array(json_object('event_id', event_id, 'type', type, \
         'webhook_id', webhook_id, 'key_id', key_id, 'issuer_id', issuer_id, 'ts', {ts}, 'attempt', attempt, 'status', status, \
         'ok', json(CASE WHEN ok THEN 'true' ELSE 'false' END), 'error', error) ORDER BY seq DESC)) AS j FROM ({sql})",
        ts = timestamp_sql("ts_ms"),
    );
    Ok((sql, binds))
}
