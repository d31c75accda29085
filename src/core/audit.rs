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
    pub const ALL: [Outcome; 5] =
        [Outcome::Settled, Outcome::Released, Outcome::Unknown, Outcome::Denied, Outcome::Replayed];

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
    /// How many calls the row stands for: 1, or the refused calls a coalesced row counts.
    #[serde(default = "one")]
    pub count: u64,
    /// For a coalesced row: the last refused call it counts (`ts_ms` is the first).
    #[serde(default)]
    pub last_ts_ms: Option<u64>,
    /// The client's `Idempotency-Key` was longer than the 255 characters stored.
    #[serde(default, deserialize_with = "flag")]
    pub idempotency_key_truncated: bool,
    /// The key's lineage: the issuer that made it (or its root), and the key that minted it.
    #[serde(default)]
    pub issuer_id: Option<String>,
    #[serde(default)]
    pub parent_key_id: Option<String>,
}

fn one() -> u64 {
    1
}

/// A flag as JSON writes it (`true`) or as D1 gives it back (`1`).
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(u64),
    }
    Ok(match Flag::deserialize(d)? {
        Flag::Bool(b) => b,
        Flag::Int(n) => n != 0,
    })
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
    pub count: u64,
    pub last_ts: Option<String>,
    pub idempotency_key_truncated: bool,
    pub issuer_id: Option<&'a str>,
    pub parent_key_id: Option<&'a str>,
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
            count: r.count,
            last_ts: r.last_ts_ms.map(rfc3339),
            idempotency_key_truncated: r.idempotency_key_truncated,
            issuer_id: r.issuer_id.as_deref(),
            parent_key_id: r.parent_key_id.as_deref(),
        }
    }
}

/// `GET /vault/audit`: the totals of the key or label, and one page of its rows.
#[derive(Serialize)]
pub struct AuditPage<'a> {
    /// Every call of the key or label, whatever the page and filters (a coalesced row counts
    /// all the refused calls it stands for).
    pub count: u64,
    #[serde(with = "usd")]
    pub total_usd: Micros,
    pub outcomes: OutcomeCounts,
    /// More rows follow this page in the order asked for.
    pub has_more: bool,
    pub calls: Vec<AuditView<'a>>,
}

/// Calls by outcome, from the running totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    pub settled: u64,
    pub released: u64,
    pub unknown: u64,
    pub denied: u64,
    pub replayed: u64,
}

/// Which rows `GET /vault/audit` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct AuditQuery {
    pub filter: AuditFilter,
    pub limit: u32,
    pub order: Order,
    pub cursor: Option<Cursor>,
    pub decision: Option<String>,
    pub outcome: Option<Outcome>,
    /// Set when an issuer asks: only rows of its own keys are read.
    pub within_issuer: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AuditFilter {
    KeyId(String),
    Label(String),
    Issuer(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// Stripe-style cursors: the page starts after, or ends before, the row with this id.
#[derive(Debug, PartialEq, Eq)]
pub enum Cursor {
    StartingAfter(String),
    EndingBefore(String),
}

pub const DEFAULT_AUDIT_LIMIT: u32 = 100;
pub const MAX_AUDIT_LIMIT: u32 = 1_000;
const MAX_ROW_ID_CHARS: usize = 128;

/// The totals value of a label as one issuer sees it: issuer ids are hex, so this is unique.
pub fn issuer_label(issuer_id: &str, label: &str) -> String {
    format!("{issuer_id}/{label}")
}

/// A value bound into the page query.
#[derive(Debug, PartialEq, Eq)]
pub enum SqlValue {
    Text(String),
    Int(u64),
}

impl AuditQuery {
    /// From decoded query pairs. Exactly one of `key_id` or `agent_run_label` is required; any
    /// parameter given twice is refused.
    pub fn parse<'q>(pairs: impl Iterator<Item = (&'q str, &'q str)>) -> Result<AuditQuery, String> {
        let mut seen: Vec<&str> = Vec::new();
        let (mut filter, mut limit, mut order, mut cursor, mut decision, mut outcome) =
            (None, DEFAULT_AUDIT_LIMIT, Order::Asc, None, None, None);
        for (k, v) in pairs {
            if seen.contains(&k) {
                return Err(format!("{k} is given more than once"));
            }
            seen.push(k);
            let row_id = |v: &str| {
                let ok = !v.is_empty()
                    && v.len() <= MAX_ROW_ID_CHARS
                    && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                ok.then(|| v.to_string()).ok_or(format!("{k} must be an audit row id"))
            };
            let next_filter = match k {
                "key_id" if crate::core::token::is_key_id(v) => AuditFilter::KeyId(v.to_string()),
                "key_id" => {
                    return Err("key_id must be a key id: 64 lowercase hex digits, and -<n> for a minted key".into())
                }
                "agent_run_label" if !v.is_empty() && v.chars().count() <= crate::core::keys::MAX_LABEL_CHARS => {
                    AuditFilter::Label(v.to_string())
                }
                "agent_run_label" => return Err("agent_run_label must be 1 to 256 characters".into()),
                "issuer_id" if crate::core::token::is_object_id(v) => AuditFilter::Issuer(v.to_string()),
                "issuer_id" => return Err("issuer_id must be 64 lowercase hex digits".into()),
                "limit" => {
                    limit = v
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_AUDIT_LIMIT).contains(l))
                        .ok_or(format!("limit must be between 1 and {MAX_AUDIT_LIMIT}"))?;
                    continue;
                }
                "order" => {
                    order = match v {
                        "asc" => Order::Asc,
                        "desc" => Order::Desc,
                        _ => return Err("order must be asc or desc".into()),
                    };
                    continue;
                }
                "starting_after" | "ending_before" if cursor.is_some() => {
                    return Err("give at most one of starting_after or ending_before".into())
                }
                "starting_after" => {
                    cursor = Some(Cursor::StartingAfter(row_id(v)?));
                    continue;
                }
                "ending_before" => {
                    cursor = Some(Cursor::EndingBefore(row_id(v)?));
                    continue;
                }
                "decision" => {
                    let ok = !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                    decision = Some(ok.then(|| v.to_string()).ok_or("decision must be forwarded or an error type")?);
                    continue;
                }
                "outcome" => {
                    outcome = Some(
                        Outcome::ALL
                            .into_iter()
                            .find(|o| o.as_str() == v)
                            .ok_or("outcome must be settled, released, unknown, denied or replayed")?,
                    );
                    continue;
                }
                other => return Err(format!("unknown parameter {other:?}")),
            };
            if filter.replace(next_filter).is_some() {
                return Err("give exactly one of key_id, agent_run_label or issuer_id".into());
            }
        }
        let filter = filter.ok_or("give key_id, agent_run_label or issuer_id")?;
        Ok(AuditQuery { filter, limit, order, cursor, decision, outcome, within_issuer: None })
    }

    /// The totals scope: `("key", id)` or `("label", label)`.
    pub fn scope(&self) -> (&'static str, String) {
        match (&self.filter, &self.within_issuer) {
            (AuditFilter::KeyId(id), _) => ("key", id.clone()),
            (AuditFilter::Label(label), None) => ("label", label.clone()),
            (AuditFilter::Label(label), Some(issuer)) => ("issuer_label", issuer_label(issuer, label)),
            (AuditFilter::Issuer(id), _) => ("issuer", id.clone()),
        }
    }

    /// The column the listing is read by, and its value.
    pub fn filter_column(&self) -> (&'static str, &str) {
        match &self.filter {
            AuditFilter::KeyId(id) => ("key_id", id),
            AuditFilter::Label(label) => ("agent_run_label", label),
            AuditFilter::Issuer(id) => ("issuer_id", id),
        }
    }

    /// The page query, given the cursor row's `ts_ms` when there is a cursor. It reads one
    /// index range (by key or label, then time) and fetches one row past the page, to tell
    /// `has_more`. An `ending_before` page is read backwards; [`AuditQuery::in_order`] turns it.
    pub fn page_sql(&self, cursor_ts_ms: Option<u64>) -> (String, Vec<SqlValue>) {
        let (column, value) = self.filter_column();
        let mut sql = format!("SELECT * FROM audit WHERE {column} = ?1");
        let mut binds = vec![SqlValue::Text(value.to_string())];
        let mut bind = |sql: &mut String, clause: &str, v: SqlValue| {
            binds.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", binds.len())));
        };
        if let Some(issuer) = &self.within_issuer {
            bind(&mut sql, " AND issuer_id = ?", SqlValue::Text(issuer.clone()));
        }
        if let Some(d) = &self.decision {
            bind(&mut sql, " AND decision = ?", SqlValue::Text(d.clone()));
        }
        if let Some(o) = self.outcome {
            bind(&mut sql, " AND outcome = ?", SqlValue::Text(o.as_str().into()));
        }
        let backwards = matches!(self.cursor, Some(Cursor::EndingBefore(_)));
        let ascending = (self.order == Order::Asc) != backwards;
        if let (Some(cursor), Some(ts)) = (&self.cursor, cursor_ts_ms) {
            let id = match cursor {
                Cursor::StartingAfter(id) | Cursor::EndingBefore(id) => id,
            };
            let op = if ascending { ">" } else { "<" };
            bind(&mut sql, &format!(" AND (ts_ms, id) {op} (?,"), SqlValue::Int(ts));
            bind(&mut sql, " ?)", SqlValue::Text(id.clone()));
        }
        let dir = if ascending { "ASC" } else { "DESC" };
        bind(&mut sql, &format!(" ORDER BY ts_ms {dir}, id {dir} LIMIT ?"), SqlValue::Int(u64::from(self.limit) + 1));
        (sql, binds)
    }

    /// The rows as fetched by [`AuditQuery::page_sql`], cut to the page and put in the order
    /// asked for, with whether more follow.
    pub fn in_order<T>(&self, mut rows: Vec<T>) -> (Vec<T>, bool) {
        let has_more = rows.len() > self.limit as usize;
        rows.truncate(self.limit as usize);
        if matches!(self.cursor, Some(Cursor::EndingBefore(_))) {
            rows.reverse();
        }
        (rows, has_more)
    }

    pub fn cursor_id(&self) -> Option<&str> {
        match &self.cursor {
            Some(Cursor::StartingAfter(id) | Cursor::EndingBefore(id)) => Some(id),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_queries() {
        let q = AuditQuery::parse([("agent_run_label", "run/1"), ("limit", "5")].into_iter()).unwrap();
        assert_eq!((q.filter, q.limit, q.order, q.cursor), (AuditFilter::Label("run/1".into()), 5, Order::Asc, None));
        let id = "a".repeat(64);
        let q = AuditQuery::parse([("key_id", id.as_str()), ("order", "desc"), ("decision", "forwarded")].into_iter())
            .unwrap();
        assert_eq!((q.limit, q.order, q.decision.as_deref()), (DEFAULT_AUDIT_LIMIT, Order::Desc, Some("forwarded")));
        let q = AuditQuery::parse(
            [("key_id", id.as_str()), ("outcome", "unknown"), ("starting_after", "k-0000000007")].into_iter(),
        )
        .unwrap();
        assert_eq!((q.outcome, q.cursor_id()), (Some(Outcome::Unknown), Some("k-0000000007")));
        for bad in [
            vec![("key_id", "abc")],
            vec![],
            vec![("key_id", id.as_str()), ("agent_run_label", "b")],
            vec![("key_id", id.as_str()), ("limit", "0")],
            vec![("key_id", id.as_str()), ("limit", "1001")],
            vec![("key", "a")],
            vec![("key_id", id.as_str()), ("order", "up")],
            vec![("key_id", id.as_str()), ("outcome", "won")],
            vec![("key_id", id.as_str()), ("starting_after", "a"), ("ending_before", "b")],
            vec![("key_id", id.as_str()), ("starting_after", "x' OR 1=1 --")],
            vec![("key_id", id.as_str()), ("limit", "5"), ("limit", "500")],
            vec![("key_id", id.as_str()), ("decision", "Forwarded;")],
        ] {
            assert!(AuditQuery::parse(bad.clone().into_iter()).is_err(), "{bad:?}");
        }
        let long = "x".repeat(257);
        assert!(AuditQuery::parse([("agent_run_label", long.as_str())].into_iter()).is_err());
    }

    #[test]
    fn pages_read_one_index_range_in_either_direction() {
        let id = "a".repeat(64);
        let q = AuditQuery::parse([("key_id", id.as_str()), ("decision", "forwarded"), ("limit", "2")].into_iter())
            .unwrap();
        let (sql, binds) = q.page_sql(None);
        assert_eq!(sql, "SELECT * FROM audit WHERE key_id = ?1 AND decision = ?2 ORDER BY ts_ms ASC, id ASC LIMIT ?3");
        assert_eq!(binds, vec![SqlValue::Text(id.clone()), SqlValue::Text("forwarded".into()), SqlValue::Int(3)]);
        let q = AuditQuery::parse([("key_id", id.as_str()), ("order", "desc"), ("starting_after", "r-9")].into_iter())
            .unwrap();
        let (sql, binds) = q.page_sql(Some(77));
        assert_eq!(
            sql,
            "SELECT * FROM audit WHERE key_id = ?1 AND (ts_ms, id) < (?2, ?3) ORDER BY ts_ms DESC, id DESC LIMIT ?4"
        );
        assert_eq!(binds[1..3], [SqlValue::Int(77), SqlValue::Text("r-9".into())]);
        // ending_before in ascending order: read backwards, then turned.
        let q =
            AuditQuery::parse([("key_id", id.as_str()), ("ending_before", "r-9"), ("limit", "2")].into_iter()).unwrap();
        assert!(q.page_sql(Some(77)).0.contains("(ts_ms, id) < (?2, ?3) ORDER BY ts_ms DESC"));
        assert_eq!(q.in_order(vec![8, 7, 6]), (vec![7, 8], true));
        assert_eq!(q.in_order(vec![8]), (vec![8], false));
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
            count: 1,
            last_ts_ms: None,
            idempotency_key_truncated: false,
            issuer_id: None,
            parent_key_id: Some("p".into()),
        };
        let json = serde_json::to_string(&AuditView::from(&row)).unwrap();
        assert!(json.contains(r#""ts":"1970-01-01T00:00:01.000Z""#), "{json}");
        assert!(json.contains(r#""cost_usd":1.5"#), "{json}");
        assert!(json.contains(r#""outcome":"settled""#), "{json}");
        assert!(json.contains(r#""issuer_id":null,"parent_key_id":"p""#), "{json}");
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
        }
    }
}
