//! The proxy path, in named phases over one [`Call`]:
//!
//! authenticate → read → reserve → forward → settle → respond.
//!
//! `read` prices and fingerprints the request; `reserve` is one step in the key's object;
//! `forward` and `settle` run in `waitUntil` from the moment the vendor call starts, so a
//! client that disconnects cannot cut the report to the ledger short. The audit row is
//! written by the key's object in the settle step and reaches D1 from its outbox.

use crate::core::allowlist::check_canonical_path;
use crate::core::answer::Attempt;
use crate::core::cost::{self, PriceInput, Quote, Settlement};
use crate::core::encoding::hex;
use crate::core::error::{ErrorShape, ProxyError};
use crate::core::money::Micros;
use crate::core::screen::{screen, RequestShape};
use crate::core::token::VaultToken;
use crate::core::vendor::{Vendor, VendorSpec};
use crate::ledger::protocol::{CallResult, FinishCall, LedgerCall, LedgerReply, Replay, ReserveCall};
use crate::runtime::upstream::{self, Unanswered, VendorResponse};
use crate::runtime::{env_value, now_ms, settings};
use crate::shell::errors::{error_response, internal};
use crate::shell::objects::LedgerClient;
use crate::shell::request::{authorization, read_body};
use sha2::{Digest, Sha256};
use worker::{console_error, Context, Env, Headers, Method, Request, Response, Result};

/// One proxied call, as the phases fill it in.
struct Call {
    vendor: Vendor,
    spec: &'static VendorSpec,
    key_id: String,
    method: Method,
    /// The upstream path: what was matched, with the vendor's rules applied (Twilio's account).
    path: String,
    /// `?…` as received, or empty.
    query: String,
    body: Vec<u8>,
    /// The client's headers that the vendor's allowlist lets through.
    headers: Vec<(String, String)>,
    settlement: Settlement,
    per_unit: bool,
}

/// What the key's object granted.
struct Granted {
    reservation_id: u64,
    held: Micros,
    units: u64,
    remaining: Micros,
    idempotency_key: Option<String>,
    stripe_account: Option<String>,
    attempt: Attempt,
}

pub async fn forward(
    req: Request,
    env: &Env,
    ctx: &Context,
    route_vendor: Option<Vendor>,
    path: &str,
) -> Result<Response> {
    let presented = authorization(&req).map(|a| a.vault_key());
    let token = presented.as_deref().and_then(VaultToken::parse);
    // Answer in the shape the caller's SDK reads: the vendor named in the route, else the key's.
    let shape = route_vendor.or(token.as_ref().map(|t| t.vendor)).map_or(ErrorShape::Stripe, |v| v.spec().error_shape);
    // Headers every answer carries once they are known, errors included: a client that gets
    // `vendor_unreachable` needs the Idempotency-Key its call went out under to retry safely.
    let mut known = Vec::new();
    match proxy(req, env, ctx, route_vendor, path, token, &mut known).await {
        Ok(response) => Ok(response),
        Err(e) => error_response(&e, shape, &known),
    }
}

async fn proxy(
    req: Request,
    env: &Env,
    ctx: &Context,
    route_vendor: Option<Vendor>,
    path: &str,
    token: Option<VaultToken<'_>>,
    known: &mut Vec<(&'static str, String)>,
) -> std::result::Result<Response, ProxyError> {
    // Authenticate: a well-formed token naming an object the runtime minted. A secret this
    // isolate knows to be wrong is refused before anything is read. Otherwise the object
    // checks the secret first thing in the reservation, before any refusal found in the
    // request: a wrong secret gets the same 401 whatever else is wrong, and writes nothing.
    let token = token.ok_or(ProxyError::InvalidKey)?;
    let ledger = LedgerClient::existing(env, token.key_id).ok_or(ProxyError::InvalidKey)?;
    let secret_hash = token.secret_hash();
    match ledger.known_secret(token.vendor, &secret_hash) {
        Some(true) => {}
        Some(false) => return Err(ProxyError::InvalidKey),
        // A body of unknown or large size is read only for a secret the object has verified.
        // A small declared one is cheaper to read than a round trip: the reservation checks
        // the secret before anything it carries.
        None if !small_body(&req) => ledger.authenticate(token.vendor, &secret_hash).await?,
        None => {}
    }
    let (call, reserve) = read(req, env, route_vendor, path, &token).await;
    let granted = reserve_in(&ledger, reserve).await;
    // The object answered past its secret check: anything but a refused key or a failed call.
    if !matches!(granted, Err(ProxyError::InvalidKey | ProxyError::Internal)) {
        ledger.accepted(token.vendor, &secret_hash);
    }
    let granted = granted?;
    known.push(("x-keybrake-key-id", call.key_id.clone()));
    if let Some(key) = &granted.idempotency_key {
        known.push(("x-keybrake-idempotency-key", key.clone()));
    }
    let (spec, remaining) = (call.spec, granted.remaining);
    let answer = forward_and_settle(call, granted, ledger, env, ctx).await?;
    if matches!(answer.status, 401 | 403) {
        // The client's credential never goes upstream: this is about ours.
        let request_id = ["request-id", "twilio-request-id", "x-request-id"]
            .iter()
            .find_map(|h| answer.headers.get(h).ok().flatten())
            .unwrap_or_default();
        console_error!(
            "{} answered {} to Keybrake's own credential (request {request_id}); check its Worker secret",
            spec.name,
            answer.status
        );
        return Err(ProxyError::VendorAuthFailed);
    }
    respond(answer, spec, known, remaining)
}

/// Reads and screens the request, applies the vendor's path rules, prices and fingerprints it.
/// Nothing here answers: the first refusal found rides in the reservation, and the key's object
/// answers it only after checking the secret, so a wrong token gets 401 whatever it sent.
async fn read(
    mut req: Request,
    env: &Env,
    route_vendor: Option<Vendor>,
    path: &str,
    token: &VaultToken<'_>,
) -> (Call, ReserveCall) {
    let vendor = token.vendor;
    let spec = vendor.spec();
    let vars = |name: &str| env_value(env, name);
    // The first refusal found here wins; the key's object answers it after the secret.
    let mut refused = check_canonical_path(path).err().map(|e| ProxyError::InvalidRequest(e.into()));
    let path = match (route_vendor, (spec.upstream_path)(path, &vars)) {
        _ if refused.is_some() => path.to_string(),
        (Some(v), _) if v != vendor => {
            refused = Some(ProxyError::EndpointNotAllowed);
            path.to_string()
        }
        (_, Ok(upstream)) => upstream,
        (_, Err(error)) => {
            refused = Some(error);
            path.to_string()
        }
    };

    let method = req.method();
    // Bounded as it streams in: a chunked body stops at the limit, unread past it.
    let body = match method {
        Method::Get | Method::Head => Ok(Vec::new()),
        _ => read_body(&mut req, settings(env).max_body_bytes).await,
    };
    let body = body.unwrap_or_else(|e| {
        refused.get_or_insert(e);
        Vec::new()
    });
    let content_type = req.headers().get("content-type").ok().flatten();
    let url = req.inner().url();
    let raw_query = url.split_once('?').map_or("", |(_, q)| q.split('#').next().unwrap_or(""));
    let header_names: Vec<String> = req.headers().keys().collect();
    let host_header = req.headers().get("host").ok().flatten();
    let screened = screen(&RequestShape {
        url_host: authority(&url),
        host_header: host_header.as_deref(),
        header_names: &header_names,
        query: raw_query,
        content_type: content_type.as_deref(),
        body: &body,
    })
    .unwrap_or_else(|e| {
        refused.get_or_insert(e);
        Default::default()
    });
    let stripe_account = match vendor {
        Vendor::Stripe => connected_account(req.headers()).unwrap_or_else(|e| {
            refused.get_or_insert(e);
            None
        }),
        _ => None,
    };
    let price = match refused {
        Some(_) => Ok(cost::Price::FREE), // refused before pricing matters
        None => cost::price(
            vendor,
            &PriceInput {
                method: method.as_ref(),
                path: &path,
                query: raw_query,
                content_type: content_type.as_deref(),
                body: &body,
                vars: &vars,
            },
        ),
    };
    let query = if raw_query.is_empty() { String::new() } else { format!("?{raw_query}") };
    let settlement = price.as_ref().map_or(Settlement::Free, |p| p.settlement);
    let per_unit = matches!(price, Ok(cost::Price { quote: Quote::PerUnit { .. }, .. }));
    let reserve = ReserveCall {
        vendor,
        secret_hash: token.secret_hash(),
        method: method.to_string(),
        path: path.clone(),
        price: price.map(|p| p.quote),
        idempotency_key: req.headers().get("idempotency-key").ok().flatten(),
        idempotent: spec.idempotency && method == Method::Post,
        fingerprint: fingerprint(method.as_ref(), &path, &query, &body),
        stripe_account,
        expand: screened.expand,
        refused,
    };
    let call = Call {
        vendor,
        spec,
        key_id: token.key_id.to_string(),
        settlement,
        per_unit,
        headers: upstream::allowed_headers(spec, req.headers()),
        method,
        path,
        query,
        body,
    };
    (call, reserve)
}

/// Bodies up to this many declared bytes are read before the secret is verified.
const SMALL_BODY_BYTES: usize = 64 * 1024;

/// Whether the request declares a body of at most [`SMALL_BODY_BYTES`] (or is a GET or HEAD).
fn small_body(req: &Request) -> bool {
    if matches!(req.method(), Method::Get | Method::Head) {
        return true;
    }
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.parse::<usize>().ok());
    declared.is_some_and(|n| n <= SMALL_BODY_BYTES)
}

/// SHA-256 over the call as it is sent: an `Idempotency-Key` is bound to it at first use.
fn fingerprint(method: &str, path: &str, query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes(), query.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(body);
    hex(&h.finalize())
}

/// Every check and the hold happen in one uninterrupted step inside the key's object.
async fn reserve_in(ledger: &LedgerClient, reserve: ReserveCall) -> std::result::Result<Granted, ProxyError> {
    match ledger.call(&LedgerCall::Reserve { key_id: ledger.key_id().to_string(), call: reserve }).await? {
        LedgerReply::Reserved {
            reservation_id,
            amount,
            units,
            remaining,
            idempotency_key,
            stripe_account,
            attempt,
            ..
        } => Ok(Granted { reservation_id, held: amount, units, remaining, idempotency_key, stripe_account, attempt }),
        LedgerReply::Denied { error } => Err(error),
        LedgerReply::NotFound => Err(ProxyError::InvalidKey),
        _ => Err(ProxyError::Internal),
    }
}

/// Sends the call upstream and reports its end to the key's object, all in `waitUntil`: once
/// the vendor call has started, the report happens whatever the client does. The vendor's
/// answer comes back through a channel as soon as it is in.
async fn forward_and_settle(
    mut call: Call,
    granted: Granted,
    ledger: LedgerClient,
    env: &Env,
    ctx: &Context,
) -> std::result::Result<VendorResponse, ProxyError> {
    let mut headers = std::mem::take(&mut call.headers);
    headers.retain(|(name, _)| name != "idempotency-key");
    if let (true, Some(key)) = (call.spec.idempotency, &granted.idempotency_key) {
        // The client's own key, or one made up from the reservation: a retry under it cannot
        // be charged twice.
        headers.push(("idempotency-key".into(), key.clone()));
    }
    if let Some(account) = &granted.stripe_account {
        headers.push(("stripe-account".into(), account.clone()));
    }
    if call.per_unit {
        // Bound the call to what was held: Twilio ends it after TimeLimit seconds.
        call.body.extend_from_slice(format!("&TimeLimit={}", granted.units * 60).as_bytes());
    }
    let path_and_query = format!("{}{}", call.path, call.query);
    let (answered, answer) = futures_channel::oneshot::channel();
    let env = env.clone();
    ctx.wait_until(async move {
        let started = now_ms();
        let sent = upstream::send(
            &env,
            call.spec,
            call.method.clone(),
            &path_and_query,
            &headers,
            &call.body,
            settings(&env).upstream_timeout_ms,
        )
        .await;
        let finish = settle(&call, &granted, &sent, path_and_query, headers, now_ms() - started);
        // The client may be gone; the report goes to the ledger all the same.
        let _ = answered.send(sent);
        report(ledger, finish).await;
    });
    match answer.await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(Unanswered::NotSent)) => Err(ProxyError::VendorNotConfigured),
        Ok(Err(Unanswered::Lost)) => Err(ProxyError::VendorUnreachable),
        Err(_) => Err(ProxyError::Internal),
    }
}

/// How the call ended, for the key's object: a 2xx debits what the vendor reports, a
/// definitive refusal releases the hold, anything else keeps it as unknown (`core::answer`).
fn settle(
    call: &Call,
    granted: &Granted,
    sent: &std::result::Result<VendorResponse, Unanswered>,
    path_and_query: String,
    headers: Vec<(String, String)>,
    latency_ms: u64,
) -> FinishCall {
    let (result, vendor_object_id) = match sent {
        Err(Unanswered::NotSent) => (CallResult::Released, None),
        Err(Unanswered::Lost) => {
            CallResult::from_answer(call.vendor, call.settlement, granted.held, granted.attempt, None, &[])
        }
        Ok(answer) => CallResult::from_answer(
            call.vendor,
            call.settlement,
            granted.held,
            granted.attempt,
            Some(answer.status),
            &answer.body,
        ),
    };
    let reconcile_path = match (call.settlement, &call.spec.reconcile, &vendor_object_id) {
        (Settlement::Estimate { reconcile: true }, Some(reconciler), Some(id)) => {
            (reconciler.poll_path)(&call.path, id)
        }
        _ => None,
    };
    // Kept only if the outcome is unknown, to send the call again under the same key.
    let replay = match (result, call.spec.idempotency && granted.idempotency_key.is_some()) {
        (CallResult::Unknown, true) => String::from_utf8(call.body.clone()).ok().map(|body| Replay {
            path_and_query,
            headers,
            body,
            settlement: call.settlement,
        }),
        _ => None,
    };
    FinishCall {
        reservation_id: granted.reservation_id,
        result,
        status: sent.as_ref().ok().map(|a| a.status),
        vendor_object_id,
        latency_ms,
        reconcile_path,
        replay,
    }
}

/// The vendor's status and body, its allowlisted response headers, and ours.
fn respond(
    answer: VendorResponse,
    spec: &VendorSpec,
    known: &[(&'static str, String)],
    remaining: Micros,
) -> std::result::Result<Response, ProxyError> {
    let headers = Headers::new();
    let set = |name: &str, value: &str| headers.set(name, value).map_err(internal("set response header"));
    for name in spec.response_headers {
        if let Ok(Some(value)) = answer.headers.get(name) {
            set(name, &value)?;
        }
    }
    for (name, value) in known {
        set(name, value)?;
    }
    set("x-keybrake-remaining-usd", &remaining.to_usd_string())?;
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
    let call = LedgerCall::Finish { key_id: ledger.key_id().to_string(), call: finish };
    if !matches!(ledger.call(&call).await, Ok(LedgerReply::Finished)) {
        console_error!("settle failed for reservation {id}; the hold stays until the alarm sweeps it");
    }
}
