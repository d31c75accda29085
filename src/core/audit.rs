//! Audit rows: one per call that names a real key, forwarded or denied. A row never holds a
//! vault key, a vendor secret or a request body: there is no field that could.

use crate::core::clock::rfc3339;
use crate::core::money::{usd, usd_opt, Micros};
use serde::{Deserialize, Serialize};

/// How a call ended, as far as the ledger is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The vendor answered 2xx; the cost was debited.
    Settled,
    /// The vendor refused (4xx); the reservation was returned.
    Released,
    /// 5xx, timeout or network error: the vendor may have charged, so the reservation is held.
    Unknown,
    /// Keybrake refused the call; nothing was sent.
    Denied,
    /// A repeat of a settled call under the same `Idempotency-Key`: the vendor replayed its
    /// answer, nothing new was debited.
    Replayed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Settled => "settled",
            Outcome::Released => "released",
            Outcome::Unknown => "unknown",
            Outcome::Denied => "denied",
            Outcome::Replayed => "replayed",
        }
    }
}

/// A row as stored (in the Durable Object's outbox and in D1): integers only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    pub id: String,
    pub ts_ms: u64,
    pub key_id: String,
    pub agent_run_label: Option<String>,
    pub vendor: String,
    pub method: String,
    pub path: String,
    pub status: Option<u16>,
    /// `forwarded`, or the error type that refused the call.
    pub decision: String,
    pub reserved_micros: u64,
    pub cost_micros: u64,
    pub outcome: Outcome,
    pub vendor_object_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub latency_ms: Option<u64>,
    /// For a cost the vendor prices later (Twilio): the estimate first debited.
    pub estimated_micros: Option<u64>,
    /// When `cost_micros` was moved from the estimate to the vendor's real price.
    pub reconciled_at_ms: Option<u64>,
}

/// A row as `GET /vault/audit` shows it.
#[derive(Serialize)]
pub struct AuditView<'a> {
    pub id: &'a str,
    pub ts: String,
    pub key_id: &'a str,
    pub agent_run_label: Option<&'a str>,
    pub vendor: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: Option<u16>,
    pub decision: &'a str,
    #[serde(with = "usd")]
    pub reserved_usd: Micros,
    #[serde(with = "usd")]
    pub cost_usd: Micros,
    pub outcome: Outcome,
    pub vendor_object_id: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    pub latency_ms: Option<u64>,
    #[serde(with = "usd_opt")]
    pub estimated_usd: Option<Micros>,
    pub reconciled_at: Option<String>,
}

impl<'a> From<&'a AuditRow> for AuditView<'a> {
    fn from(r: &'a AuditRow) -> Self {
        AuditView {
            id: &r.id,
            ts: rfc3339(r.ts_ms),
            key_id: &r.key_id,
            agent_run_label: r.agent_run_label.as_deref(),
            vendor: &r.vendor,
            method: &r.method,
            path: &r.path,
            status: r.status,
            decision: &r.decision,
            reserved_usd: Micros(r.reserved_micros),
            cost_usd: Micros(r.cost_micros),
            outcome: r.outcome,
            vendor_object_id: r.vendor_object_id.as_deref(),
            idempotency_key: r.idempotency_key.as_deref(),
            latency_ms: r.latency_ms,
            estimated_usd: r.estimated_micros.map(Micros),
            reconciled_at: r.reconciled_at_ms.map(rfc3339),
        }
    }
}

/// `GET /vault/audit`: totals over every matching row, and the rows themselves (oldest first,
/// at most `limit`).
#[derive(Serialize)]
pub struct AuditPage<'a> {
    pub count: u64,
    #[serde(with = "usd")]
    pub total_usd: Micros,
    pub calls: Vec<AuditView<'a>>,
}

/// Which rows `GET /vault/audit` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct AuditQuery {
    pub filter: AuditFilter,
    pub limit: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuditFilter {
    KeyId(String),
    Label(String),
}

pub const DEFAULT_AUDIT_LIMIT: u32 = 1_000;
pub const MAX_AUDIT_LIMIT: u32 = 10_000;

impl AuditQuery {
    /// From decoded query pairs. Exactly one of `key_id` or `agent_run_label` is required.
    pub fn parse<'q>(pairs: impl Iterator<Item = (&'q str, &'q str)>) -> Result<AuditQuery, String> {
        let (mut filter, mut limit) = (None, DEFAULT_AUDIT_LIMIT);
        for (k, v) in pairs {
            let next = match k {
                "key_id" if crate::core::token::is_key_id(v) => AuditFilter::KeyId(v.to_string()),
                "key_id" => return Err("key_id must be 64 lowercase hex digits".into()),
                "agent_run_label" if !v.is_empty() && v.chars().count() <= crate::core::keys::MAX_LABEL_CHARS => {
                    AuditFilter::Label(v.to_string())
                }
                "agent_run_label" => return Err("agent_run_label must be 1 to 256 characters".into()),
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_AUDIT_LIMIT).contains(l))
                        .ok_or(format!("limit must be between 1 and {MAX_AUDIT_LIMIT}"))?;
                    continue;
                }
                other => return Err(format!("unknown parameter {other:?}; use key_id or agent_run_label")),
            };
            if filter.replace(next).is_some() {
                return Err("give exactly one of key_id or agent_run_label".into());
            }
        }
        let filter = filter.ok_or("give key_id or agent_run_label")?;
        Ok(AuditQuery { filter, limit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries() {
        let q = AuditQuery::parse([("agent_run_label", "run/1"), ("limit", "5")].into_iter()).unwrap();
        assert_eq!(q, AuditQuery { filter: AuditFilter::Label("run/1".into()), limit: 5 });
        let id = "a".repeat(64);
        let q = AuditQuery::parse([("key_id", id.as_str())].into_iter()).unwrap();
        assert_eq!(q.limit, DEFAULT_AUDIT_LIMIT);
        assert!(AuditQuery::parse([("key_id", "abc")].into_iter()).is_err());
        let long = "x".repeat(257);
        assert!(AuditQuery::parse([("agent_run_label", long.as_str())].into_iter()).is_err());
        assert!(AuditQuery::parse([].into_iter()).is_err());
        assert!(AuditQuery::parse([("key_id", id.as_str()), ("agent_run_label", "b")].into_iter()).is_err());
        assert!(AuditQuery::parse([("key_id", id.as_str()), ("limit", "0")].into_iter()).is_err());
        assert!(AuditQuery::parse([("key_id", id.as_str()), ("limit", "10001")].into_iter()).is_err());
        assert!(AuditQuery::parse([("key", "a")].into_iter()).is_err());
    }

    #[test]
    fn the_public_view_shows_dollars_and_rfc3339() {
        let row = AuditRow {
            id: "a1".into(),
            ts_ms: 1_000,
            key_id: "k".into(),
            agent_run_label: Some("run".into()),
            vendor: "stripe".into(),
            method: "POST".into(),
            path: "/v1/payment_intents".into(),
            status: Some(200),
            decision: "forwarded".into(),
            reserved_micros: 1_500_000,
            cost_micros: 1_500_000,
            outcome: Outcome::Settled,
            vendor_object_id: Some("pi_1".into()),
            idempotency_key: None,
            latency_ms: Some(3),
            estimated_micros: None,
            reconciled_at_ms: None,
        };
        let json = serde_json::to_string(&AuditView::from(&row)).unwrap();
        assert!(json.contains(r#""ts":"1970-01-01T00:00:01.000Z""#), "{json}");
        assert!(json.contains(r#""cost_usd":1.5"#), "{json}");
        assert!(json.contains(r#""outcome":"settled""#), "{json}");
        for o in [Outcome::Settled, Outcome::Released, Outcome::Unknown, Outcome::Denied, Outcome::Replayed] {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
