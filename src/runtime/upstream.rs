//! Calls to a vendor: its fixed origin, an allowlist of headers, then the real credential.
//! Used by the proxy for the client's call, and by the key's object for replays and prices.

use crate::core::encoding::base64;
use crate::core::vendor::{Credential, VendorSpec};
use futures_util::future::{select, Either};
use std::time::Duration;
use worker::{
    console_error, AbortController, Delay, Env, Fetch, Headers, Method, Request, RequestInit, RequestRedirect,
};

/// The vendor's answer, read whole.
pub struct VendorResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// The client's headers that the vendor's allowlist lets through, lower-case names.
pub fn allowed_headers(spec: &VendorSpec, client: &Headers) -> Vec<(String, String)> {
    spec.request_headers
        .iter()
        .filter_map(|name| client.get(name).ok().flatten().map(|value| (name.to_string(), value)))
        .collect()
}

/// Why a call has no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Nothing was sent (the vendor's secret is not set, or the request could not be built).
    NotSent,
    /// It may have reached the vendor: a network error, a reset or a timeout.
    Lost,
}

/// Sends one call. `path_and_query` is already canonical; the origin never comes from the
/// client.
pub async fn send(
    env: &Env,
    spec: &VendorSpec,
    method: Method,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<VendorResponse, Unanswered> {
    let origin = super::env_value(env, spec.origin_var).unwrap_or_else(|| spec.default_origin.to_string());
    let url = format!("{}{path_and_query}", origin.trim_end_matches('/'));

    let outgoing = Headers::new();
    for (name, value) in headers {
        outgoing.set(name, value).map_err(|_| Unanswered::NotSent)?;
    }
    let Some(authorization) = credential(env, spec) else {
        console_error!("{} credentials are not set", spec.name);
        return Err(Unanswered::NotSent);
    };
    // Set last, so nothing a client sent can stand in for it.
    outgoing.set("authorization", &authorization).map_err(|_| Unanswered::NotSent)?;

    let mut init = RequestInit::new();
    init.with_method(method).with_headers(outgoing).with_redirect(RequestRedirect::Manual);
    if !body.is_empty() {
        init.with_body(Some(worker::js_sys::Uint8Array::from(body).into()));
    }
    let request = Request::new_with_init(&url, &init).map_err(|_| Unanswered::NotSent)?;

    let controller = AbortController::default();
    let signal = controller.signal();
    let call = async move {
        let mut resp = Fetch::Request(request).send_with_signal(&signal).await?;
        let body = resp.bytes().await?;
        Ok::<_, worker::Error>(VendorResponse { status: resp.status_code(), headers: resp.headers().clone(), body })
    };
    match select(Box::pin(call), Delay::from(Duration::from_millis(timeout_ms))).await {
        Either::Left((Ok(answer), _)) => Ok(answer),
        Either::Left((Err(e), _)) => {
            console_error!("upstream call to {} failed: {e}", spec.name);
            Err(Unanswered::Lost)
        }
        Either::Right(_) => {
            controller.abort();
            console_error!("upstream call to {} timed out after {timeout_ms} ms", spec.name);
            Err(Unanswered::Lost)
        }
    }
}

/// The `Authorization` value holding the vendor's real credential.
fn credential(env: &Env, spec: &VendorSpec) -> Option<String> {
    let secret = |name: &str| env.secret(name).map(|s| s.to_string()).ok().filter(|s| !s.is_empty());
    match spec.credential {
        Credential::Bearer { secret: name } => Some(format!("Bearer {}", secret(name)?)),
        Credential::Basic { pairs } => pairs.iter().find_map(|(user, password)| {
            let pair = format!("{}:{}", secret(user)?, secret(password)?);
            Some(format!("Basic {}", base64(pair.as_bytes())))
        }),
    }
}
