//! `POST /v1/receipts`.

use hyper::Request;
use hyper::body::Incoming;
use serde_json::Value;

use super::Ctx;
use super::error::ApiError;
use super::forward::Held;
use super::request::{Fields, read_body};
use super::response::{Response, no_content};
use crate::domain::{ConversationId, ReceiptKind, UserId};

pub(super) async fn post(
    ctx: &Ctx,
    user: UserId,
    hop: bool,
    req: Request<Incoming>,
) -> Result<Response, ApiError> {
    let held = Held::of(&req);
    let body = read_body(req, ctx.limits.max_body, ctx.limits.body_timeout).await?;
    let mut fields = Fields::parse(&body)?;
    let conv: ConversationId = fields.id("conversation_id")?;
    if let Some(answer) = held.pass_if_remote(ctx, conv.0.as_bytes(), hop, body).await {
        return answer;
    }
    let up_to = fields.positive("up_to_seq")?;
    let kind = match fields.take("kind") {
        Some(Value::String(k)) if k == "delivered" => ReceiptKind::Delivered,
        Some(Value::String(k)) if k == "read" => ReceiptKind::Read,
        _ => return Err(ApiError::field("`kind` must be \"delivered\" or \"read\"")),
    };
    ctx.service.receipt(user, conv, up_to, kind).await?;
    Ok(no_content())
}
