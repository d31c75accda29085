//! `/console`: the operator console, static files served by Workers static assets
//! (`assets/console/`, `[assets]` in wrangler.toml). The Worker runs first for every request
//! (`run_worker_first`), so the proxy sees requests exactly as before; only `/console` paths
//! are handed to the assets binding. The CSP and the other headers come from `assets/_headers`.

use crate::core::error::ProxyError;
use crate::shell::errors::internal;
use worker::{Env, Request, Response};

pub async fn answer(req: Request, env: &Env) -> Result<Response, ProxyError> {
    let assets = env.assets("ASSETS").map_err(internal("assets binding"))?;
    assets.fetch_request(req).await.map_err(internal("assets fetch"))
}
