//! `/healthz`, `/readyz`, `/metrics`: unauthenticated, for operators.

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;

use super::Ctx;
use super::response::{Response, json_value, text};

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

pub(super) fn metrics(ctx: &Ctx) -> Response {
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        Bytes::from(ctx.service.metrics().render()),
    )
}
