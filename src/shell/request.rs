//! Reading what a client sent: its credential and its body, each in one place.

use crate::core::error::ProxyError;
use crate::core::token::Authorization;
use futures_util::StreamExt;
use worker::Request;

/// The credential of the `Authorization` header, if any.
pub fn authorization(req: &Request) -> Option<Authorization> {
    Authorization::parse(&req.headers().get("authorization").ok().flatten()?)
}

/// The body, refused with 413 past `limit` bytes: by its declared length before it is read,
/// and, for a chunked body, as soon as the bytes read pass the limit, without reading on.
pub async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ProxyError> {
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::PayloadTooLarge(limit));
    }
    let Ok(mut stream) = req.stream() else {
        return Ok(Vec::new()); // no body at all
    };
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ProxyError::InvalidRequest("could not read the body".into()))?;
        if body.len() + chunk.len() > limit {
            return Err(ProxyError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
