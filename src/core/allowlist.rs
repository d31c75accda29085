//! Endpoint allowlists and the request-path rules they rely on.
//!
//! A request path is checked to be canonical *before* it is matched, and the bytes that were
//! matched are the bytes that are forwarded. So the path is never decoded or normalised here:
//! anything that a server further on might read differently (dot segments, percent escapes,
//! empty segments, backslashes) is refused instead.

pub const MAX_PATH_LEN: usize = 1_024;
pub const MAX_ENDPOINTS: usize = 64;
const MAX_TEMPLATE_LEN: usize = 256;
const METHODS: [&str; 5] = ["GET", "POST", "DELETE", "PATCH", "PUT"];

/// Checks that `path` (the raw path of the request URL, without query) is canonical.
pub fn check_canonical_path(path: &str) -> Result<(), &'static str> {
    if path.len() > MAX_PATH_LEN {
        return Err("path is too long");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("path must start with '/'");
    };
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err("path has an empty segment or a trailing slash");
        }
        if segment == "." || segment == ".." {
            return Err("path has a dot segment");
        }
        if segment.bytes().any(|b| b == b'%') {
            return Err("path has a percent-escape; send ids unescaped");
        }
        if !segment.bytes().all(is_segment_byte) {
            return Err("path has a character outside [A-Za-z0-9-._~:@]");
        }
    }
    Ok(())
}

/// Bytes allowed in a path segment: RFC 3986 unreserved plus ':' and '@'. Vendor ids never
/// need more, and everything else (';', ',', '\\', controls, non-ASCII) can be read
/// differently by different servers.
fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@')
}

/// Validates one allowlist entry, `"METHOD /path/{param}"`, returning its method and path.
/// Methods are upper case; nothing is normalised, so what is stored is what is matched.
pub fn parse_endpoint(entry: &str) -> Result<(&str, &str), String> {
    if entry.len() > MAX_TEMPLATE_LEN {
        return Err(format!("entry is longer than {MAX_TEMPLATE_LEN} characters"));
    }
    let Some((method, path)) = entry.split_once(' ') else {
        return Err(format!("{entry:?} must look like \"POST /v1/payment_intents\""));
    };
    if !METHODS.contains(&method) {
        return Err(format!("{entry:?} has method {method:?}; use one of {}", METHODS.join(", ")));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{entry:?}: the path must start with '/'"));
    };
    for segment in rest.split('/') {
        let ok = if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        } else {
            !segment.is_empty() && segment != "." && segment != ".." && segment.bytes().all(is_segment_byte)
        };
        if !ok {
            return Err(format!(
                "{entry:?}: segment {segment:?} must be a literal of [A-Za-z0-9-._~:@] or a whole-segment {{param}}"
            ));
        }
    }
    Ok((method, path))
}

/// Does `path` fit `template`? Literal segments compare exactly and case-sensitively; a
/// `{param}` segment takes any one non-empty segment. Both must already be canonical.
pub fn template_matches(template: &str, path: &str) -> bool {
    let (Some(template), Some(path)) = (template.strip_prefix('/'), path.strip_prefix('/')) else {
        return false;
    };
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let is_param = ts.starts_with('{') && ts.ends_with('}');
                if ps.is_empty() || (!is_param && ts != ps) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// True if some entry of `allowed` (each `"METHOD /template"`) admits `method` and `path`.
pub fn allows<S: AsRef<str>>(allowed: &[S], method: &str, path: &str) -> bool {
    allowed.iter().any(|entry| match entry.as_ref().split_once(' ') {
        Some((m, template)) => m == method && template_matches(template, path),
        None => false,
    })
}

/// Does the entry `outer` admit every call `inner` admits? Same method and segment count;
/// each segment of `outer` is a `{param}` or the same literal (an `inner` `{param}` needs an
/// `outer` `{param}`). Used to check that a delegated allowlist only narrows.
pub fn covers(outer: &str, inner: &str) -> bool {
    let (Some((om, ot)), Some((im, it))) = (outer.split_once(' '), inner.split_once(' ')) else {
        return false;
    };
    let is_param = |s: &str| s.starts_with('{') && s.ends_with('}');
    let (os, is): (Vec<&str>, Vec<&str>) = (ot.split('/').collect(), it.split('/').collect());
    om == im && os.len() == is.len() && os.iter().zip(&is).all(|(o, i)| is_param(o) || (o == i && !is_param(i)))
}

/// Whether every entry of `inner` is covered by some entry of `outer`; the first that is not.
pub fn first_uncovered<'a, S: AsRef<str>>(outer: &[S], inner: &'a [String]) -> Option<&'a str> {
    inner.iter().map(String::as_str).find(|i| !outer.iter().any(|o| covers(o.as_ref(), i)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_narrower_entry_is_covered_and_a_wider_one_is_not() {
        assert!(covers("POST /v1/payment_intents", "POST /v1/payment_intents"));
        assert!(covers("GET /v1/charges/{id}", "GET /v1/charges/ch_1"));
        assert!(covers("GET /v1/charges/{id}", "GET /v1/charges/{other}"));
        assert!(!covers("GET /v1/charges/ch_1", "GET /v1/charges/{id}"));
        assert!(!covers("GET /v1/charges/{id}", "POST /v1/charges/{id}"));
        assert!(!covers("GET /v1/charges", "GET /v1/charges/{id}"));
        assert!(!covers("GET /v1/charges/{id}", "GET /v1/charges"));
        let parent = vec!["POST /v1/payment_intents".to_string(), "GET /v1/charges/{id}".into()];
        assert_eq!(first_uncovered(&parent, &["GET /v1/charges/ch_9".into()]), None);
        assert_eq!(first_uncovered(&parent, &["POST /v1/refunds".into()]), Some("POST /v1/refunds"));
    }

    #[test]
    fn canonical_paths_pass() {
        for ok in ["/v1/payment_intents", "/v1/payment_intents/pi_123/capture", "/a", "/v1/x~y:z@w.json"] {
            assert_eq!(check_canonical_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn non_canonical_paths_are_refused() {
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        for bad in [
            "",
            "v1/payment_intents",
            "/",
            "//v1/payment_intents",
            "/v1//payment_intents",
            "/v1/payment_intents/",
            "/v1/./payment_intents",
            "/v1/../v1/payouts",
            "/v1/%2e%2e/payouts",
            "/v1/%2E/x",
            "/v1/payment_intents%2F..%2Fpayouts",
            "/v1\\payouts",
            "/v1/pi;x=1",
            "/v1/caf\u{e9}",
            "/v1/a\tb",
            "/v1/a b",
            "/v1/%252e",
            "/v1/pi?x",
            "/v1/pi#x",
            long.as_str(),
        ] {
            assert!(check_canonical_path(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn endpoint_entries_are_validated() {
        assert_eq!(parse_endpoint("POST /v1/payment_intents"), Ok(("POST", "/v1/payment_intents")));
        assert!(parse_endpoint("POST /v1/payment_intents/{id}/capture").is_ok());
        for bad in [
            "post /v1/x",
            "POST  /v1/x",
            "POST v1/x",
            "POST /v1/x/",
            "POST /v1//x",
            "POST /v1/{}/x",
            "POST /v1/{id",
            "POST /v1/x{id}",
            "FETCH /v1/x",
            "POST",
            "POST /v1/../x",
            "POST /v1/x?y=1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn matching_is_exact_and_case_sensitive() {
        let allowed = ["POST /v1/payment_intents", "POST /v1/payment_intents/{id}/capture", "GET /v1/charges/{id}"];
        assert!(allows(&allowed, "POST", "/v1/payment_intents"));
        assert!(allows(&allowed, "POST", "/v1/payment_intents/pi_1/capture"));
        assert!(allows(&allowed, "GET", "/v1/charges/ch_1"));
        assert!(!allows(&allowed, "GET", "/v1/payment_intents"), "method matters");
        assert!(!allows(&allowed, "post", "/v1/payment_intents"), "method case matters");
        assert!(!allows(&allowed, "POST", "/v1/Payment_Intents"), "path case matters");
        assert!(!allows(&allowed, "POST", "/v1/payment_intents/pi_1"), "length matters");
        assert!(!allows(&allowed, "POST", "/v1/payment_intents/pi_1/capture/x"));
        assert!(!allows(&allowed, "POST", "/v1/payouts"));
        assert!(!allows(&allowed, "GET", "/v1/charges/"), "a param needs a non-empty segment");
        assert!(!allows(&[] as &[&str], "GET", "/v1/charges"));
    }
}
