//! Stripe. Amounts are integer cents; keys are locked to USD because a proxy has no exchange
//! rates. The amount is read from the request to hold, and from the response to debit.

use super::{same_path, Credential, Vendor, VendorSpec};
use crate::core::cost::{form_body, rule, Cost, CostRule, Price, PriceInput, Quote, Settlement, VendorAnswer};
use crate::core::error::{ErrorShape, ProxyError};
use crate::core::money::Micros;
use serde::Deserialize;
use std::borrow::Cow;

pub const SPEC: VendorSpec = VendorSpec {
    vendor: Vendor::Stripe,
    name: "stripe",
    origin_var: "STRIPE_API_BASE",
    default_origin: "https://api.stripe.com",
    credential: Credential::Bearer { secret: "STRIPE_SECRET_KEY" },
    request_headers: &["accept", "content-type", "idempotency-key", "stripe-version", "user-agent"],
    idempotency: true,
    response_headers: &[
        "content-type",
        "idempotent-replayed",
        "request-id",
        "stripe-version",
        "stripe-should-retry",
        "retry-after",
    ],
    cost_rules: COST_RULES,
    upstream_path: same_path,
    read_answer,
    idempotency_conflict,
    reconcile: None,
    error_shape: ErrorShape::Stripe,
};

const AMOUNT: Cost =
    Cost::Priced(request_amount, "holds `amount` (cents, `currency=usd` only); settles at the response's `amount`");

const COST_RULES: &[CostRule] = &[
    rule("GET", "*", Cost::Free),
    rule("POST", "/v1/payment_intents", AMOUNT),
    rule("POST", "/v1/charges", AMOUNT),
    rule("POST", "/v1/transfers", AMOUNT),
    rule("POST", "/v1/payouts", AMOUNT),
    rule("POST", "/v1/refunds", AMOUNT),
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

/// Holds the request's `amount` (integer cents of `currency=usd`).
fn request_amount(input: &PriceInput<'_>) -> Result<Price, ProxyError> {
    let form = form_body(input)?;
    let if_missing = if input.path == "/v1/refunds" {
        "a refund without amount refunds the whole charge, whose amount is not in the request"
    } else {
        "the request has no amount"
    };
    let amount = form.single("amount")?.ok_or_else(|| ProxyError::CostUnknown(if_missing.into()))?;
    let currency = form.single("currency")?;
    if !currency.is_some_and(|c| c.eq_ignore_ascii_case("usd")) {
        return Err(ProxyError::CurrencyNotAllowed);
    }
    let cents = parse_cents(&amount)
        .ok_or_else(|| ProxyError::InvalidRequest("amount must be a non-negative integer".into()))?;
    let amount = Micros::from_cents(cents).ok_or_else(|| ProxyError::InvalidRequest("amount is too large".into()))?;
    Ok(Price { quote: Quote::Fixed { amount }, settlement: Settlement::ResponseAmount })
}

fn parse_cents(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Stripe's `idempotency_error`: the key was first used with other parameters.
fn idempotency_conflict(_status: u16, body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        error: Option<ErrorBody<'a>>,
    }
    #[derive(Deserialize)]
    struct ErrorBody<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| b.error?.kind)
        .is_some_and(|kind| kind == "idempotency_error")
}

fn read_answer(body: &[u8]) -> VendorAnswer {
    #[derive(Deserialize)]
    struct StripeObject<'a> {
        #[serde(borrow)]
        id: Option<Cow<'a, str>>,
        amount: Option<u64>,
        #[serde(borrow)]
        currency: Option<Cow<'a, str>>,
    }
    let Ok(object) = serde_json::from_slice::<StripeObject>(body) else {
        return VendorAnswer::default();
    };
    let usd = object.currency.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("usd"));
    VendorAnswer {
        object_id: object.id.map(Cow::into_owned),
        amount: object.amount.filter(|_| usd).and_then(Micros::from_cents),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cost::{price, settle, Settled};

    fn stripe(method: &str, path: &str, body: &str) -> Result<Price, ProxyError> {
        let vars = |_: &str| None;
        let input = PriceInput { method, path, query: "", content_type: None, body: body.as_bytes(), vars: &vars };
        price(Vendor::Stripe, &input)
    }

    fn fixed(amount: u64) -> Quote {
        Quote::Fixed { amount: Micros(amount) }
    }

    #[test]
    fn money_moving_creates_are_priced_from_the_request_amount() {
        let p = stripe("POST", "/v1/payment_intents", "amount=150&currency=usd&customer=cus_1").unwrap();
        assert_eq!(p, Price { quote: fixed(1_500_000), settlement: Settlement::ResponseAmount });
        for path in ["/v1/charges", "/v1/transfers", "/v1/payouts", "/v1/refunds"] {
            assert_eq!(stripe("POST", path, "currency=USD&amount=1").unwrap().quote, fixed(10_000), "{path}");
        }
        assert_eq!(stripe("POST", "/v1/payment_intents", "amount=%32%30&currency=usd").unwrap().quote, fixed(200_000));
    }

    #[test]
    fn gets_and_listed_posts_are_free() {
        assert_eq!(stripe("GET", "/v1/payment_intents/pi_1", "").unwrap(), Price::FREE);
        assert_eq!(stripe("POST", "/v1/customers", "email=a%40b.c").unwrap(), Price::FREE);
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
            assert_eq!(stripe(method, path, body).unwrap_err().kind(), "cost_unknown", "{method} {path}");
        }
        let refund = stripe("POST", "/v1/refunds", "charge=ch_1").unwrap_err();
        assert!(refund.message().contains("whole charge"));
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
    fn settlement_reads_the_response_amount_and_id() {
        let body = br#"{"id":"pi_123","object":"payment_intent","amount":149,"currency":"usd","status":"succeeded"}"#;
        assert_eq!(
            settle(Vendor::Stripe, Settlement::ResponseAmount, Micros(1_500_000), body),
            Settled { cost: Micros(1_490_000), vendor_object_id: Some("pi_123".into()) }
        );
    }

    #[test]
    fn settlement_falls_back_to_the_hold_when_the_answer_is_unclear() {
        for body in [&b"not json"[..], br#"{"id":"pi_1"}"#, br#"{"amount":5,"currency":"eur"}"#] {
            assert_eq!(settle(Vendor::Stripe, Settlement::ResponseAmount, Micros(7), body).cost, Micros(7));
        }
        let free = settle(Vendor::Stripe, Settlement::Free, Micros(0), br#"{"id":"cus_1","amount":5}"#);
        assert_eq!(free, Settled { cost: Micros::ZERO, vendor_object_id: Some("cus_1".into()) });
    }
}
