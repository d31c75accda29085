//! `/console`: the operator console, static files from `console/` compiled in. They are
//! embedded rather than served as Workers static assets: the assets router in front of the
//! Worker resets kept-alive connections whose request body the Worker refused unread (seen in
//! workerd), which the proxy does on purpose for forged keys.
//!
//! Every answer carries a strict Content-Security-Policy: the console loads its own script,
//! style and icon, talks to its own origin, runs no inline code and cannot be framed.

use crate::core::error::ProxyError;
use crate::shell::errors::internal;
use worker::{Headers, Method, Request, Response};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn file(path: &str) -> Option<(&'static str, &'static str)> {
    Some(match path {
        "/console" | "/console/" => (include_str!("../../console/index.html"), "text/html; charset=utf-8"),
        "/console/console.js" => (include_str!("../../console/console.js"), "text/javascript; charset=utf-8"),
        "/console/console.css" => (include_str!("../../console/console.css"), "text/css; charset=utf-8"),
        "/console/favicon.svg" => (include_str!("../../console/favicon.svg"), "image/svg+xml"),
        _ => return None,
    })
}

pub fn answer(req: &Request, path: &str) -> Result<Response, ProxyError> {
    let (body, content_type, status) = match file(path) {
        Some((body, content_type)) => (body, content_type, 200),
        None => ("Not found.\n", "text/plain; charset=utf-8", 404),
    };
    let headers = Headers::new();
    for (name, value) in [
        ("content-type", content_type),
        ("content-security-policy", CSP),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        headers.set(name, value).map_err(internal("console headers"))?;
    }
    let bytes = if req.method() == Method::Head { Vec::new() } else { body.as_bytes().to_vec() };
    Ok(Response::from_bytes(bytes).map_err(internal("console body"))?.with_status(status).with_headers(headers))
}
