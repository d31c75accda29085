//! The proxy path: authenticate → reserve → forward → settle. The audit row is written by the
//! key's object in the settle step and reaches D1 from its outbox, off this path.

use crate::core::allowlist::check_canonical_path;
use crate::core::cost::{self, Price, Settlement};
use crate::core::error::ProxyError;
use crate::core::money::Micros;
use crate::core::token::VaultToken;
use crate::core::vendor::{Credential, Vendor, VendorSpec};
use crate::durable_objects::protocol::{CallResult, FinishCall, LedgerCall, LedgerReply, ReserveCall};
use crate::shell::ledger_client::LedgerClient;
use crate::shell::{bearer, internal, now_ms};
use futures_util::future::{select, Either};
use std::time::Duration;
use worker::{
    console_error, AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit, RequestRedirect, Response,
};

const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
const MAX_BODY_BYTES: usize = 1024 * 1024;

pub async fn forward(
    mut req: Request,
    env: &Env,
    route_vendor: Option<Vendor>,
    path: &str,
) -> Result<Response, ProxyError> {
    // 1. Authenticate: a well-formed token naming an object the runtime minted. Nothing is
    //    created for a token that fails here.
    let presented = bearer(&req).ok_or(ProxyError::InvalidKey)?;
    let token = VaultToken::parse(&presented).ok_or(ProxyError::InvalidKey)?;
    let ledger = LedgerClient::existing(env, token.key_id).ok_or(ProxyError::InvalidKey)?;
    check_canonical_path(path).map_err(|e| ProxyError::InvalidRequest(e.into()))?;

    let method = req.method();
    let body = match method {
        Method::Get | Method::Head => Vec::new(),
        _ => req.bytes().await.map_err(|_| ProxyError::InvalidRequest("could not read the body".into()))?,
    };
    if body.len() > MAX_BODY_BYTES {
        return Err(ProxyError::InvalidRequest(format!("body is larger than {MAX_BODY_BYTES} bytes")));
    }
    let vendor = token.vendor;
    let price = match route_vendor {
        Some(v) if v != vendor => Err(ProxyError::EndpointNotAllowed),
        _ => cost::price(vendor, method.as_ref(), path, &body),
    };
    let (reserved, settlement) = match &price {
        Ok(Price { reserve, settlement }) => (*reserve, *settlement),
        Err(_) => (Micros::ZERO, Settlement::Free),
    };
    let idempotency_key = req.headers().get("idempotency-key").ok().flatten();

    // 2. Reserve: every check and the hold happen in one step inside the key's object.
    let reserve = ReserveCall {
        vendor,
        secret_hash: token.secret_hash(),
        method: method.to_string(),
        path: path.to_string(),
        price: price.map(|p| p.reserve),
        idempotency_key,
    };
    let (reservation_id, remaining) = match ledger.call(&LedgerCall::Reserve(reserve)).await? {
        LedgerReply::Reserved { reservation_id, remaining } => (reservation_id, remaining),
        LedgerReply::Denied { error } => return Err(error),
        LedgerReply::NotFound => return Err(ProxyError::InvalidKey),
        _ => return Err(ProxyError::Internal),
    };

    // 3. Forward with the real credential.
    let spec = vendor.spec();
    let started = now_ms();
    let sent = send_upstream(&req, env, spec, &method, path, body).await;

    // 4. Settle: debit what the vendor reports, release on a definite refusal, hold otherwise.
    let (result, status, vendor_object_id, upstream) = match sent {
        Ok((status, headers, body)) => {
            let (result, object_id) = match status {
                200..=299 => {
                    let settled = cost::settle(settlement, reserved, &body);
                    (CallResult::Settled { cost: settled.cost }, settled.vendor_object_id)
                }
                400..=499 => (CallResult::Released, None),
                _ => (CallResult::Unknown, None),
            };
            (result, Some(status), object_id, Some((status, headers, body)))
        }
        Err(()) => (CallResult::Unknown, None, None, None),
    };
    let finish = FinishCall { reservation_id, result, status, vendor_object_id, latency_ms: now_ms() - started };
    let remaining = match ledger.call(&LedgerCall::Finish(finish)).await {
        Ok(LedgerReply::Finished { remaining }) => remaining,
        // The vendor has answered; the caller gets that answer. The hold stays until it is settled.
        _ => {
            console_error!("settle failed for reservation {reservation_id}; the hold stays");
            remaining
        }
    };

    let Some((status, upstream_headers, body)) = upstream else {
        return Err(ProxyError::VendorUnreachable);
    };
    let headers = Headers::new();
    for name in spec.response_headers {
        if let Ok(Some(value)) = upstream_headers.get(name) {
            headers.set(name, &value).map_err(internal("copy response header"))?;
        }
    }
    let set = |name: &str, value: &str| headers.set(name, value).map_err(internal("set response header"));
    set("x-keybrake-key-id", token.key_id)?;
    set("x-keybrake-remaining-usd", &remaining.to_usd_string())?;
    Ok(Response::from_bytes(body).map_err(internal("response body"))?.with_status(status).with_headers(headers))
}

/// Sends the call upstream: the vendor's fixed origin, the canonical path, the client's query,
/// an allowlist of the client's headers, then the credential. `Err` means the outcome is
/// unknown (network error, reset or timeout).
async fn send_upstream(
    req: &Request,
    env: &Env,
    spec: &VendorSpec,
    method: &Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Headers, Vec<u8>), ()> {
    let origin = env.var(spec.origin_var).map(|v| v.to_string()).unwrap_or_else(|_| spec.default_origin.to_string());
    let query = req.inner().url();
    let query = query.find('?').map_or("", |i| &query[i..]);
    let url = format!("{}{path}{query}", origin.trim_end_matches('/'));

    let headers = Headers::new();
    for name in spec.request_headers {
        if let Ok(Some(value)) = req.headers().get(name) {
            headers.set(name, &value).map_err(|_| ())?;
        }
    }
    match spec.credential {
        Credential::Bearer { secret } => {
            let Ok(secret) = env.secret(secret) else {
                console_error!("{secret} is not set; cannot call {}", spec.name);
                return Err(());
            };
            headers.set("authorization", &format!("Bearer {secret}")).map_err(|_| ())?;
        }
    }

    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(headers).with_redirect(RequestRedirect::Manual);
    if !body.is_empty() {
        init.with_body(Some(worker::js_sys::Uint8Array::from(body.as_slice()).into()));
    }
    let request = Request::new_with_init(&url, &init).map_err(|_| ())?;

    let timeout_ms = env
        .var("UPSTREAM_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.to_string().parse().ok())
        .unwrap_or(DEFAULT_UPSTREAM_TIMEOUT_MS);
    let controller = AbortController::default();
    let signal = controller.signal();
    let call = async move {
        let mut resp = Fetch::Request(request).send_with_signal(&signal).await?;
        let bytes = resp.bytes().await?;
        Ok::<_, worker::Error>((resp.status_code(), resp.headers().clone(), bytes))
    };
    let timer = Delay::from(Duration::from_millis(timeout_ms));
    match select(Box::pin(call), timer).await {
        Either::Left((Ok(answer), _)) => Ok(answer),
        Either::Left((Err(e), _)) => {
            console_error!("upstream call to {} failed: {e}", spec.name);
            Err(())
        }
        Either::Right(_) => {
            controller.abort();
            console_error!("upstream call to {} timed out after {timeout_ms} ms", spec.name);
            Err(())
        }
    }
}
