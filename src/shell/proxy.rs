//! The proxy path: authenticate → reserve → forward → settle. The audit row is written by the
//! key's object in the settle step and reaches D1 from its outbox, off this path.

use crate::core::allowlist::check_canonical_path;
use crate::core::cost::{self, PriceInput, Quote, Settlement};
use crate::core::error::{ErrorShape, ProxyError};
use crate::core::screen::{screen, RequestShape, DEFAULT_MAX_BODY_BYTES};
use crate::core::token::{basic_password, VaultToken};
use crate::core::vendor::Vendor;
use crate::durable_objects::protocol::{CallResult, FinishCall, LedgerCall, LedgerReply, Replay, ReserveCall};
use crate::shell::ledger_client::LedgerClient;
use crate::shell::upstream::{self, env_value, NoAnswer};
use crate::shell::{error_response, internal, now_ms};
use worker::{console_error, Context, Env, Headers, Method, Request, Response, Result};

pub async fn forward(
    req: Request,
    env: &Env,
    ctx: &Context,
    route_vendor: Option<Vendor>,
    path: &str,
) -> Result<Response> {
    let presented = vault_key(&req);
    let token = presented.as_deref().and_then(VaultToken::parse);
    // Answer in the shape the caller's SDK reads: the vendor named in the route, else the key's.
    let shape = route_vendor.or(token.as_ref().map(|t| t.vendor)).map_or(ErrorShape::Stripe, |v| v.spec().error_shape);
    match proxy(req, env, ctx, route_vendor, path, token).await {
        Ok(response) => Ok(response),
        Err(e) => error_response(&e, shape),
    }
}

/// The vault key from `Authorization: Bearer <key>`, or the password of HTTP Basic (the
/// official twilio SDK sends `accountSid:authToken`; any username is accepted).
fn vault_key(req: &Request) -> Option<String> {
    let value = req.headers().get("authorization").ok().flatten()?;
    let (scheme, credential) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(credential.trim().to_string())
    } else if scheme.eq_ignore_ascii_case("basic") {
        basic_password(credential)
    } else {
        None
    }
}

async fn proxy(
    mut req: Request,
    env: &Env,
    ctx: &Context,
    route_vendor: Option<Vendor>,
    path: &str,
    token: Option<VaultToken<'_>>,
) -> std::result::Result<Response, ProxyError> {
    // 1. Authenticate: a well-formed token naming an object the runtime minted. Nothing is
    //    created for a token that fails here.
    let token = token.ok_or(ProxyError::InvalidKey)?;
    let ledger = LedgerClient::existing(env, token.key_id).ok_or(ProxyError::InvalidKey)?;
    let vendor = token.vendor;
    let spec = vendor.spec();
    check_canonical_path(path).map_err(|e| ProxyError::InvalidRequest(e.into()))?;
    let vars = |name: &str| env_value(env, name);
    // The vendor's own path rules are judged by the key's object, after it has authenticated
    // the key: a wrong token must get 401 whatever path it tried.
    let (path, refused) = match (route_vendor, (spec.upstream_path)(path, &vars)) {
        (Some(v), _) if v != vendor => (path.to_string(), Some(ProxyError::EndpointNotAllowed)),
        (_, Ok(upstream)) => (upstream, None),
        (_, Err(error)) => (path.to_string(), Some(error)),
    };

    let method = req.method();
    let max_body = env_value(env, "MAX_BODY_BYTES").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_BODY_BYTES);
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(ProxyError::PayloadTooLarge(max_body));
    }
    let mut body = match method {
        Method::Get | Method::Head => Vec::new(),
        _ => req.bytes().await.map_err(|_| ProxyError::InvalidRequest("could not read the body".into()))?,
    };
    if body.len() > max_body {
        return Err(ProxyError::PayloadTooLarge(max_body));
    }
    let content_type = req.headers().get("content-type").ok().flatten();
    let url = req.inner().url();
    let header_names: Vec<String> = req.headers().keys().collect();
    let host_header = req.headers().get("host").ok().flatten();
    let screened = screen(&RequestShape {
        url_host: authority(&url),
        host_header: host_header.as_deref(),
        header_names: &header_names,
        query: url.split_once('?').map_or("", |(_, q)| q.split('#').next().unwrap_or("")),
        content_type: content_type.as_deref(),
        body: &body,
    })?;
    let stripe_account = match vendor {
        Vendor::Stripe => connected_account(req.headers())?,
        _ => None,
    };
    let price = match refused {
        Some(_) => Ok(cost::Price::FREE), // refused before pricing matters
        None => cost::price(
            vendor,
            &PriceInput {
                method: method.as_ref(),
                path: &path,
                content_type: content_type.as_deref(),
                body: &body,
                vars: &vars,
            },
        ),
    };
    let settlement = price.as_ref().map_or(Settlement::Free, |p| p.settlement);
    let per_unit = matches!(price, Ok(cost::Price { quote: Quote::PerUnit { .. }, .. }));
    let mut headers = upstream::allowed_headers(spec, req.headers());

    // 2. Reserve: every check and the hold happen in one step inside the key's object.
    let reserve = ReserveCall {
        vendor,
        secret_hash: token.secret_hash(),
        method: method.to_string(),
        path: path.clone(),
        price: price.map(|p| p.quote),
        idempotency_key: req.headers().get("idempotency-key").ok().flatten(),
        idempotent: spec.idempotency && method == Method::Post,
        stripe_account,
        expand: screened.expand,
        refused,
    };
    let (reservation_id, held, units, remaining, idempotency_key, pinned_account) =
        match ledger.call(&LedgerCall::Reserve(reserve)).await? {
            LedgerReply::Reserved {
                reservation_id, amount, units, remaining, idempotency_key, stripe_account, ..
            } => (reservation_id, amount, units, remaining, idempotency_key, stripe_account),
            LedgerReply::Denied { error } => return Err(error),
            LedgerReply::NotFound => return Err(ProxyError::InvalidKey),
            _ => return Err(ProxyError::Internal),
        };
    if let Some(key) = &idempotency_key {
        // The client's own key, or one made up from the reservation: a retry under it cannot
        // be charged twice.
        headers.retain(|(name, _)| name != "idempotency-key");
        headers.push(("idempotency-key".into(), key.clone()));
    }
    if let Some(account) = pinned_account {
        headers.push(("stripe-account".into(), account));
    }
    if per_unit {
        // Bound the call to what was held: Twilio ends it after TimeLimit seconds.
        body.extend_from_slice(format!("&TimeLimit={}", units * 60).as_bytes());
    }

    // 3. Forward with the real credential.
    let started = now_ms();
    let query = url.find('?').map_or("", |i| &url[i..]);
    let path_and_query = format!("{path}{query}");
    // Kept only if the outcome turns out unknown, to send the call again under the same key.
    let replay_body =
        (spec.idempotency && idempotency_key.is_some()).then(|| String::from_utf8(body.clone()).ok()).flatten();
    let sent =
        upstream::send(env, spec, method, &path_and_query, &headers, Some(body), upstream::timeout_ms(env)).await;

    // 4. Settle: debit what the vendor reports, release on a definite refusal, hold otherwise.
    let (result, vendor_object_id) = match &sent {
        Ok(answer) if (200..300).contains(&answer.status) => {
            let settled = cost::settle(vendor, settlement, held, &answer.body);
            (CallResult::Settled { cost: settled.cost }, settled.vendor_object_id)
        }
        Ok(answer) if (400..500).contains(&answer.status) => (CallResult::Released, None),
        Err(NoAnswer::NotSent) => (CallResult::Released, None),
        _ => (CallResult::Unknown, None),
    };
    let reconcile_path = match (settlement, &spec.reconcile, &vendor_object_id) {
        (Settlement::Estimate { reconcile: true }, Some(reconciler), Some(id)) => (reconciler.poll_path)(&path, id),
        _ => None,
    };
    let replay = match (result, replay_body) {
        (CallResult::Unknown, Some(body)) => Some(Replay { path_and_query, headers, body, settlement }),
        _ => None,
    };
    let finish = FinishCall {
        reservation_id,
        result,
        status: sent.as_ref().ok().map(|a| a.status),
        vendor_object_id,
        latency_ms: now_ms() - started,
        reconcile_path,
        replay,
    };
    // 4b. The vendor has answered: send that answer now and report it to the ledger right
    //     after. Until the report lands the call's hold still counts, so the cap stays exact.
    ctx.wait_until(report(ledger, finish));

    let answer = sent.map_err(|e| match e {
        NoAnswer::NotSent => ProxyError::VendorNotConfigured,
        NoAnswer::Unknown => ProxyError::VendorUnreachable,
    })?;
    let headers = Headers::new();
    for name in spec.response_headers {
        if let Ok(Some(value)) = answer.headers.get(name) {
            headers.set(name, &value).map_err(internal("copy response header"))?;
        }
    }
    let set = |name: &str, value: &str| headers.set(name, value).map_err(internal("set response header"));
    set("x-keybrake-key-id", token.key_id)?;
    set("x-keybrake-remaining-usd", &remaining.to_usd_string())?;
    if let Some(key) = &idempotency_key {
        set("x-keybrake-idempotency-key", key)?;
    }
    Ok(Response::from_bytes(answer.body)
        .map_err(internal("response body"))?
        .with_status(answer.status)
        .with_headers(headers))
}

/// `host:port` of a URL as the runtime gives it.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or("")
}

/// The connected account the client names in `Stripe-Account` or `Stripe-Context`. The key's
/// object decides whether it may; naming two different ones is refused here.
fn connected_account(headers: &Headers) -> std::result::Result<Option<String>, ProxyError> {
    let account = headers.get("stripe-account").ok().flatten();
    let context = headers.get("stripe-context").ok().flatten();
    match (account, context) {
        (Some(a), Some(c)) if a != c => Err(ProxyError::HeaderNotAllowed("Stripe-Context".into())),
        (a, c) => Ok(a.or(c)),
    }
}

/// Reports how the call ended. If the report is lost, the hold stays: the key's alarm sweeps
/// it to an unknown outcome, never to a release.
async fn report(ledger: LedgerClient, finish: FinishCall) {
    let id = finish.reservation_id;
    if !matches!(ledger.call(&LedgerCall::Finish(finish)).await, Ok(LedgerReply::Finished)) {
        console_error!("settle failed for reservation {id}; the hold stays until the alarm sweeps it");
    }
}
