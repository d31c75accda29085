//! The floor: what workerd spends to forward a call with no guard at all.
//!
//! It does what any pass-through must, and nothing more: read the body, put the real secret in
//! place of the client's credential, send the call upstream, buffer the answer and return it
//! with its status and content type. No Durable Object, no D1, no checks, no timeout.

use worker::{event, Context, Env, Fetch, Headers, Request, RequestInit, RequestRedirect, Response, Result};

#[event(fetch)]
pub async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let origin = env.var("STRIPE_API_BASE")?.to_string();
    let secret = env.secret("STRIPE_SECRET_KEY")?.to_string();
    let url = req.url()?;
    let path_and_query = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    };
    let body = req.bytes().await?;

    let outgoing = Headers::new();
    if let Some(content_type) = req.headers().get("content-type")? {
        outgoing.set("content-type", &content_type)?;
    }
    outgoing.set("authorization", &format!("Bearer {secret}"))?;
    let mut init = RequestInit::new();
    init.with_method(req.method()).with_headers(outgoing).with_redirect(RequestRedirect::Manual);
    if !body.is_empty() {
        init.with_body(Some(worker::js_sys::Uint8Array::from(body.as_slice()).into()));
    }
    let upstream = Request::new_with_init(&format!("{}{path_and_query}", origin.trim_end_matches('/')), &init)?;

    let mut answer = Fetch::Request(upstream).send().await?;
    let status = answer.status_code();
    let headers = Headers::new();
    if let Some(content_type) = answer.headers().get("content-type")? {
        headers.set("content-type", &content_type)?;
    }
    Ok(Response::from_bytes(answer.bytes().await?)?.with_status(status).with_headers(headers))
}
