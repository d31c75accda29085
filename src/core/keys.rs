//! Vault keys as the admin API sees them: the issue request, its validation, and the public
//! JSON views of a key.

use crate::core::allowlist::{parse_endpoint, MAX_ENDPOINTS};
use crate::core::clock::{parse_ttl, rfc3339, DEFAULT_TTL_SECS, MS_PER_SEC};
use crate::core::error::ProxyError;
use crate::core::money::{usd, usd_opt, Micros};
use crate::core::vendor::Vendor;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

pub const MAX_LABEL_CHARS: usize = 256;
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything fixed about a key when it is issued. Held by its Durable Object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyConfig {
    pub key_id: String,
    pub vendor: Vendor,
    pub daily_cap: Micros,
    pub max_per_call: Option<Micros>,
    pub allowed_endpoints: Vec<String>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub agent_run_label: Option<String>,
    /// The only `Stripe-Account` the key may act on; `None` refuses the header.
    #[serde(default)]
    pub stripe_account: Option<String>,
    /// Whether `expand[]` may pull hidden fields into responses.
    #[serde(default)]
    pub allow_expand: bool,
    /// The issuer whose token made the key, or made its root ancestor.
    #[serde(default)]
    pub issuer_id: Option<String>,
    /// The key whose vault key minted this one; its cap, and its ancestors', bound this one's.
    #[serde(default)]
    pub parent_key_id: Option<String>,
    /// Fractions of the daily cap, in basis points, that send `key.threshold_crossed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_thresholds: Vec<u32>,
}

/// A validated `POST /vault/keys` body.
#[derive(Debug, PartialEq, Eq)]
pub struct NewKey {
    pub vendor: Vendor,
    pub daily_cap: Micros,
    pub max_per_call: Option<Micros>,
    pub allowed_endpoints: Vec<String>,
    pub ttl_secs: u64,
    pub agent_run_label: Option<String>,
    pub stripe_account: Option<String>,
    pub allow_expand: bool,
    pub alert_thresholds: Vec<u32>,
}

impl NewKey {
    pub fn into_config(self, key_id: String, now_ms: u64) -> KeyConfig {
        KeyConfig {
            key_id,
            vendor: self.vendor,
            daily_cap: self.daily_cap,
            max_per_call: self.max_per_call,
            allowed_endpoints: self.allowed_endpoints,
            created_at_ms: now_ms,
            expires_at_ms: now_ms + self.ttl_secs * MS_PER_SEC,
            agent_run_label: self.agent_run_label,
            stripe_account: self.stripe_account,
            allow_expand: self.allow_expand,
            issuer_id: None,
            parent_key_id: None,
            alert_thresholds: self.alert_thresholds,
        }
    }
}

const FIELDS: [&str; 9] = [
    "vendor",
    "daily_usd_cap",
    "max_usd_per_call",
    "allowed_endpoints",
    "expires_in",
    "agent_run_label",
    "stripe_account",
    "allow_expand",
    "alert_thresholds",
];

/// The fields of a JSON object body. A field given twice is refused, naming it: serde_json
/// would keep the last copy, so `{"daily_usd_cap":1, …, "daily_usd_cap":1000000}` could carry
/// a cap past whoever read the first.
pub fn json_fields(body: &[u8]) -> Result<BTreeMap<String, &RawValue>, ProxyError> {
    struct Fields<'a>(Vec<(String, &'a RawValue)>);
    impl<'de> Deserialize<'de> for Fields<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Fields<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut fields = Vec::new();
                    while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                        fields.push(entry);
                    }
                    Ok(Fields(fields))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    let Fields(pairs) = serde_json::from_slice(body).map_err(|_| bad("body must be a JSON object".into()))?;
    let mut fields = BTreeMap::new();
    for (name, value) in pairs {
        if fields.contains_key(&name) {
            return Err(bad(format!("field {name:?} appears more than once")));
        }
        fields.insert(name, value);
    }
    Ok(fields)
}

/// The non-null fields of a JSON object body of at most [`MAX_BODY_BYTES`], refusing unknown
/// ones by name.
pub fn object_fields<'a>(body: &'a [u8], known: &[&str]) -> Result<BTreeMap<String, &'a RawValue>, ProxyError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ProxyError::PayloadTooLarge(MAX_BODY_BYTES));
    }
    let mut fields = json_fields(body)?;
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad(format!("unknown field {unknown:?}; fields are {}", known.join(", "))));
    }
    fields.retain(|_, raw| raw.get() != "null");
    Ok(fields)
}

fn bad(msg: String) -> ProxyError {
    ProxyError::InvalidRequest(msg)
}

/// A dollar amount field, refused naming it.
pub fn usd_field(raw: &RawValue, name: &str) -> Result<Micros, ProxyError> {
    Micros::parse_usd(raw.get()).map_err(|e| bad(format!("{name} {e}")))
}

/// A lifetime field (`"2h"` or seconds), refused naming it.
pub fn ttl_field(raw: &RawValue, name: &str) -> Result<u64, ProxyError> {
    let value: serde_json::Value =
        serde_json::from_str(raw.get()).map_err(|_| bad(format!("{name} is not valid JSON")))?;
    parse_ttl(&value).map_err(|e| bad(format!("{name} {e}")))
}

/// An `allowed_endpoints` list: 1 to 64 entries, each a valid `"METHOD /path"`.
pub fn endpoints_field(raw: &RawValue) -> Result<Vec<String>, ProxyError> {
    let endpoints: Vec<String> = serde_json::from_str(raw.get())
        .map_err(|_| bad("allowed_endpoints must be a list like [\"POST /v1/payment_intents\"]".into()))?;
    if endpoints.is_empty() || endpoints.len() > MAX_ENDPOINTS {
        return Err(bad(format!("allowed_endpoints must hold 1 to {MAX_ENDPOINTS} entries")));
    }
    for entry in &endpoints {
        parse_endpoint(entry).map_err(|e| bad(format!("allowed_endpoints: {e}")))?;
    }
    Ok(endpoints)
}

/// Parses and validates a key request. Every refusal names the field at fault.
pub fn parse_new_key(body: &[u8]) -> Result<NewKey, ProxyError> {
    let fields = object_fields(body, &FIELDS)?;
    let field = |name: &str| fields.get(name).copied();

    let vendor_names: Vec<&str> = Vendor::ALL.iter().map(|v| v.name()).collect();
    let vendor = field("vendor")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .and_then(|name| Vendor::from_name(&name))
        .ok_or_else(|| bad(format!("vendor is required and must be one of: {}", vendor_names.join(", "))))?;

    let daily_cap = field("daily_usd_cap")
        .ok_or_else(|| bad("daily_usd_cap is required".into()))
        .and_then(|raw| usd_field(raw, "daily_usd_cap"))?;

    let max_per_call = field("max_usd_per_call").map(|raw| usd_field(raw, "max_usd_per_call")).transpose()?;

    let allowed_endpoints = field("allowed_endpoints")
        .ok_or_else(|| bad("allowed_endpoints is required: a list like [\"POST /v1/payment_intents\"]".into()))
        .and_then(endpoints_field)?;

    let ttl_secs = field("expires_in").map_or(Ok(DEFAULT_TTL_SECS), |raw| ttl_field(raw, "expires_in"))?;

    let agent_run_label = field("agent_run_label").map(parse_label).transpose()?;

    let stripe_account = match field("stripe_account") {
        None => None,
        Some(raw) => {
            let account: String = serde_json::from_str(raw.get()).unwrap_or_default();
            let well_formed = account
                .strip_prefix("acct_")
                .is_some_and(|id| (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric()));
            if vendor != Vendor::Stripe || !well_formed {
                return Err(bad("stripe_account must be a Stripe account id like acct_1Ab2, on a stripe key".into()));
            }
            Some(account)
        }
    };
    let allow_expand = match field("allow_expand") {
        None => false,
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| bad("allow_expand must be true or false".into()))?,
    };

    Ok(NewKey {
        vendor,
        daily_cap,
        max_per_call,
        allowed_endpoints,
        ttl_secs,
        agent_run_label,
        stripe_account,
        allow_expand,
        alert_thresholds: crate::core::alerts::parse_thresholds(field("alert_thresholds")).map_err(bad)?,
    })
}

/// An `agent_run_label` value: a string of 1 to 256 characters, none of them control.
pub fn parse_label(raw: &RawValue) -> Result<String, ProxyError> {
    let label: String = serde_json::from_str(raw.get()).map_err(|_| bad("agent_run_label must be a string".into()))?;
    if label.is_empty() || label.chars().count() > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
        return Err(bad(format!(
            "agent_run_label must be 1 to {MAX_LABEL_CHARS} characters without control characters"
        )));
    }
    Ok(label)
}

/// Parses a `POST /vault/keys/{id}/refresh` body: `{"expires_in": "2h"}`, default 1 h.
pub fn parse_refresh(body: &[u8]) -> Result<u64, ProxyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DEFAULT_TTL_SECS);
    }
    match object_fields(body, &["expires_in"])?.get("expires_in") {
        None => Ok(DEFAULT_TTL_SECS),
        Some(raw) => ttl_field(raw, "expires_in"),
    }
}

/// A key's live state, as its Durable Object reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyState {
    pub config: KeyConfig,
    pub revoked_at_ms: Option<u64>,
    pub spent: Micros,
    pub reserved: Micros,
    pub audit_pending: u64,
    /// Estimated costs still waiting for the vendor's real price.
    pub reconciling: u64,
    /// Calls whose outcome is still unknown; their money stays held.
    pub unresolved: u64,
    /// Today's spend and holds of the key's descendants, which its cap bounds too.
    #[serde(default)]
    pub descendants: Micros,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Revoked,
    Expired,
}

impl KeyState {
    pub fn status(&self, now_ms: u64) -> KeyStatus {
        if self.revoked_at_ms.is_some() {
            KeyStatus::Revoked
        } else if now_ms >= self.config.expires_at_ms {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }

    pub fn remaining(&self) -> Micros {
        self.config.daily_cap.saturating_sub(self.spent).saturating_sub(self.reserved).saturating_sub(self.descendants)
    }
}

/// `GET /vault/keys/{id}`.
#[derive(Serialize)]
pub struct KeyView<'a> {
    pub key_id: &'a str,
    pub vendor: Vendor,
    pub status: KeyStatus,
    #[serde(with = "usd")]
    pub daily_usd_cap: Micros,
    #[serde(with = "usd_opt")]
    pub max_usd_per_call: Option<Micros>,
    #[serde(with = "usd")]
    pub spent_usd: Micros,
    #[serde(with = "usd")]
    pub reserved_usd: Micros,
    #[serde(with = "usd")]
    pub remaining_usd: Micros,
    pub expires_at: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub agent_run_label: Option<&'a str>,
    pub allowed_endpoints: &'a [String],
    pub stripe_account: Option<&'a str>,
    pub allow_expand: bool,
    pub audit_pending: u64,
    pub reconciling: u64,
    pub unresolved: u64,
    /// How far real prices that came in above their estimates pushed today's spend past the cap.
    #[serde(with = "usd")]
    pub over_cap_usd: Micros,
    pub issuer_id: Option<&'a str>,
    pub parent_key_id: Option<&'a str>,
    /// Spent and held today by this key's descendants, counted against its cap too.
    #[serde(with = "usd")]
    pub descendants_usd: Micros,
    #[serde(serialize_with = "crate::core::alerts::ratios::serialize")]
    pub alert_thresholds: &'a [u32],
}

impl<'a> KeyView<'a> {
    pub fn new(state: &'a KeyState, now_ms: u64) -> KeyView<'a> {
        let c = &state.config;
        KeyView {
            key_id: &c.key_id,
            vendor: c.vendor,
            status: state.status(now_ms),
            daily_usd_cap: c.daily_cap,
            max_usd_per_call: c.max_per_call,
            spent_usd: state.spent,
            reserved_usd: state.reserved,
            remaining_usd: state.remaining(),
            expires_at: rfc3339(c.expires_at_ms),
            created_at: rfc3339(c.created_at_ms),
            revoked_at: state.revoked_at_ms.map(rfc3339),
            agent_run_label: c.agent_run_label.as_deref(),
            allowed_endpoints: &c.allowed_endpoints,
            stripe_account: c.stripe_account.as_deref(),
            allow_expand: c.allow_expand,
            audit_pending: state.audit_pending,
            reconciling: state.reconciling,
            unresolved: state.unresolved,
            over_cap_usd: state.spent.saturating_sub(c.daily_cap),
            issuer_id: c.issuer_id.as_deref(),
            parent_key_id: c.parent_key_id.as_deref(),
            descendants_usd: state.descendants,
            alert_thresholds: &c.alert_thresholds,
        }
    }
}

/// The `201` answer to `POST /vault/keys`: the only place the vault key is ever shown.
#[derive(Serialize)]
pub struct IssuedKeyView<'a> {
    pub key_id: &'a str,
    pub vault_key: &'a str,
    pub vendor: Vendor,
    #[serde(with = "usd")]
    pub daily_usd_cap: Micros,
    #[serde(with = "usd_opt")]
    pub max_usd_per_call: Option<Micros>,
    pub allowed_endpoints: &'a [String],
    pub expires_at: String,
    pub agent_run_label: Option<&'a str>,
    pub stripe_account: Option<&'a str>,
    pub allow_expand: bool,
    pub issuer_id: Option<&'a str>,
    pub parent_key_id: Option<&'a str>,
}

impl<'a> IssuedKeyView<'a> {
    pub fn new(config: &'a KeyConfig, vault_key: &'a str) -> IssuedKeyView<'a> {
        IssuedKeyView {
            key_id: &config.key_id,
            vault_key,
            vendor: config.vendor,
            daily_usd_cap: config.daily_cap,
            max_usd_per_call: config.max_per_call,
            allowed_endpoints: &config.allowed_endpoints,
            expires_at: rfc3339(config.expires_at_ms),
            agent_run_label: config.agent_run_label.as_deref(),
            stripe_account: config.stripe_account.as_deref(),
            allow_expand: config.allow_expand,
            issuer_id: config.issuer_id.as_deref(),
            parent_key_id: config.parent_key_id.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NewKey, ProxyError> {
        parse_new_key(json.as_bytes())
    }

    #[test]
    fn parses_the_documented_example() {
        let k = parse(
            r#"{"vendor": "stripe", "daily_usd_cap": 300, "allowed_endpoints": ["POST /v1/payment_intents"],
                "expires_in": "2h", "agent_run_label": "inngest/billing/subscription.process/01J"}"#,
        )
        .unwrap();
        assert_eq!(
            k,
            NewKey {
                vendor: Vendor::Stripe,
                daily_cap: Micros(300_000_000),
                max_per_call: None,
                allowed_endpoints: vec!["POST /v1/payment_intents".into()],
                ttl_secs: 7_200,
                agent_run_label: Some("inngest/billing/subscription.process/01J".into()),
                stripe_account: None,
                allow_expand: false,
                alert_thresholds: vec![],
            }
        );
    }

    #[test]
    fn defaults_ttl_to_an_hour() {
        let k = parse(r#"{"vendor":"stripe","daily_usd_cap":0.3,"max_usd_per_call":0.1,"allowed_endpoints":["GET /v1/charges/{id}"]}"#)
            .unwrap();
        assert_eq!((k.ttl_secs, k.max_per_call, k.daily_cap), (3_600, Some(Micros(100_000)), Micros(300_000)));
    }

    #[test]
    fn refusals_name_the_field() {
        let base = r#""vendor":"stripe","daily_usd_cap":1,"allowed_endpoints":["POST /v1/charges"]"#;
        let long_label = "x".repeat(257);
        let cases = [
            ("not json".to_string(), "JSON object"),
            ("[]".into(), "JSON object"),
            (r#"{"daily_usd_cap":1,"allowed_endpoints":["POST /v1/charges"]}"#.into(), "vendor"),
            (r#"{"vendor":"paypal","daily_usd_cap":1,"allowed_endpoints":["POST /v1/charges"]}"#.into(), "vendor"),
            (r#"{"vendor":"stripe","allowed_endpoints":["POST /v1/charges"]}"#.into(), "daily_usd_cap"),
            (
                r#"{"vendor":"stripe","daily_usd_cap":"300","allowed_endpoints":["POST /v1/charges"]}"#.into(),
                "daily_usd_cap",
            ),
            (
                r#"{"vendor":"stripe","daily_usd_cap":-1,"allowed_endpoints":["POST /v1/charges"]}"#.into(),
                "daily_usd_cap",
            ),
            (
                r#"{"vendor":"stripe","daily_usd_cap":1e3,"allowed_endpoints":["POST /v1/charges"]}"#.into(),
                "daily_usd_cap",
            ),
            (r#"{"vendor":"stripe","daily_usd_cap":1}"#.into(), "allowed_endpoints"),
            (r#"{"vendor":"stripe","daily_usd_cap":1,"allowed_endpoints":[]}"#.into(), "allowed_endpoints"),
            (r#"{"vendor":"stripe","daily_usd_cap":1,"allowed_endpoints":["POST v1"]}"#.into(), "allowed_endpoints"),
            (format!("{{{base},\"expires_in\":\"31d\"}}"), "expires_in"),
            (format!("{{{base},\"max_usd_per_call\":\"x\"}}"), "max_usd_per_call"),
            (format!("{{{base},\"agent_run_label\":\"{long_label}\"}}"), "agent_run_label"),
            (format!("{{{base},\"agent_run_label\":7}}"), "agent_run_label"),
            (format!("{{{base},\"daily_cap_usd\":7}}"), "daily_cap_usd"),
            (format!("{{{base},\"stripe_account\":\"acct_x/y\"}}"), "stripe_account"),
            (format!("{{{base},\"allow_expand\":\"yes\"}}"), "allow_expand"),
            (format!("{{{base},\"daily_usd_cap\":1000000}}"), "daily_usd_cap"),
            (format!("{{\"vendor\":\"twilio\",{base}}}"), "vendor"),
        ];
        for (body, field) in cases {
            let err = parse(&body).unwrap_err();
            assert_eq!(err.kind(), "invalid_request");
            assert!(err.message().contains(field), "{body}: {} should name {field}", err.message());
        }
    }

    #[test]
    fn refresh_bodies() {
        assert_eq!(parse_refresh(br#"{"expires_in": "2h"}"#), Ok(7_200));
        assert_eq!(parse_refresh(b""), Ok(DEFAULT_TTL_SECS));
        assert_eq!(parse_refresh(b"{}"), Ok(DEFAULT_TTL_SECS));
        for bad in [
            &br#"{"expires_in": "31d"}"#[..],
            br#"{"ttl": "2h"}"#,
            b"[]",
            b"2h",
            br#"{"expires_in":"1m","expires_in":"30d"}"#,
        ] {
            assert_eq!(parse_refresh(bad).unwrap_err().kind(), "invalid_request");
        }
    }

    #[test]
    fn a_label_of_exactly_256_characters_is_accepted() {
        let label = "é".repeat(256);
        let body = format!(
            r#"{{"vendor":"stripe","daily_usd_cap":1,"allowed_endpoints":["POST /v1/charges"],"agent_run_label":"{label}"}}"#
        );
        assert_eq!(parse(&body).unwrap().agent_run_label.as_deref(), Some(label.as_str()));
    }

    #[test]
    fn key_status_and_remaining() {
        let config =
            parse(r#"{"vendor":"stripe","daily_usd_cap":10,"allowed_endpoints":["POST /v1/charges"],"expires_in":60}"#)
                .unwrap()
                .into_config("k".into(), 1_000);
        let mut state = KeyState {
            config,
            revoked_at_ms: None,
            spent: Micros(3),
            reserved: Micros(4),
            audit_pending: 0,
            reconciling: 0,
            unresolved: 0,
            descendants: Micros::ZERO,
        };
        assert_eq!(state.status(60_999), KeyStatus::Active);
        assert_eq!(state.status(61_000), KeyStatus::Expired);
        assert_eq!(state.remaining(), Micros(10_000_000 - 7));
        state.revoked_at_ms = Some(2_000);
        assert_eq!(state.status(2_000), KeyStatus::Revoked);
        let view = serde_json::to_string(&KeyView::new(&state, 2_000)).unwrap();
        for part in [
            r#""status":"revoked""#,
            r#""daily_usd_cap":10,"#,
            r#""spent_usd":0.000003,"#,
            r#""revoked_at":"1970-01-01T00:00:02.000Z""#,
        ] {
            assert!(view.contains(part), "{view} lacks {part}");
        }
    }
}
