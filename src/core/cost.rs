//! Cost rules: what a call may cost before it is sent (the quote the ledger holds) and what it
//! did cost once the vendor answered (the settlement).
//!
//! The rule of thumb: a call whose price cannot be read from the request is refused, never
//! forwarded unpriced. Free calls are listed explicitly; a call no rule names is refused too.
//! Each vendor's rules live in its module under `vendor/`.

use crate::core::allowlist::template_matches;
use crate::core::error::ProxyError;
use crate::core::money::Micros;
use crate::core::vendor::Vendor;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// One row of a vendor's cost table. `path` is an allowlist-style template, or `*` for any.
#[derive(Debug)]
pub struct CostRule {
    pub method: &'static str,
    pub path: &'static str,
    pub cost: Cost,
}

pub const fn rule(method: &'static str, path: &'static str, cost: Cost) -> CostRule {
    CostRule { method, path, cost }
}

#[derive(Debug)]
pub enum Cost {
    /// Moves no money.
    Free,
    /// Can move money, but the amount is not in the request.
    Unpriceable(&'static str),
    /// Priced by the vendor module from the request; the text says how, for the docs.
    Priced(PriceFn, &'static str),
}

/// A vendor's pricing function for one rule.
pub type PriceFn = fn(&PriceInput<'_>) -> Result<Price, ProxyError>;

/// Reads a Worker var or secret by name.
pub type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What a pricing function may look at.
pub struct PriceInput<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// The Worker's vars, for configurable price tables.
    pub vars: Vars<'a>,
}

/// The price of a call before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub quote: Quote,
    pub settlement: Settlement,
}

impl Price {
    pub const FREE: Price = Price { quote: Quote::Fixed { amount: Micros::ZERO }, settlement: Settlement::Free };
}

/// What the ledger holds for a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Quote {
    Fixed {
        amount: Micros,
    },
    /// Hold as many `unit`s as the budget allows, up to `max_units`, at least one. The Worker
    /// then bounds the call to that many units (Twilio's `TimeLimit`).
    PerUnit {
        unit: Micros,
        max_units: u64,
    },
}

/// How the real cost of a call is read once the vendor has answered 2xx.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Settlement {
    Free,
    /// The response states the amount (Stripe).
    ResponseAmount,
    /// The response states no price: debit the estimate. With `reconcile`, the vendor's real
    /// price is fetched later and the ledger moves to it (Twilio).
    Estimate {
        reconcile: bool,
    },
}

/// Prices a request by the vendor's cost table. Errors are the public refusals
/// (`cost_unknown`, `currency_not_allowed`, `invalid_request`); the Durable Object applies them
/// in the contract's order.
pub fn price(vendor: Vendor, input: &PriceInput<'_>) -> Result<Price, ProxyError> {
    let rule = vendor
        .spec()
        .cost_rules
        .iter()
        .find(|r| r.method == input.method && (r.path == "*" || template_matches(r.path, input.path)))
        .ok_or_else(|| {
            ProxyError::CostUnknown(format!(
                "{} {} is not in the {} cost table",
                input.method,
                input.path,
                vendor.name()
            ))
        })?;
    match rule.cost {
        Cost::Free => Ok(Price::FREE),
        Cost::Unpriceable(why) => Err(ProxyError::CostUnknown(why.into())),
        // Vendors read a POST's query parameters too (Stripe does): a priced call must carry
        // every parameter where it is priced from, so an `amount` cannot hide in the query.
        Cost::Priced(..) if !input.query.is_empty() => Err(ProxyError::InvalidRequest(
            "this call is priced from its body; send its parameters in the body, not the query string".into(),
        )),
        Cost::Priced(f, _) => f(input),
    }
}

/// What a successful answer tells us: the cost to debit and the vendor's object id.
#[derive(Debug, PartialEq, Eq)]
pub struct Settled {
    pub cost: Micros,
    pub vendor_object_id: Option<String>,
}

/// What a vendor's 2xx body says, as read by its module.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VendorAnswer {
    pub object_id: Option<String>,
    /// The amount the vendor reports having moved, when it reports one in USD.
    pub amount: Option<Micros>,
}

/// Reads the real cost of a 2xx answer. When the answer states no USD amount, the held amount
/// is debited: the vendor accepted the call, so assume it cost what was held.
pub fn settle(vendor: Vendor, settlement: Settlement, held: Micros, body: &[u8]) -> Settled {
    let answer = (vendor.spec().read_answer)(body);
    let cost = match settlement {
        Settlement::Free => Micros::ZERO,
        Settlement::ResponseAmount => answer.amount.unwrap_or(held),
        Settlement::Estimate { .. } => held,
    };
    Settled { cost, vendor_object_id: answer.object_id.map(|id| truncate(&id, 255)) }
}

pub fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// An `application/x-www-form-urlencoded` body, decoded only as far as pricing needs.
pub struct Form<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Form<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Form<'a>, ProxyError> {
        let text =
            std::str::from_utf8(body).map_err(|_| ProxyError::InvalidRequest("the form body is not UTF-8".into()))?;
        let mut pairs = Vec::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            pairs.push((percent_decode(k)?, percent_decode(v)?));
        }
        Ok(Form { pairs })
    }

    /// The one value of `name`. A repeated money parameter is refused rather than resolved:
    /// we and the vendor might pick different copies.
    pub fn single(&self, name: &str) -> Result<Option<Cow<'a, str>>, ProxyError> {
        let mut found = self.pairs.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        let first = found.next().cloned();
        if found.next().is_some() {
            return Err(ProxyError::InvalidRequest(format!("parameter {name} appears more than once")));
        }
        Ok(first)
    }

    pub fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(k, _)| k.as_ref())
    }
}

fn percent_decode(s: &str) -> Result<Cow<'_, str>, ProxyError> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(s));
    }
    let bad = || ProxyError::InvalidRequest("the form body has a malformed percent-escape".into());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| bad())
}

/// Requires a form body (by content type, when one is given).
pub fn form_body<'a>(input: &PriceInput<'a>) -> Result<Form<'a>, ProxyError> {
    if let Some(ct) = input.content_type {
        if !ct.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
            return Err(ProxyError::UnsupportedMediaType("application/x-www-form-urlencoded".into()));
        }
    }
    Form::parse(input.body)
}

/// A price table from a var holding a JSON object of dollar prices, such as
/// `{"1": 0.0083, "44": 0.0524}`, or the defaults when the var is unset.
pub fn price_table(vars: Vars<'_>, var: &str, defaults: &[(&str, &str)]) -> Result<Vec<(String, Micros)>, ProxyError> {
    let Some(json) = vars(var) else {
        return Ok(defaults
            .iter()
            .map(|(k, v)| ((*k).to_string(), Micros::parse_usd(v).unwrap_or(Micros::ZERO)))
            .collect());
    };
    let bad =
        |e: &str| ProxyError::CostUnknown(format!("the {var} price table is misconfigured ({e}); fix the Worker var"));
    let raw: std::collections::BTreeMap<String, &serde_json::value::RawValue> =
        serde_json::from_str(&json).map_err(|_| bad("not a JSON object"))?;
    raw.into_iter().map(|(k, v)| Ok((k, Micros::parse_usd(v.get()).map_err(bad)?))).collect()
}

/// A dollar amount from a var, or the default.
pub fn price_var(vars: Vars<'_>, var: &str, default: &str) -> Result<Micros, ProxyError> {
    let text = vars(var).unwrap_or_else(|| default.to_string());
    Micros::parse_usd(text.trim())
        .map_err(|e| ProxyError::CostUnknown(format!("the {var} price {e}; fix the Worker var")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_vars(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn form_decoding_handles_escapes_and_refuses_duplicates() {
        let form = Form::parse(b"metadata%5Bk%5D=a+b&amount=%32%30&x").unwrap();
        assert_eq!(form.single("metadata[k]").unwrap().as_deref(), Some("a b"));
        assert_eq!(form.single("amount").unwrap().as_deref(), Some("20"));
        assert_eq!(form.single("x").unwrap().as_deref(), Some(""));
        assert!(form.has("x") && !form.has("y"));
        assert!(Form::parse(b"a=%G0").is_err());
        assert!(Form::parse(b"a=%2").is_err());
        assert!(Form::parse(b"a=%ff").is_err(), "not UTF-8 once decoded");
        assert_eq!(Form::parse(b"a=1&a=2").unwrap().single("a").unwrap_err().kind(), "invalid_request");
    }

    #[test]
    fn form_bodies_need_the_form_content_type() {
        let input =
            |ct| PriceInput { method: "POST", path: "/", query: "", content_type: ct, body: b"a=1", vars: &no_vars };
        assert!(form_body(&input(Some("application/x-www-form-urlencoded; charset=utf-8"))).is_ok());
        assert!(form_body(&input(None)).is_ok());
        assert_eq!(form_body(&input(Some("application/json"))).err().map(|e| e.status()), Some(415));
    }

    #[test]
    fn price_tables_come_from_vars_or_defaults() {
        let defaults = [("1", "0.01"), ("44", "0.05")];
        assert_eq!(
            price_table(&no_vars, "T", &defaults).unwrap(),
            vec![("1".to_string(), Micros(10_000)), ("44".to_string(), Micros(50_000))]
        );
        let set = |_: &str| Some(r#"{"33": 0.0845}"#.to_string());
        assert_eq!(price_table(&set, "T", &defaults).unwrap(), vec![("33".to_string(), Micros(84_500))]);
        let broken = |_: &str| Some(r#"{"33": "cheap"}"#.to_string());
        assert_eq!(price_table(&broken, "T", &defaults).unwrap_err().kind(), "cost_unknown");
        assert_eq!(price_var(&no_vars, "P", "0.0009").unwrap(), Micros(900));
    }

    #[test]
    fn unlisted_calls_are_refused() {
        let input = PriceInput {
            method: "POST",
            path: "/v1/checkout/sessions",
            query: "",
            content_type: None,
            body: b"",
            vars: &no_vars,
        };
        assert_eq!(price(Vendor::Stripe, &input).unwrap_err().kind(), "cost_unknown");
    }
}
