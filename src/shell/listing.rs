//! `GET /vault/keys` and `GET /vault/spend`: what the console lists, read from D1 only. The
//! queries are built in [`crate::core::listing`]; this runs them.

use crate::core::audit::SqlValue;
use crate::core::error::ProxyError;
use crate::core::listing::{DayRow, KeyList, KeyListQuery, KeyRow, SpendQuery};
use crate::runtime::{js_number, now_ms};
use crate::shell::admin::authorize;
use crate::shell::errors::internal;
use serde::de::DeserializeOwned;
use wasm_bindgen::JsValue;
use worker::{Env, Request, Response};

/// `GET /vault/keys`: one D1 query for the page, whatever its size. Live figures (today's
/// spend, held money) are each key's object's: the console asks `GET /vault/keys/{id}` for the
/// active keys it shows, so a listing never waits on a hundred objects.
pub async fn list_keys(req: &Request, env: &Env) -> Result<Response, ProxyError> {
    authorize(req, env).await?;
    let query = KeyListQuery::parse(pairs(req)?.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(ProxyError::InvalidRequest)?;
    let now = now_ms();
    let (sql, binds) = query.sql(now);
    let rows: Vec<KeyRow> = select(env, sql, binds).await?;
    json(&KeyList::new(rows, query.limit, now))
}

/// `GET /vault/spend`: cost per UTC day over the last `days` days.
pub async fn spend(req: &Request, env: &Env) -> Result<Response, ProxyError> {
    authorize(req, env).await?;
    let query = SpendQuery::parse(pairs(req)?.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(ProxyError::InvalidRequest)?;
    let now = now_ms();
    let (sql, binds) = query.sql(now);
    let rows: Vec<DayRow> = select(env, sql, binds).await?;
    let (scope, value) = query.scope.column();
    json(&serde_json::json!({ "scope": scope, "value": value, "days": query.fill(now, &rows) }))
}

pub fn pairs(req: &Request) -> Result<Vec<(String, String)>, ProxyError> {
    let url = req.url().map_err(|_| ProxyError::InvalidRequest("bad URL".into()))?;
    Ok(url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect())
}

pub async fn select<T: DeserializeOwned>(env: &Env, sql: String, binds: Vec<SqlValue>) -> Result<Vec<T>, ProxyError> {
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
        .all()
        .await
        .map_err(internal("listing query"))?
        .results()
        .map_err(internal("decode listing"))
}

pub fn json(value: &impl serde::Serialize) -> Result<Response, ProxyError> {
    Response::from_json(value).map_err(internal("encode response"))
}
