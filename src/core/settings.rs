//! Every knob an operator can set, with its default, in one place. [`KNOBS`] is the table the
//! docs show (a test holds them to it); [`Settings`] is what the Worker and the objects read.
//! Vendor price vars are read by their vendor modules when a call is priced.

use crate::core::screen::DEFAULT_MAX_BODY_BYTES;
use crate::core::vendor::{resend, twilio};

/// One Worker var or secret.
#[derive(Debug)]
pub struct Knob {
    pub name: &'static str,
    /// The default when unset; empty when there is none.
    pub default: &'static str,
    pub secret: bool,
    pub what: &'static str,
}

const fn knob(name: &'static str, default: &'static str, what: &'static str) -> Knob {
    Knob { name, default, secret: false, what }
}

const fn secret(name: &'static str, what: &'static str) -> Knob {
    Knob { name, default: "", secret: true, what }
}

pub const DEFAULT_UPSTREAM_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_ADMIN_FAILURE_LIMIT: u32 = 20;
/// First wait before the alarm asks a vendor again, for a price it has not set or an outcome
/// it has not told; it doubles on each try, to an hour.
pub const DEFAULT_ALARM_BACKOFF_MS: u64 = 60_000;

pub const KNOBS: &[Knob] = &[
    secret("KEYBRAKE_API_KEY", "The admin bearer token, at least 32 characters."),
    secret("STRIPE_SECRET_KEY", "Stripe's secret or restricted key."),
    knob("TWILIO_ACCOUNT_SID", "", "The Twilio account every path is pinned to."),
    secret("TWILIO_AUTH_TOKEN", "The account's auth token, used when no API key is set."),
    secret("TWILIO_API_KEY_SID", "A Twilio API key (`SK…`), used with its secret when both are set."),
    secret("TWILIO_API_KEY_SECRET", "The API key's secret."),
    secret("RESEND_API_KEY", "Resend's API key."),
    knob("STRIPE_API_BASE", "https://api.stripe.com", "Stripe's origin."),
    knob("TWILIO_API_BASE", "https://api.twilio.com", "Twilio's origin."),
    knob("RESEND_API_BASE", "https://api.resend.com", "Resend's origin."),
    knob("UPSTREAM_TIMEOUT_MS", "30000", "How long a vendor call may take before it is aborted as unknown."),
    knob("MAX_BODY_BYTES", "1048576", "The largest proxied body."),
    knob("ADMIN_FAILURE_LIMIT", "20", "Bad admin tokens from one address in 10 minutes before further ones get 429."),
    knob("ALARM_BACKOFF_MS", "60000", "First wait before the alarm asks a vendor again; doubles to an hour."),
    knob(
        "TWILIO_SMS_PRICES",
        "",
        "Per-segment SMS prices by calling code, as JSON; the defaults are in docs/vendors.md.",
    ),
    knob("TWILIO_VOICE_PRICES", "", "Per-minute voice prices by calling code, as JSON."),
    knob("TWILIO_MMS_PRICE_USD", twilio::DEFAULT_MMS_PRICE, "One MMS to the US or Canada."),
    knob("TWILIO_FAILED_MESSAGE_FEE_USD", twilio::DEFAULT_FAILED_MESSAGE_FEE, "Twilio's fee for a failed message."),
    knob("RESEND_PRICE_PER_EMAIL_USD", resend::DEFAULT_PRICE_PER_EMAIL, "The price of one email."),
    knob("RESEND_BILL_PER", "address", "`address`: every to, cc and bcc address counts; `email`: each email once."),
];

/// The knobs the Worker and the objects act on, with their defaults; read once per isolate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub upstream_timeout_ms: u64,
    pub max_body_bytes: usize,
    pub admin_failure_limit: u32,
    pub alarm_backoff_ms: u64,
}

impl Settings {
    /// From the Worker's vars; a var that is unset or does not parse takes its default.
    pub fn from_vars(vars: impl Fn(&str) -> Option<String>) -> Settings {
        fn read<T: std::str::FromStr>(vars: &impl Fn(&str) -> Option<String>, name: &str, default: T) -> T {
            vars(name).and_then(|v| v.trim().parse().ok()).unwrap_or(default)
        }
        Settings {
            upstream_timeout_ms: read(&vars, "UPSTREAM_TIMEOUT_MS", DEFAULT_UPSTREAM_TIMEOUT_MS),
            max_body_bytes: read(&vars, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
            admin_failure_limit: read(&vars, "ADMIN_FAILURE_LIMIT", DEFAULT_ADMIN_FAILURE_LIMIT),
            alarm_backoff_ms: read(&vars, "ALARM_BACKOFF_MS", DEFAULT_ALARM_BACKOFF_MS),
        }
    }

    /// After how long a held call whose Worker has not reported back counts as lost: twice the
    /// upstream timeout, by which time any live Worker has given up on the vendor.
    pub fn stale_after_ms(&self) -> u64 {
        2 * self.upstream_timeout_ms + 1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let defaults = Settings::from_vars(|_| None);
        for knob in KNOBS.iter().filter(|k| !k.default.is_empty()) {
            let value = match knob.name {
                "UPSTREAM_TIMEOUT_MS" => defaults.upstream_timeout_ms.to_string(),
                "MAX_BODY_BYTES" => defaults.max_body_bytes.to_string(),
                "ADMIN_FAILURE_LIMIT" => defaults.admin_failure_limit.to_string(),
                "ALARM_BACKOFF_MS" => defaults.alarm_backoff_ms.to_string(),
                _ => continue,
            };
            assert_eq!(value, knob.default, "{}: the table and the code agree", knob.name);
        }
        let set = Settings::from_vars(|n| (n == "UPSTREAM_TIMEOUT_MS").then(|| "2000".into()));
        assert_eq!((set.upstream_timeout_ms, set.stale_after_ms()), (2_000, 5_000));
        let garbage = Settings::from_vars(|_| Some("lots".into()));
        assert_eq!(garbage, defaults, "a var that does not parse takes its default");
    }

    #[test]
    fn vendor_origins_match_their_specs() {
        for vendor in crate::core::vendor::Vendor::ALL {
            let spec = vendor.spec();
            let knob = KNOBS.iter().find(|k| k.name == spec.origin_var).expect("listed");
            assert_eq!(knob.default, spec.default_origin);
        }
    }

    #[test]
    fn every_knob_is_named_once() {
        let mut names: Vec<&str> = KNOBS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KNOBS.len());
    }
}
