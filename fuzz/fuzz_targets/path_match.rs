//! Fuzzes request-path canonicalization, allowlist entries and template matching together.
//!
//! The proxy forwards exactly the bytes it matched, so these checks are the whole defence
//! against a path that one server reads as allowed and another as something else.
//!
//! Every input is read two ways:
//! - as text, `ENTRY\nPATH[\nMETHOD]`, UTF-8 read lossily, so the seeds under
//!   `fuzz/seeds/path_match/` stay readable and raw bytes reach every function;
//! - decoded with `arbitrary` into a template and a path built segment by segment from it,
//!   so that matches, and near misses across `{param}` segments, are common instead of
//!   needing luck with raw bytes.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use keybrake::core::allowlist::{allows, check_canonical_path, parse_endpoint, template_matches, MAX_PATH_LEN};
use keybrake::core::routing::{route, Route, KNOWN_METHODS};
use keybrake::core::vendor::Vendor;
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 5] = ["GET", "POST", "DELETE", "PATCH", "PUT"];
/// Methods `parse_endpoint` must refuse, mixed in so the method check is exercised too.
const BAD_METHODS: [&str; 5] = ["get", "FETCH", "", "POST ", "HEAD"];

/// Pieces a segment is built from: the allowed alphabet, plus everything some server decodes,
/// folds or splits on.
const TOKENS: [&str; 40] = [
    "a", "Z", "0", "v1", "pi_123", "id", "-", ".", "_", "~", ":", "@", "..", "%", "%2e", "%2E", "%2f", "%2F", "%252e",
    "%00", "/", "\\", "{", "}", "{id}", ";", "?", "#", " ", "\t", "\n", "\0", "\u{7f}", "\u{e9}", "\u{FF0E}",
    "\u{2215}", "+", "&", "=", "vault",
];

#[derive(Arbitrary, Debug)]
struct Structured {
    method: u8,
    request_method: u8,
    segments: Vec<Seg>,
    /// Extra segments on the path only (too-long paths, trailing slashes).
    extra: Vec<Piece>,
    /// Drop the path's last segment (too-short paths).
    drop_last: bool,
    /// Put a vendor prefix or an admin prefix in front of the path.
    prefix: u8,
}

#[derive(Arbitrary, Debug)]
enum Seg {
    /// A literal template segment of allowed bytes; the path has the same text, or `other`.
    Literal { text: Vec<u8>, other: Option<Piece> },
    /// A `{name}` template segment; the path has `value` there.
    Param { name: Vec<u8>, value: Piece },
    /// Any template segment (mostly refused by `parse_endpoint`); the path has `path`.
    Hostile { template: Piece, path: Piece },
}

#[derive(Arbitrary, Debug)]
enum Piece {
    /// Only bytes a canonical segment may hold, so most paths get past the canonical check.
    Segment(Vec<u8>),
    /// Allowed and hostile pieces mixed.
    Tokens(Vec<u8>),
    Raw(String),
}

const SEGMENT_BYTES: &[u8] = b"abcxyzABCXYZ0189-._~:@";
const NAME_BYTES: &[u8] = b"abcidxyzAZ019_";

impl Piece {
    fn render(&self) -> String {
        match self {
            Piece::Segment(ix) => from_set(SEGMENT_BYTES, ix),
            Piece::Tokens(ix) => ix.iter().map(|&i| TOKENS[i as usize % TOKENS.len()]).collect(),
            Piece::Raw(s) => s.clone(),
        }
    }
}

fn from_set(set: &[u8], ix: &[u8]) -> String {
    ix.iter().map(|&i| set[i as usize % set.len()] as char).collect()
}

fn pick<'a>(choice: u8) -> &'a str {
    let i = choice as usize % (METHODS.len() * 3 + BAD_METHODS.len());
    if i < METHODS.len() * 3 {
        METHODS[i % METHODS.len()]
    } else {
        BAD_METHODS[i - METHODS.len() * 3]
    }
}

fn from_structured(s: &Structured) -> (String, String, String) {
    let mut template = String::new();
    let mut path = String::new();
    for seg in &s.segments {
        template.push('/');
        path.push('/');
        match seg {
            Seg::Literal { text, other } => {
                let text = from_set(SEGMENT_BYTES, text);
                template.push_str(&text);
                path.push_str(&other.as_ref().map_or(text, Piece::render));
            }
            Seg::Param { name, value } => {
                template.push('{');
                template.push_str(&from_set(NAME_BYTES, name));
                template.push('}');
                path.push_str(&value.render());
            }
            Seg::Hostile { template: t, path: p } => {
                template.push_str(&t.render());
                path.push_str(&p.render());
            }
        }
    }
    if s.drop_last {
        if let Some(i) = path.rfind('/') {
            path.truncate(i);
        }
    }
    for piece in &s.extra {
        path.push('/');
        path.push_str(&piece.render());
    }
    let prefix = match s.prefix % 8 {
        0 => "/stripe",
        1 => "/twilio",
        2 => "/resend",
        3 => "/vault",
        _ => "",
    };
    let path = format!("{prefix}{path}");
    let entry = format!("{} {template}", pick(s.method));
    (entry, path, pick(s.request_method).to_string())
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The whole input, newlines and all, must not make any function panic.
    check(&text, &text, "GET");
    let mut lines = text.splitn(3, '\n');
    let entry = lines.next().unwrap_or("");
    let path = lines.next().unwrap_or("");
    let method = lines.next().unwrap_or_else(|| entry.split(' ').next().unwrap_or(""));
    check(entry, path, method);

    if let Ok(s) = Structured::arbitrary_take_rest(Unstructured::new(data)) {
        let (entry, path, method) = from_structured(&s);
        check(&entry, &path, &method);
    }
});

fn check(entry: &str, path: &str, method: &str) {
    // (c) No function on the request path may panic on any input: a panic in the Worker is a
    // 500 for everyone sharing the isolate, and the path comes straight from the caller.
    let canonical = check_canonical_path(path);
    let parsed = parse_endpoint(entry);
    let raw_template = entry.split_once(' ').map_or(entry, |(_, t)| t);
    let matched_raw = template_matches(raw_template, path);
    let _ = template_matches(path, raw_template);
    let _ = template_matches(entry, entry);
    let allowed = allows(&[entry], method, path);

    // `allows` is exactly "same method, and the template matches"; nothing else decides.
    assert_eq!(
        allowed,
        entry.split_once(' ').is_some_and(|(m, _)| m == method) && matched_raw,
        "allows() disagrees with template_matches() for {entry:?} {method:?} {path:?}"
    );

    if canonical.is_ok() {
        assert_canonical_shape(path);
        check_route(path, method);
    }

    let Ok((m, template)) = parsed else { return };
    // What is stored is what is matched: parsing splits the entry and changes nothing.
    assert_eq!(format!("{m} {template}"), entry);
    assert!(METHODS.contains(&m), "parse_endpoint accepted method {m:?}");
    // Every accepted entry can be matched by some canonical path; a template that nothing
    // canonical fits would be an allowlist entry that silently never works.
    let filled = fill_params(template, "x");
    assert!(check_canonical_path(&filled).is_ok(), "{entry:?} admits no canonical path ({filled:?})");
    assert!(template_matches(template, &filled), "{entry:?} does not match its own filling {filled:?}");

    if canonical.is_err() {
        return;
    }
    let matched = template_matches(template, path);
    let expected = reconstruct(template, path).as_deref() == Some(path);
    // (a) A match means: same number of segments, every literal equal byte for byte, and a
    // `{param}` stands for exactly one path segment. Then the path is the template with each
    // param replaced by the path's segment. The converse is checked too, so a matcher that
    // refuses what the allowlist clearly grants is caught as well as one that grants too much.
    assert_eq!(
        matched, expected,
        "template_matches({template:?}, {path:?}) = {matched}, reconstruction says {expected}"
    );
    if matched {
        // (b) again, on the matched path itself: what is forwarded has no dot, empty,
        // percent-escaped, backslashed, control or non-ASCII segment.
        assert_canonical_shape(path);
        assert!(allows(&[entry], m, path));
        for other in METHODS.iter().filter(|&&o| o != m) {
            // The method is part of the grant: `GET /x` never admits `DELETE /x`.
            assert!(!allows(&[entry], other, path), "{entry:?} admitted {other} {path:?}");
        }
    }
}

/// `template` with each `{param}` segment replaced by the matching segment of `path`, or
/// None when `path` has fewer segments. Extra path segments show up as a mismatch.
fn reconstruct(template: &str, path: &str) -> Option<String> {
    let mut path_segments = path.strip_prefix('/')?.split('/');
    let mut out = String::new();
    for t in template.strip_prefix('/')?.split('/') {
        let p = path_segments.next()?;
        out.push('/');
        out.push_str(if is_param(t) { p } else { t });
    }
    Some(out)
}

fn fill_params(template: &str, value: &str) -> String {
    template.split('/').map(|t| if is_param(t) { value } else { t }).collect::<Vec<_>>().join("/")
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}') && segment.len() >= 2
}

/// (b) What `check_canonical_path` accepting a path promises: nothing in it can be decoded,
/// normalised or split differently by a server further on.
fn assert_canonical_shape(path: &str) {
    // Bounded, so a long path cannot cost more than the limit says.
    assert!(path.len() <= MAX_PATH_LEN, "accepted a {}-byte path", path.len());
    // Non-ASCII can be normalised (NFKC turns U+FF0E into '.') into a different path.
    assert!(path.is_ascii(), "accepted non-ASCII path {path:?}");
    let rest = path.strip_prefix('/').unwrap_or_else(|| panic!("accepted {path:?} without a leading '/'"));
    for segment in rest.split('/') {
        // Empty segments are collapsed by some servers: `/v1//x` may become `/v1/x`.
        assert!(!segment.is_empty(), "accepted an empty segment in {path:?}");
        // Dot segments are resolved by URL parsers: `/v1/allowed/../admin`.
        assert!(segment != "." && segment != "..", "accepted a dot segment in {path:?}");
        for b in segment.bytes() {
            // '%' is decoded upstream (`%2e%2e`, `%2f`), '\\' is a separator to some servers,
            // controls are stripped or split on, '?' and '#' end the path.
            assert!(
                b != b'%' && b != b'\\' && b != b'?' && b != b'#' && !b.is_ascii_control(),
                "accepted byte {b:#04x} in {path:?}"
            );
        }
    }
}

/// A canonical path reaches the proxy unchanged: the bytes checked here are the bytes the
/// router hands on, minus only a `/{vendor}` prefix.
fn check_route(path: &str, method: &str) {
    let first = path[1..].split('/').next().unwrap_or("");
    let got = route(method, path);
    if !KNOWN_METHODS.contains(&method) {
        // A method the runtime passes on but nothing takes is refused before any routing.
        assert_eq!(got, Route::UnknownMethod, "{method:?} {path:?}");
    } else if path == "/openapi.json" || first == "vault" {
        assert!(!matches!(got, Route::Proxy { .. }), "admin path {path:?} routed to the proxy");
    } else if let Some(vendor) = Vendor::from_name(first) {
        let rest = &path[1 + first.len()..];
        assert_eq!(got, Route::Proxy { vendor: Some(vendor), path: rest });
        assert_eq!(format!("/{}{rest}", vendor.name()), path);
        // The path after the prefix is canonical too (or empty, which the proxy refuses).
        assert!(rest.is_empty() || check_canonical_path(rest).is_ok(), "{path:?} left {rest:?}");
    } else {
        // The bare case: the very same bytes, not a copy or a rewrite.
        match got {
            Route::Proxy { vendor: None, path: p } => {
                assert_eq!(p, path);
                assert!(std::ptr::eq(p, path), "route() returned a different slice for {path:?}");
            }
            other => panic!("bare path {path:?} routed to {other:?}"),
        }
    }
}
