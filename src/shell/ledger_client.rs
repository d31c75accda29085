//! Typed calls to a key's `VaultKey` Durable Object.

use crate::core::error::ProxyError;
use crate::core::token::is_key_id;
use crate::durable_objects::protocol::{LedgerCall, LedgerReply};
use crate::shell::internal;
use worker::{Env, Method, Request, RequestInit, Stub};

pub const BINDING: &str = "VAULT_KEYS";

pub struct LedgerClient {
    stub: Stub,
}

impl LedgerClient {
    /// The object of an existing key. The runtime refuses ids it did not mint, so a forged
    /// id fails here, before any object is created.
    pub fn existing(env: &Env, key_id: &str) -> Option<LedgerClient> {
        if !is_key_id(key_id) {
            return None;
        }
        let namespace = env.durable_object(BINDING).ok()?;
        let stub = namespace.id_from_string(key_id).ok()?.get_stub().ok()?;
        Some(LedgerClient { stub })
    }

    /// A fresh object for a new key, with its id.
    pub fn fresh(env: &Env) -> Result<(String, LedgerClient), ProxyError> {
        let namespace = env.durable_object(BINDING).map_err(internal("durable object binding"))?;
        let id = namespace.unique_id().map_err(internal("new durable object id"))?;
        let stub = id.get_stub().map_err(internal("durable object stub"))?;
        Ok((id.to_string(), LedgerClient { stub }))
    }

    pub async fn call(&self, call: &LedgerCall) -> Result<LedgerReply, ProxyError> {
        let body = serde_json::to_string(call).map_err(|_| ProxyError::Internal)?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post).with_body(Some(body.into()));
        let req = Request::new_with_init("https://vault-key/", &init).map_err(internal("ledger request"))?;
        let mut resp = self.stub.fetch_with_request(req).await.map_err(internal("ledger call"))?;
        if resp.status_code() != 200 {
            let text = resp.text().await.unwrap_or_default();
            worker::console_error!("ledger call failed with {}: {text}", resp.status_code());
            return Err(ProxyError::Internal);
        }
        resp.json().await.map_err(internal("ledger reply"))
    }
}
