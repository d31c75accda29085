//! `/vault/webhooks`: where alerts go. The signing secret is made here and answered once, at
//! creation; listings never show it. Deliveries are made by each key's object (its alarm),
//! which logs every attempt to D1 for `GET /vault/webhooks/deliveries`.

use crate::core::alerts::{parse_webhook, MAX_WEBHOOKS};
use crate::core::audit::SqlValue;
use crate::core::clock::rfc3339;
use crate::core::encoding::{base64url, hex};
use crate::core::error::ProxyError;
use crate::core::keys::MAX_BODY_BYTES;
use crate::core::token::is_key_id;
use crate::runtime::{js_number, now_ms};
use crate::shell::admin::authorize;
use crate::shell::errors::internal;
use crate::shell::listing::{json, pairs, select};
use crate::shell::request::read_body;
use serde::Deserialize;
use worker::{Env, Request, Response};

type Answer = Result<Response, ProxyError>;

#[derive(Deserialize)]
struct HookRow {
    id: String,
    url: String,
    events: String,
    created_at_ms: u64,
}

fn view(h: &HookRow) -> serde_json::Value {
    let events: Vec<String> = serde_json::from_str(&h.events).unwrap_or_default();
    serde_json::json!({ "id": h.id, "url": h.url, "events": events, "created_at": rfc3339(h.created_at_ms) })
}

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
    #[derive(Deserialize)]
    struct Count {
        n: u64,
    }
    let live: Vec<Count> =
        select(env, "SELECT COUNT(*) AS n FROM webhooks WHERE deleted_at_ms IS NULL".into(), vec![]).await?;
    if live.first().map_or(0, |c| c.n) >= MAX_WEBHOOKS as u64 {
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
    let row = HookRow { id, url: hook.url, events, created_at_ms: now };
    let mut answer = view(&row);
    answer["secret"] = secret.into();
    Ok(json(&answer)?.with_status(201))
}

/// `GET /vault/webhooks`: without secrets.
pub async fn list(req: &Request, env: &Env) -> Answer {
    authorize(req, env).await?;
    let rows: Vec<HookRow> = select(
        env,
        "SELECT id, url, events, created_at_ms FROM webhooks WHERE deleted_at_ms IS NULL ORDER BY created_at_ms".into(),
        vec![],
    )
    .await?;
    json(&serde_json::json!({ "data": rows.iter().map(view).collect::<Vec<_>>() }))
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
    json(&serde_json::json!({ "id": id, "deleted": true }))
}

/// `GET /vault/webhooks/deliveries?key_id=&event_id=&limit=`: attempts, newest first.
pub async fn deliveries(req: &Request, env: &Env) -> Answer {
    authorize(req, env).await?;
    let mut sql = String::from(
        "SELECT seq, event_id, type, webhook_id, key_id, ts_ms, attempt, status, ok, error FROM webhook_deliveries WHERE 1",
    );
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
    #[derive(Deserialize)]
    struct Row {
        event_id: String,
        r#type: String,
        webhook_id: String,
        key_id: Option<String>,
        ts_ms: u64,
        attempt: u32,
        status: Option<u16>,
        ok: u8,
        error: Option<String>,
    }
    let rows: Vec<Row> = select(env, sql, binds).await?;
    let data: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "event_id": r.event_id, "type": r.r#type, "webhook_id": r.webhook_id, "key_id": r.key_id,
                "ts": rfc3339(r.ts_ms), "attempt": r.attempt, "status": r.status, "ok": r.ok != 0, "error": r.error,
            })
        })
        .collect();
    json(&serde_json::json!({ "data": data }))
}
