//! The wasm shell: the Worker's entry point. It routes, then hands off to the admin API or the
//! proxy. Every failure becomes a typed [`ProxyError`] answered in one JSON shape; internal
//! detail goes to the log, never to the caller.

mod admin;
mod home;
mod ledger_client;
mod proxy;
pub mod upstream;

use crate::core::error::{ErrorShape, ProxyError};
use crate::core::routing::{route, Route, KNOWN_METHODS};
use worker::{console_error, event, Context, Env, Headers, Request, Response, Result};

#[event(fetch)]
pub async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    std::panic::set_hook(Box::new(panic_location_only));
    let path = raw_path(&req);
    // The method as sent: `Request::method` maps methods it does not know to GET.
    let method = req.inner().method();
    let answer = match route(&method, &path) {
        Route::IssueKey => admin::issue_key(req, &env).await,
        Route::GetKey(id) => admin::get_key(&req, &env, id).await,
        Route::RevokeKey(id) => admin::revoke_key(&req, &env, id).await,
        Route::RefreshKey(id) => admin::refresh_key(req, &env, id).await,
        Route::Audit => admin::audit(&req, &env).await,
        Route::OpenApi => openapi(),
        Route::Home => home::answer(&req),
        Route::Proxy { vendor, path } => return proxy::forward(req, &env, &ctx, vendor, path).await,
        Route::NotFound => Err(ProxyError::NotFound),
        Route::MethodNotAllowed(allow) => Err(ProxyError::MethodNotAllowed(allow.into())),
        Route::UnknownMethod => Err(ProxyError::MethodNotAllowed(KNOWN_METHODS.join(", "))),
    };
    match answer {
        Ok(response) => Ok(response),
        Err(e) => error_response(&e, ErrorShape::Stripe),
    }
}

/// The OpenAPI 3.1 document of the whole HTTP contract.
fn openapi() -> std::result::Result<Response, ProxyError> {
    const DOCUMENT: &str = include_str!("../../openapi/openapi.json");
    let headers = Headers::new();
    headers.set("content-type", "application/json").map_err(internal("openapi headers"))?;
    Ok(Response::from_bytes(DOCUMENT.as_bytes().to_vec()).map_err(internal("openapi body"))?.with_headers(headers))
}

/// Logs where a panic happened, never its message: a message could carry request data. The
/// runtime then answers 500 without detail.
fn panic_location_only(info: &std::panic::PanicHookInfo<'_>) {
    match info.location() {
        Some(at) => console_error!("panic at {}:{}", at.file(), at.line()),
        None => console_error!("panic"),
    }
}

/// The request path exactly as the runtime handed it over. `Request::path` re-parses the URL,
/// which would normalise it a second time; the proxy must match the bytes it forwards.
fn raw_path(req: &Request) -> String {
    let url = req.inner().url();
    let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let path_and_query = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    let end = path_and_query.find(['?', '#']).unwrap_or(path_and_query.len());
    path_and_query[..end].to_string()
}

/// Our own error answer, in the error shape of the SDK that will read it, plus
/// `X-Keybrake-Error`.
pub fn error_response(e: &ProxyError, shape: ErrorShape) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("x-keybrake-error", e.kind())?;
    if let ProxyError::CapExhausted { retry_after_secs } = e {
        headers.set("x-keybrake-cap-hit", "true")?;
        headers.set("retry-after", &retry_after_secs.to_string())?;
    }
    if let ProxyError::MethodNotAllowed(allow) = e {
        headers.set("allow", allow)?;
    }
    if let ProxyError::TooManyAttempts { retry_after_secs } = e {
        headers.set("retry-after", &retry_after_secs.to_string())?;
    }
    // A refusal is final: retrying the same call cannot succeed, so tell the SDKs not to. The
    // exceptions may succeed later: a vendor that was unreachable, and a call whose
    // Idempotency-Key is still in flight (a retry then gets the first call's answer).
    if !matches!(e, ProxyError::VendorUnreachable | ProxyError::Internal | ProxyError::IdempotencyInFlight) {
        headers.set("stripe-should-retry", "false")?;
    }
    Ok(Response::from_bytes(e.body_as(shape).into_bytes())?.with_status(e.status()).with_headers(headers))
}

/// Maps a runtime failure to the public `internal_error`, logging what happened.
pub fn internal(context: &'static str) -> impl FnOnce(worker::Error) -> ProxyError {
    move |e| {
        console_error!("{context}: {e}");
        ProxyError::Internal
    }
}

/// The bearer token of a request, if any.
pub fn bearer(req: &Request) -> Option<String> {
    let value = req.headers().get("authorization").ok().flatten()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

/// An integer as a JS number, for D1 bindings. Every value passed (micro-dollars, ms
/// timestamps, counts) is far below 2^53, so none loses precision; none is float money.
pub fn js_number(n: u64) -> wasm_bindgen::JsValue {
    wasm_bindgen::JsValue::from(n as f64)
}

pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}
