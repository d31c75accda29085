//! The vendor table: everything Keybrake knows about an upstream lives in its one entry.
//!
//! To add a vendor: write a module here with its `VendorSpec` and cost rules, add a `Vendor`
//! variant, and list it in `Vendor::ALL` and `Vendor::spec`. The router, the Durable Object and
//! the audit trail work from this table alone.

pub mod resend;
pub mod stripe;
pub mod twilio;

use crate::core::cost::{CostRule, Vars, VendorAnswer};
use crate::core::error::{ErrorShape, ProxyError};
use crate::core::money::Micros;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Stripe,
    Twilio,
    Resend,
}

/// How the real credential is put on the upstream request. Names are Worker secret names.
#[derive(Debug)]
pub enum Credential {
    /// `Authorization: Bearer <secret>`.
    Bearer { secret: &'static str },
    /// `Authorization: Basic base64(<user>:<password>)`, from the first pair whose two
    /// secrets are both set (Twilio: an API key and its secret, else the account's token).
    Basic { pairs: &'static [(&'static str, &'static str)] },
}

#[derive(Debug)]
pub struct VendorSpec {
    pub vendor: Vendor,
    /// The first path segment of `/{vendor}/...` routes and the token's vendor part.
    pub name: &'static str,
    /// The Worker var holding the upstream origin, and its default.
    pub origin_var: &'static str,
    pub default_origin: &'static str,
    pub credential: Credential,
    /// Lower-case request headers passed upstream. Everything else is dropped; the credential
    /// is set after these, so a client can never supply it.
    pub request_headers: &'static [&'static str],
    /// The vendor honours `Idempotency-Key` on POSTs: a repeat under the same key cannot run
    /// twice. Keybrake then supplies a key when the client sent none, and resolves ambiguous
    /// outcomes by sending the call again.
    pub idempotency: bool,
    /// Lower-case response headers passed back to the client.
    pub response_headers: &'static [&'static str],
    /// First match wins; a call no rule matches is refused as `cost_unknown`.
    pub cost_rules: &'static [CostRule],
    /// Vendor rules on the request path, applied before matching: the returned path is the
    /// one matched and forwarded. `vars` reads Worker vars and secrets.
    pub upstream_path: fn(&str, Vars<'_>) -> Result<String, ProxyError>,
    /// Reads the object id and any stated USD amount from a 2xx body.
    pub read_answer: fn(&[u8]) -> VendorAnswer,
    /// Whether a 4xx says the `Idempotency-Key` is bound to another request at the vendor,
    /// which may have run: such an answer never releases a hold (see `core::answer`).
    pub idempotency_conflict: fn(u16, &[u8]) -> bool,
    /// Where the real price of an estimated call is published later, if anywhere.
    pub reconcile: Option<Reconciler>,
    pub error_shape: ErrorShape,
}

/// How an estimated cost is reconciled with the vendor's later, real price.
#[derive(Debug)]
pub struct Reconciler {
    /// The GET path that shows the priced object, from the create path and the object id.
    pub poll_path: fn(&str, &str) -> Option<String>,
    /// Reads that object: `Priced(cost)`, or `NotYet` while the vendor has not set it.
    pub read_price: fn(&[u8]) -> PricePoll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PricePoll {
    Priced(Micros),
    NotYet,
}

/// The path unchanged: for vendors with no path rules of their own.
pub fn same_path(path: &str, _vars: Vars<'_>) -> Result<String, ProxyError> {
    Ok(path.to_string())
}

impl Vendor {
    pub const ALL: [Vendor; 3] = [Vendor::Stripe, Vendor::Twilio, Vendor::Resend];

    pub fn spec(self) -> &'static VendorSpec {
        match self {
            Vendor::Stripe => &stripe::SPEC,
            Vendor::Twilio => &twilio::SPEC,
            Vendor::Resend => &resend::SPEC,
        }
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn from_name(name: &str) -> Option<Vendor> {
        Vendor::ALL.into_iter().find(|v| v.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for v in Vendor::ALL {
            assert_eq!(v.spec().vendor, v);
            assert_eq!(Vendor::from_name(v.name()), Some(v));
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
        assert_eq!(Vendor::from_name("Stripe"), None);
    }

    #[test]
    fn the_client_credential_never_passes_upstream() {
        for v in Vendor::ALL {
            let spec = v.spec();
            for h in ["authorization", "cookie", "host", "x-forwarded-host", "x-forwarded-proto", "connection"] {
                assert!(!spec.request_headers.contains(&h), "{} passes {h}", spec.name);
            }
            for h in ["set-cookie", "authorization", "www-authenticate"] {
                assert!(!spec.response_headers.contains(&h), "{} returns {h}", spec.name);
            }
        }
    }
}
