//! Alerts: spend thresholds on a budget, the events a key's object emits, and webhooks that
//! receive them signed in the manner of Stripe's (`Keybrake-Signature: t=…,v1=…`). Pure: the
//! object decides and stores, the alarm delivers.
//!
//! Thresholds are fractions of a daily cap, held as basis points (1/10,000), never floats.
//! Each fires at most once per budget and UTC day: the object keeps the set it has fired, and
//! checks and records it in one uninterrupted step, whatever the concurrency.

use crate::core::clock::rfc3339;
use crate::core::money::{usd, usd_opt, Micros};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// A whole cap, in basis points.
pub const WHOLE: u32 = 10_000;
pub const MAX_THRESHOLDS: usize = 10;

/// `alert_thresholds` of a key request: 1 to 10 distinct fractions in (0, 1], with at most four
/// decimal places, such as `[0.5, 0.8, 1.0]`. Kept sorted.
pub fn parse_thresholds(raw: Option<&RawValue>) -> Result<Vec<u32>, String> {
    let Some(raw) = raw else { return Ok(Vec::new()) };
    let bad = || {
        "alert_thresholds must be a list of 1 to 10 distinct fractions of the cap in (0, 1], like [0.5, 0.8, 1]"
            .to_string()
    };
    let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
    if items.is_empty() || items.len() > MAX_THRESHOLDS {
        return Err(bad());
    }
    // Kept sorted by insertion: at most ten, and `sort` would pull a general sort into the wasm.
    let mut points: Vec<u32> = Vec::with_capacity(items.len());
    for item in &items {
        let p = basis_points(item.get()).ok_or_else(bad)?;
        match points.binary_search(&p) {
            Ok(_) => return Err(bad()),
            Err(at) => points.insert(at, p),
        }
    }
    Ok(points)
}

/// A JSON number in (0, 1] with at most four decimals, as basis points. Parsed from its text,
/// so `0.8` is exactly 8,000.
fn basis_points(text: &str) -> Option<u32> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 4 {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (text.contains('.') && frac.is_empty()) {
        return None;
    }
    let whole: u32 = whole.parse().ok().filter(|w| *w <= 1)?;
    let frac: u32 = if frac.is_empty() { 0 } else { format!("{frac:0<4}").parse().ok()? };
    let points = whole * WHOLE + frac;
    (1..=WHOLE).contains(&points).then_some(points)
}

/// Basis points as the exact decimal fraction shown in JSON: `0.8`, `1`, `0.0001`. Written
/// from integers, never through a float.
pub fn fraction_text(points: u32) -> String {
    let (whole, frac) = (points / WHOLE, points % WHOLE);
    if frac == 0 {
        return whole.to_string();
    }
    format!("{whole}.{}", format!("{frac:04}").trim_end_matches('0'))
}

/// Serde adapter: basis points travel as plain JSON numbers (`0.8`), written verbatim.
pub mod ratios {
    use serde::ser::{SerializeSeq, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(points: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(points.len()))?;
        for p in points {
            seq.serialize_element(&ratio(*p).map_err(serde::ser::Error::custom)?)?;
        }
        seq.end()
    }

    pub fn ratio(points: u32) -> Result<Box<RawValue>, serde_json::Error> {
        RawValue::from_string(super::fraction_text(points))
    }
}

/// The spend at which a threshold is crossed: rounded up, so 80% of a cap is reached only when
/// at least 80% is spent.
pub fn threshold_amount(cap: Micros, points: u32) -> Micros {
    // cap = q·W + r, so ⌈cap·p / W⌉ = q·p + ⌈r·p / W⌉, in u64 without overflow: q·p ≤ cap.
    let (whole, points) = (u64::from(WHOLE), u64::from(points));
    Micros(cap.0 / whole * points + (cap.0 % whole * points).div_ceil(whole))
}

/// The thresholds `spent` has reached that have not fired yet today. A zero cap has none: every
/// fraction of nothing is reached before anything is spent.
pub fn due_thresholds(thresholds: &[u32], cap: Micros, spent: Micros, fired: &[u32]) -> Vec<u32> {
    if cap == Micros::ZERO {
        return Vec::new();
    }
    thresholds.iter().copied().filter(|t| !fired.contains(t) && spent >= threshold_amount(cap, *t)).collect()
}

/// Every event a webhook can subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "key.threshold_crossed")]
    ThresholdCrossed,
    #[serde(rename = "key.cap_hit")]
    CapHit,
    #[serde(rename = "key.revoked")]
    Revoked,
    #[serde(rename = "key.expired")]
    Expired,
    #[serde(rename = "call.unknown_outcome")]
    UnknownOutcome,
    #[serde(rename = "call.reconciled")]
    Reconciled,
    #[serde(rename = "issuer.threshold_crossed")]
    IssuerThresholdCrossed,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        EventType::ThresholdCrossed,
        EventType::CapHit,
        EventType::Revoked,
        EventType::Expired,
        EventType::UnknownOutcome,
        EventType::Reconciled,
        EventType::IssuerThresholdCrossed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::ThresholdCrossed => "key.threshold_crossed",
            EventType::CapHit => "key.cap_hit",
            EventType::Revoked => "key.revoked",
            EventType::Expired => "key.expired",
            EventType::UnknownOutcome => "call.unknown_outcome",
            EventType::Reconciled => "call.reconciled",
            EventType::IssuerThresholdCrossed => "issuer.threshold_crossed",
        }
    }

    pub fn from_name(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// An event's `data`: the key it is about (with its issuer and parent), or for an
/// `issuer.*` event the issuer, then what the event adds (absent fields are left out). One
/// typed struct, so money is written exactly, never through a float.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EventData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    pub issuer_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vendor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_run_label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none", with = "usd_opt")]
    pub daily_usd_cap: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none", with = "usd_opt")]
    pub daily_usd_budget: Option<Micros>,
    #[serde(with = "usd")]
    pub spent_usd: Micros,
    /// Of a cap hit: the limit met, `key`, `parent` (an ancestor's cap) or `issuer`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_ratio")]
    pub threshold: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", with = "usd_opt")]
    pub threshold_usd: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none", with = "usd_opt")]
    pub reserved_usd: Option<Micros>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciliation_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", with = "usd_opt")]
    pub cost_usd: Option<Micros>,
}

fn opt_ratio<S: serde::Serializer>(points: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    match points {
        Some(p) => ratios::ratio(*p).map_err(serde::ser::Error::custom)?.serialize(s),
        None => s.serialize_none(),
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    object: &'static str,
    #[serde(rename = "type")]
    kind: EventType,
    created: u64,
    created_at: String,
    data: &'a EventData<'a>,
}

/// The JSON body of one event: `{"id", "object", "type", "created", "created_at", "data"}`.
/// The id is stable across retries, for de-duplication.
pub fn event_body(id: &str, kind: EventType, created_ms: u64, data: &EventData) -> String {
    let envelope =
        Envelope { id, object: "event", kind, created: created_ms / 1_000, created_at: rfc3339(created_ms), data };
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// The UTC day as `YYYY-MM-DD`.
pub fn day_text(day: u64) -> String {
    rfc3339(day * crate::core::clock::MS_PER_DAY)[..10].to_string()
}

/// HMAC-SHA256 (RFC 2104) over SHA-256, which the crate already carries.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// `Keybrake-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, as Stripe
/// signs its webhooks: the receiver recomputes it, and refuses an old `t` to stop replays.
pub fn signature_header(secret: &str, timestamp_secs: u64, body: &str) -> String {
    let signed = format!("{timestamp_secs}.{body}");
    let mac = hmac_sha256(secret.as_bytes(), signed.as_bytes());
    format!("t={timestamp_secs},v1={}", crate::core::encoding::hex(&mac))
}

pub const MAX_WEBHOOK_URL: usize = 2_048;
pub const MAX_WEBHOOKS: usize = 16;

/// A validated `POST /vault/webhooks` body.
#[derive(Debug, PartialEq, Eq)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<EventType>,
}

/// `{"url": "https://…", "events": ["key.threshold_crossed", …]}`; `["*"]` is every event.
/// Plain `http` only to loopback, for a receiver on the operator's own machine.
pub fn parse_webhook(body: &[u8]) -> Result<NewWebhook, String> {
    let fields = crate::core::keys::json_fields(body).map_err(|e| e.message())?;
    if let Some(unknown) = fields.keys().find(|k| !["url", "events"].contains(&k.as_str())) {
        return Err(format!("unknown field {unknown:?}; fields are url, events"));
    }
    let url: String = fields
        .get("url")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or("url is required: the https URL events are sent to")?;
    let loopback =
        ["http://127.0.0.1:", "http://127.0.0.1/", "http://localhost:", "http://localhost/", "http://[::1]:"];
    let scheme_ok = url.starts_with("https://") || loopback.iter().any(|p| url.starts_with(p));
    let clean = url.len() <= MAX_WEBHOOK_URL && url.bytes().all(|b| b.is_ascii_graphic()) && !url.contains('@');
    if !scheme_ok || !clean || url.len() <= "https://".len() {
        return Err("url must be an https URL (or http to 127.0.0.1 or localhost), without credentials".into());
    }
    let names: Vec<String> = fields
        .get("events")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .filter(|n: &Vec<String>| !n.is_empty())
        .ok_or("events is required: a list of event types, or [\"*\"] for all")?;
    let events = if names == ["*"] {
        EventType::ALL.to_vec()
    } else {
        let mut events = Vec::new();
        for name in &names {
            let kind = EventType::from_name(name).ok_or_else(|| {
                let all: Vec<&str> = EventType::ALL.iter().map(|e| e.name()).collect();
                format!("unknown event {name:?}; events are {}", all.join(", "))
            })?;
            if !events.contains(&kind) {
                events.push(kind);
            }
        }
        events
    };
    Ok(NewWebhook { url, events })
}

/// Doubling backoff between delivery attempts, from `first_ms`, at most an hour.
pub fn retry_after_ms(first_ms: u64, attempts: u32) -> u64 {
    first_ms.saturating_mul(1 << attempts.min(12)).min(3_600_000)
}

/// Attempts per event and webhook before it is given up (logged as such): with the default
/// first wait of a minute, about a day of retries.
pub const MAX_ATTEMPTS: u32 = 30;

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn thresholds_parse_exactly_and_refuse_the_rest() {
        assert_eq!(parse_thresholds(Some(&raw("[1.0, 0.5, 0.8]"))), Ok(vec![5_000, 8_000, 10_000]));
        assert_eq!(parse_thresholds(Some(&raw("[1, 0.0001]"))), Ok(vec![1, 10_000]));
        assert_eq!(parse_thresholds(None), Ok(vec![]));
        for bad in
            ["[]", "[0]", "[1.5]", "[0.00001]", "[-0.5]", "[\"0.5\"]", "0.5", "[0.5, 0.5]", "[1e-1]", "[1.00001]"]
        {
            assert!(parse_thresholds(Some(&raw(bad))).is_err(), "{bad}");
        }
        let eleven = format!("[{}]", (1..=11).map(|i| format!("0.{i:02}")).collect::<Vec<_>>().join(","));
        assert!(parse_thresholds(Some(&raw(&eleven))).is_err());
    }

    #[test]
    fn a_threshold_fires_once_when_spend_reaches_it() {
        let cap = Micros(10_000_000);
        let t = [5_000, 8_000, 10_000];
        assert_eq!(due_thresholds(&t, cap, Micros(4_999_999), &[]), Vec::<u32>::new());
        assert_eq!(due_thresholds(&t, cap, Micros(5_000_000), &[]), vec![5_000]);
        assert_eq!(due_thresholds(&t, cap, Micros(10_000_000), &[5_000]), vec![8_000, 10_000]);
        assert_eq!(due_thresholds(&t, cap, Micros(10_000_000), &t), Vec::<u32>::new());
        assert_eq!(due_thresholds(&t, Micros::ZERO, Micros::ZERO, &[]), Vec::<u32>::new());
        // Rounded up: a third of 1 micro-dollar is reached only at 1.
        assert_eq!(threshold_amount(Micros(1), 3_333), Micros(1));
        assert_eq!(threshold_amount(Micros(3), 3_333), Micros(1));
        assert_eq!(threshold_amount(Micros(10_001), 5_000), Micros(5_001));
        assert_eq!(threshold_amount(Micros(u64::MAX / 2), WHOLE), Micros(u64::MAX / 2));
        assert_eq!(threshold_amount(Micros(7_777_777), 8_000), Micros(6_222_222));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            crate::core::encoding::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            crate::core::encoding::hex(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signature_header_is_stripe_shaped() {
        let header = signature_header("whsec_test", 1_700_000_000, "{\"id\":\"evt_1\"}");
        let mac = hmac_sha256(b"whsec_test", b"1700000000.{\"id\":\"evt_1\"}");
        assert_eq!(header, format!("t=1700000000,v1={}", crate::core::encoding::hex(&mac)));
    }

    #[test]
    fn webhooks_parse_and_refuse() {
        let ok =
            parse_webhook(br#"{"url":"https://example.com/hook","events":["key.cap_hit","key.cap_hit"]}"#).unwrap();
        assert_eq!(ok.events, vec![EventType::CapHit]);
        assert_eq!(parse_webhook(br#"{"url":"http://127.0.0.1:9/x","events":["*"]}"#).unwrap().events.len(), 7);
        for bad in [
            r#"{"url":"http://example.com/hook","events":["*"]}"#,
            r#"{"url":"https://user:pw@example.com/","events":["*"]}"#,
            r#"{"url":"https://example.com/","events":[]}"#,
            r#"{"url":"https://example.com/","events":["key.spent"]}"#,
            r#"{"url":"https://example.com/","events":["*"],"secret":"x"}"#,
            r#"{"url":"https://","events":["*"]}"#,
            r#"{"events":["*"]}"#,
        ] {
            assert!(parse_webhook(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_issuer_event_names_the_issuer_and_no_key() {
        let data = EventData {
            issuer_id: Some("i"),
            daily_usd_budget: Some(Micros(10_000_000)),
            spent_usd: Micros(8_000_000),
            threshold: Some(8_000),
            ..Default::default()
        };
        let body = event_body("evt_i_1_t8000", EventType::IssuerThresholdCrossed, 1_700_000_000_000, &data);
        assert!(body.contains(r#""type":"issuer.threshold_crossed""#), "{body}");
        assert!(
            body.contains(r#""data":{"issuer_id":"i","daily_usd_budget":10,"spent_usd":8,"threshold":0.8}"#),
            "{body}"
        );
        let cap_hit = EventData { key_id: Some("k"), scope: Some("parent"), ..Default::default() };
        let body = event_body("evt_k_1_cap", EventType::CapHit, 0, &cap_hit);
        assert!(body.contains(r#""key_id":"k","issuer_id":null"#) && body.contains(r#""scope":"parent""#), "{body}");
    }

    #[test]
    fn event_names_round_trip() {
        for e in EventType::ALL {
            assert_eq!(EventType::from_name(e.name()), Some(e));
            assert_eq!(serde_json::to_string(&e).unwrap(), format!("\"{}\"", e.name()));
        }
        let data = EventData {
            key_id: Some("k"),
            threshold: Some(8_000),
            threshold_usd: Some(Micros(4_000_000)),
            ..Default::default()
        };
        let body = event_body("evt_1", EventType::ThresholdCrossed, 1_700_000_000_123, &data);
        assert!(
            body.starts_with(r#"{"id":"evt_1","object":"event","type":"key.threshold_crossed","created":1700000000,"#),
            "{body}"
        );
        assert!(body.contains(r#""threshold":0.8,"threshold_usd":4}"#), "{body}");
        assert!(!body.contains("revoked_at"), "{body}");
        assert_eq!(
            (fraction_text(10_000), fraction_text(1), fraction_text(8_050)),
            ("1".into(), "0.0001".into(), "0.805".into())
        );
    }
}
