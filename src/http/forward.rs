//! Passing a request to the node that owns it. Any node accepts any
//! request; one whose user or conversation another node owns is sent on
//! over the pooled peer client with the client's own credentials, and the
//! owner's answer comes back as it is.
//!
//! A forwarded request carries `x-carrier-hop`. A node that receives one
//! for a key it does not own answers `503` (the ring is changing and the
//! two views disagree) instead of passing it on again, so a request makes
//! at most one hop and never loops.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Method;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};

use super::Ctx;
use super::error::ApiError;
use super::response::Response;
use crate::cluster::{Peer, Route};

/// Marks a request another node passed on (its value: that node's id).
pub(super) const HOP: &str = "x-carrier-hop";
/// The hold a forwarded poll was given by the node the client reached.
pub(super) const HOLD_MS: &str = "x-carrier-hold-ms";

/// Headers of the owner's answer that the client must see.
const ANSWER_HEADERS: [&str; 6] = [
    "x-carrier-timed-out",
    "content-type",
    "cache-control",
    "retry-after",
    "idempotent-replayed",
    "x-accel-buffering",
];

/// Whether the request was passed on by a peer: its `x-carrier-hop` is a
/// peer's signature (`cluster/signing.rs`) of the method, the path and
/// query, and the client's `Authorization`, so a client cannot pose as a
/// peer (forwarded requests skip the send rate limit, taken at the edge),
/// and a captured hop serves no other user and expires. A single node
/// takes none.
pub(super) fn is_hop(ctx: &Ctx, req: &hyper::Request<hyper::body::Incoming>) -> bool {
    // Most requests carry no hop: nothing is built for them.
    let Some(value) = req.headers().get(HOP).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let authorization = req
        .headers()
        .get(AUTHORIZATION)
        .map_or(&b""[..], |v| v.as_bytes());
    ctx.service
        .cluster()
        .check_call(value, req.method().as_str(), &path_and_query(req.uri()))
        .and_then(|claim| claim.covers(authorization))
        .is_ok()
}

/// The peer to pass a request for `key` to, or `None` to serve it here.
pub(super) fn owner_of<'a>(
    ctx: &'a Ctx,
    key: &[u8],
    hop: bool,
) -> Result<Option<&'a Peer>, ApiError> {
    match ctx.service.cluster().route(key) {
        Route::Local => Ok(None),
        Route::Remote(_) if hop => Err(ApiError::PeerUnavailable(
            "the ring is changing: nodes disagree about who owns this request; retry".into(),
        )),
        Route::Remote(peer) => Ok(Some(peer)),
    }
}

/// What of the client's request is passed on.
pub(super) struct Outgoing<'a> {
    pub method: Method,
    pub path_and_query: String,
    pub authorization: Option<HeaderValue>,
    pub extra: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    pub timeout: Duration,
    pub peer: &'a Peer,
}

pub(super) async fn forward(ctx: &Ctx, out: Outgoing<'_>) -> Result<Response, ApiError> {
    let cluster = ctx.service.cluster();
    let authorization = out
        .authorization
        .as_ref()
        .map_or(&b""[..], |v| v.as_bytes());
    let signature = cluster.sign_call(out.method.as_str(), &out.path_and_query, authorization);
    let hop = HeaderValue::from_str(&signature)
        .map_err(|_| ApiError::PeerUnavailable("this node's id is not a header value".into()))?;
    let mut headers = vec![(HeaderName::from_static(HOP), hop)];
    if let Some(auth) = out.authorization {
        headers.push((AUTHORIZATION, auth));
    }
    if !out.body.is_empty() {
        headers.push((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    }
    headers.extend(out.extra);
    ctx.service.metrics().requests_forwarded.inc();
    let answer = cluster
        .client
        .call(
            out.peer.addr,
            out.method,
            &out.path_and_query,
            &headers,
            out.body,
            out.timeout,
        )
        .await
        .map_err(|e| ApiError::PeerUnavailable(format!("the node owning this request: {e}")))?;
    let mut response = hyper::Response::new(Full::new(answer.body));
    *response.status_mut() = answer.status;
    for name in ANSWER_HEADERS {
        if let Some(value) = answer.headers.get(name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    if !response.headers().contains_key(CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(response)
}

/// Passes the whole request on as it came (its body read first, within
/// the usual limits).
pub(super) async fn pass_on(
    ctx: &Ctx,
    peer: &Peer,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Response, ApiError> {
    let method = req.method().clone();
    let path_and_query = path_and_query(req.uri());
    let authorization = req.headers().get(AUTHORIZATION).cloned();
    let body = if method == Method::GET {
        Bytes::new()
    } else {
        super::request::read_body(req, ctx.limits.max_body, ctx.limits.body_timeout).await?
    };
    forward(
        ctx,
        Outgoing {
            method,
            path_and_query,
            authorization,
            extra: Vec::new(),
            body,
            timeout: ctx.service.cluster().settings.forward_timeout,
            peer,
        },
    )
    .await
}

pub(super) fn path_and_query(uri: &hyper::Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

/// What a handler keeps of its request to pass it on once the body told
/// it who owns the request.
pub(super) struct Held {
    method: Method,
    path_and_query: String,
    authorization: Option<HeaderValue>,
}

impl Held {
    pub(super) fn of(req: &hyper::Request<hyper::body::Incoming>) -> Held {
        Held {
            method: req.method().clone(),
            path_and_query: path_and_query(req.uri()),
            authorization: req.headers().get(AUTHORIZATION).cloned(),
        }
    }

    /// Passes the request on to the owner of `key` if another node owns
    /// it; `None` to serve it here.
    pub(super) async fn pass_if_remote(
        self,
        ctx: &Ctx,
        key: &[u8],
        hop: bool,
        body: Bytes,
    ) -> Option<Result<Response, ApiError>> {
        let peer = match owner_of(ctx, key, hop) {
            Ok(None) => return None,
            Ok(Some(peer)) => peer,
            Err(e) => return Some(Err(e)),
        };
        Some(
            forward(
                ctx,
                Outgoing {
                    method: self.method,
                    path_and_query: self.path_and_query,
                    authorization: self.authorization,
                    extra: Vec::new(),
                    body,
                    timeout: ctx.service.cluster().settings.forward_timeout,
                    peer,
                },
            )
            .await,
        )
    }
}
