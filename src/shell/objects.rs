//! Typed calls to the Durable Objects: a message serialized to JSON, sent over the stub's
//! `fetch`, the typed reply read back. One function does it for every object.

use crate::core::error::ProxyError;
use crate::core::lockout::{Failure, Verdict};
use crate::core::token::{is_key_id, SecretHash};
use crate::core::vendor::Vendor;
use crate::ledger::protocol::{LedgerCall, LedgerReply};
use crate::shell::errors::internal;
use futures_channel::oneshot;
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

/// Secrets this isolate has seen the key's object confirm, by key id. A key's secret never
/// changes, so a match needs no round trip and a mismatch is a wrong secret. Revocation and
/// expiry are not cached: the object judges them on every reservation. While one call asks
/// the object, the others for the same key wait for its answer instead of asking too: a
/// burst on a new key costs one round trip, not one per call.
const MAX_KNOWN: usize = 10_000;
enum Known {
    Confirmed(Vendor, SecretHash),
    Asking(Vec<oneshot::Sender<()>>),
}
thread_local! {
    static KNOWN: RefCell<BTreeMap<String, Known>> = const { RefCell::new(BTreeMap::new()) };
}

/// What a call does about a key's secret.
enum Step {
    Judge(bool),
    Wait(oneshot::Receiver<()>),
    Ask(Asking),
}

/// The call asking the object on behalf of the others. If it is dropped before the answer (its
/// client went away), the waiters are woken to ask for themselves.
struct Asking(String);

impl Drop for Asking {
    fn drop(&mut self) {
        KNOWN.with(|k| {
            let mut k = k.borrow_mut();
            if matches!(k.get(&self.0), Some(Known::Asking(_))) {
                k.remove(&self.0); // drops the waiters' senders: they wake and ask
            }
        });
    }
}

/// A key's `VaultKey` object.
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
        let stub = namespace.id_from_string(key_id).ok()?.get_stub().ok()?;
        Some(LedgerClient { key_id: key_id.to_string(), stub })
    }

    /// A fresh object for a new key, with its id.
    pub fn fresh(env: &Env) -> Result<(String, LedgerClient), ProxyError> {
        let namespace = env.durable_object(VAULT_KEYS).map_err(internal("durable object binding"))?;
        let id = namespace.unique_id().map_err(internal("new durable object id"))?;
        let stub = id.get_stub().map_err(internal("durable object stub"))?;
        let key_id = id.to_string();
        Ok((key_id.clone(), LedgerClient { key_id, stub }))
    }

    /// Checks a presented secret before anything else of the request is read: against what
    /// this isolate has seen confirmed, else by asking the key's object.
    pub async fn authenticate(&self, vendor: Vendor, secret_hash: &SecretHash) -> Result<(), ProxyError> {
        let asking = loop {
            let step = KNOWN.with(|k| {
                let mut k = k.borrow_mut();
                match k.get_mut(&self.key_id) {
                    Some(Known::Confirmed(v, confirmed)) => Step::Judge(*v == vendor && confirmed.matches(secret_hash)),
                    Some(Known::Asking(waiters)) => {
                        let (tx, rx) = oneshot::channel();
                        waiters.push(tx);
                        Step::Wait(rx)
                    }
                    None => {
                        if k.len() >= MAX_KNOWN {
                            k.clear();
                        }
                        k.insert(self.key_id.clone(), Known::Asking(Vec::new()));
                        Step::Ask(Asking(self.key_id.clone()))
                    }
                }
            });
            match step {
                Step::Judge(true) => return Ok(()),
                Step::Judge(false) => return Err(ProxyError::InvalidKey),
                // Then look again: confirmed, or this call asks in turn.
                Step::Wait(answered) => drop(answered.await),
                Step::Ask(asking) => break asking,
            }
        };
        let reply = self.call(&LedgerCall::Authenticate { vendor, secret_hash: secret_hash.clone() }).await;
        let waiters = KNOWN.with(|k| {
            let mut k = k.borrow_mut();
            let before = k.remove(&self.key_id);
            if matches!(reply, Ok(LedgerReply::Authenticated)) {
                k.insert(self.key_id.clone(), Known::Confirmed(vendor, secret_hash.clone()));
            }
            match before {
                Some(Known::Asking(waiters)) => waiters,
                _ => Vec::new(),
            }
        });
        drop(asking);
        for waiter in waiters {
            let _ = waiter.send(());
        }
        match reply? {
            LedgerReply::Authenticated => Ok(()),
            LedgerReply::Denied { error } => Err(error),
            LedgerReply::NotFound => Err(ProxyError::InvalidKey),
            _ => Err(ProxyError::Internal),
        }
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
