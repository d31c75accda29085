//! What a vendor's answer means for the money held for the call. One pure classification,
//! used by the live path and by the alarm's replays, so the two can never disagree.
//!
//! The rule: a hold is released only on the vendor's definitive answer that *this exact
//! request* was not executed. Anything that leaves room for an earlier copy of the call to
//! have run, or to be running still, keeps the hold as unknown.

use crate::core::vendor::Vendor;

/// How a hold ends once the vendor has answered, or failed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx: debit the real cost.
    Settle,
    /// A definitive refusal (validation, auth, card declined, not found): release the hold.
    Release,
    /// The vendor may have acted, or may be acting still: keep the hold.
    Unknown,
}

/// Whether the request was the first under its `Idempotency-Key`, or a repeat of a call whose
/// outcome is unknown (a client retry that took over its hold, or an alarm replay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attempt {
    First,
    Repeat,
}

/// Classifies the vendor's answer: its status, or `None` when none came (a timeout, a reset).
pub fn classify(vendor: Vendor, status: Option<u16>, body: &[u8], attempt: Attempt) -> Verdict {
    let Some(status) = status else { return Verdict::Unknown };
    match status {
        200..=299 => Verdict::Settle,
        // The vendor is still running a call under this key: its outcome is not known yet.
        409 => Verdict::Unknown,
        // A rate limit refuses before executing, so a first call was not run. For a repeat it
        // says nothing about the earlier copy.
        429 => match attempt {
            Attempt::First => Verdict::Release,
            Attempt::Repeat => Verdict::Unknown,
        },
        // The key is bound to another request at the vendor: that one may have run.
        400..=499 if (vendor.spec().idempotency_conflict)(status, body) => Verdict::Unknown,
        400..=499 => Verdict::Release,
        // 5xx, and the 1xx/3xx a vendor API never sends: the call may have run.
        _ => Verdict::Unknown,
    }
}

/// For vendors without idempotency keys: no answer is ever an idempotency conflict.
pub fn no_idempotency_conflict(_status: u16, _body: &[u8]) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use Attempt::{First, Repeat};
    use Verdict::{Release, Settle, Unknown};

    type Case = (Vendor, Option<u16>, &'static [u8], Attempt, Verdict);

    #[test]
    fn the_release_table() {
        let declined: &[u8] = br#"{"error":{"type":"card_error","code":"card_declined"}}"#;
        let mismatch: &[u8] = br#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests..."}}"#;
        let resend_mismatch: &[u8] = br#"{"statusCode":409,"name":"invalid_idempotent_request"}"#;
        let cases: &[Case] = &[
            (Vendor::Stripe, Some(200), b"{}", First, Settle),
            (Vendor::Stripe, Some(200), b"{}", Repeat, Settle),
            (Vendor::Stripe, Some(402), declined, First, Release),
            (Vendor::Stripe, Some(402), declined, Repeat, Release),
            (Vendor::Stripe, Some(400), b"{}", Repeat, Release),
            (Vendor::Stripe, Some(400), mismatch, First, Unknown),
            (Vendor::Stripe, Some(400), mismatch, Repeat, Unknown),
            (Vendor::Stripe, Some(401), b"{}", First, Release),
            (Vendor::Stripe, Some(404), b"{}", Repeat, Release),
            (Vendor::Stripe, Some(409), b"{}", First, Unknown),
            (Vendor::Stripe, Some(409), b"{}", Repeat, Unknown),
            (Vendor::Stripe, Some(429), b"{}", First, Release),
            (Vendor::Stripe, Some(429), b"{}", Repeat, Unknown),
            (Vendor::Stripe, Some(500), b"{}", First, Unknown),
            (Vendor::Stripe, Some(503), b"{}", Repeat, Unknown),
            (Vendor::Stripe, Some(302), b"", First, Unknown),
            (Vendor::Stripe, None, b"", First, Unknown),
            (Vendor::Resend, Some(409), resend_mismatch, Repeat, Unknown),
            (Vendor::Resend, Some(422), br#"{"name":"validation_error"}"#, First, Release),
            (Vendor::Twilio, Some(201), b"{}", First, Settle),
            (Vendor::Twilio, Some(400), br#"{"code":21211}"#, First, Release),
            (Vendor::Twilio, Some(429), b"{}", First, Release),
            (Vendor::Twilio, Some(500), b"{}", First, Unknown),
        ];
        for (vendor, status, body, attempt, want) in cases {
            assert_eq!(classify(*vendor, *status, body, *attempt), *want, "{vendor:?} {status:?} {attempt:?}");
        }
    }
}
