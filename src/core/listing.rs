//! Listings the console reads: keys from the D1 registry (`GET /vault/keys`) and spend per UTC
//! day (`GET /vault/spend`). Pure: the shell runs the SQL built here and passes `now` in.
//!
//! A listing is scoped by a [`BudgetScope`]: a key, a run label, or an issuer. An issuer's
//! token reads only its own keys: the shell narrows every query to its issuer id.

use crate::core::audit::SqlValue;
use crate::core::clock::{utc_day, MS_PER_DAY};
use crate::core::keys::MAX_LABEL_CHARS;
use crate::core::token::{is_key_id, is_object_id};

/// What money is counted over: one key, every key of one run label, or every key of an issuer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetScope {
    Key(String),
    Label(String),
    Issuer(String),
}

impl BudgetScope {
    /// From one query pair, if it names a scope.
    fn parse(name: &str, value: &str) -> Option<Result<BudgetScope, String>> {
        Some(match name {
            "key_id" if is_key_id(value) => Ok(BudgetScope::Key(value.to_string())),
            "key_id" => Err("key_id is not a key id".into()),
            "issuer_id" if is_object_id(value) => Ok(BudgetScope::Issuer(value.to_string())),
            "issuer_id" => Err("issuer_id must be 64 lowercase hex digits".into()),
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
            BudgetScope::Issuer(id) => ("issuer_id", id),
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
    /// Keys of this issuer only; always set for an issuer's token.
    pub issuer_id: Option<String>,
    pub limit: u32,
    pub starting_after: Option<String>,
}

impl KeyListQuery {
    pub fn parse<'q>(pairs: impl Iterator<Item = (&'q str, &'q str)>) -> Result<KeyListQuery, String> {
        let mut seen = Vec::new();
        let mut q = KeyListQuery {
            label: None,
            status: None,
            vendor: None,
            issuer_id: None,
            limit: DEFAULT_LIST_LIMIT,
            starting_after: None,
        };
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
                "issuer_id" if is_object_id(v) => q.issuer_id = Some(v.to_string()),
                "issuer_id" => return Err("issuer_id must be 64 lowercase hex digits".into()),
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

    /// One statement for the whole page: the registry, newest first, with each key's running
    /// totals joined in (one indexed lookup per row), one row past the page read to tell
    /// `has_more`, and the answer's JSON built by SQLite. The cursor is resolved in the same
    /// statement. Building the JSON in SQL keeps row types and their decoders out of the wasm.
    pub fn sql(&self, now_ms: u64) -> (String, Vec<SqlValue>) {
        let mut binds = vec![SqlValue::Int(now_ms)];
        let mut filters = String::new();
        let mut bind = |filters: &mut String, clause: &str, v: SqlValue| {
            binds.push(v);
            filters.push_str(&clause.replace('?', &format!("?{}", binds.len())));
        };
        if let Some(label) = &self.label {
            bind(&mut filters, " AND k.agent_run_label = ?", SqlValue::Text(label.clone()));
        }
        if let Some(vendor) = &self.vendor {
            bind(&mut filters, " AND k.vendor = ?", SqlValue::Text(vendor.clone()));
        }
        if let Some(issuer) = &self.issuer_id {
            bind(&mut filters, " AND k.issuer_id = ?", SqlValue::Text(issuer.clone()));
        }
        match self.status {
            None => {}
            Some(StatusFilter::Revoked) => filters.push_str(" AND k.revoked_at_ms IS NOT NULL"),
            Some(StatusFilter::Active) => filters.push_str(" AND k.revoked_at_ms IS NULL AND k.expires_at_ms > ?1"),
            Some(StatusFilter::Expired) => filters.push_str(" AND k.revoked_at_ms IS NULL AND k.expires_at_ms <= ?1"),
        }
        if let Some(after) = &self.starting_after {
            bind(
                &mut filters,
                " AND (k.created_at_ms, k.key_id) < (SELECT created_at_ms, key_id FROM vault_keys WHERE key_id = ?)",
                SqlValue::Text(after.clone()),
            );
        }
        let limit = self.limit;
        let sql = format!(
            "SELECT json_object('data', json_group_array(json(item) ORDER BY rn) FILTER (WHERE rn <= {limit}), \
             'has_more', json(CASE WHEN COUNT(*) > {limit} THEN 'true' ELSE 'false' END)) AS j \
             FROM (SELECT row_number() OVER (ORDER BY k.created_at_ms DESC, k.key_id DESC) AS rn, json_object(\
             'key_id', k.key_id, 'vendor', k.vendor, \
             'status', CASE WHEN k.revoked_at_ms IS NOT NULL THEN 'revoked' WHEN k.expires_at_ms <= ?1 THEN 'expired' \
             ELSE 'active' END, \
             'agent_run_label', k.agent_run_label, 'issuer_id', k.issuer_id, 'parent_key_id', k.parent_key_id, \
             'daily_usd_cap', {cap}, 'max_usd_per_call', {per_call}, \
             'allowed_endpoints', json(k.allowed_endpoints), 'created_at', {created}, 'expires_at', {expires}, \
             'revoked_at', {revoked}, 'calls', COALESCE(t.calls, 0), 'total_usd', {total}) AS item \
             FROM vault_keys AS k LEFT JOIN audit_totals AS t ON t.scope = 'key' AND t.value = k.key_id \
             WHERE 1{filters} ORDER BY k.created_at_ms DESC, k.key_id DESC LIMIT {more})",
            cap = usd_sql("k.daily_cap_micros"),
            per_call = usd_sql("k.max_per_call_micros"),
            created = timestamp_sql("k.created_at_ms"),
            expires = timestamp_sql("k.expires_at_ms"),
            revoked = timestamp_sql("k.revoked_at_ms"),
            total = usd_sql("COALESCE(t.cost_micros, 0)"),
            more = u64::from(limit) + 1,
        );
        (sql, binds)
    }
}

/// A micro-dollar column as the JSON number of dollars `Micros::to_usd_string` writes (`300`,
/// `1.5`, `0.0083`), or JSON `null`: integer arithmetic only, never a float.
pub fn usd_sql(micros: &str) -> String {
    format!(
        "json(CASE WHEN ({micros}) IS NULL THEN 'null' WHEN ({micros}) % 1000000 = 0 THEN CAST(({micros}) / 1000000 AS TEXT) \
         ELSE rtrim(printf('%d.%06d', ({micros}) / 1000000, ({micros}) % 1000000), '0') END)"
    )
}

/// A millisecond column as the RFC 3339 text `rfc3339` writes, or NULL.
pub fn timestamp_sql(ms: &str) -> String {
    format!("strftime('%Y-%m-%dT%H:%M:%S', ({ms}) / 1000, 'unixepoch') || printf('.%03dZ', ({ms}) % 1000)")
}

pub const DEFAULT_SPEND_DAYS: u64 = 14;
pub const MAX_SPEND_DAYS: u64 = 90;

/// `GET /vault/spend?key_id=…|agent_run_label=…&days=N`: cost per UTC day, oldest first.
#[derive(Debug, PartialEq, Eq)]
pub struct SpendQuery {
    pub scope: BudgetScope,
    pub days: u64,
    /// Rows of this issuer's keys only: set for an issuer's token.
    pub within_issuer: Option<String>,
}

impl SpendQuery {
    pub fn parse<'q>(pairs: impl Iterator<Item = (&'q str, &'q str)>) -> Result<SpendQuery, String> {
        let mut seen = Vec::new();
        let (mut scope, mut days) = (None, DEFAULT_SPEND_DAYS);
        for (k, v) in pairs {
            once(&mut seen, k)?;
            if let Some(parsed) = BudgetScope::parse(k, v) {
                if scope.replace(parsed?).is_some() {
                    return Err("give exactly one of key_id, agent_run_label or issuer_id".into());
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
        Ok(SpendQuery { scope: scope.ok_or("give key_id, agent_run_label or issuer_id")?, days, within_issuer: None })
    }

    /// Audit rows of the scope from the first day shown, summed per UTC day (one index range,
    /// `audit_by_key`, `audit_by_label` or `audit_by_issuer`), joined to every day of the window so a day without
    /// spend shows 0, and answered as JSON built by SQLite. A row counts on the day of its call,
    /// also when a late price moved its cost afterwards.
    pub fn sql(&self, now_ms: u64) -> (String, Vec<SqlValue>) {
        let (column, value) = self.scope.column();
        let last = utc_day(now_ms);
        let first = (last + 1).saturating_sub(self.days);
        let sql = format!(
            "WITH RECURSIVE d(day) AS (SELECT ?2 UNION ALL SELECT day + 1 FROM d WHERE day < ?3), \
             s AS (SELECT ts_ms / {MS_PER_DAY} AS day, SUM(cost_micros) AS cost FROM audit \
             WHERE {column} = ?1 AND ts_ms >= ?2 * {MS_PER_DAY}{within} GROUP BY day) \
             SELECT json_object('scope', '{column}', 'value', ?1, 'days', json_group_array(json_object(\
             'day', date(d.day * 86400, 'unixepoch'), 'cost_usd', {cost}) ORDER BY d.day)) AS j \
             FROM d LEFT JOIN s ON s.day = d.day",
            cost = usd_sql("COALESCE(s.cost, 0)"),
            within = if self.within_issuer.is_some() { " AND issuer_id = ?4" } else { "" },
        );
        let mut binds = vec![SqlValue::Text(value.to_string()), SqlValue::Int(first), SqlValue::Int(last)];
        binds.extend(self.within_issuer.iter().map(|i| SqlValue::Text(i.clone())));
        (sql, binds)
    }
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
        assert!(sql.contains("k.agent_run_label = ?2"), "{sql}");
        assert!(sql.contains("k.vendor = ?3"), "{sql}");
        assert!(sql.contains("k.expires_at_ms <= ?1 AND") || sql.contains("k.expires_at_ms <= ?1"), "{sql}");
        assert!(sql.contains("WHERE key_id = ?4"), "{sql}");
        assert!(sql.contains("LIMIT 6)") && sql.contains("rn <= 5"), "{sql}");
        assert_eq!(binds[0], SqlValue::Int(1_000));
        assert_eq!(binds.len(), 4);
    }

    #[test]
    fn usd_and_timestamps_in_sql_mirror_the_rust_formats() {
        // The SQL takes the same integer steps as `Micros::to_usd_string` and `rfc3339`.
        assert!(usd_sql("m").contains("printf('%d.%06d', (m) / 1000000, (m) % 1000000)"));
        assert!(usd_sql("m").contains("IS NULL THEN 'null'"));
        assert!(timestamp_sql("t").contains("printf('.%03dZ', (t) % 1000)"));
    }

    #[test]
    fn spend_covers_the_window_ending_today() {
        let q = SpendQuery::parse([("key_id", KEY), ("days", "3")].into_iter()).unwrap();
        let now = 20_000 * MS_PER_DAY + 5;
        let (sql, binds) = q.sql(now);
        assert!(sql.contains("key_id = ?1"));
        assert_eq!(binds, vec![SqlValue::Text(KEY.into()), SqlValue::Int(19_998), SqlValue::Int(20_000)]);
        assert!(SpendQuery::parse([("days", "3")].into_iter()).is_err());
        assert!(SpendQuery::parse([("key_id", KEY), ("agent_run_label", "x")].into_iter()).is_err());
        assert!(SpendQuery::parse([("key_id", KEY), ("days", "91")].into_iter()).is_err());
        // A member key is a key; an issuer is an object id only.
        assert!(SpendQuery::parse([("key_id", format!("{KEY}-12").as_str())].into_iter()).is_ok());
        assert!(SpendQuery::parse([("issuer_id", format!("{KEY}-1").as_str())].into_iter()).is_err());
        assert!(SpendQuery::parse([("issuer_id", KEY), ("agent_run_label", "x")].into_iter()).is_err());
    }

    #[test]
    fn an_issuer_scope_narrows_listings_and_spend() {
        let mut q = list(&format!("issuer_id={KEY}&vendor=stripe")).unwrap();
        assert_eq!(q.issuer_id.as_deref(), Some(KEY));
        let (sql, binds) = q.sql(1_000);
        assert!(sql.contains("k.vendor = ?2") && sql.contains("k.issuer_id = ?3"), "{sql}");
        assert!(sql.contains("'issuer_id', k.issuer_id, 'parent_key_id', k.parent_key_id"), "{sql}");
        assert_eq!(binds.len(), 3);
        q.issuer_id = None;
        assert!(!q.sql(1_000).0.contains("k.issuer_id ="));
        assert!(list("issuer_id=nope").is_err());

        let mut spend = SpendQuery::parse([("agent_run_label", "run"), ("days", "2")].into_iter()).unwrap();
        assert!(!spend.sql(MS_PER_DAY).0.contains("issuer_id = ?4"));
        spend.within_issuer = Some(KEY.into());
        let (sql, binds) = spend.sql(MS_PER_DAY);
        assert!(sql.contains("agent_run_label = ?1") && sql.contains("AND issuer_id = ?4"), "{sql}");
        assert_eq!(binds.last(), Some(&SqlValue::Text(KEY.into())));
        let by_issuer = SpendQuery::parse([("issuer_id", KEY)].into_iter()).unwrap();
        assert!(by_issuer.sql(MS_PER_DAY).0.contains("WHERE issuer_id = ?1"));
    }
}
