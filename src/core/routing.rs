//! Request routing. `/vault/...` is the admin API and is never proxied; everything else is a
//! vendor call, either `/{vendor}/<path>` or a bare `/<path>` for the vault key's own vendor
//! (so an official SDK only needs its host, port and protocol pointed at Keybrake).

use crate::core::vendor::Vendor;

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    IssueKey,
    /// `DELETE /vault/keys?agent_run_label=…`
    RevokeRun,
    GetKey(&'a str),
    RevokeKey(&'a str),
    RefreshKey(&'a str),
    /// `POST /vault/keys/{id}/children`, authenticated by the parent's vault key.
    MintChild(&'a str),
    CreateIssuer,
    ListIssuers,
    GetIssuer(&'a str),
    RevokeIssuer(&'a str),
    Audit,
    OpenApi,
    /// `GET /` and `HEAD /`: a page naming the service, for whoever opens the URL in a browser.
    Home,
    Proxy {
        vendor: Option<Vendor>,
        path: &'a str,
    },
    NotFound,
    /// With the methods the route does take, for the `Allow` header.
    MethodNotAllowed(&'static str),
    /// A method outside the ones Keybrake or any vendor route knows.
    UnknownMethod,
    // Console and alerts (issue 11).
    /// `GET /vault/keys`: the registry, filtered and paged.
    ListKeys,
    /// `GET /vault/spend`: cost per UTC day.
    Spend,
    /// `GET /console` and the files under it, compiled into the Worker.
    Console,
    CreateWebhook,
    ListWebhooks,
    DeleteWebhook(&'a str),
    WebhookDeliveries,
}

/// Methods any route takes. The runtime hands over others (`QUERY`, `TRACE`...) too; they are
/// refused rather than mistaken for one of these.
pub const KNOWN_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

pub fn route<'a>(method: &str, path: &'a str) -> Route<'a> {
    if !KNOWN_METHODS.contains(&method) {
        return Route::UnknownMethod;
    }
    // No vendor API lives at its root, so `/` never needs proxying; other methods keep going to
    // the proxy, which refuses them as before.
    if path == "/" && (method == "GET" || method == "HEAD") {
        return Route::Home;
    }
    if path == "/openapi.json" {
        return if method == "GET" { Route::OpenApi } else { Route::MethodNotAllowed("GET") };
    }
    if path == "/console" || path.starts_with("/console/") {
        return if method == "GET" || method == "HEAD" { Route::Console } else { Route::MethodNotAllowed("GET, HEAD") };
    }
    if path == "/vault" || path.starts_with("/vault/") {
        return admin_route(method, &path["/vault".len()..]);
    }
    let first = path.get(1..).and_then(|p| p.split('/').next()).unwrap_or("");
    match Vendor::from_name(first) {
        Some(vendor) => Route::Proxy { vendor: Some(vendor), path: &path[1 + first.len()..] },
        None => Route::Proxy { vendor: None, path },
    }
}

fn admin_route<'a>(method: &str, rest: &'a str) -> Route<'a> {
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match (method, segments.as_slice()) {
        ("POST", ["keys"]) => Route::IssueKey,
        ("GET", ["keys"]) => Route::ListKeys,
        ("DELETE", ["keys"]) => Route::RevokeRun,
        (_, ["keys"]) => Route::MethodNotAllowed("GET, POST, DELETE"),
        ("GET", ["keys", id]) => Route::GetKey(id),
        ("DELETE", ["keys", id]) => Route::RevokeKey(id),
        (_, ["keys", _]) => Route::MethodNotAllowed("GET, DELETE"),
        ("POST", ["keys", id, "refresh"]) => Route::RefreshKey(id),
        (_, ["keys", _, "refresh"]) => Route::MethodNotAllowed("POST"),
        ("POST", ["keys", id, "children"]) => Route::MintChild(id),
        (_, ["keys", _, "children"]) => Route::MethodNotAllowed("POST"),
        ("POST", ["issuers"]) => Route::CreateIssuer,
        ("GET", ["issuers"]) => Route::ListIssuers,
        (_, ["issuers"]) => Route::MethodNotAllowed("GET, POST"),
        ("GET", ["issuers", id]) => Route::GetIssuer(id),
        ("DELETE", ["issuers", id]) => Route::RevokeIssuer(id),
        (_, ["issuers", _]) => Route::MethodNotAllowed("GET, DELETE"),
        ("GET", ["audit"]) => Route::Audit,
        (_, ["audit"]) => Route::MethodNotAllowed("GET"),
        // Console and alerts (issue 11).
        ("GET", ["spend"]) => Route::Spend,
        (_, ["spend"]) => Route::MethodNotAllowed("GET"),
        ("POST", ["webhooks"]) => Route::CreateWebhook,
        ("GET", ["webhooks"]) => Route::ListWebhooks,
        (_, ["webhooks"]) => Route::MethodNotAllowed("GET, POST"),
        ("GET", ["webhooks", "deliveries"]) => Route::WebhookDeliveries,
        (_, ["webhooks", "deliveries"]) => Route::MethodNotAllowed("GET"),
        ("DELETE", ["webhooks", id]) => Route::DeleteWebhook(id),
        (_, ["webhooks", _]) => Route::MethodNotAllowed("DELETE"),
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_routes() {
        assert_eq!(route("POST", "/vault/keys"), Route::IssueKey);
        assert_eq!(route("GET", "/vault/keys"), Route::ListKeys);
        assert_eq!(route("PUT", "/vault/keys"), Route::MethodNotAllowed("GET, POST, DELETE"));
        assert_eq!(route("DELETE", "/vault/keys"), Route::RevokeRun);
        assert_eq!(route("POST", "/vault/keys/abc/children"), Route::MintChild("abc"));
        assert_eq!(route("GET", "/vault/keys/abc/children"), Route::MethodNotAllowed("POST"));
        assert_eq!(route("POST", "/vault/issuers"), Route::CreateIssuer);
        assert_eq!(route("GET", "/vault/issuers"), Route::ListIssuers);
        assert_eq!(route("GET", "/vault/issuers/i"), Route::GetIssuer("i"));
        assert_eq!(route("DELETE", "/vault/issuers/i"), Route::RevokeIssuer("i"));
        assert_eq!(route("POST", "/vault/issuers/i"), Route::MethodNotAllowed("GET, DELETE"));
        assert_eq!(route("GET", "/vault/keys/abc"), Route::GetKey("abc"));
        assert_eq!(route("DELETE", "/vault/keys/abc"), Route::RevokeKey("abc"));
        assert_eq!(route("PUT", "/vault/keys/abc"), Route::MethodNotAllowed("GET, DELETE"));
        assert_eq!(route("QUERY", "/vault/keys/abc"), Route::UnknownMethod);
        assert_eq!(route("TRACE", "/v1/payment_intents"), Route::UnknownMethod);
        assert_eq!(route("GET", "/vault/audit"), Route::Audit);
        assert_eq!(route("GET", "/vault"), Route::NotFound);
        assert_eq!(route("GET", "/openapi.json"), Route::OpenApi);
        assert_eq!(route("POST", "/openapi.json"), Route::MethodNotAllowed("GET"));
        assert_eq!(route("GET", "/vault/keys/abc/def"), Route::NotFound);
        assert_eq!(route("POST", "/vault/keys/abc/refresh"), Route::RefreshKey("abc"));
        assert_eq!(route("GET", "/vault/keys/abc/refresh"), Route::MethodNotAllowed("POST"));
        assert_eq!(route("GET", "/vault/other"), Route::NotFound);
    }

    #[test]
    fn console_and_alert_routes() {
        assert_eq!(route("GET", "/console"), Route::Console);
        assert_eq!(route("GET", "/console/app.js"), Route::Console);
        assert_eq!(route("POST", "/console/"), Route::MethodNotAllowed("GET, HEAD"));
        assert_eq!(route("GET", "/consoles"), Route::Proxy { vendor: None, path: "/consoles" });
        assert_eq!(route("GET", "/vault/spend"), Route::Spend);
        assert_eq!(route("POST", "/vault/webhooks"), Route::CreateWebhook);
        assert_eq!(route("GET", "/vault/webhooks"), Route::ListWebhooks);
        assert_eq!(route("GET", "/vault/webhooks/deliveries"), Route::WebhookDeliveries);
        assert_eq!(route("DELETE", "/vault/webhooks/wh_1"), Route::DeleteWebhook("wh_1"));
    }

    #[test]
    fn home_is_get_and_head_on_the_root_only() {
        assert_eq!(route("GET", "/"), Route::Home);
        assert_eq!(route("HEAD", "/"), Route::Home);
        assert_eq!(route("POST", "/"), Route::Proxy { vendor: None, path: "/" });
        assert_eq!(route("GET", "//"), Route::Proxy { vendor: None, path: "//" });
        assert_eq!(route("GET", ""), Route::Proxy { vendor: None, path: "" });
    }

    #[test]
    fn proxy_routes_with_and_without_vendor_prefix() {
        assert_eq!(
            route("POST", "/stripe/v1/payment_intents"),
            Route::Proxy { vendor: Some(Vendor::Stripe), path: "/v1/payment_intents" }
        );
        assert_eq!(route("POST", "/v1/payment_intents"), Route::Proxy { vendor: None, path: "/v1/payment_intents" });
        assert_eq!(route("GET", "/stripe"), Route::Proxy { vendor: Some(Vendor::Stripe), path: "" });
        assert_eq!(route("GET", "/vaultx/a"), Route::Proxy { vendor: None, path: "/vaultx/a" });
        assert_eq!(route("GET", "/Stripe/v1/x"), Route::Proxy { vendor: None, path: "/Stripe/v1/x" });
    }
}
