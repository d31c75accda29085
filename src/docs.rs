//! The docs' tables that mirror code are held to it here: the error types and statuses, each
//! vendor's cost rules, the settings and their defaults, and the default price tables. A
//! generated block sits between `<!-- generated:NAME -->` and `<!-- /generated -->`; when one
//! drifts, the failure prints the block to paste.

use crate::core::cost::Cost;
use crate::core::error::ProxyError;
use crate::core::settings::KNOBS;
use crate::core::vendor::{twilio, Vendor};
use std::fs;
use std::path::Path;

fn read(doc: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

/// The text between a block's markers.
fn block<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<!-- generated:{name} -->\n");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find("<!-- /generated -->")? + start;
    Some(&text[start..end])
}

fn check_block(doc: &str, name: &str, want: &str) {
    let text = read(doc);
    let got = block(&text, name).unwrap_or_else(|| panic!("{doc} has no block {name}"));
    assert!(
        got == want,
        "{doc}: the {name} block drifted from the code. It should read:\n\n<!-- generated:{name} -->\n{want}<!-- /generated -->\n"
    );
}

fn cost_rules(vendor: Vendor) -> String {
    let mut out = String::from("| endpoint | cost |\n|---|---|\n");
    for rule in vendor.spec().cost_rules {
        let cost = match rule.cost {
            Cost::Free => "free".to_string(),
            Cost::Unpriceable(why) => format!("refused, `cost_unknown`: {why}"),
            Cost::Priced(_, how) => how.to_string(),
        };
        out.push_str(&format!("| `{} {}` | {cost} |\n", rule.method, rule.path));
    }
    out.push_str("| anything else | refused, `cost_unknown`: not in the cost table |\n");
    out
}

#[test]
fn cost_tables_are_the_cost_rules() {
    for vendor in Vendor::ALL {
        check_block("docs/vendors.md", &format!("cost-rules-{}", vendor.name()), &cost_rules(vendor));
    }
}

#[test]
fn the_settings_table_is_the_knobs() {
    let mut want = String::from("| name | default | |\n|---|---|---|\n");
    for k in KNOBS {
        let default = match (k.secret, k.default) {
            (true, _) => "secret".to_string(),
            (false, "") => "—".to_string(),
            (false, d) => format!("`{d}`"),
        };
        want.push_str(&format!("| `{}` | {default} | {} |\n", k.name, k.what));
    }
    check_block("docs/contract.md", "settings", &want);
}

#[test]
fn the_default_twilio_prices_are_the_code_s() {
    let mut want = String::from("| calling code | SMS per segment (USD) | voice per minute (USD) |\n|---|---|---|\n");
    for (code, sms) in twilio::DEFAULT_SMS_PRICES {
        let voice = twilio::DEFAULT_VOICE_PRICES.iter().find(|(c, _)| c == code).map_or("—", |(_, v)| v);
        want.push_str(&format!("| `{code}` | {sms} | {voice} |\n"));
    }
    for (code, voice) in twilio::DEFAULT_VOICE_PRICES {
        if !twilio::DEFAULT_SMS_PRICES.iter().any(|(c, _)| c == code) {
            want.push_str(&format!("| `{code}` | — | {voice} |\n"));
        }
    }
    want.push_str(&format!(
        "| each of the {} NANP codes outside the US and Canada: {} | {} | {} |\n",
        twilio::NANP_ELSEWHERE.len(),
        twilio::NANP_ELSEWHERE.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
        twilio::NANP_ELSEWHERE_SMS,
        twilio::NANP_ELSEWHERE_VOICE
    ));
    check_block("docs/vendors.md", "twilio-prices", &want);
}

/// Every error the code answers with has its row (`| status | \`type\` |`) in the contract's
/// table, and every row names a real one with its real status.
#[test]
fn the_error_table_is_the_error_enum() {
    let every = [
        ProxyError::Unauthorized,
        ProxyError::InvalidKey,
        ProxyError::KeyRevoked,
        ProxyError::KeyExpired,
        ProxyError::EndpointNotAllowed,
        ProxyError::HeaderNotAllowed(String::new()),
        ProxyError::ParameterNotAllowed(String::new()),
        ProxyError::PayloadTooLarge(0),
        ProxyError::TooManyAttempts { retry_after_secs: 0 },
        ProxyError::CostUnknown(String::new()),
        ProxyError::CurrencyNotAllowed,
        ProxyError::PerCallLimit,
        ProxyError::key_cap(0),
        ProxyError::BudgetExhausted { retry_after_secs: 0 },
        ProxyError::InvalidRequest(String::new()),
        ProxyError::UnsupportedMediaType(String::new()),
        ProxyError::NotFound,
        ProxyError::MethodNotAllowed(String::new()),
        ProxyError::Conflict(String::new()),
        ProxyError::IdempotencyInFlight,
        ProxyError::IdempotencyMismatch,
        ProxyError::VendorUnreachable,
        ProxyError::VendorAuthFailed,
        ProxyError::VendorNotConfigured,
        ProxyError::AdminNotConfigured,
        ProxyError::Internal,
    ];
    // A new variant fails to compile here until it is listed above.
    for e in &every {
        match e {
            ProxyError::Unauthorized
            | ProxyError::InvalidKey
            | ProxyError::KeyRevoked
            | ProxyError::KeyExpired
            | ProxyError::EndpointNotAllowed
            | ProxyError::HeaderNotAllowed(_)
            | ProxyError::ParameterNotAllowed(_)
            | ProxyError::PayloadTooLarge(_)
            | ProxyError::TooManyAttempts { .. }
            | ProxyError::CostUnknown(_)
            | ProxyError::CurrencyNotAllowed
            | ProxyError::PerCallLimit
            | ProxyError::CapExhausted { .. }
            | ProxyError::BudgetExhausted { .. }
            | ProxyError::InvalidRequest(_)
            | ProxyError::UnsupportedMediaType(_)
            | ProxyError::NotFound
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::Conflict(_)
            | ProxyError::IdempotencyInFlight
            | ProxyError::IdempotencyMismatch
            | ProxyError::VendorUnreachable
            | ProxyError::VendorAuthFailed
            | ProxyError::VendorNotConfigured
            | ProxyError::AdminNotConfigured
            | ProxyError::Internal => {}
        }
    }
    let contract = read("docs/contract.md");
    let rows: Vec<(u16, &str)> = contract
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let status = cells.get(1)?.parse::<u16>().ok()?;
            let kind = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((status, kind))
        })
        .collect();
    for e in &every {
        assert!(
            rows.contains(&(e.status(), e.kind())),
            "docs/contract.md has no row | {} | `{}` |",
            e.status(),
            e.kind()
        );
    }
    for (status, kind) in &rows {
        assert!(
            every.iter().any(|e| e.kind() == *kind && e.status() == *status),
            "docs/contract.md lists | {status} | `{kind}` |, which the code never answers"
        );
    }
}
