//! Reading what a client sent: its credential and its body, each in one place.

use crate::core::error::ProxyError;
use crate::core::token::Authorization;
use worker::Request;

/// The credential of the `Authorization` header, if any.
pub fn authorization(req: &Request) -> Option<Authorization> {
    Authorization::parse(&req.headers().get("authorization").ok().flatten()?)
}

/// The body, refused with 413 past `limit` bytes: by its declared length before it is read,
/// and by its real length after.
pub async fn read_body(req: &mut Request, limit: usize) -> Result<Vec<u8>, ProxyError> {
    let declared = req.headers().get("content-length").ok().flatten().and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::PayloadTooLarge(limit));
    }
    let body = req.bytes().await.map_err(|_| ProxyError::InvalidRequest("could not read the body".into()))?;
    if body.len() > limit {
        return Err(ProxyError::PayloadTooLarge(limit));
    }
    Ok(body)
}
