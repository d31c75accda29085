//! `GET /vault/keys` and `GET /vault/spend`: what the console lists, read from D1 only. The
//! queries, built in [`crate::core::listing`], answer their JSON whole; this runs them and
//! sends it on.

use crate::core::audit::SqlValue;
use crate::core::error::ProxyError;
use crate::core::listing::{KeyListQuery, SpendQuery};
use crate::runtime::{js_number, now_ms};
use crate::shell::admin::authorize;
use crate::shell::errors::internal;
use wasm_bindgen::JsValue;
use worker::{Env, Headers, Request, Response};

/// `GET /vault/keys`: one D1 statement for the page, whatever its size. Live figures (today's
/// spend, held money) are each key's object's: the console asks `GET /vault/keys/{id}` for the
/// active keys it shows, so a listing never waits on a hundred objects.
pub async fn list_keys(req: &Request, env: &Env) -> Result<Response, ProxyError> {
    authorize(req, env).await?;
    let query = KeyListQuery::parse(pairs(req)?.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(ProxyError::InvalidRequest)?;
    let (sql, binds) = query.sql(now_ms());
    json_answer(json_query(env, &sql, binds).await?)
}

/// `GET /vault/spend`: cost per UTC day over the last `days` days.
pub async fn spend(req: &Request, env: &Env) -> Result<Response, ProxyError> {
    authorize(req, env).await?;
    let query = SpendQuery::parse(pairs(req)?.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(ProxyError::InvalidRequest)?;
    let (sql, binds) = query.sql(now_ms());
    json_answer(json_query(env, &sql, binds).await?)
}

pub fn pairs(req: &Request) -> Result<Vec<(String, String)>, ProxyError> {
    let url = req.url().map_err(|_| ProxyError::InvalidRequest("bad URL".into()))?;
    Ok(url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
}

/// Runs a statement whose one row has one text column `j`, and returns it.
pub async fn json_query(env: &Env, sql: &str, binds: Vec<SqlValue>) -> Result<String, ProxyError> {
    let binds: Vec<JsValue> = binds
        .into_iter()
        .map(|b| match b {
            SqlValue::Text(t) => JsValue::from(t),
            SqlValue::Int(n) => js_number(n),
        })
        .collect();
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
