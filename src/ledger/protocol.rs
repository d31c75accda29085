//! The messages between the Worker and a key's Durable Object. One typed enum each way, sent
//! as JSON over the stub's `fetch`.

use crate::core::answer::{classify, Attempt, Verdict};
use crate::core::audit::Outcome;
use crate::core::cost::{self, Quote, Settlement};
use crate::core::error::ProxyError;
use crate::core::keys::{KeyConfig, KeyState};
use crate::core::lineage::{IssuerConfig, IssuerState};
use crate::core::money::Micros;
use crate::core::token::SecretHash;
use crate::core::vendor::Vendor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LedgerCall {
    /// Store the key the object was made for. Refused if the object already holds anything.
    Create {
        config: KeyConfig,
        secret_hash: SecretHash,
    },
    /// Store the issuer the object was made for.
    CreateIssuer {
        config: IssuerConfig,
        secret_hash: SecretHash,
    },
    /// Whether a presented issuer token is the (unrevoked) issuer's.
    AuthenticateIssuer {
        secret_hash: SecretHash,
    },
    /// A key the object's issuer makes from a `POST /vault/keys` body.
    Issue {
        body: String,
        secret_hash: SecretHash,
    },
    /// A child key, minted with the parent's vault key, from a `…/children` body.
    MintChild {
        parent_key_id: String,
        vendor: Vendor,
        parent_secret: SecretHash,
        body: String,
        secret_hash: SecretHash,
    },
    /// Check a presented secret, and nothing else: asked before the Worker reads a body of
    /// unknown or large size, so that nothing big is read for a wrong secret.
    Authenticate {
        key_id: String,
        vendor: Vendor,
        secret_hash: SecretHash,
    },
    /// Authenticate and run every check; on success hold `price` against the cap.
    Reserve {
        key_id: String,
        call: ReserveCall,
    },
    /// Report how a reserved call ended.
    Finish {
        key_id: String,
        call: FinishCall,
    },
    Status {
        key_id: String,
    },
    /// Revoke the keys and all their descendants.
    Revoke {
        key_ids: Vec<String>,
    },
    /// Move an active key's expiry to `ttl_secs` from now.
    Refresh {
        key_id: String,
        ttl_secs: u64,
    },
    IssuerStatus,
    /// Revoke the issuer and every key it made.
    RevokeIssuer,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReserveCall {
    pub vendor: Vendor,
    pub secret_hash: SecretHash,
    pub method: String,
    pub path: String,
    /// The Worker prices the request (it has the body); the ledger applies the result in the
    /// contract's order, after the revocation, expiry and allowlist checks.
    pub price: Result<Quote, ProxyError>,
    pub idempotency_key: Option<String>,
    /// The vendor honours `Idempotency-Key` on this call (Stripe and Resend POSTs). The ledger
    /// then remembers the key, and makes one up when the client sent none.
    pub idempotent: bool,
    /// SHA-256 of the call as it will be sent (method, path, query, body): the key is bound to
    /// it at first use, and a retry with another fingerprint is refused.
    pub fingerprint: String,
    /// The connected account the client asks to act on (`Stripe-Account`/`Stripe-Context`).
    pub stripe_account: Option<String>,
    /// The request asks for `expand[]`.
    pub expand: bool,
    /// A refusal the Worker found (a path the vendor's rules reject, a body too large, a
    /// screened header or parameter) that is answered only once the key is authenticated,
    /// before every other check: a wrong secret gets 401 whatever else is wrong.
    pub refused: Option<ProxyError>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FinishCall {
    pub reservation_id: u64,
    pub result: CallResult,
    pub status: Option<u16>,
    pub vendor_object_id: Option<String>,
    pub latency_ms: u64,
    /// For an estimated cost the vendor prices later: the GET path that will show the price.
    pub reconcile_path: Option<String>,
    /// For an unknown outcome: the exact request, so the alarm can send it again under the
    /// same `Idempotency-Key` and learn what happened.
    pub replay: Option<Replay>,
}

/// A call as it was sent upstream, kept to learn an ambiguous outcome by sending it again.
/// Only vendors that honour `Idempotency-Key` get one: for them a replay cannot charge twice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replay {
    pub path_and_query: String,
    /// The upstream headers as sent, `idempotency-key` included; never the credential.
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub settlement: Settlement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CallResult {
    Settled { cost: Micros },
    Released,
    Unknown,
}

impl CallResult {
    /// How a call ended, from the vendor's status (`None`: no answer) and body, with the
    /// object id of a 2xx. The live path and the alarm's replays both decide here.
    pub fn from_answer(
        vendor: Vendor,
        settlement: Settlement,
        held: Micros,
        attempt: Attempt,
        status: Option<u16>,
        body: &[u8],
    ) -> (CallResult, Option<String>) {
        match classify(vendor, status, body, attempt) {
            Verdict::Settle => {
                let settled = cost::settle(vendor, settlement, held, body);
                (CallResult::Settled { cost: settled.cost }, settled.vendor_object_id)
            }
            Verdict::Release => (CallResult::Released, None),
            Verdict::Unknown => (CallResult::Unknown, None),
        }
    }

    pub fn outcome(self) -> Outcome {
        match self {
            CallResult::Settled { .. } => Outcome::Settled,
            CallResult::Released => Outcome::Released,
            CallResult::Unknown => Outcome::Unknown,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum LedgerReply {
    /// `amount` is what is held; for a per-unit quote it is `units` × the unit price.
    Reserved {
        reservation_id: u64,
        amount: Micros,
        units: u64,
        remaining: Micros,
        /// The `Idempotency-Key` to send upstream: the client's, or one the ledger made up.
        idempotency_key: Option<String>,
        /// The key was already used for a settled call: the vendor will replay its answer and
        /// nothing new is debited.
        replay: bool,
        /// The connected account the key is pinned to, sent upstream as `Stripe-Account`.
        stripe_account: Option<String>,
        /// A repeat of a call whose outcome is unknown: how the vendor's answer is classified.
        attempt: Attempt,
    },
    Denied {
        error: ProxyError,
    },
    /// The secret is the key's.
    Authenticated,
    Finished,
    State {
        state: KeyState,
    },
    /// The keys now revoked (those named and their descendants), once none can reach a vendor.
    Revoked {
        key_ids: Vec<String>,
        /// When the object revoked those it had not revoked before.
        at_ms: u64,
    },
    /// A key made inside the object (by its issuer, or as a child).
    Issued {
        config: KeyConfig,
    },
    Issuer {
        state: IssuerState,
    },
    NotFound,
}
