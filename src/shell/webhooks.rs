//! `/vault/webhooks`: where alerts go. The signing secret is made here and answered once, at
//! creation; listings never show it. Deliveries are made by each key's object (its alarm),
//! which logs every attempt to D1 for `GET /vault/webhooks/deliveries`.

use crate::core::alerts::{parse_webhook, MAX_WEBHOOKS};
use crate::core::audit::SqlValue;
use crate::core::clock::rfc3339;
use crate::core::encoding::{base64url, hex};
use crate::core::error::ProxyError;
use crate::core::keys::MAX_BODY_BYTES;
use crate::runtime::{js_number, now_ms};
use crate::shell::admin::authorize;
use crate::shell::errors::internal;
use crate::shell::listing::{json_answer, json_query};
use crate::shell::request::read_body;
use worker::{Env, Request, Response};

type Answer = Result<Response, ProxyError>;

fn random<const N: usize>() -> Result<[u8; N], ProxyError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|_| ProxyError::Internal)?;
    Ok(bytes)
}

/// `POST /vault/webhooks {url, events}` → `201` with the secret, shown this once. The caller
/// owns it: root's hears of every key, an issuer's only of the issuer and its own keys.
pub async fn create(mut req: Request, env: &Env) -> Answer {
    let principal = authorize(&req, env).await?;
    let owner = principal.owner();
    let body = read_body(&mut req, MAX_BODY_BYTES).await?;
    let hook = parse_webhook(&body).map_err(ProxyError::InvalidRequest)?;
    let live = json_query(
        env,
        "SELECT CAST(COUNT(*) AS TEXT) AS j FROM webhooks WHERE deleted_at_ms IS NULL AND owner = ?1",
        vec![SqlValue::Text(owner.to_string())],
    )
    .await?;
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
        .prepare("INSERT INTO webhooks (id, owner, url, events, secret, created_at_ms) VALUES (?1, ?6, ?2, ?3, ?4, ?5)")
        .bind(&[
            id.as_str().into(),
            hook.url.as_str().into(),
            events.as_str().into(),
            secret.as_str().into(),
            js_number(now),
            owner.into(),
        ])
        .map_err(internal("bind webhook insert"))?
        .run()
        .await
        .map_err(internal("webhook insert"))?;
    let events: Vec<&str> = hook.events.iter().map(|e| e.name()).collect();
    let answer = serde_json::json!({
        "id": id, "owner": owner, "url": hook.url, "events": events, "created_at": rfc3339(now), "secret": secret,
    });
    Ok(json_answer(answer.to_string())?.with_status(201))
}

/// `DELETE /vault/webhooks/{id}`: no delivery to it is attempted afterwards. An issuer's token
/// deletes only its own (another's is 404); the root key any.
pub async fn delete(req: &Request, env: &Env, id: &str) -> Answer {
    let principal = authorize(req, env).await?;
    let result = env
        .d1("DB")
        .map_err(internal("D1 binding"))?
        .prepare(
            "UPDATE webhooks SET deleted_at_ms = ?1 WHERE id = ?2 AND (?3 = 'root' OR owner = ?3) \
             AND deleted_at_ms IS NULL",
        )
        .bind(&[js_number(now_ms()), id.into(), principal.owner().into()])
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
