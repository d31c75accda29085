//! Screening of proxied requests for the tricks an untrusted agent may try: overriding the
//! method, steering the upstream host, smuggling an encoded body past pricing. A screened
//! request is refused before anything is held or sent.

use crate::core::cost::Form;
use crate::core::error::ProxyError;

/// Headers that ask some servers to treat the request as another method.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];
/// Headers that ask some servers to route to another host or path.
const TARGET_OVERRIDES: [&str; 3] = ["x-forwarded-host", "x-original-url", "x-rewrite-url"];

pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the screen looks at.
pub struct RequestShape<'a> {
    /// The authority (host and port) of the URL the runtime parsed; with an absolute-form
    /// target it is the one the client wrote in the request line.
    pub url_host: &'a str,
    pub host_header: Option<&'a str>,
    /// Lower-case names of every request header.
    pub header_names: &'a [String],
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
}

/// What the screen found that the key's own rules must still judge.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Screened {
    /// The request asks for `expand[]`: allowed only on keys with `allow_expand`.
    pub expand: bool,
}

pub fn screen(shape: &RequestShape<'_>) -> Result<Screened, ProxyError> {
    let bad = |why: &str| Err(ProxyError::InvalidRequest(why.into()));
    if let Some(host) = shape.host_header {
        if !host.eq_ignore_ascii_case(shape.url_host) {
            return bad("the request target names another host than Host; send origin-form targets");
        }
    }
    for name in shape.header_names {
        if METHOD_OVERRIDES.contains(&name.as_str()) {
            return bad("method override headers are refused: send the real method");
        }
        if TARGET_OVERRIDES.contains(&name.as_str()) {
            return bad("host and URL override headers are refused");
        }
        if name == "content-encoding" {
            return Err(ProxyError::UnsupportedMediaType("unencoded (no Content-Encoding)".into()));
        }
    }
    let query = Form::parse(shape.query.as_bytes())?;
    let is_form = shape
        .content_type
        .is_none_or(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    let body = if is_form && !shape.body.is_empty() { Some(Form::parse(shape.body)?) } else { None };
    let forms = std::iter::once(&query).chain(body.as_ref());
    let mut expand = false;
    for form in forms {
        if form.has("_method") {
            return bad("a _method parameter is refused: send the real method");
        }
        expand |= form.keys().any(|k| k == "expand" || k.starts_with("expand["));
    }
    Ok(Screened { expand })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape<'a>(headers: &'a [String], query: &'a str, body: &'a [u8]) -> RequestShape<'a> {
        RequestShape {
            url_host: "kb.example",
            host_header: Some("kb.example"),
            header_names: headers,
            query,
            content_type: Some("application/x-www-form-urlencoded"),
            body,
        }
    }

    #[test]
    fn ordinary_requests_pass() {
        let headers = vec!["content-type".to_string(), "idempotency-key".to_string()];
        assert_eq!(screen(&shape(&headers, "limit=3", b"amount=1&currency=usd")), Ok(Screened { expand: false }));
    }

    #[test]
    fn overrides_are_refused() {
        for name in METHOD_OVERRIDES.iter().chain(&TARGET_OVERRIDES) {
            let headers = vec![name.to_string()];
            assert_eq!(screen(&shape(&headers, "", b"")).unwrap_err().kind(), "invalid_request", "{name}");
        }
        assert_eq!(screen(&shape(&[], "_method=DELETE", b"")).unwrap_err().kind(), "invalid_request");
        assert_eq!(screen(&shape(&[], "", b"amount=1&_method=GET")).unwrap_err().kind(), "invalid_request");
        assert_eq!(screen(&shape(&[], "%5Fmethod=GET", b"")).unwrap_err().kind(), "invalid_request", "decoded first");
    }

    #[test]
    fn another_host_in_the_request_line_is_refused() {
        let mut s = shape(&[], "", b"");
        s.url_host = "evil.example";
        assert_eq!(screen(&s).unwrap_err().kind(), "invalid_request");
        s.url_host = "KB.example";
        s.host_header = Some("kb.example");
        assert!(screen(&s).is_ok(), "host names compare case-insensitively");
    }

    #[test]
    fn encoded_bodies_are_refused() {
        let headers = vec!["content-encoding".to_string()];
        assert_eq!(screen(&shape(&headers, "", b"")).unwrap_err().status(), 415);
    }

    #[test]
    fn expand_is_found_in_query_or_body() {
        assert!(screen(&shape(&[], "expand%5B%5D=customer", b"")).unwrap().expand);
        assert!(screen(&shape(&[], "", b"expand[0]=customer")).unwrap().expand);
        assert!(screen(&shape(&[], "expand=customer", b"")).unwrap().expand);
        assert!(!screen(&shape(&[], "expanded=1", b"")).unwrap().expand);
        let mut json = shape(&[], "", br#"{"expand":1}"#);
        json.content_type = Some("application/json");
        assert!(!screen(&json).unwrap().expand, "JSON bodies are the vendor's to read");
    }
}
