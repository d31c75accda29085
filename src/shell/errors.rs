//! Errors as answers: every failure is a typed [`ProxyError`] answered in one JSON shape;
//! internal detail goes to the log, never to the caller.

use crate::core::error::{ErrorShape, ProxyError};
use worker::{console_error, Headers, Response, Result};

/// Our own error answer, in the error shape of the SDK that will read it, plus
/// `X-Keybrake-Error` and the `known` headers of the call so far (its key id and the
/// Idempotency-Key it went out under).
pub fn error_response(e: &ProxyError, shape: ErrorShape, known: &[(&str, String)]) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("x-keybrake-error", e.kind())?;
    for (name, value) in known {
        headers.set(name, value)?;
    }
    if let Some(scope) = e.cap_scope() {
        headers.set("x-keybrake-cap-hit", "true")?;
        headers.set("x-keybrake-cap-scope", scope.name())?;
    }
    if let Some(secs) = e.retry_after() {
        headers.set("retry-after", &secs.to_string())?;
    }
    if let ProxyError::MethodNotAllowed(allow) = e {
        headers.set("allow", allow)?;
    }
    // A refusal is final: retrying the same call cannot succeed, so tell the SDKs not to.
    if !e.retryable() {
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
