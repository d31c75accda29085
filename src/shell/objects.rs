//! Typed calls to the Durable Objects: a message serialized to JSON, sent over the stub's
//! `fetch`, the typed reply read back. One function does it for every object.

use crate::core::error::ProxyError;
use crate::core::lockout::{Failure, Verdict};
use crate::core::token::{is_key_id, is_object_id, object_of, SecretHash};
use crate::core::vendor::Vendor;
use crate::ledger::protocol::{LedgerCall, LedgerReply};
use crate::shell::errors::internal;
use serde::{de::DeserializeOwned, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use worker::{console_error, Env, Method, Request, RequestInit, Stub};

const VAULT_KEYS: &str = "VAULT_KEYS";
const ADMIN_GUARD: &str = "ADMIN_GUARD";

/// Sends `message` to the object behind `stub` and reads its reply.
async fn call_object<M: Serialize, R: DeserializeOwned>(stub: &Stub, message: &M) -> Result<R, ProxyError> {
    let body = serde_json::to_string(message).map_err(|_| ProxyError::Internal)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_body(Some(body.into()));
    let req = Request::new_with_init("https://object/", &init).map_err(internal("object request"))?;
    let mut resp = stub.fetch_with_request(req).await.map_err(internal("object call"))?;
    if resp.status_code() != 200 {
        let text = resp.text().await.unwrap_or_default();
        console_error!("object call failed with {}: {text}", resp.status_code());
        return Err(ProxyError::Internal);
    }
    // serde_json on the text: cheaper than converting a parsed JS object field by field.
    let text = resp.text().await.map_err(internal("object reply"))?;
    serde_json::from_str(&text).map_err(|_| ProxyError::Internal)
}

/// Secrets this isolate has seen the key's object accept, by key id. A key's secret never
/// changes, so a call whose secret differs from the one seen is refused at once, before its
/// body is read. Only the object decides anything else (revocation, expiry, money); this only
/// spares work. (Calls cannot wait on one another's round trip: the runtime cancels a request
/// that waits on another request's I/O.)
const MAX_KNOWN: usize = 10_000;
thread_local! {
    static KNOWN: RefCell<BTreeMap<String, (Vendor, SecretHash)>> = const { RefCell::new(BTreeMap::new()) };
}

/// The `VaultKey` object that holds a key (or an issuer), addressed for one key.
pub struct LedgerClient {
    key_id: String,
    stub: Stub,
}

impl LedgerClient {
    /// The object of an existing key. The runtime refuses ids it did not mint, so a forged
    /// id fails here, before any object is created.
    pub fn existing(env: &Env, key_id: &str) -> Option<LedgerClient> {
        if !is_key_id(key_id) {
            return None;
        }
        let namespace = env.durable_object(VAULT_KEYS).ok()?;
        let stub = namespace.id_from_string(object_of(key_id)).ok()?.get_stub().ok()?;
        Some(LedgerClient { key_id: key_id.to_string(), stub })
    }

    /// The object of an existing issuer (its id is the object's).
    pub fn issuer(env: &Env, issuer_id: &str) -> Option<LedgerClient> {
        if !is_object_id(issuer_id) {
            return None;
        }
        LedgerClient::existing(env, issuer_id)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// A fresh object for a new key, with its id.
    pub fn fresh(env: &Env) -> Result<(String, LedgerClient), ProxyError> {
        let namespace = env.durable_object(VAULT_KEYS).map_err(internal("durable object binding"))?;
        let id = namespace.unique_id().map_err(internal("new durable object id"))?;
        let stub = id.get_stub().map_err(internal("durable object stub"))?;
        let key_id = id.to_string();
        Ok((key_id.clone(), LedgerClient { key_id, stub }))
    }

    /// Whether the presented secret is the one this isolate has seen the object accept:
    /// `Some(false)` is a wrong secret; `None` means only the object can tell.
    pub fn known_secret(&self, vendor: Vendor, secret_hash: &SecretHash) -> Option<bool> {
        KNOWN.with(|k| k.borrow().get(&self.key_id).map(|(v, known)| *v == vendor && known.matches(secret_hash)))
    }

    /// Asks the object whether the secret is the key's, and remembers it if so.
    pub async fn authenticate(&self, vendor: Vendor, secret_hash: &SecretHash) -> Result<(), ProxyError> {
        let call = LedgerCall::Authenticate { key_id: self.key_id.clone(), vendor, secret_hash: secret_hash.clone() };
        match self.call(&call).await? {
            LedgerReply::Authenticated => {
                self.accepted(vendor, secret_hash);
                Ok(())
            }
            LedgerReply::Denied { error } => Err(error),
            LedgerReply::NotFound => Err(ProxyError::InvalidKey),
            _ => Err(ProxyError::Internal),
        }
    }

    /// Remembers a secret the object has just accepted.
    pub fn accepted(&self, vendor: Vendor, secret_hash: &SecretHash) {
        KNOWN.with(|k| {
            let mut k = k.borrow_mut();
            if k.len() >= MAX_KNOWN {
                k.clear();
            }
            k.insert(self.key_id.clone(), (vendor, secret_hash.clone()));
        });
    }

    pub async fn call(&self, call: &LedgerCall) -> Result<LedgerReply, ProxyError> {
        call_object(&self.stub, call).await
    }
}

/// Counts one failed admin authentication from `bucket` (an address, or an IPv6 /64).
pub async fn admin_failure(env: &Env, bucket: &str, failure: &Failure) -> Result<Verdict, ProxyError> {
    let stub = env
        .durable_object(ADMIN_GUARD)
        .and_then(|ns| ns.get_by_name(&format!("admin-guard:{bucket}")))
        .map_err(internal("admin guard binding"))?;
    call_object(&stub, failure).await
}
