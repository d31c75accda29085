//! `GET /`: says what this is to whoever opens the URL, a person in a browser or a script.
//! Fixed text only: no secret, no state, no binding touched.

use crate::core::error::ProxyError;
use crate::shell::errors::internal;
use worker::{Headers, Method, Request, Response};

const HTML: &str = "<!doctype html>
<html lang=\"en\">
<meta charset=\"utf-8\">
<title>Keybrake</title>
<h1>Keybrake</h1>
<p>An edge proxy that gives AI agent runs short-lived, capped vault keys for Stripe, Twilio and Resend.</p>
<p>The HTTP contract: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI 3.1).</p>
<p>The operator console: <a href=\"/console\">/console</a>.</p>
</html>
";

const JSON: &str = r#"{"service":"keybrake","description":"An edge proxy that gives AI agent runs short-lived, capped vault keys for Stripe, Twilio and Resend.","openapi":"/openapi.json"}"#;

pub fn answer(req: &Request) -> Result<Response, ProxyError> {
    let accept = req.headers().get("accept").ok().flatten().unwrap_or_default().to_ascii_lowercase();
    // A browser asks for text/html; a script that names JSON and not HTML gets JSON.
    let (body, content_type) = if accept.contains("application/json") && !accept.contains("text/html") {
        (JSON, "application/json")
    } else {
        (HTML, "text/html; charset=utf-8")
    };
    let headers = Headers::new();
    headers.set("content-type", content_type).map_err(internal("home headers"))?;
    // The answer depends on Accept, so a cache must key on it.
    headers.set("vary", "accept").map_err(internal("home headers"))?;
    // HEAD gets the same headers and no body.
    let bytes = if req.method() == Method::Head { Vec::new() } else { body.as_bytes().to_vec() };
    Ok(Response::from_bytes(bytes).map_err(internal("home body"))?.with_headers(headers))
}
