//! Cost rules: what a call may cost before it is sent (the reservation) and what it did
//! cost once the vendor answered (the settlement).
//!
//! The rule of thumb: a call whose price cannot be read from the request is refused, never
//! forwarded unpriced. Free calls are listed explicitly; a call no rule names is refused too.

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

#[derive(Debug)]
pub enum Cost {
    /// Moves no money.
    Free,
    /// Reserve the form field `field` (integer minor units of `currency`), settle from the same
    /// field of the JSON response. `if_missing` explains a refusal when the field is absent.
    FormAmount { field: &'static str, if_missing: &'static str },
    /// Can move money, but the amount is not in the request.
    Unpriceable(&'static str),
}

const fn rule(method: &'static str, path: &'static str, cost: Cost) -> CostRule {
    CostRule { method, path, cost }
}

const AMOUNT: Cost = Cost::FormAmount { field: "amount", if_missing: "the request has no amount" };

/// Stripe. Amounts are integer cents of USD; keys are locked to USD because a proxy has no
/// exchange rates.
pub const STRIPE: &[CostRule] = &[
    rule("GET", "*", Cost::Free),
    rule("POST", "/v1/payment_intents", AMOUNT),
    rule("POST", "/v1/charges", AMOUNT),
    rule("POST", "/v1/transfers", AMOUNT),
    rule("POST", "/v1/payouts", AMOUNT),
    rule(
        "POST",
        "/v1/refunds",
        Cost::FormAmount {
            field: "amount",
            if_missing: "a refund without amount refunds the whole charge, whose amount is not in the request",
        },
    ),
    rule(
        "POST",
        "/v1/payment_intents/{id}/confirm",
        Cost::Unpriceable("confirm charges an amount set earlier, not in this request"),
    ),
    rule(
        "POST",
        "/v1/payment_intents/{id}/capture",
        Cost::Unpriceable("capture charges an amount set earlier, not in this request"),
    ),
    rule(
        "POST",
        "/v1/invoices/{id}/pay",
        Cost::Unpriceable("invoice pay charges the invoice total, not in this request"),
    ),
    rule("POST", "/v1/subscriptions", Cost::Unpriceable("subscriptions charge prices that are not in this request")),
    rule("POST", "/v1/subscriptions/{id}", Cost::Unpriceable("subscription updates can charge prorations")),
    rule("POST", "/v1/payment_intents/{id}", Cost::Free),
    rule("POST", "/v1/payment_intents/{id}/cancel", Cost::Free),
    rule("POST", "/v1/customers", Cost::Free),
    rule("POST", "/v1/customers/{id}", Cost::Free),
    rule("DELETE", "/v1/customers/{id}", Cost::Free),
    rule("POST", "/v1/payment_methods", Cost::Free),
    rule("POST", "/v1/payment_methods/{id}/attach", Cost::Free),
    rule("POST", "/v1/payment_methods/{id}/detach", Cost::Free),
    rule("POST", "/v1/setup_intents", Cost::Free),
    rule("POST", "/v1/products", Cost::Free),
    rule("POST", "/v1/prices", Cost::Free),
];

/// How the real cost of a priced call is read back from the vendor's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Settlement {
    Free,
    ResponseAmount,
}

/// The price of a call before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub reserve: Micros,
    pub settlement: Settlement,
}

/// Prices a request. Errors are the public refusals (`cost_unknown`, `currency_not_allowed`,
/// `invalid_request`); the Durable Object applies them in the contract's order.
pub fn price(vendor: Vendor, method: &str, path: &str, body: &[u8]) -> Result<Price, ProxyError> {
    let rule = vendor
        .spec()
        .cost_rules
        .iter()
        .find(|r| r.method == method && (r.path == "*" || template_matches(r.path, path)))
        .ok_or_else(|| {
            ProxyError::CostUnknown(format!("{method} {path} is not in the {} cost table", vendor.name()))
        })?;
    match rule.cost {
        Cost::Free => Ok(Price { reserve: Micros::ZERO, settlement: Settlement::Free }),
        Cost::Unpriceable(why) => Err(ProxyError::CostUnknown(why.into())),
        Cost::FormAmount { field, if_missing } => {
            let form = Form::parse(body)?;
            let amount = form.single(field)?.ok_or_else(|| ProxyError::CostUnknown(if_missing.into()))?;
            let currency = form.single("currency")?;
            if !currency.is_some_and(|c| c.eq_ignore_ascii_case("usd")) {
                return Err(ProxyError::CurrencyNotAllowed);
            }
            let cents = parse_minor_units(&amount)
                .ok_or_else(|| ProxyError::InvalidRequest(format!("{field} must be a non-negative integer")))?;
            let reserve =
                Micros::from_cents(cents).ok_or_else(|| ProxyError::InvalidRequest(format!("{field} is too large")))?;
            Ok(Price { reserve, settlement: Settlement::ResponseAmount })
        }
    }
}

fn parse_minor_units(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What a successful (2xx) answer tells us: the cost to debit and the vendor's object id.
#[derive(Debug, PartialEq, Eq)]
pub struct Settled {
    pub cost: Micros,
    pub vendor_object_id: Option<String>,
}

/// Reads the real cost of a 2xx answer. When the answer does not state an amount in USD, the
/// reserved amount is debited: the vendor accepted the call, so assume it cost what was asked.
pub fn settle(settlement: Settlement, reserved: Micros, body: &[u8]) -> Settled {
    #[derive(Deserialize)]
    struct VendorObject<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
        amount: Option<u64>,
        #[serde(borrow)]
        currency: Option<Cow<'a, str>>,
    }
    let object: Option<VendorObject> = serde_json::from_slice(body).ok();
    let vendor_object_id = object.as_ref().and_then(|o| o.id.as_ref()).map(|id| truncate(id, 255));
    let cost = match settlement {
        Settlement::Free => Micros::ZERO,
        Settlement::ResponseAmount => object
            .filter(|o| o.currency.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("usd")))
            .and_then(|o| o.amount)
            .and_then(Micros::from_cents)
            .unwrap_or(reserved),
    };
    Settled { cost, vendor_object_id }
}

fn truncate(s: &str, max: usize) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stripe(method: &str, path: &str, body: &str) -> Result<Price, ProxyError> {
        price(Vendor::Stripe, method, path, body.as_bytes())
    }

    #[test]
    fn payment_intents_are_priced_from_the_request_amount() {
        let p = stripe("POST", "/v1/payment_intents", "amount=150&currency=usd&customer=cus_1").unwrap();
        assert_eq!(p, Price { reserve: Micros(1_500_000), settlement: Settlement::ResponseAmount });
        for path in ["/v1/charges", "/v1/transfers", "/v1/payouts", "/v1/refunds"] {
            assert_eq!(stripe("POST", path, "currency=USD&amount=1").unwrap().reserve, Micros(10_000), "{path}");
        }
    }

    #[test]
    fn form_decoding_handles_escapes_and_nesting() {
        let p = stripe("POST", "/v1/payment_intents", "metadata%5Bk%5D=a+b&amount=%32%30&currency=usd").unwrap();
        assert_eq!(p.reserve, Micros(200_000));
        assert!(stripe("POST", "/v1/payment_intents", "amount=%G0&currency=usd").is_err());
        assert!(stripe("POST", "/v1/payment_intents", "amount=%2&currency=usd").is_err());
    }

    #[test]
    fn gets_are_free() {
        let p = stripe("GET", "/v1/payment_intents/pi_1", "").unwrap();
        assert_eq!(p, Price { reserve: Micros::ZERO, settlement: Settlement::Free });
    }

    #[test]
    fn money_moving_calls_without_an_amount_are_refused() {
        for (method, path, body) in [
            ("POST", "/v1/payment_intents/pi_1/confirm", ""),
            ("POST", "/v1/payment_intents/pi_1/capture", "amount_to_capture=100"),
            ("POST", "/v1/refunds", "charge=ch_1"),
            ("POST", "/v1/invoices/in_1/pay", ""),
            ("POST", "/v1/subscriptions", "customer=cus_1"),
            ("POST", "/v1/payment_intents", "currency=usd"),
            ("POST", "/v1/checkout/sessions", "mode=payment"),
            ("DELETE", "/v1/payment_intents/pi_1", ""),
        ] {
            let err = stripe(method, path, body).unwrap_err();
            assert_eq!(err.kind(), "cost_unknown", "{method} {path}");
        }
    }

    #[test]
    fn only_usd_is_accepted() {
        for body in ["amount=100&currency=eur", "amount=100&currency=jpy", "amount=100"] {
            assert_eq!(stripe("POST", "/v1/payment_intents", body), Err(ProxyError::CurrencyNotAllowed), "{body}");
        }
    }

    #[test]
    fn duplicate_or_malformed_money_parameters_are_refused() {
        for body in [
            "amount=1&amount=1000&currency=usd",
            "amount=1&currency=usd&currency=eur",
            "amount=-5&currency=usd",
            "amount=1.5&currency=usd",
            "amount=&currency=usd",
            "amount=1e3&currency=usd",
            "amount=99999999999999999999&currency=usd",
        ] {
            assert_eq!(stripe("POST", "/v1/payment_intents", body).unwrap_err().kind(), "invalid_request", "{body}");
        }
    }

    #[test]
    fn free_posts_are_listed() {
        assert_eq!(stripe("POST", "/v1/customers", "email=a%40b.c").unwrap().reserve, Micros::ZERO);
    }

    #[test]
    fn settlement_reads_the_response_amount_and_id() {
        let body = br#"{"id":"pi_123","object":"payment_intent","amount":149,"currency":"usd","status":"succeeded"}"#;
        assert_eq!(
            settle(Settlement::ResponseAmount, Micros(1_500_000), body),
            Settled { cost: Micros(1_490_000), vendor_object_id: Some("pi_123".into()) }
        );
    }

    #[test]
    fn settlement_falls_back_to_the_reservation_when_the_answer_is_unclear() {
        for body in [&b"not json"[..], br#"{"id":"pi_1"}"#, br#"{"amount":5,"currency":"eur"}"#] {
            assert_eq!(settle(Settlement::ResponseAmount, Micros(7), body).cost, Micros(7));
        }
        assert_eq!(settle(Settlement::Free, Micros(0), br#"{"id":"cus_1","amount":5}"#).cost, Micros::ZERO);
    }
}
