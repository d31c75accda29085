//! Twilio. Neither messages nor calls are priced when created: the price appears on the object
//! minutes (messages) or after the call ends (calls). So Keybrake holds an upper bound, debits
//! it, and later reconciles to the real `price` from `GET .../{sid}.json`.
//!
//! Every path is pinned to the configured account: the `{AccountSid}` segment a client sends is
//! replaced by `TWILIO_ACCOUNT_SID` before matching, so a vault key cannot reach another account.
//! The account resource itself and its credential resources are refused: they hand out the
//! account's auth token and API keys.
//!
//! Holds are upper bounds or nothing: a call whose TwiML could `<Dial>` further numbers, a
//! content template, or a destination without a price is refused as `cost_unknown`.

use super::{Credential, PricePoll, Reconciler, Vendor, VendorSpec};
use crate::core::answer::no_idempotency_conflict;
use crate::core::cost::{
    form_body, price_table, price_var, rule, Cost, CostRule, Price, PriceInput, Quote, Settlement, Vars, VendorAnswer,
};
use crate::core::error::{ErrorShape, ProxyError};
use crate::core::money::Micros;
use serde::Deserialize;
use std::borrow::Cow;

pub const SPEC: VendorSpec = VendorSpec {
    vendor: Vendor::Twilio,
    name: "twilio",
    origin_var: "TWILIO_API_BASE",
    default_origin: "https://api.twilio.com",
    // An API key (SK…) when one is set: it can be revoked without rolling the account's token.
    credential: Credential::Basic {
        pairs: &[("TWILIO_API_KEY_SID", "TWILIO_API_KEY_SECRET"), ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN")],
    },
    request_headers: &["accept", "content-type", "user-agent"],
    idempotency: false,
    response_headers: &["content-type", "twilio-request-id", "retry-after"],
    cost_rules: COST_RULES,
    upstream_path,
    read_answer,
    idempotency_conflict: no_idempotency_conflict,
    reconcile: Some(Reconciler { poll_path, read_price }),
    error_shape: ErrorShape::Twilio,
};

const COST_RULES: &[CostRule] = &[
    rule("GET", "*", Cost::Free),
    rule(
        "POST",
        "/2010-04-01/Accounts/{AccountSid}/Messages.json",
        Cost::Priced(message_price, "segments × the per-segment price for `To` + the failed-message fee; one MMS price for `MediaUrl`/`SendAsMms` to the US or Canada; reconciled to `price`"),
    ),
    rule(
        "POST",
        "/2010-04-01/Accounts/{AccountSid}/Calls.json",
        Cost::Priced(call_price, "inline `Twiml` only; started minutes × the per-minute price for `To`, or as many minutes as the budget allows (at most 240) with `TimeLimit` set to them; reconciled to `price`"),
    ),
    // Updating a message (cancel a scheduled one, redact a body) or deleting one sends nothing.
    rule("POST", "/2010-04-01/Accounts/{AccountSid}/Messages/{sid}.json", Cost::Free),
    rule("DELETE", "/2010-04-01/Accounts/{AccountSid}/Messages/{sid}.json", Cost::Free),
];

/// NANP area codes outside the US and Canada. They share `+1` but are priced as the
/// Caribbean and Pacific countries and territories they are, far above US rates, so each gets
/// its own row in the default tables below.
pub const NANP_ELSEWHERE: &[&str] = &[
    "1242", "1246", "1264", "1268", "1284", "1340", "1345", "1441", "1473", "1649", "1658", "1664", "1670", "1671",
    "1684", "1721", "1758", "1767", "1784", "1787", "1809", "1829", "1849", "1868", "1869", "1876", "1939",
];

/// Default highest per-segment SMS price, in USD, by calling code (carrier surcharges included).
/// `+1` is the US and Canada; every other NANP code ([`NANP_ELSEWHERE`]) holds
/// [`NANP_ELSEWHERE_SMS`]. Set `TWILIO_SMS_PRICES` to your own table.
pub const DEFAULT_SMS_PRICES: &[(&str, &str)] = &[
    ("1", "0.0133"),
    ("33", "0.0845"),
    ("44", "0.0524"),
    ("49", "0.0989"),
    ("52", "0.055"),
    ("55", "0.055"),
    ("61", "0.0515"),
    ("81", "0.0797"),
    ("91", "0.083"),
];
pub const NANP_ELSEWHERE_SMS: &str = "0.1";

/// Default outbound voice price per minute, in USD, by calling code (`TWILIO_VOICE_PRICES`).
/// Every NANP code outside the US and Canada holds [`NANP_ELSEWHERE_VOICE`].
pub const DEFAULT_VOICE_PRICES: &[(&str, &str)] =
    &[("1", "0.014"), ("33", "0.08"), ("44", "0.04"), ("49", "0.09"), ("61", "0.06"), ("91", "0.05")];
pub const NANP_ELSEWHERE_VOICE: &str = "0.35";

/// Default price of one MMS to the US or Canada, carrier fees included
/// (`TWILIO_MMS_PRICE_USD`). Twilio sends MMS to no other country.
pub const DEFAULT_MMS_PRICE: &str = "0.04";

/// Twilio bills a failed message a processing fee (`TWILIO_FAILED_MESSAGE_FEE_USD`).
pub const DEFAULT_FAILED_MESSAGE_FEE: &str = "0.001";

/// Twilio's own ceiling on a call's `TimeLimit`: 4 hours.
const MAX_CALL_MINUTES: u64 = 240;

const ACCOUNTS_PREFIX: &str = "/2010-04-01/Accounts/";

/// Resources under an account that hand out its credentials: API keys and signing keys.
const CREDENTIAL_RESOURCES: [&str; 3] = ["/Keys", "/SigningKeys", "/Credentials"];

/// Pins the account and insists on the `.json` form (without it the 2010 API answers XML).
/// The account resource (it carries the auth token) and credential resources are refused.
fn upstream_path(path: &str, vars: Vars<'_>) -> Result<String, ProxyError> {
    let rest = path
        .strip_prefix(ACCOUNTS_PREFIX)
        .ok_or_else(|| ProxyError::InvalidRequest(format!("Twilio calls go under {ACCOUNTS_PREFIX}{{AccountSid}}/")))?;
    if !path.ends_with(".json") {
        return Err(ProxyError::InvalidRequest("Twilio calls must use the .json form of a resource".into()));
    }
    let Some(account) = vars(SPEC_ACCOUNT_VAR).filter(|s| !s.is_empty()) else {
        return Err(ProxyError::Internal);
    };
    let (_, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => ("", rest.strip_suffix(".json").map_or("", |_| ".json")),
    };
    let is_credential = |t: &str| CREDENTIAL_RESOURCES.iter().any(|r| t.starts_with(r));
    if !tail.starts_with('/') || is_credential(tail) {
        return Err(ProxyError::EndpointNotAllowed);
    }
    Ok(format!("{ACCOUNTS_PREFIX}{account}{tail}"))
}

const SPEC_ACCOUNT_VAR: &str = "TWILIO_ACCOUNT_SID";

fn message_price(input: &PriceInput<'_>) -> Result<Price, ProxyError> {
    let form = form_body(input)?;
    let to = form.single("To")?.ok_or_else(|| ProxyError::CostUnknown("the message has no To".into()))?;
    if form.has("ContentSid") {
        return Err(ProxyError::CostUnknown(
            "a content template (ContentSid) can carry media; it is not priced".into(),
        ));
    }
    let fee = price_var(input.vars, "TWILIO_FAILED_MESSAGE_FEE_USD", DEFAULT_FAILED_MESSAGE_FEE)?;
    let mms = form.has("MediaUrl") || form.single("SendAsMms")?.is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let per_message = if mms {
        mms_price(input, &to)?
    } else {
        let body = form.single("Body")?.ok_or_else(|| {
            ProxyError::CostUnknown("a message without Body (a content template) cannot be priced".into())
        })?;
        let per_segment = price_for(&sms_table(input.vars)?, &to)?;
        per_segment.0.checked_mul(u64::from(segments(&body))).map(Micros)
    };
    let amount = per_message
        .and_then(|a| a.0.checked_add(fee.0))
        .map(Micros)
        .ok_or_else(|| ProxyError::InvalidRequest("the message is too long".into()))?;
    Ok(Price { quote: Quote::Fixed { amount }, settlement: Settlement::Estimate { reconcile: true } })
}

/// One MMS, whatever its media and body (up to 1,600 characters, one message). Only the US
/// and Canada take MMS; elsewhere Twilio converts it into messages Keybrake cannot count.
fn mms_price(input: &PriceInput<'_>, to: &str) -> Result<Option<Micros>, ProxyError> {
    let digits = e164_digits(to)?;
    if !digits.starts_with('1') || NANP_ELSEWHERE.iter().any(|code| digits.starts_with(code)) {
        return Err(ProxyError::CostUnknown("MMS is priced only to US and Canadian numbers".into()));
    }
    Ok(Some(price_var(input.vars, "TWILIO_MMS_PRICE_USD", DEFAULT_MMS_PRICE)?))
}

/// A price table from its var, or the defaults with the NANP rows outside the US and Canada.
fn with_nanp_elsewhere(
    vars: Vars<'_>,
    var: &str,
    defaults: &[(&str, &str)],
    elsewhere: &str,
) -> Result<Vec<(String, Micros)>, ProxyError> {
    let mut table = price_table(vars, var, defaults)?;
    if vars(var).is_none() {
        let price = Micros::parse_usd(elsewhere).unwrap_or(Micros::ZERO);
        table.extend(NANP_ELSEWHERE.iter().map(|code| (code.to_string(), price)));
    }
    Ok(table)
}

fn sms_table(vars: Vars<'_>) -> Result<Vec<(String, Micros)>, ProxyError> {
    with_nanp_elsewhere(vars, "TWILIO_SMS_PRICES", DEFAULT_SMS_PRICES, NANP_ELSEWHERE_SMS)
}

fn voice_table(vars: Vars<'_>) -> Result<Vec<(String, Micros)>, ProxyError> {
    with_nanp_elsewhere(vars, "TWILIO_VOICE_PRICES", DEFAULT_VOICE_PRICES, NANP_ELSEWHERE_VOICE)
}

/// TwiML verbs a call may run: none of them reaches another number or fetches more TwiML.
/// Lower-case tags are SSML inside `<Say>`.
const SAFE_VERBS: [&str; 6] = ["Response", "Say", "Play", "Pause", "Hangup", "Reject"];

/// A call is priced only when its whole script is in the request: TwiML fetched from `Url` or
/// an application, and verbs such as `<Dial>`, `<Enqueue>` or `<Redirect>`, can open further
/// call legs that Twilio bills and Keybrake could not bound.
fn check_twiml(form: &crate::core::cost::Form<'_>) -> Result<(), ProxyError> {
    let Some(twiml) = form.single("Twiml")? else {
        return Err(ProxyError::CostUnknown(
            "a call whose TwiML comes from Url or ApplicationSid may <Dial> numbers Keybrake cannot price; send Twiml"
                .into(),
        ));
    };
    if form.has("Url") || form.has("ApplicationSid") {
        return Err(ProxyError::InvalidRequest("send Twiml alone, without Url or ApplicationSid".into()));
    }
    for tag in twiml.split('<').skip(1) {
        let name: String = tag
            .trim_start_matches(['/', '?', '!'])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == ':')
            .collect();
        let verb = name.starts_with(|c: char| c.is_ascii_uppercase());
        if verb && !SAFE_VERBS.contains(&name.as_str()) {
            return Err(ProxyError::CostUnknown(format!(
                "<{name}> can open call legs or fetch TwiML that Keybrake cannot price; calls may use {}",
                SAFE_VERBS[1..].join(", ")
            )));
        }
        if tag.to_ascii_lowercase().contains("action=") {
            return Err(ProxyError::CostUnknown("a TwiML action URL can fetch further TwiML; it is not priced".into()));
        }
    }
    Ok(())
}

fn call_price(input: &PriceInput<'_>) -> Result<Price, ProxyError> {
    let form = form_body(input)?;
    let to = form.single("To")?.ok_or_else(|| ProxyError::CostUnknown("the call has no To".into()))?;
    check_twiml(&form)?;
    let per_minute = price_for(&voice_table(input.vars)?, &to)?;
    let settlement = Settlement::Estimate { reconcile: true };
    let Some(limit) = form.single("TimeLimit")? else {
        // The Worker sets TimeLimit to the minutes the budget allows.
        return Ok(Price { quote: Quote::PerUnit { unit: per_minute, max_units: MAX_CALL_MINUTES }, settlement });
    };
    let secs: u64 = limit
        .parse()
        .ok()
        .filter(|s| (1..=MAX_CALL_MINUTES * 60).contains(s))
        .ok_or_else(|| ProxyError::InvalidRequest("TimeLimit must be 1 to 14400 seconds".into()))?;
    // Twilio bills each started minute.
    let amount = Micros(per_minute.0 * secs.div_ceil(60));
    Ok(Price { quote: Quote::Fixed { amount }, settlement })
}

/// The digits of an E.164 number.
fn e164_digits(to: &str) -> Result<&str, ProxyError> {
    to.strip_prefix('+')
        .filter(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'))
        .ok_or_else(|| ProxyError::CostUnknown("To must be an E.164 phone number like +14155550100".into()))
}

/// The price for an E.164 number: the entry with the longest calling-code prefix. A NANP
/// number outside the US and Canada needs a row of its own: the `1` row is a US price.
fn price_for(table: &[(String, Micros)], to: &str) -> Result<Micros, ProxyError> {
    let digits = e164_digits(to)?;
    let elsewhere = NANP_ELSEWHERE.iter().any(|code| digits.starts_with(code));
    table
        .iter()
        .filter(|(code, _)| digits.starts_with(code.as_str()) && !(elsewhere && code == "1"))
        .max_by_key(|(code, _)| code.len())
        .map(|(_, price)| *price)
        .ok_or_else(|| {
            ProxyError::CostUnknown(format!("no price is configured for +{}…", &digits[..digits.len().min(4)]))
        })
}

/// GSM 03.38 basic character set (one septet each).
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension table: each takes an escape plus the character, two septets.
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// How many SMS segments Twilio bills for `body`. GSM-7 bodies fit 160 septets in one
/// segment, else 153 per segment; any other character makes the body UCS-2: 70 code units in
/// one segment, else 67. Segments are filled greedily without splitting an escaped character
/// or a surrogate pair, as handsets do, so this never undercounts.
pub fn segments(body: &str) -> u32 {
    let gsm: Option<Vec<u32>> = body
        .chars()
        .map(|c| {
            if GSM7_BASIC.contains(c) {
                Some(1)
            } else if GSM7_EXTENSION.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .collect();
    match gsm {
        Some(units) => pack(&units, 160, 153),
        None => pack(&body.chars().map(|c| c.len_utf16() as u32).collect::<Vec<_>>(), 70, 67),
    }
}

fn pack(units: &[u32], single: u32, per_part: u32) -> u32 {
    let total: u32 = units.iter().sum();
    if total <= single {
        return 1;
    }
    let (mut parts, mut used) = (1, 0);
    for &u in units {
        if used + u > per_part {
            parts += 1;
            used = 0;
        }
        used += u;
    }
    parts
}

fn read_answer(body: &[u8]) -> VendorAnswer {
    #[derive(Deserialize)]
    struct TwilioObject<'a> {
        #[serde(borrow)]
        sid: Option<Cow<'a, str>>,
    }
    let object_id = serde_json::from_slice::<TwilioObject>(body).ok().and_then(|o| o.sid).map(Cow::into_owned);
    VendorAnswer { object_id, amount: None }
}

/// `.../Messages.json` + `SM123` → `.../Messages/SM123.json`.
fn poll_path(create_path: &str, sid: &str) -> Option<String> {
    let collection = create_path.strip_suffix(".json")?;
    let sid_ok = !sid.is_empty() && sid.len() <= 64 && sid.bytes().all(|b| b.is_ascii_alphanumeric());
    sid_ok.then(|| format!("{collection}/{sid}.json"))
}

/// Twilio states a price as a negative decimal string in `price_unit`, e.g. `"-0.00830"`.
fn read_price(body: &[u8]) -> PricePoll {
    #[derive(Deserialize)]
    struct Priced<'a> {
        #[serde(borrow)]
        price: Option<Cow<'a, str>>,
        #[serde(borrow)]
        price_unit: Option<Cow<'a, str>>,
    }
    let Ok(p) = serde_json::from_slice::<Priced>(body) else {
        return PricePoll::NotYet;
    };
    let usd = p.price_unit.as_deref().is_none_or(|u| u.eq_ignore_ascii_case("USD"));
    match p.price.as_deref().map(|s| s.trim_start_matches('-')) {
        Some(text) if usd => Micros::parse_usd(text).map_or(PricePoll::NotYet, PricePoll::Priced),
        _ => PricePoll::NotYet,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::cost::price;

    const ACCOUNT: &str = "AC00000000000000000000000000000001";

    fn vars(name: &str) -> Option<String> {
        (name == "TWILIO_ACCOUNT_SID").then(|| ACCOUNT.to_string())
    }

    fn twilio(path: &str, body: &str) -> Result<Price, ProxyError> {
        let input =
            PriceInput { method: "POST", path, query: "", content_type: None, body: body.as_bytes(), vars: &vars };
        price(Vendor::Twilio, &input)
    }

    const MESSAGES: &str = "/2010-04-01/Accounts/AC1/Messages.json";

    #[test]
    fn gsm7_segment_boundaries() {
        assert_eq!(segments(""), 1);
        assert_eq!(segments(&"a".repeat(160)), 1);
        assert_eq!(segments(&"a".repeat(161)), 2);
        assert_eq!(segments(&"a".repeat(306)), 2);
        assert_eq!(segments(&"a".repeat(307)), 3);
        assert_eq!(segments(&"é".repeat(160)), 1, "é is in the GSM-7 basic set");
    }

    #[test]
    fn extension_characters_count_double() {
        for c in ['^', '{', '}', '[', '~', ']', '|', '€', '\\'] {
            assert_eq!(segments(&c.to_string().repeat(80)), 1, "{c}: 80 × 2 septets = 160");
            assert_eq!(segments(&format!("{}a", c.to_string().repeat(80))), 2, "{c}: 161 septets");
        }
        // 152 septets then an escaped character: it cannot be split, so it opens part two.
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        assert_eq!(segments(&body), 2);
        let body = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(segments(&body), 3, "152 | 2+151 | 1: the escape pair moved to the second part");
    }

    #[test]
    fn ucs2_segment_boundaries() {
        assert_eq!(segments(&"ж".repeat(70)), 1);
        assert_eq!(segments(&"ж".repeat(71)), 2);
        assert_eq!(segments(&"ж".repeat(134)), 2);
        assert_eq!(segments(&"ж".repeat(135)), 3);
        // One non-GSM character turns the whole body into UCS-2.
        assert_eq!(segments(&format!("{}ж", "a".repeat(70))), 2);
        // An emoji is a surrogate pair: two code units that are never split.
        assert_eq!(segments(&"😀".repeat(35)), 1);
        assert_eq!(segments(&format!("{}😀", "a".repeat(68))), 1);
        assert_eq!(segments(&format!("{}😀", "a".repeat(69))), 2);
        assert_eq!(segments(&format!("{0}😀{0}", "a".repeat(66))), 3, "134 units, but the pair opens part two");
    }

    #[test]
    fn messages_hold_segments_times_the_destination_price_plus_the_failure_fee() {
        let p = twilio(MESSAGES, "To=%2B14155550100&From=%2B15005550006&Body=hello").unwrap();
        assert_eq!(p.quote, Quote::Fixed { amount: Micros(13_300 + 1_000) });
        assert_eq!(p.settlement, Settlement::Estimate { reconcile: true });
        let long = format!("To=%2B447700900123&Body={}", "a".repeat(161));
        assert_eq!(twilio(MESSAGES, &long).unwrap().quote, Quote::Fixed { amount: Micros(2 * 52_400 + 1_000) });
    }

    #[test]
    fn unpriceable_messages_are_refused() {
        for body in [
            "Body=hi",
            "To=%2B99955501000&Body=hi",
            "To=4155550100&Body=hi",
            "To=whatsapp%3A%2B14155550100&Body=hi",
            "To=%2B14155550100",
            "To=%2B14155550100&Body=hi&ContentSid=HX1",
            "To=%2B18765550100&Body=hi&MediaUrl=https%3A%2F%2Fx.test%2Fa.png",
            "To=%2B447700900123&Body=hi&SendAsMms=true",
        ] {
            assert_eq!(twilio(MESSAGES, body).unwrap_err().kind(), "cost_unknown", "{body}");
        }
        assert_eq!(
            twilio(MESSAGES, "To=%2B14155550100&To=%2B447700900123&Body=hi").unwrap_err().kind(),
            "invalid_request"
        );
    }

    const CALLS: &str = "/2010-04-01/Accounts/AC1/Calls.json";
    const SAY: &str = "Twiml=%3CResponse%3E%3CSay%3Ehi%3C%2FSay%3E%3C%2FResponse%3E";

    #[test]
    fn calls_hold_minutes_times_the_rate() {
        let fixed = twilio(CALLS, &format!("To=%2B14155550100&From=%2B15005550006&TimeLimit=61&{SAY}")).unwrap();
        assert_eq!(fixed.quote, Quote::Fixed { amount: Micros(2 * 14_000) }, "61 s bills two minutes");
        let open = twilio(CALLS, &format!("To=%2B14155550100&From=%2B15005550006&{SAY}")).unwrap();
        assert_eq!(open.quote, Quote::PerUnit { unit: Micros(14_000), max_units: 240 });
        assert_eq!(
            twilio(CALLS, &format!("To=%2B14155550100&TimeLimit=0&{SAY}")).unwrap_err().kind(),
            "invalid_request"
        );
    }

    #[test]
    fn nanp_numbers_outside_the_us_and_canada_hold_their_own_rate() {
        // Jamaica, Puerto Rico, Guam: +1, but not US prices.
        for to in ["%2B18765550100", "%2B17875550100", "%2B16715550100"] {
            let call = twilio(CALLS, &format!("To={to}&{SAY}")).unwrap();
            assert_eq!(call.quote, Quote::PerUnit { unit: Micros(350_000), max_units: 240 }, "{to}");
            let sms = twilio(MESSAGES, &format!("To={to}&Body=hi")).unwrap();
            assert_eq!(sms.quote, Quote::Fixed { amount: Micros(100_000 + 1_000) }, "{to}");
        }
        assert_eq!(NANP_ELSEWHERE.len(), 27);
        // A custom table without a row for them refuses rather than use the US price.
        let custom = |name: &str| match name {
            "TWILIO_ACCOUNT_SID" => Some(ACCOUNT.to_string()),
            "TWILIO_SMS_PRICES" => Some(r#"{"1": 0.0083}"#.to_string()),
            _ => None,
        };
        let input = |body: &'static str| PriceInput {
            method: "POST",
            path: MESSAGES,
            query: "",
            content_type: None,
            body: body.as_bytes(),
            vars: &custom,
        };
        assert_eq!(price(Vendor::Twilio, &input("To=%2B18765550100&Body=hi")).unwrap_err().kind(), "cost_unknown");
        assert!(price(Vendor::Twilio, &input("To=%2B14155550100&Body=hi")).is_ok());
    }

    #[test]
    fn calls_that_could_open_other_legs_are_refused() {
        for body in [
            "To=%2B14155550100&Url=https%3A%2F%2Fx.test%2Ftwiml",
            "To=%2B14155550100&ApplicationSid=AP1",
            "To=%2B14155550100&Twiml=%3CResponse%3E%3CDial%3E%2B15005550006%3C%2FDial%3E%3C%2FResponse%3E",
            "To=%2B14155550100&Twiml=%3CResponse%3E%3CRedirect%3Ehttps%3A%2F%2Fx.test%3C%2FRedirect%3E%3C%2FResponse%3E",
            "To=%2B14155550100&Twiml=%3CResponse%3E%3CGather%20action%3D%22%2Fx%22%2F%3E%3C%2FResponse%3E",
            "To=%2B14155550100&Twiml=%3CResponse%3E%3CEnqueue%3Eq%3C%2FEnqueue%3E%3C%2FResponse%3E",
        ] {
            assert_eq!(twilio(CALLS, body).unwrap_err().kind(), "cost_unknown", "{body}");
        }
        let ssml = "To=%2B14155550100&Twiml=%3CResponse%3E%3CSay%3E%3Cprosody%20rate%3D%22slow%22%3Ehi%3C%2Fprosody%3E%3C%2FSay%3E%3CPause%2F%3E%3CHangup%2F%3E%3C%2FResponse%3E";
        assert!(twilio(CALLS, ssml).is_ok(), "SSML inside <Say> and the safe verbs pass");
    }

    #[test]
    fn mms_is_priced_per_message_to_the_us_and_canada() {
        let mms = twilio(MESSAGES, "To=%2B14155550100&Body=hi&MediaUrl=https%3A%2F%2Fx.test%2Fa.png").unwrap();
        assert_eq!(mms.quote, Quote::Fixed { amount: Micros(40_000 + 1_000) });
        let forced = twilio(MESSAGES, &format!("To=%2B14155550100&SendAsMms=true&Body={}", "a".repeat(900))).unwrap();
        assert_eq!(forced.quote, Quote::Fixed { amount: Micros(40_000 + 1_000) }, "one MMS, not six segments");
    }

    #[test]
    fn account_and_credential_resources_are_refused() {
        let pin = |p: &str| upstream_path(p, &vars);
        for path in [
            "/2010-04-01/Accounts/AC1.json",
            "/2010-04-01/Accounts/ACsub.json",
            "/2010-04-01/Accounts/AC1/Keys.json",
            "/2010-04-01/Accounts/AC1/Keys/SK1.json",
            "/2010-04-01/Accounts/AC1/SigningKeys.json",
            "/2010-04-01/Accounts/AC1/Credentials/SIP.json",
        ] {
            assert_eq!(pin(path).unwrap_err().kind(), "endpoint_not_allowed", "{path}");
        }
    }

    #[test]
    fn paths_are_pinned_to_the_configured_account_and_json() {
        let pin = |p: &str| upstream_path(p, &vars);
        assert_eq!(
            pin("/2010-04-01/Accounts/ACother/Messages.json").unwrap(),
            format!("/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
        );
        assert_eq!(
            pin("/2010-04-01/Accounts/anything/Calls/CA1.json").unwrap(),
            format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/CA1.json")
        );
        for bad in [
            "/2010-04-01/Accounts/AC1/Messages.xml",
            "/2010-04-01/Accounts/AC1/Messages",
            "/2010-04-01/Accounts.json",
            "/v1/Services",
        ] {
            assert!(pin(bad).is_err(), "{bad}");
        }
        assert_eq!(
            upstream_path("/2010-04-01/Accounts/AC1/Messages.json", &|_| None).unwrap_err().kind(),
            "internal_error"
        );
    }

    #[test]
    fn prices_are_read_from_the_message_later() {
        assert_eq!(read_price(br#"{"sid":"SM1","price":null,"price_unit":"USD"}"#), PricePoll::NotYet);
        assert_eq!(
            read_price(br#"{"sid":"SM1","price":"-0.00830","price_unit":"USD"}"#),
            PricePoll::Priced(Micros(8_300))
        );
        assert_eq!(read_price(br#"{"price":"-0.05","price_unit":"EUR"}"#), PricePoll::NotYet);
        assert_eq!(read_price(b"<xml/>"), PricePoll::NotYet);
        assert_eq!(
            poll_path("/2010-04-01/Accounts/AC1/Messages.json", "SM42").as_deref(),
            Some("/2010-04-01/Accounts/AC1/Messages/SM42.json")
        );
        assert_eq!(poll_path("/2010-04-01/Accounts/AC1/Messages.json", "../x"), None);
        assert_eq!(read_answer(br#"{"sid":"SM42","price":null}"#).object_id.as_deref(), Some("SM42"));
    }
}
