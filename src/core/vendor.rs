//! The vendor table: everything Keybrake knows about an upstream lives in its one entry.
//! Adding a vendor means adding a `Vendor` variant, its `VendorSpec` and its cost rules;
//! the router, the Durable Object and the audit trail work from this table alone.

use crate::core::cost::{self, CostRule};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Stripe,
}

/// How the real credential is put on the upstream request. Names are Worker secret names.
#[derive(Debug)]
pub enum Credential {
    /// `Authorization: Bearer <secret>`.
    Bearer { secret: &'static str },
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
    /// Lower-case response headers passed back to the client.
    pub response_headers: &'static [&'static str],
    /// First match wins; a call no rule matches is refused as `cost_unknown`.
    pub cost_rules: &'static [CostRule],
}

const STRIPE: VendorSpec = VendorSpec {
    vendor: Vendor::Stripe,
    name: "stripe",
    origin_var: "STRIPE_API_BASE",
    default_origin: "https://api.stripe.com",
    credential: Credential::Bearer { secret: "STRIPE_SECRET_KEY" },
    request_headers: &["accept", "content-type", "idempotency-key", "stripe-version", "user-agent"],
    response_headers: &[
        "content-type",
        "idempotent-replayed",
        "request-id",
        "stripe-version",
        "stripe-should-retry",
        "retry-after",
    ],
    cost_rules: cost::STRIPE,
};

impl Vendor {
    pub const ALL: [Vendor; 1] = [Vendor::Stripe];

    pub fn spec(self) -> &'static VendorSpec {
        match self {
            Vendor::Stripe => &STRIPE,
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
            assert_eq!(Vendor::from_name(v.name()), Some(v));
            assert_eq!(serde_json::to_value(v).unwrap(), v.name());
        }
        assert_eq!(Vendor::from_name("Stripe"), None);
    }

    #[test]
    fn the_client_credential_never_passes_upstream() {
        for v in Vendor::ALL {
            let spec = v.spec();
            for h in ["authorization", "cookie", "host", "x-forwarded-host", "connection"] {
                assert!(!spec.request_headers.contains(&h), "{} passes {h}", spec.name);
            }
            assert!(!spec.response_headers.contains(&"set-cookie"));
        }
    }
}
