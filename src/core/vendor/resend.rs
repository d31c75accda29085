//! Resend. Responses carry no price, and none is published later: the cost of an email is a
//! configured policy (`RESEND_PRICE_PER_EMAIL_USD`, default $0.0009, about Resend's overage
//! rate). By default every recipient address in `to`, `cc` and `bcc` counts as one email, the
//! upper bound; `RESEND_BILL_PER=email` counts each email once.

use super::{same_path, Credential, Vendor, VendorSpec};
use crate::core::cost::{price_var, rule, Cost, CostRule, Price, PriceInput, Quote, Settlement, VendorAnswer};
use crate::core::error::{ErrorShape, ProxyError};
use crate::core::money::Micros;
use serde::Deserialize;

pub const SPEC: VendorSpec = VendorSpec {
    vendor: Vendor::Resend,
    name: "resend",
    origin_var: "RESEND_API_BASE",
    default_origin: "https://api.resend.com",
    credential: Credential::Bearer { secret: "RESEND_API_KEY" },
    request_headers: &["accept", "content-type", "idempotency-key", "user-agent"],
    idempotency: true,
    response_headers: &["content-type", "retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"],
    cost_rules: COST_RULES,
    upstream_path: same_path,
    read_answer,
    idempotency_conflict,
    reconcile: None,
    error_shape: ErrorShape::Resend,
};

const COST_RULES: &[CostRule] = &[
    rule("GET", "*", Cost::Free),
    rule("POST", "/emails", Cost::Priced(single_email, "the addresses in `to` + `cc` + `bcc` × the price per email")),
    rule("POST", "/emails/batch", Cost::Priced(batch, "the sum over the batch's emails (1 to 100)")),
    // Rescheduling or cancelling a scheduled email sends nothing new.
    rule("PATCH", "/emails/{id}", Cost::Free),
    rule("POST", "/emails/{id}/cancel", Cost::Free),
];

pub const DEFAULT_PRICE_PER_EMAIL: &str = "0.0009";
const MAX_RECIPIENTS: usize = 50;
const MAX_BATCH: usize = 100;

/// The fields that decide an email's price. Unknown fields pass; a repeated field is refused
/// by the parser, so we and Resend cannot read different recipients.
#[derive(Deserialize)]
struct Email {
    to: Option<Recipients>,
    cc: Option<Recipients>,
    bcc: Option<Recipients>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

impl Recipients {
    fn count(&self) -> usize {
        match self {
            Recipients::One(address) => usize::from(!address.is_empty()),
            Recipients::Many(v) => v.len(),
        }
    }
}

fn single_email(input: &PriceInput<'_>) -> Result<Price, ProxyError> {
    let email: Email = parse_json(input)?;
    let count = emails_in(&email, per_address(input)?)?;
    quote(input, count)
}

fn batch(input: &PriceInput<'_>) -> Result<Price, ProxyError> {
    let emails: Vec<Email> = parse_json(input)?;
    if emails.is_empty() || emails.len() > MAX_BATCH {
        return Err(ProxyError::InvalidRequest(format!("a batch holds 1 to {MAX_BATCH} emails")));
    }
    let per_address = per_address(input)?;
    let count = emails.iter().map(|e| emails_in(e, per_address)).sum::<Result<u64, _>>()?;
    quote(input, count)
}

fn parse_json<'a, T: Deserialize<'a>>(input: &PriceInput<'a>) -> Result<T, ProxyError> {
    if let Some(ct) = input.content_type {
        if !ct.trim_start().to_ascii_lowercase().starts_with("application/json") {
            return Err(ProxyError::UnsupportedMediaType("application/json".into()));
        }
    }
    serde_json::from_slice(input.body)
        .map_err(|e| ProxyError::InvalidRequest(format!("the email JSON is invalid: {e}")))
}

fn per_address(input: &PriceInput<'_>) -> Result<bool, ProxyError> {
    match (input.vars)("RESEND_BILL_PER").as_deref() {
        None | Some("address") => Ok(true),
        Some("email") => Ok(false),
        Some(_) => Err(ProxyError::CostUnknown("RESEND_BILL_PER must be address or email; fix the Worker var".into())),
    }
}

/// How many emails one request sends: its recipient addresses, or one.
fn emails_in(email: &Email, per_address: bool) -> Result<u64, ProxyError> {
    let to = email.to.as_ref().map_or(0, Recipients::count);
    if to == 0 {
        return Err(ProxyError::CostUnknown("the email has no to address".into()));
    }
    let fields = [to, email.cc.as_ref().map_or(0, Recipients::count), email.bcc.as_ref().map_or(0, Recipients::count)];
    if fields.iter().any(|n| *n > MAX_RECIPIENTS) {
        return Err(ProxyError::InvalidRequest(format!("to, cc and bcc take at most {MAX_RECIPIENTS} addresses each")));
    }
    Ok(if per_address { fields.iter().sum::<usize>() as u64 } else { 1 })
}

fn quote(input: &PriceInput<'_>, emails: u64) -> Result<Price, ProxyError> {
    let each = price_var(input.vars, "RESEND_PRICE_PER_EMAIL_USD", DEFAULT_PRICE_PER_EMAIL)?;
    let amount = Micros(each.0.saturating_mul(emails));
    Ok(Price { quote: Quote::Fixed { amount }, settlement: Settlement::Estimate { reconcile: false } })
}

/// Resend's answers for a key bound to another payload, or still in progress.
fn idempotency_conflict(_status: u16, body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Body {
        name: Option<String>,
    }
    serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| b.name)
        .is_some_and(|name| matches!(name.as_str(), "invalid_idempotent_request" | "concurrent_idempotent_requests"))
}

/// `{"id": ...}` for one email, `{"data": [{"id": ...}, ...]}` for a batch (ids joined by `,`).
fn read_answer(body: &[u8]) -> VendorAnswer {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    #[derive(Deserialize)]
    struct Answer {
        id: Option<String>,
        data: Option<Vec<Id>>,
    }
    let Ok(answer) = serde_json::from_slice::<Answer>(body) else {
        return VendorAnswer::default();
    };
    let object_id = answer.id.or_else(|| {
        let ids: Vec<String> = answer.data?.into_iter().map(|d| d.id).collect();
        (!ids.is_empty()).then(|| ids.join(","))
    });
    VendorAnswer { object_id, amount: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cost::price;

    fn resend_with(path: &str, body: &str, vars: crate::core::cost::Vars<'_>) -> Result<Price, ProxyError> {
        let input = PriceInput {
            method: "POST",
            path,
            query: "",
            content_type: Some("application/json"),
            body: body.as_bytes(),
            vars,
        };
        price(Vendor::Resend, &input)
    }

    fn resend(path: &str, body: &str) -> Result<Price, ProxyError> {
        resend_with(path, body, &|_| None)
    }

    fn held(p: Price) -> u64 {
        match p.quote {
            Quote::Fixed { amount } => amount.0,
            Quote::PerUnit { .. } => panic!("emails are fixed-price"),
        }
    }

    #[test]
    fn one_email_per_address_by_default() {
        assert_eq!(held(resend("/emails", r#"{"from":"a@x.test","to":"b@x.test","subject":"s"}"#).unwrap()), 900);
        let many = r#"{"to":["a@x.test","b@x.test"],"cc":"c@x.test","bcc":["d@x.test"]}"#;
        assert_eq!(held(resend("/emails", many).unwrap()), 4 * 900);
        let per_email = |name: &str| (name == "RESEND_BILL_PER").then(|| "email".to_string());
        assert_eq!(held(resend_with("/emails", many, &per_email).unwrap()), 900);
        let priced = |name: &str| (name == "RESEND_PRICE_PER_EMAIL_USD").then(|| "0.002".to_string());
        assert_eq!(held(resend_with("/emails", many, &priced).unwrap()), 4 * 2_000);
    }

    #[test]
    fn batches_count_every_email() {
        let batch = r#"[{"to":"a@x.test"},{"to":["b@x.test","c@x.test"]},{"to":"d@x.test","cc":["e@x.test"]}]"#;
        assert_eq!(held(resend("/emails/batch", batch).unwrap()), 5 * 900);
        let per_email = |name: &str| (name == "RESEND_BILL_PER").then(|| "email".to_string());
        assert_eq!(held(resend_with("/emails/batch", batch, &per_email).unwrap()), 3 * 900);
        let too_big = format!("[{}]", vec![r#"{"to":"a@x.test"}"#; 101].join(","));
        assert_eq!(resend("/emails/batch", &too_big).unwrap_err().kind(), "invalid_request");
        assert_eq!(resend("/emails/batch", "[]").unwrap_err().kind(), "invalid_request");
    }

    #[test]
    fn unpriceable_or_ambiguous_emails_are_refused() {
        assert_eq!(resend("/emails", r#"{"from":"a@x.test"}"#).unwrap_err().kind(), "cost_unknown");
        assert_eq!(resend("/emails", r#"{"to":[]}"#).unwrap_err().kind(), "cost_unknown");
        assert_eq!(
            resend("/emails", r#"{"to":"a@x.test","to":["b@x.test","c@x.test"]}"#).unwrap_err().kind(),
            "invalid_request"
        );
        let fifty_one = format!(r#"{{"to":[{}]}}"#, vec![r#""a@x.test""#; 51].join(","));
        assert_eq!(resend("/emails", &fifty_one).unwrap_err().kind(), "invalid_request");
        assert_eq!(resend("/emails", "to=a").unwrap_err().kind(), "invalid_request");
        let form = PriceInput {
            method: "POST",
            path: "/emails",
            query: "",
            content_type: Some("text/plain"),
            body: b"{}",
            vars: &|_| None,
        };
        assert_eq!(price(Vendor::Resend, &form).unwrap_err().status(), 415);
    }

    #[test]
    fn ids_are_read_from_single_and_batch_answers() {
        assert_eq!(read_answer(br#"{"id":"e1"}"#).object_id.as_deref(), Some("e1"));
        assert_eq!(read_answer(br#"{"data":[{"id":"e1"},{"id":"e2"}]}"#).object_id.as_deref(), Some("e1,e2"));
        assert_eq!(read_answer(b"nope").object_id, None);
    }
}
