//! Calls between nodes, signed with the cluster's shared secret:
//! `POST /internal/v1/appends`, events a peer's outbox delivers to
//! mailboxes this node owns; `POST /internal/v1/watch`, a node with polls
//! parked on a large group's stream asks its owner to be told; and
//! `POST /internal/v1/wake`, the owner tells it the stream moved on.

use hyper::Request;
use hyper::body::Incoming;

use super::Ctx;
use super::error::ApiError;
use super::request::read_body;
use super::response::{Response, no_content};
use crate::cluster::peer_api::SIGNATURE_HEADER;
use crate::service::fanout::parse_wake;
use crate::service::outbox::decode;

/// A push holds at most one outbox round (512 entries of bounded events).
const MAX_PUSH_BYTES: usize = 64 << 20;

/// A wake names one stream and a place in it.
const MAX_WAKE_BYTES: usize = 64;

/// The body of a signed call. The signature's head is checked before a
/// byte of the body is read, so only a peer can make this node buffer one.
async fn signed_body(
    ctx: &Ctx,
    req: Request<Incoming>,
    max: usize,
) -> Result<bytes::Bytes, ApiError> {
    let claim = check_signature(ctx, &req)?;
    let body = read_body(req, max, ctx.limits.body_timeout).await?;
    claim.covers(&body).map_err(ApiError::BadSignature)?;
    Ok(body)
}

/// The signature on a call from a peer, its head checked.
pub(super) fn check_signature(
    ctx: &Ctx,
    req: &Request<Incoming>,
) -> Result<crate::cluster::Claim, ApiError> {
    let value = req
        .headers()
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(ApiError::BadSignature(
            crate::cluster::SignatureError::Malformed,
        ))?;
    ctx.service
        .cluster()
        .check_call(value, req.method().as_str(), req.uri().path())
        .map_err(ApiError::BadSignature)
}

pub(super) async fn wake(ctx: &Ctx, req: Request<Incoming>) -> Result<Response, ApiError> {
    let body = signed_body(ctx, req, MAX_WAKE_BYTES).await?;
    let (g, pos) = parse_wake(&body).ok_or_else(|| ApiError::field("malformed wake body"))?;
    ctx.service.stream_woken(g, pos).await?;
    Ok(no_content())
}

pub(super) async fn watch(ctx: &Ctx, req: Request<Incoming>) -> Result<Response, ApiError> {
    let body = signed_body(ctx, req, MAX_WAKE_BYTES).await?;
    ctx.service.stream_watched(&body)?;
    Ok(no_content())
}

pub(super) async fn appends(ctx: &Ctx, req: Request<Incoming>) -> Result<Response, ApiError> {
    let body = signed_body(ctx, req, MAX_PUSH_BYTES).await?;
    let entries = decode(&body).ok_or_else(|| ApiError::field("malformed push body"))?;
    ctx.service.take_appends(entries).await?;
    Ok(no_content())
}
