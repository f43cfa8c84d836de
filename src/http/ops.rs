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

/// `GET /v1/cluster`: the ring as this node sees it (an extension).
pub(super) fn cluster(ctx: &Ctx) -> Response {
    let cluster = ctx.service.cluster();
    let serving = cluster.serving();
    let newest = cluster.newest();
    let peers: Vec<_> = cluster
        .peers()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            json!({
                "id": p.id,
                "addr": p.addr.to_string(),
                "state": if serving.live[i] { "up" } else { "down" },
                "lease": if newest.live[i] { "held" } else { "lapsed" },
            })
        })
        .collect();
    json_value(
        StatusCode::OK,
        &json!({
            "node_id": cluster.me().id,
            "joined": cluster.joined(),
            "settled": cluster.settled(),
            "epoch": serving.epoch,
            "peers": peers,
        }),
    )
}

pub(super) fn metrics(ctx: &Ctx, req: &Request<Incoming>) -> Result<Response, ApiError> {
    if let Some(expected) = &ctx.metrics_token {
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        // Constant time, like bearer tokens.
        let matches = given.len() == expected.len()
            && given
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !matches {
            return Err(ApiError::Unauthorized(AuthError::Missing));
        }
    }
    Ok(text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(ctx.service.metrics().render()),
    ))
}
