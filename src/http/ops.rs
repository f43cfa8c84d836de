//! `/healthz`, `/readyz`, `/metrics`: unauthenticated, for operators.

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;

use super::Ctx;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;

use super::error::ApiError;
use super::response::{Response, json_value, text};
use crate::auth::AuthError;

pub(super) fn healthz() -> Response {
    json_value(StatusCode::OK, &json!({"status": "ok"}))
}

pub(super) async fn readyz(ctx: &Ctx) -> Response {
    if ctx.service.ready().await {
        json_value(StatusCode::OK, &json!({"status": "ready"}))
    } else {
        json_value(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not ready", "error": {"code": "unavailable", "message": "storage unreachable or shutting down"}}),
        )
    }
}

/// `GET /v1/cluster`: the ring as this node sees it (an extension), for
/// peers (signed) and operators (the metrics token). It names peers and
/// their addresses, so strangers get `401`.
pub(super) fn cluster(ctx: &Ctx, req: &Request<Incoming>) -> Result<Response, ApiError> {
    let by_peer = super::internal::check_signature(ctx, req)
        .and_then(|claim| claim.covers(b"").map_err(ApiError::BadSignature))
        .is_ok();
    if !by_peer {
        operator(ctx, req, true)?;
    }
    Ok(json_value(StatusCode::OK, &ctx.service.cluster().view()))
}

/// Checks the metrics token. `required`: refuse even when none is set.
fn operator(ctx: &Ctx, req: &Request<Incoming>, required: bool) -> Result<(), ApiError> {
    let Some(expected) = &ctx.metrics_token else {
        return if required {
            Err(ApiError::Unauthorized(AuthError::Missing))
        } else {
            Ok(())
        };
    };
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()))
        .unwrap_or_default();
    // Constant time, like bearer tokens.
    let matches = given.len() == expected.len()
        && given
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if matches {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(AuthError::Missing))
    }
}

/// The credentials of `Bearer <credentials>`, the scheme in any case.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii_start())
}

pub(super) fn metrics(ctx: &Ctx, req: &Request<Incoming>) -> Result<Response, ApiError> {
    operator(ctx, req, false)?;
    Ok(text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(ctx.service.metrics().render()),
    ))
}
