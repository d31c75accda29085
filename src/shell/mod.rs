//! The wasm shell: the Worker's entry point. It routes, then hands off to the admin API or the
//! proxy. Every failure becomes a typed [`ProxyError`] answered in one JSON shape; internal
//! detail goes to the log, never to the caller.

mod admin;
mod console;
mod errors;
mod home;
mod listing;
mod objects;
mod proxy;
mod request;
mod webhooks;

use crate::core::error::{ErrorShape, ProxyError};
use crate::core::routing::{route, Route, KNOWN_METHODS};
use errors::{error_response, internal};
use worker::{console_error, event, Context, Env, Headers, Request, Response, Result};

#[event(fetch)]
pub async fn fetch(req: Request, env: Env, ctx: Context) -> Result<Response> {
    std::panic::set_hook(Box::new(panic_location_only));
    let path = raw_path(&req);
    // The method as sent: `Request::method` maps methods it does not know to GET.
    let method = req.inner().method();
    let answer = match route(&method, &path) {
        Route::IssueKey => admin::issue_key(req, &env).await,
        Route::RevokeRun => admin::revoke_run(&req, &env).await,
        Route::MintChild(id) => admin::mint_child(req, &env, id).await,
        Route::CreateIssuer => admin::create_issuer(req, &env).await,
        Route::ListIssuers => admin::list_issuers(&req, &env).await,
        Route::GetIssuer(id) => admin::get_issuer(&req, &env, id).await,
        Route::RevokeIssuer(id) => admin::revoke_issuer(&req, &env, id).await,
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
        // Console and alerts (issue 11).
        Route::ListKeys => listing::read(&req, &env, listing::Read::Keys).await,
        Route::Spend => listing::read(&req, &env, listing::Read::Spend).await,
        Route::Console => console::answer(&req, &path),
        Route::CreateWebhook => webhooks::create(req, &env).await,
        Route::ListWebhooks => listing::read(&req, &env, listing::Read::Webhooks).await,
        Route::DeleteWebhook(id) => webhooks::delete(&req, &env, id).await,
        Route::WebhookDeliveries => listing::read(&req, &env, listing::Read::Deliveries).await,
    };
    match answer {
        Ok(response) => Ok(response),
        Err(e) => error_response(&e, ErrorShape::Stripe, &[]),
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
