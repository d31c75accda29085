//! `/vault/webhooks`: where alerts go. The signing secret is made here and answered once, at
//! creation; listings never show it. Deliveries are made by each key's object (its alarm),
//! which logs every attempt to D1 for `GET /vault/webhooks/deliveries`.

use crate::core::alerts::{parse_webhook, MAX_WEBHOOKS};
use crate::core::audit::SqlValue;
use crate::core::clock::rfc3339;
use crate::core::encoding::{base64url, hex};
use crate::core::error::ProxyError;
use crate::core::keys::MAX_BODY_BYTES;
use crate::core::listing::timestamp_sql;
use crate::core::token::is_key_id;
use crate::runtime::{js_number, now_ms};
use crate::shell::admin::authorize;
use crate::shell::errors::internal;
use crate::shell::listing::{json_answer, json_query, pairs};
use crate::shell::request::read_body;
use worker::{Env, Request, Response};

type Answer = Result<Response, ProxyError>;

fn random<const N: usize>() -> Result<[u8; N], ProxyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| ProxyError::Internal)?;
    Ok(bytes)
}

/// `POST /vault/webhooks {url, events}` → `201` with the secret, shown this once.
pub async fn create(mut req: Request, env: &Env) -> Answer {
    authorize(&req, env).await?;
    let body = read_body(&mut req, MAX_BODY_BYTES).await?;
    let hook = parse_webhook(&body).map_err(ProxyError::InvalidRequest)?;
    let live =
        json_query(env, "SELECT CAST(COUNT(*) AS TEXT) AS j FROM webhooks WHERE deleted_at_ms IS NULL", vec![]).await?;
    if live.parse::<usize>().unwrap_or(MAX_WEBHOOKS) >= MAX_WEBHOOKS {
        return Err(ProxyError::InvalidRequest(format!("at most {MAX_WEBHOOKS} webhooks; delete one first")));
    }
    let id = format!("wh_{}", hex(&random::<8>()?));
    let secret = format!("whsec_{}", base64url(&random::<32>()?));
    let events: Vec<&str> = hook.events.iter().map(|e| e.name()).collect();
    let events = serde_json::to_string(&events).map_err(|_| ProxyError::Internal)?;
    let now = now_ms();
    env.d1("DB")
        .map_err(internal("D1 binding"))?
        .prepare(
            "INSERT INTO webhooks (id, owner, url, events, secret, created_at_ms) VALUES (?1, 'root', ?2, ?3, ?4, ?5)",
        )
        .bind(&[
            id.as_str().into(),
            hook.url.as_str().into(),
            events.as_str().into(),
            secret.as_str().into(),
            js_number(now),
        ])
        .map_err(internal("bind webhook insert"))?
        .run()
        .await
        .map_err(internal("webhook insert"))?;
    let events: Vec<&str> = hook.events.iter().map(|e| e.name()).collect();
    let answer = serde_json::json!({
        "id": id, "url": hook.url, "events": events, "created_at": rfc3339(now), "secret": secret,
    });
    Ok(json_answer(answer.to_string())?.with_status(201))
}

/// `GET /vault/webhooks`: without secrets.
pub async fn list(req: &Request, env: &Env) -> Answer {
    authorize(req, env).await?;
    let sql = format!(
        "SELECT json_object('data', json_group_array(json_object('id', id, 'url', url, 'events', json(events), \
         'created_at', {created}) ORDER BY created_at_ms, id)) AS j FROM webhooks WHERE deleted_at_ms IS NULL",
        created = timestamp_sql("created_at_ms"),
    );
    json_answer(json_query(env, &sql, vec![]).await?)
}

/// `DELETE /vault/webhooks/{id}`: no delivery to it is attempted afterwards.
pub async fn delete(req: &Request, env: &Env, id: &str) -> Answer {
    authorize(req, env).await?;
    let result = env
        .d1("DB")
        .map_err(internal("D1 binding"))?
        .prepare("UPDATE webhooks SET deleted_at_ms = ?1 WHERE id = ?2 AND deleted_at_ms IS NULL")
        .bind(&[js_number(now_ms()), id.into()])
        .map_err(internal("bind webhook delete"))?
        .run()
        .await
        .map_err(internal("webhook delete"))?;
    let changed = result.meta().ok().flatten().and_then(|m| m.changes).unwrap_or(0);
    if changed == 0 {
        return Err(ProxyError::NotFound);
    }
    json_answer(serde_json::json!({ "id": id, "deleted": true }).to_string())
}

/// `GET /vault/webhooks/deliveries?key_id=&event_id=&limit=`: attempts, newest first.
pub async fn deliveries(req: &Request, env: &Env) -> Answer {
    authorize(req, env).await?;
    let mut sql = String::from("SELECT * FROM webhook_deliveries WHERE 1");
    let mut binds = Vec::new();
    let mut limit = 100u64;
    let mut seen = Vec::new();
    for (k, v) in pairs(req)? {
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
         'webhook_id', webhook_id, 'key_id', key_id, 'ts', {ts}, 'attempt', attempt, 'status', status, \
         'ok', json(CASE WHEN ok THEN 'true' ELSE 'false' END), 'error', error) ORDER BY seq DESC)) AS j FROM ({sql})",
        ts = timestamp_sql("ts_ms"),
    );
    json_answer(json_query(env, &sql, binds).await?)
}
