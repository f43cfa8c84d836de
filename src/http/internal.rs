//! `POST /internal/v1/appends`: events a peer's outbox delivers to
//! mailboxes this node owns. Signed with the cluster's shared secret.

use hyper::Request;
use hyper::body::Incoming;

use super::Ctx;
use super::error::ApiError;
use super::request::read_body;
use super::response::{Response, no_content};
use crate::service::outbox::{SIGNATURE_HEADER, decode};

/// A push holds at most one outbox round (512 entries of bounded events).
const MAX_PUSH_BYTES: usize = 64 << 20;

pub(super) async fn appends(ctx: &Ctx, req: Request<Incoming>) -> Result<Response, ApiError> {
    let signature = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or(ApiError::BadSignature)?;
    let body = read_body(req, MAX_PUSH_BYTES, ctx.limits.body_timeout).await?;
    if !ctx.service.cluster().verify(&body, &signature) {
        return Err(ApiError::BadSignature);
    }
    let entries = decode(&body).ok_or_else(|| ApiError::field("malformed push body"))?;
    ctx.service.take_appends(entries).await?;
    Ok(no_content())
}
