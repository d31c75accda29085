//! Budgets that nest: issuers (bounded credentials for the admin plane) and child keys
//! (delegation by a vault key). Both only narrow: every request is checked here against the
//! ceiling it must fit, and each refusal names the field at fault.

use crate::core::allowlist::first_uncovered;
use crate::core::clock::{rfc3339, MS_PER_SEC};
use crate::core::error::ProxyError;
use crate::core::keys::{endpoints_field, object_fields, parse_label, ttl_field, usd_field, KeyConfig, NewKey};
use crate::core::money::{usd, usd_opt, Micros};
use crate::core::vendor::Vendor;
use serde::{Deserialize, Serialize};

/// How deep keys may nest: a key issued by the admin API is at depth 1, so a key can be
/// delegated three times. Each level costs one more sum per call, and deeper trees make a
/// leaked key's reach harder to reason about.
pub const MAX_DEPTH: usize = 4;
const MAX_NAME_CHARS: usize = 128;

/// Everything fixed about an issuer when it is created. Held by its Durable Object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerConfig {
    pub issuer_id: String,
    pub name: String,
    /// Spend and holds of all the issuer's keys together, per UTC day.
    pub daily_budget: Micros,
    pub vendors: Vec<Vendor>,
    /// The ceiling: every endpoint of every key it issues must be covered by one of these.
    pub allowed_endpoints: Vec<String>,
    pub max_key_cap: Option<Micros>,
    pub max_ttl_secs: Option<u64>,
    pub created_at_ms: u64,
    /// Fractions of the daily budget, in basis points, that send `issuer.threshold_crossed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_thresholds: Vec<u32>,
}

const ISSUER_FIELDS: [&str; 7] = [
    "name",
    "daily_usd_budget",
    "vendors",
    "allowed_endpoints",
    "max_key_usd_cap",
    "max_expires_in",
    "alert_thresholds",
];

fn bad(msg: String) -> ProxyError {
    ProxyError::InvalidRequest(msg)
}

/// Parses and validates a `POST /vault/issuers` body.
pub fn parse_new_issuer(body: &[u8], issuer_id: String, now_ms: u64) -> Result<IssuerConfig, ProxyError> {
    let fields = object_fields(body, &ISSUER_FIELDS)?;
    let name: String = fields
        .get("name")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .filter(|n: &String| !n.is_empty() && n.chars().count() <= MAX_NAME_CHARS && !n.chars().any(char::is_control))
        .ok_or_else(|| bad(format!("name is required: 1 to {MAX_NAME_CHARS} characters")))?;
    let daily_budget = fields
        .get("daily_usd_budget")
        .ok_or_else(|| bad("daily_usd_budget is required".into()))
        .and_then(|raw| usd_field(raw, "daily_usd_budget"))?;
    let names: Vec<&str> = Vendor::ALL.iter().map(|v| v.name()).collect();
    let vendors: Vec<Vendor> = fields
        .get("vendors")
        .and_then(|raw| serde_json::from_str::<Vec<String>>(raw.get()).ok())
        .and_then(|list| list.iter().map(|n| Vendor::from_name(n)).collect::<Option<Vec<_>>>())
        .filter(|list| !list.is_empty())
        .ok_or_else(|| bad(format!("vendors is required: a list drawn from {}", names.join(", "))))?;
    let allowed_endpoints = fields
        .get("allowed_endpoints")
        .ok_or_else(|| bad("allowed_endpoints is required: the ceiling of the keys this issuer makes".into()))
        .and_then(|raw| endpoints_field(raw))?;
    let max_key_cap = fields.get("max_key_usd_cap").map(|raw| usd_field(raw, "max_key_usd_cap")).transpose()?;
    let max_ttl_secs = fields.get("max_expires_in").map(|raw| ttl_field(raw, "max_expires_in")).transpose()?;
    let alert_thresholds = crate::core::alerts::parse_thresholds(fields.get("alert_thresholds").copied())
        .map_err(|e| bad(e.replace("of the cap", "of the budget")))?;
    Ok(IssuerConfig {
        issuer_id,
        name,
        daily_budget,
        vendors,
        allowed_endpoints,
        max_key_cap,
        max_ttl_secs,
        created_at_ms: now_ms,
        alert_thresholds,
    })
}

impl IssuerConfig {
    /// Whether a key request fits this issuer's ceiling; a refusal names the field.
    pub fn admits(&self, key: &NewKey) -> Result<(), ProxyError> {
        if !self.vendors.contains(&key.vendor) {
            return Err(bad(format!("vendor {} is outside this issuer's vendors", key.vendor.name())));
        }
        if let Some(entry) = first_uncovered(&self.allowed_endpoints, &key.allowed_endpoints) {
            return Err(bad(format!("allowed_endpoints: {entry:?} is outside this issuer's allowed_endpoints")));
        }
        if let Some(max) = self.max_key_cap.filter(|max| key.daily_cap > *max) {
            return Err(bad(format!(
                "daily_usd_cap is above this issuer's max_key_usd_cap of {}",
                max.to_usd_string()
            )));
        }
        if let Some(max) = self.max_ttl_secs.filter(|max| key.ttl_secs > *max) {
            return Err(bad(format!("expires_in is longer than this issuer's max_expires_in of {max} s")));
        }
        Ok(())
    }
}

const CHILD_FIELDS: [&str; 5] =
    ["daily_usd_cap", "allowed_endpoints", "expires_in", "agent_run_label", "alert_thresholds"];

/// Parses a `POST /vault/keys/{id}/children` body into the child's config. The child inherits
/// everything else from its parent (vendor, per-call limit, connected account, `expand[]`),
/// and may only narrow: its endpoints are covered by the parent's, its cap is at most the
/// parent's, and it expires no later than the parent (by default, with it).
pub fn parse_new_child(body: &[u8], parent: &KeyConfig, key_id: String, now_ms: u64) -> Result<KeyConfig, ProxyError> {
    let fields = object_fields(body, &CHILD_FIELDS)?;
    let daily_cap = fields
        .get("daily_usd_cap")
        .ok_or_else(|| bad("daily_usd_cap is required".into()))
        .and_then(|raw| usd_field(raw, "daily_usd_cap"))?;
    if daily_cap > parent.daily_cap {
        return Err(bad(format!(
            "daily_usd_cap is above the parent key's cap of {}",
            parent.daily_cap.to_usd_string()
        )));
    }
    let allowed_endpoints = match fields.get("allowed_endpoints") {
        None => parent.allowed_endpoints.clone(),
        Some(raw) => endpoints_field(raw)?,
    };
    if let Some(entry) = first_uncovered(&parent.allowed_endpoints, &allowed_endpoints) {
        return Err(bad(format!("allowed_endpoints: {entry:?} is outside the parent key's allowed_endpoints")));
    }
    let expires_at_ms = match fields.get("expires_in") {
        None => parent.expires_at_ms,
        Some(raw) => now_ms + ttl_field(raw, "expires_in")? * MS_PER_SEC,
    };
    if expires_at_ms > parent.expires_at_ms {
        return Err(bad(format!(
            "expires_in would outlive the parent key, which expires at {}",
            rfc3339(parent.expires_at_ms)
        )));
    }
    let agent_run_label = match fields.get("agent_run_label") {
        None => parent.agent_run_label.clone(),
        Some(raw) => Some(parse_label(raw)?),
    };
    Ok(KeyConfig {
        key_id,
        vendor: parent.vendor,
        daily_cap,
        max_per_call: parent.max_per_call,
        allowed_endpoints,
        created_at_ms: now_ms,
        expires_at_ms,
        agent_run_label,
        stripe_account: parent.stripe_account.clone(),
        allow_expand: parent.allow_expand,
        issuer_id: parent.issuer_id.clone(),
        parent_key_id: Some(parent.key_id.clone()),
        alert_thresholds: crate::core::alerts::parse_thresholds(fields.get("alert_thresholds").copied())
            .map_err(bad)?,
    })
}

/// An issuer's live state, as its Durable Object reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerState {
    pub config: IssuerConfig,
    pub revoked_at_ms: Option<u64>,
    /// Today's spend and holds over all the issuer's keys.
    pub spent: Micros,
    pub held: Micros,
    /// Keys neither revoked nor expired.
    pub live_keys: u64,
}

/// `GET /vault/issuers/{id}`, each entry of the list, and the `201` answer to
/// `POST /vault/issuers`: the only one with `issuer_token`, shown there once.
#[derive(Serialize)]
pub struct IssuerView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer_token: Option<&'a str>,
    pub issuer_id: &'a str,
    pub name: &'a str,
    pub status: &'static str,
    #[serde(with = "usd")]
    pub daily_usd_budget: Micros,
    #[serde(with = "usd_opt")]
    pub spent_today_usd: Option<Micros>,
    #[serde(with = "usd_opt")]
    pub held_usd: Option<Micros>,
    #[serde(with = "usd_opt")]
    pub remaining_usd: Option<Micros>,
    pub live_keys: Option<u64>,
    pub vendors: &'a [Vendor],
    pub allowed_endpoints: &'a [String],
    #[serde(with = "usd_opt")]
    pub max_key_usd_cap: Option<Micros>,
    pub max_expires_in: Option<u64>,
    #[serde(serialize_with = "crate::core::alerts::ratios::serialize")]
    pub alert_thresholds: &'a [u32],
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl<'a> IssuerView<'a> {
    /// The view of a configuration alone (a listing), without live figures.
    pub fn of_config(config: &'a IssuerConfig, revoked_at_ms: Option<u64>) -> IssuerView<'a> {
        IssuerView {
            issuer_token: None,
            issuer_id: &config.issuer_id,
            name: &config.name,
            status: if revoked_at_ms.is_some() { "revoked" } else { "active" },
            daily_usd_budget: config.daily_budget,
            spent_today_usd: None,
            held_usd: None,
            remaining_usd: None,
            live_keys: None,
            vendors: &config.vendors,
            allowed_endpoints: &config.allowed_endpoints,
            max_key_usd_cap: config.max_key_cap,
            max_expires_in: config.max_ttl_secs,
            alert_thresholds: &config.alert_thresholds,
            created_at: rfc3339(config.created_at_ms),
            revoked_at: revoked_at_ms.map(rfc3339),
        }
    }

    pub fn new(state: &'a IssuerState) -> IssuerView<'a> {
        IssuerView {
            spent_today_usd: Some(state.spent),
            held_usd: Some(state.held),
            remaining_usd: Some(state.config.daily_budget.saturating_sub(state.spent).saturating_sub(state.held)),
            live_keys: Some(state.live_keys),
            ..IssuerView::of_config(&state.config, state.revoked_at_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::keys::parse_new_key;

    fn issuer() -> IssuerConfig {
        parse_new_issuer(
            br#"{"name":"billing","daily_usd_budget":500,"vendors":["stripe"],
                 "allowed_endpoints":["POST /v1/payment_intents","GET /v1/charges/{id}"],
                 "max_key_usd_cap":100,"max_expires_in":"2h"}"#,
            "i".into(),
            0,
        )
        .unwrap()
    }

    #[test]
    fn issuer_requests_are_validated_naming_the_field() {
        let i = issuer();
        assert_eq!(
            (i.daily_budget, i.max_key_cap, i.max_ttl_secs),
            (Micros(500_000_000), Some(Micros(100_000_000)), Some(7_200))
        );
        for (body, field) in [
            (r#"{"daily_usd_budget":1,"vendors":["stripe"],"allowed_endpoints":["POST /v1/x"]}"#, "name"),
            (r#"{"name":"n","vendors":["stripe"],"allowed_endpoints":["POST /v1/x"]}"#, "daily_usd_budget"),
            (r#"{"name":"n","daily_usd_budget":1,"vendors":["paypal"],"allowed_endpoints":["POST /v1/x"]}"#, "vendors"),
            (r#"{"name":"n","daily_usd_budget":1,"vendors":["stripe"]}"#, "allowed_endpoints"),
            (
                r#"{"name":"n","daily_usd_budget":1,"vendors":["stripe"],"allowed_endpoints":["POST /v1/x"],"max_expires_in":"40d"}"#,
                "max_expires_in",
            ),
            (
                r#"{"name":"n","daily_usd_budget":1,"vendors":["stripe"],"allowed_endpoints":["POST /v1/x"],"budget":1}"#,
                "budget",
            ),
        ] {
            let err = parse_new_issuer(body.as_bytes(), "i".into(), 0).unwrap_err();
            assert!(err.message().contains(field), "{body}: {}", err.message());
        }
    }

    #[test]
    fn a_key_must_fit_the_issuer_ceiling() {
        let i = issuer();
        let key = |body: &str| parse_new_key(body.as_bytes()).unwrap();
        assert_eq!(i.admits(&key(r#"{"vendor":"stripe","daily_usd_cap":100,"allowed_endpoints":["GET /v1/charges/ch_1"],"expires_in":"2h"}"#)), Ok(()));
        for (body, field) in [
            (r#"{"vendor":"resend","daily_usd_cap":1,"allowed_endpoints":["POST /emails"]}"#, "vendor"),
            (r#"{"vendor":"stripe","daily_usd_cap":1,"allowed_endpoints":["POST /v1/refunds"]}"#, "allowed_endpoints"),
            (
                r#"{"vendor":"stripe","daily_usd_cap":100.01,"allowed_endpoints":["POST /v1/payment_intents"]}"#,
                "daily_usd_cap",
            ),
            (
                r#"{"vendor":"stripe","daily_usd_cap":1,"allowed_endpoints":["POST /v1/payment_intents"],"expires_in":"3h"}"#,
                "expires_in",
            ),
        ] {
            let err = i.admits(&key(body)).unwrap_err();
            assert!(err.message().contains(field), "{body}: {}", err.message());
        }
    }

    fn parent() -> KeyConfig {
        let mut c = parse_new_key(
            br#"{"vendor":"stripe","daily_usd_cap":300,"max_usd_per_call":50,"allowed_endpoints":["POST /v1/payment_intents","GET /v1/charges/{id}"],
                 "expires_in":3600,"agent_run_label":"parent-run","stripe_account":"acct_1"}"#,
        )
        .unwrap()
        .into_config("p".into(), 1_000);
        c.issuer_id = Some("i".into());
        c
    }

    #[test]
    fn a_child_inherits_and_only_narrows() {
        let p = parent();
        let c = parse_new_child(br#"{"daily_usd_cap":5}"#, &p, "c".into(), 2_000).unwrap();
        assert_eq!(c.parent_key_id.as_deref(), Some("p"));
        assert_eq!(c.issuer_id.as_deref(), Some("i"));
        assert_eq!((c.expires_at_ms, c.allowed_endpoints.clone()), (p.expires_at_ms, p.allowed_endpoints.clone()));
        assert_eq!(
            (c.max_per_call, c.stripe_account.as_deref(), c.agent_run_label.as_deref()),
            (p.max_per_call, Some("acct_1"), Some("parent-run"))
        );
        let c = parse_new_child(
            br#"{"daily_usd_cap":5,"allowed_endpoints":["GET /v1/charges/ch_1"],"expires_in":60,"agent_run_label":"child-1"}"#,
            &p,
            "c".into(),
            2_000,
        )
        .unwrap();
        assert_eq!((c.expires_at_ms, c.agent_run_label.as_deref()), (62_000, Some("child-1")));
        for (body, field) in [
            (r#"{}"#, "daily_usd_cap"),
            (r#"{"daily_usd_cap":300.01}"#, "daily_usd_cap"),
            (r#"{"daily_usd_cap":1,"allowed_endpoints":["POST /v1/refunds"]}"#, "allowed_endpoints"),
            (r#"{"daily_usd_cap":1,"allowed_endpoints":["GET /v1/charges/{id}/refunds"]}"#, "allowed_endpoints"),
            (r#"{"daily_usd_cap":1,"expires_in":3600}"#, "expires_in"),
            (r#"{"daily_usd_cap":1,"vendor":"twilio"}"#, "vendor"),
            (r#"{"daily_usd_cap":1,"max_usd_per_call":900}"#, "max_usd_per_call"),
        ] {
            let err = parse_new_child(body.as_bytes(), &p, "c".into(), 2_000).unwrap_err();
            assert_eq!(err.kind(), "invalid_request");
            assert!(err.message().contains(field), "{body}: {}", err.message());
        }
    }
}
