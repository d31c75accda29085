//! Listings the console reads: keys from the D1 registry (`GET /vault/keys`) and spend per UTC
//! day (`GET /vault/spend`). Pure: the shell runs the SQL built here and passes `now` in.
//!
//! A listing is scoped by a [`BudgetScope`], the same notion alerts use, so that an issuer
//! becomes one more variant here once issuers exist.

use crate::core::audit::SqlValue;
use crate::core::clock::{rfc3339, utc_day, MS_PER_DAY};
use crate::core::keys::MAX_LABEL_CHARS;
use crate::core::money::{usd, usd_opt, Micros};
use crate::core::token::is_key_id;
use serde::{Deserialize, Serialize};

/// What money is counted over: one key, or every key of one run label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetScope {
    Key(String),
    Label(String),
}

impl BudgetScope {
    /// From one query pair, if it names a scope.
    fn parse(name: &str, value: &str) -> Option<Result<BudgetScope, String>> {
        Some(match name {
            "key_id" if is_key_id(value) => Ok(BudgetScope::Key(value.to_string())),
            "key_id" => Err("key_id must be 64 lowercase hex digits".into()),
            "agent_run_label" if valid_label(value) => Ok(BudgetScope::Label(value.to_string())),
            "agent_run_label" => Err(format!("agent_run_label must be 1 to {MAX_LABEL_CHARS} characters")),
            _ => return None,
        })
    }

    /// The audit column the scope filters on, and its value.
    pub fn column(&self) -> (&'static str, &str) {
        match self {
            BudgetScope::Key(id) => ("key_id", id),
            BudgetScope::Label(label) => ("agent_run_label", label),
        }
    }
}

fn valid_label(v: &str) -> bool {
    !v.is_empty() && v.chars().count() <= MAX_LABEL_CHARS
}

/// Refuses a parameter given twice, as the audit query does.
fn once<'q>(seen: &mut Vec<&'q str>, k: &'q str) -> Result<(), String> {
    if seen.contains(&k) {
        return Err(format!("{k} is given more than once"));
    }
    seen.push(k);
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Active,
    Revoked,
    Expired,
}

pub const DEFAULT_LIST_LIMIT: u32 = 50;
pub const MAX_LIST_LIMIT: u32 = 100;

/// `GET /vault/keys?agent_run_label=&status=&vendor=&limit=&starting_after=`: newest first.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyListQuery {
    pub label: Option<String>,
    pub status: Option<StatusFilter>,
    pub vendor: Option<String>,
    pub limit: u32,
    pub starting_after: Option<String>,
}

impl KeyListQuery {
    pub fn parse<'q>(pairs: impl Iterator<Item = (&'q str, &'q str)>) -> Result<KeyListQuery, String> {
        let mut seen = Vec::new();
        let mut q =
            KeyListQuery { label: None, status: None, vendor: None, limit: DEFAULT_LIST_LIMIT, starting_after: None };
        for (k, v) in pairs {
            once(&mut seen, k)?;
            match k {
                "agent_run_label" if valid_label(v) => q.label = Some(v.to_string()),
                "agent_run_label" => return Err(format!("agent_run_label must be 1 to {MAX_LABEL_CHARS} characters")),
                "status" => {
                    q.status = Some(match v {
                        "active" => StatusFilter::Active,
                        "revoked" => StatusFilter::Revoked,
                        "expired" => StatusFilter::Expired,
                        _ => return Err("status must be active, revoked or expired".into()),
                    })
                }
                "vendor" if crate::core::vendor::Vendor::from_name(v).is_some() => q.vendor = Some(v.to_string()),
                "vendor" => return Err("vendor must be stripe, twilio or resend".into()),
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|l| (1..=MAX_LIST_LIMIT).contains(l))
                        .ok_or(format!("limit must be between 1 and {MAX_LIST_LIMIT}"))?
                }
                "starting_after" if is_key_id(v) => q.starting_after = Some(v.to_string()),
                "starting_after" => return Err("starting_after must be a key_id".into()),
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(q)
    }

    /// One query over the registry, newest first, with each key's running totals joined in
    /// (one indexed lookup per row), fetching one row past the page to tell `has_more`. The
    /// cursor is resolved in the same statement, so a page costs one round trip.
    pub fn sql(&self, now_ms: u64) -> (String, Vec<SqlValue>) {
        let mut sql = String::from(
            "SELECT k.key_id, k.vendor, k.agent_run_label, k.daily_cap_micros, k.max_per_call_micros, \
             k.allowed_endpoints, k.created_at_ms, k.expires_at_ms, k.revoked_at_ms, \
             COALESCE(t.calls, 0) AS calls, COALESCE(t.cost_micros, 0) AS cost_micros \
             FROM vault_keys AS k LEFT JOIN audit_totals AS t ON t.scope = 'key' AND t.value = k.key_id WHERE 1",
        );
        let mut binds = Vec::new();
        let mut bind = |sql: &mut String, clause: &str, v: SqlValue| {
            binds.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", binds.len())));
        };
        if let Some(label) = &self.label {
            bind(&mut sql, " AND k.agent_run_label = ?", SqlValue::Text(label.clone()));
        }
        if let Some(vendor) = &self.vendor {
            bind(&mut sql, " AND k.vendor = ?", SqlValue::Text(vendor.clone()));
        }
        match self.status {
            None => {}
            Some(StatusFilter::Revoked) => sql.push_str(" AND k.revoked_at_ms IS NOT NULL"),
            Some(StatusFilter::Active) => {
                bind(&mut sql, " AND k.revoked_at_ms IS NULL AND k.expires_at_ms > ?", SqlValue::Int(now_ms))
            }
            Some(StatusFilter::Expired) => {
                bind(&mut sql, " AND k.revoked_at_ms IS NULL AND k.expires_at_ms <= ?", SqlValue::Int(now_ms))
            }
        }
        if let Some(after) = &self.starting_after {
            bind(
                &mut sql,
                " AND (k.created_at_ms, k.key_id) < (SELECT created_at_ms, key_id FROM vault_keys WHERE key_id = ?)",
                SqlValue::Text(after.clone()),
            );
        }
        sql.push_str(" ORDER BY k.created_at_ms DESC, k.key_id DESC");
        bind(&mut sql, " LIMIT ?", SqlValue::Int(u64::from(self.limit) + 1));
        (sql, binds)
    }
}

/// One registry row as [`KeyListQuery::sql`] selects it.
#[derive(Debug, Deserialize)]
pub struct KeyRow {
    pub key_id: String,
    pub vendor: String,
    pub agent_run_label: Option<String>,
    pub daily_cap_micros: u64,
    pub max_per_call_micros: Option<u64>,
    pub allowed_endpoints: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub revoked_at_ms: Option<u64>,
    pub calls: u64,
    pub cost_micros: u64,
}

/// One key in a listing. Figures come from D1: `total_usd` is every call's cost so far, as of
/// the key's last outbox flush (about 100 ms behind). Today's spend and held money are the
/// key object's, from `GET /vault/keys/{id}`.
#[derive(Debug, Serialize)]
pub struct KeyListItem {
    pub key_id: String,
    pub vendor: String,
    pub status: &'static str,
    pub agent_run_label: Option<String>,
    #[serde(with = "usd")]
    pub daily_usd_cap: Micros,
    #[serde(with = "usd_opt")]
    pub max_usd_per_call: Option<Micros>,
    pub allowed_endpoints: Vec<String>,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    pub calls: u64,
    #[serde(with = "usd")]
    pub total_usd: Micros,
}

impl KeyListItem {
    pub fn new(row: KeyRow, now_ms: u64) -> KeyListItem {
        let status = match (row.revoked_at_ms, now_ms >= row.expires_at_ms) {
            (Some(_), _) => "revoked",
            (None, true) => "expired",
            (None, false) => "active",
        };
        KeyListItem {
            status,
            allowed_endpoints: serde_json::from_str(&row.allowed_endpoints).unwrap_or_default(),
            created_at: rfc3339(row.created_at_ms),
            expires_at: rfc3339(row.expires_at_ms),
            revoked_at: row.revoked_at_ms.map(rfc3339),
            daily_usd_cap: Micros(row.daily_cap_micros),
            max_usd_per_call: row.max_per_call_micros.map(Micros),
            total_usd: Micros(row.cost_micros),
            calls: row.calls,
            key_id: row.key_id,
            vendor: row.vendor,
            agent_run_label: row.agent_run_label,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct KeyList {
    pub data: Vec<KeyListItem>,
    pub has_more: bool,
}

impl KeyList {
    /// The page, given up to `limit + 1` rows.
    pub fn new(mut rows: Vec<KeyRow>, limit: u32, now_ms: u64) -> KeyList {
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        KeyList { data: rows.into_iter().map(|r| KeyListItem::new(r, now_ms)).collect(), has_more }
    }
}

pub const DEFAULT_SPEND_DAYS: u64 = 14;
pub const MAX_SPEND_DAYS: u64 = 90;

/// `GET /vault/spend?key_id=…|agent_run_label=…&days=N`: cost per UTC day, oldest first.
#[derive(Debug, PartialEq, Eq)]
pub struct SpendQuery {
    pub scope: BudgetScope,
    pub days: u64,
}

impl SpendQuery {
    pub fn parse<'q>(pairs: impl Iterator<Item = (&'q str, &'q str)>) -> Result<SpendQuery, String> {
        let mut seen = Vec::new();
        let (mut scope, mut days) = (None, DEFAULT_SPEND_DAYS);
        for (k, v) in pairs {
            once(&mut seen, k)?;
            if let Some(parsed) = BudgetScope::parse(k, v) {
                if scope.replace(parsed?).is_some() {
                    return Err("give exactly one of key_id or agent_run_label".into());
                }
                continue;
            }
            match k {
                "days" => {
                    days = v
                        .parse()
                        .ok()
                        .filter(|d| (1..=MAX_SPEND_DAYS).contains(d))
                        .ok_or(format!("days must be between 1 and {MAX_SPEND_DAYS}"))?
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(SpendQuery { scope: scope.ok_or("give key_id or agent_run_label")?, days })
    }

    /// Audit rows of the scope from the first day shown, summed per UTC day: one index range
    /// (`audit_by_key` or `audit_by_label`). A row counts on the day of its call, also when a
    /// late price moved its cost afterwards.
    pub fn sql(&self, now_ms: u64) -> (String, Vec<SqlValue>) {
        let (column, value) = self.scope.column();
        let sql = format!(
            "SELECT ts_ms / {MS_PER_DAY} AS day, SUM(cost_micros) AS cost_micros FROM audit \
             WHERE {column} = ?1 AND ts_ms >= ?2 GROUP BY day"
        );
        (sql, vec![SqlValue::Text(value.to_string()), SqlValue::Int(self.first_day(now_ms) * MS_PER_DAY)])
    }

    fn first_day(&self, now_ms: u64) -> u64 {
        (utc_day(now_ms) + 1).saturating_sub(self.days)
    }

    /// Every day of the window, zero where nothing was spent.
    pub fn fill(&self, now_ms: u64, rows: &[DayRow]) -> Vec<DaySpend> {
        (self.first_day(now_ms)..=utc_day(now_ms))
            .map(|day| DaySpend {
                day: rfc3339(day * MS_PER_DAY)[..10].to_string(),
                cost_usd: Micros(rows.iter().filter(|r| r.day == day).map(|r| r.cost_micros).sum()),
            })
            .collect()
    }
}

#[derive(Debug, Deserialize)]
pub struct DayRow {
    pub day: u64,
    pub cost_micros: u64,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct DaySpend {
    pub day: String,
    #[serde(with = "usd")]
    pub cost_usd: Micros,
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn list(q: &str) -> Result<KeyListQuery, String> {
        KeyListQuery::parse(q.split('&').filter(|p| !p.is_empty()).map(|p| p.split_once('=').unwrap_or((p, ""))))
    }

    #[test]
    fn key_list_query_parses_and_refuses() {
        let q = list("agent_run_label=run/1&status=active&limit=10").unwrap();
        assert_eq!(q.label.as_deref(), Some("run/1"));
        assert_eq!(q.status, Some(StatusFilter::Active));
        assert_eq!(q.limit, 10);
        assert_eq!(list("").unwrap().limit, DEFAULT_LIST_LIMIT);
        assert!(list("status=gone").is_err());
        assert!(list("limit=0").is_err());
        assert!(list("limit=101").is_err());
        assert!(list("vendor=paypal").is_err());
        assert!(list("starting_after=abc").is_err());
        assert!(list("status=active&status=revoked").is_err());
        assert!(list("key=1").is_err());
        assert!(list(&format!("starting_after={KEY}")).is_ok());
    }

    #[test]
    fn key_list_sql_numbers_its_binds_in_order() {
        let q = list(&format!("agent_run_label=r&status=expired&vendor=stripe&starting_after={KEY}&limit=5")).unwrap();
        let (sql, binds) = q.sql(1_000);
        assert!(sql.contains("k.agent_run_label = ?1"), "{sql}");
        assert!(sql.contains("k.vendor = ?2"), "{sql}");
        assert!(sql.contains("k.expires_at_ms <= ?3"), "{sql}");
        assert!(sql.contains("WHERE key_id = ?4"), "{sql}");
        assert!(sql.ends_with("LIMIT ?5"), "{sql}");
        assert_eq!(binds.last(), Some(&SqlValue::Int(6)));
        assert_eq!(binds.len(), 5);
    }

    fn row(revoked: Option<u64>, expires: u64) -> KeyRow {
        KeyRow {
            key_id: KEY.into(),
            vendor: "stripe".into(),
            agent_run_label: None,
            daily_cap_micros: 5_000_000,
            max_per_call_micros: None,
            allowed_endpoints: "[\"POST /v1/payment_intents\"]".into(),
            created_at_ms: 0,
            expires_at_ms: expires,
            revoked_at_ms: revoked,
            calls: 2,
            cost_micros: 4_000_000,
        }
    }

    #[test]
    fn a_listed_key_has_its_status_at_now() {
        assert_eq!(KeyListItem::new(row(None, 100), 99).status, "active");
        assert_eq!(KeyListItem::new(row(None, 100), 100).status, "expired");
        assert_eq!(KeyListItem::new(row(Some(50), 100), 200).status, "revoked");
        let list = KeyList::new(vec![row(None, 1), row(None, 1), row(None, 1)], 2, 0);
        assert!(list.has_more);
        assert_eq!(list.data.len(), 2);
        assert_eq!(list.data[0].allowed_endpoints, vec!["POST /v1/payment_intents".to_string()]);
    }

    #[test]
    fn spend_fills_every_day_of_the_window() {
        let q = SpendQuery::parse([("key_id", KEY), ("days", "3")].into_iter()).unwrap();
        let now = 20_000 * MS_PER_DAY + 5;
        let (sql, binds) = q.sql(now);
        assert!(sql.contains("key_id = ?1"));
        assert_eq!(binds[1], SqlValue::Int(19_998 * MS_PER_DAY));
        let days = q.fill(now, &[DayRow { day: 20_000, cost_micros: 7 }, DayRow { day: 19_998, cost_micros: 1 }]);
        assert_eq!(days.len(), 3);
        assert_eq!(days[0], DaySpend { day: "2024-10-02".into(), cost_usd: Micros(1) });
        assert_eq!(days[1].cost_usd, Micros(0));
        assert_eq!(days[2].cost_usd, Micros(7));
        assert!(SpendQuery::parse([("days", "3")].into_iter()).is_err());
        assert!(SpendQuery::parse([("key_id", KEY), ("agent_run_label", "x")].into_iter()).is_err());
        assert!(SpendQuery::parse([("key_id", KEY), ("days", "91")].into_iter()).is_err());
    }
}
