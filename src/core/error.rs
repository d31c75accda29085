//! Every error Keybrake itself answers with. Each maps to one status and one public `type`;
//! messages are written for the caller and never carry secrets or internal detail.

use serde::{Deserialize, Serialize};

/// The shortest `KEYBRAKE_API_KEY` accepted: shorter ones could be guessed.
pub const MIN_ADMIN_KEY_CHARS: usize = 32;

/// Which vendor's error JSON an answer takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorShape {
    Stripe,
    Twilio,
    Resend,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "detail", rename_all = "snake_case")]
pub enum ProxyError {
    /// Admin call without the right `KEYBRAKE_API_KEY`.
    Unauthorized,
    /// Missing, malformed, forged or unknown vault key.
    InvalidKey,
    KeyRevoked,
    KeyExpired,
    EndpointNotAllowed,
    /// A header the key may not send (`Stripe-Account` it did not pin).
    HeaderNotAllowed(String),
    /// A parameter the key may not send (`expand[]` without `allow_expand`).
    ParameterNotAllowed(String),
    PayloadTooLarge(usize),
    /// Too many bad admin tokens from one client.
    TooManyAttempts {
        retry_after_secs: u64,
    },
    /// The call could move money but its price cannot be read from the request.
    CostUnknown(String),
    CurrencyNotAllowed,
    PerCallLimit,
    /// The key's own daily cap, or a parent's (`scope`), would be passed.
    CapExhausted {
        retry_after_secs: u64,
        #[serde(default)]
        scope: CapScope,
    },
    /// The daily budget of the key's issuer would be passed.
    BudgetExhausted {
        retry_after_secs: u64,
    },
    InvalidRequest(String),
    /// The body's content type is not the one the vendor's endpoint takes (named here).
    UnsupportedMediaType(String),
    NotFound,
    /// With the methods the route takes, sent as `Allow`.
    MethodNotAllowed(String),
    Conflict(String),
    /// The same `Idempotency-Key` is on a call still in flight.
    IdempotencyInFlight,
    /// The same `Idempotency-Key` was first used for a different request.
    IdempotencyMismatch,
    VendorUnreachable,
    /// The vendor refused Keybrake's own credential (its 401 or 403): the operator's problem,
    /// told in the log; the vendor's text, which can name the key, never reaches the agent.
    VendorAuthFailed,
    /// Nothing was sent: the vendor's credential is not configured.
    VendorNotConfigured,
    /// `KEYBRAKE_API_KEY` is unset or too short to resist guessing: the admin API is off.
    AdminNotConfigured,
    /// Something on our side failed. The detail goes to the log, never to the caller.
    Internal,
}

/// Whose limit a cap hit met, sent as `X-Keybrake-Cap-Scope`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapScope {
    #[default]
    Key,
    /// An ancestor's cap: spend of all its descendants counts against it.
    Parent,
    Issuer,
}

impl CapScope {
    pub fn name(self) -> &'static str {
        match self {
            CapScope::Key => "key",
            CapScope::Parent => "parent",
            CapScope::Issuer => "issuer",
        }
    }
}

impl ProxyError {
    /// The key's own cap would be passed.
    pub fn key_cap(retry_after_secs: u64) -> ProxyError {
        ProxyError::CapExhausted { retry_after_secs, scope: CapScope::Key }
    }

    /// Which limit a cap hit met, if this is one.
    pub fn cap_scope(&self) -> Option<CapScope> {
        match self {
            ProxyError::CapExhausted { scope, .. } => Some(*scope),
            ProxyError::BudgetExhausted { .. } => Some(CapScope::Issuer),
            _ => None,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ProxyError::InvalidRequest(_) => 400,
            ProxyError::Unauthorized | ProxyError::InvalidKey | ProxyError::KeyRevoked | ProxyError::KeyExpired => 401,
            ProxyError::EndpointNotAllowed
            | ProxyError::PerCallLimit
            | ProxyError::HeaderNotAllowed(_)
            | ProxyError::ParameterNotAllowed(_) => 403,
            ProxyError::PayloadTooLarge(_) => 413,
            ProxyError::NotFound => 404,
            ProxyError::UnsupportedMediaType(_) => 415,
            ProxyError::MethodNotAllowed(_) => 405,
            ProxyError::Conflict(_) | ProxyError::IdempotencyInFlight => 409,
            ProxyError::IdempotencyMismatch => 422,
            ProxyError::CostUnknown(_) | ProxyError::CurrencyNotAllowed => 422,
            ProxyError::CapExhausted { .. }
            | ProxyError::BudgetExhausted { .. }
            | ProxyError::TooManyAttempts { .. } => 429,
            ProxyError::Internal => 500,
            ProxyError::VendorUnreachable | ProxyError::VendorAuthFailed => 502,
            ProxyError::VendorNotConfigured | ProxyError::AdminNotConfigured => 503,
        }
    }

    /// Whether the same call may succeed if sent again: a vendor that was unreachable, a
    /// fault on our side, a key still in flight. Every other refusal is final.
    pub fn retryable(&self) -> bool {
        matches!(self, ProxyError::VendorUnreachable | ProxyError::Internal | ProxyError::IdempotencyInFlight)
    }

    /// When to try again, in seconds, for refusals that end at a known time.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::CapExhausted { retry_after_secs, .. }
            | ProxyError::BudgetExhausted { retry_after_secs }
            | ProxyError::TooManyAttempts { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The public `error.type`, also sent as `X-Keybrake-Error` and used as the audit `decision`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::InvalidKey => "invalid_key",
            ProxyError::KeyRevoked => "key_revoked",
            ProxyError::KeyExpired => "key_expired",
            ProxyError::EndpointNotAllowed => "endpoint_not_allowed",
            ProxyError::HeaderNotAllowed(_) => "header_not_allowed",
            ProxyError::ParameterNotAllowed(_) => "parameter_not_allowed",
            ProxyError::PayloadTooLarge(_) => "payload_too_large",
            ProxyError::TooManyAttempts { .. } => "too_many_attempts",
            ProxyError::CostUnknown(_) => "cost_unknown",
            ProxyError::CurrencyNotAllowed => "currency_not_allowed",
            ProxyError::PerCallLimit => "per_call_limit",
            ProxyError::CapExhausted { .. } => "cap_exhausted",
            ProxyError::BudgetExhausted { .. } => "budget_exhausted",
            ProxyError::InvalidRequest(_) => "invalid_request",
            ProxyError::NotFound => "not_found",
            ProxyError::UnsupportedMediaType(_) => "unsupported_media_type",
            ProxyError::MethodNotAllowed(_) => "method_not_allowed",
            ProxyError::Conflict(_) => "conflict",
            ProxyError::IdempotencyInFlight => "idempotency_in_flight",
            ProxyError::IdempotencyMismatch => "idempotency_mismatch",
            ProxyError::VendorUnreachable => "vendor_unreachable",
            ProxyError::VendorAuthFailed => "vendor_auth_failed",
            ProxyError::VendorNotConfigured => "vendor_not_configured",
            ProxyError::AdminNotConfigured => "admin_not_configured",
            ProxyError::Internal => "internal_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ProxyError::Unauthorized => "Send the admin key as 'Authorization: Bearer <KEYBRAKE_API_KEY>'.".into(),
            ProxyError::InvalidKey => "The vault key is missing, malformed or unknown.".into(),
            ProxyError::KeyRevoked => "This vault key has been revoked.".into(),
            ProxyError::KeyExpired => "This vault key has expired.".into(),
            ProxyError::EndpointNotAllowed => "This vault key is not allowed to call this endpoint.".into(),
            ProxyError::HeaderNotAllowed(name) => format!("This vault key may not send the {name} header."),
            ProxyError::ParameterNotAllowed(name) => format!("This vault key may not send the {name} parameter."),
            ProxyError::PayloadTooLarge(max) => format!("The body is larger than {max} bytes."),
            ProxyError::TooManyAttempts { .. } => "Too many failed admin attempts from this client; try later.".into(),
            ProxyError::CostUnknown(why) => format!("Keybrake cannot price this call, so it was not sent: {why}."),
            ProxyError::CurrencyNotAllowed => "Vault keys are capped in USD; only currency=usd is accepted.".into(),
            ProxyError::PerCallLimit => "This call costs more than the key's max_usd_per_call.".into(),
            ProxyError::CapExhausted { scope: CapScope::Parent, .. } => {
                "This call would exceed the daily USD cap of a parent of this vault key; it was not sent.".into()
            }
            ProxyError::CapExhausted { .. } => {
                "This call would exceed the vault key's daily USD cap; it was not sent.".into()
            }
            ProxyError::BudgetExhausted { .. } => {
                "This call would exceed the daily USD budget of the issuer of this vault key; it was not sent.".into()
            }
            ProxyError::InvalidRequest(why) => why.clone(),
            ProxyError::NotFound => "Not found.".into(),
            ProxyError::UnsupportedMediaType(expected) => format!("This endpoint takes {expected} bodies."),
            ProxyError::MethodNotAllowed(_) => "Method not allowed on this route.".into(),
            ProxyError::Conflict(why) => why.clone(),
            ProxyError::IdempotencyInFlight => {
                "A call with this Idempotency-Key is still in flight; retry once it has finished.".into()
            }
            ProxyError::IdempotencyMismatch => {
                "This Idempotency-Key was first used for a different request (method, path, query or body); \
                 a retry must repeat it exactly. Nothing was sent."
                    .into()
            }
            ProxyError::VendorUnreachable => {
                "The vendor could not be reached; the call may or may not have taken effect.".into()
            }
            ProxyError::VendorNotConfigured => "Keybrake holds no credential for this vendor; nothing was sent.".into(),
            ProxyError::VendorAuthFailed => {
                "The vendor refused Keybrake's own credential; nothing was charged. The operator must fix it.".into()
            }
            ProxyError::AdminNotConfigured => {
                format!("The admin API is off: set KEYBRAKE_API_KEY to a random secret of at least {MIN_ADMIN_KEY_CHARS} characters.")
            }
            ProxyError::Internal => "Internal error.".into(),
        }
    }

    /// The JSON body in the error shape of the vendor whose SDK will read it.
    pub fn body_as(&self, shape: ErrorShape) -> String {
        let (kind, message, status) = (self.kind(), self.message(), self.status());
        match shape {
            ErrorShape::Stripe => serde_json::json!({"error": {"type": kind, "message": message}}),
            // twilio-node raises RestException from `code`, `message` and `status`.
            ErrorShape::Twilio => serde_json::json!({"code": status, "message": message, "status": status}),
            // The resend SDK returns `{ error: { name, message, statusCode } }`.
            ErrorShape::Resend => serde_json::json!({"name": kind, "message": message, "statusCode": status}),
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_types_follow_the_contract() {
        let cases = [
            (ProxyError::Unauthorized, 401, "unauthorized"),
            (ProxyError::InvalidKey, 401, "invalid_key"),
            (ProxyError::KeyRevoked, 401, "key_revoked"),
            (ProxyError::KeyExpired, 401, "key_expired"),
            (ProxyError::EndpointNotAllowed, 403, "endpoint_not_allowed"),
            (ProxyError::CostUnknown("x".into()), 422, "cost_unknown"),
            (ProxyError::CurrencyNotAllowed, 422, "currency_not_allowed"),
            (ProxyError::PerCallLimit, 403, "per_call_limit"),
            (ProxyError::key_cap(5), 429, "cap_exhausted"),
            (ProxyError::BudgetExhausted { retry_after_secs: 5 }, 429, "budget_exhausted"),
            (ProxyError::InvalidRequest("x".into()), 400, "invalid_request"),
            (ProxyError::NotFound, 404, "not_found"),
            (ProxyError::VendorUnreachable, 502, "vendor_unreachable"),
        ];
        for (e, status, kind) in cases {
            assert_eq!((e.status(), e.kind()), (status, kind));
            let body: serde_json::Value = serde_json::from_str(&e.body_as(ErrorShape::Stripe)).unwrap();
            assert_eq!(body["error"]["type"], kind);
            assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }

    #[test]
    fn vendor_error_shapes() {
        let e = ProxyError::key_cap(1);
        let twilio: serde_json::Value = serde_json::from_str(&e.body_as(ErrorShape::Twilio)).unwrap();
        assert_eq!((twilio["code"].as_u64(), twilio["status"].as_u64()), (Some(429), Some(429)));
        assert!(twilio["message"].as_str().unwrap().contains("cap"));
        let resend: serde_json::Value = serde_json::from_str(&e.body_as(ErrorShape::Resend)).unwrap();
        assert_eq!((resend["name"].as_str(), resend["statusCode"].as_u64()), (Some("cap_exhausted"), Some(429)));
    }

    #[test]
    fn round_trips_through_json() {
        for e in [
            ProxyError::key_cap(42),
            ProxyError::CapExhausted { retry_after_secs: 42, scope: CapScope::Parent },
            ProxyError::BudgetExhausted { retry_after_secs: 42 },
        ] {
            let back: ProxyError = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
            assert_eq!(back, e);
        }
    }
}
