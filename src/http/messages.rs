//! `POST /v1/messages`.

use bytes::BytesMut;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};

use super::Ctx;
use super::error::ApiError;
use super::forward::Held;
use super::request::{Fields, read_body};
use super::response::{Response, json_response};
use crate::domain::{ConversationId, UserId};
use crate::service::send::{Destination, SendRequest};

pub(super) async fn send(
    ctx: &Ctx,
    user: UserId,
    hop: bool,
    req: Request<Incoming>,
) -> Result<Response, ApiError> {
    // Taken where the client came in, not again at the owner.
    if !hop && let Err(wait) = ctx.send_rate.take(user) {
        ctx.service.metrics().sends_rate_limited.inc();
        return Err(ApiError::RateLimited("sends", wait));
    }
    // Before the body is read: refusing is cheap, queueing is not.
    let _slot = ctx.sends_in_flight.enter().map_err(|shed| {
        ctx.service.metrics().sends_shed.inc();
        ApiError::Overloaded(shed)
    })?;
    let held = Held::of(&req);
    let body = read_body(req, ctx.limits.max_body, ctx.limits.body_timeout).await?;
    let mut fields = Fields::parse(&body)?;
    let to = match (fields.has("to"), fields.has("group_id")) {
        (true, false) => Destination::User(fields.id("to")?),
        (false, true) => Destination::Group(fields.id("group_id")?),
        _ => return Err(ApiError::field("give exactly one of `to` and `group_id`")),
    };
    let request = SendRequest {
        message_id: fields.id("message_id")?,
        to,
        prev_message_id: fields.opt_id("prev_message_id")?,
        body: fields
            .take("body")
            .ok_or_else(|| ApiError::field("`body` is required (any JSON value)"))?,
    };
    // The conversation's sequencer runs on the node owning it.
    let conv = match to {
        Destination::User(to) => ConversationId::direct(user, to),
        Destination::Group(g) => ConversationId::from(g),
    };
    if let Some(answer) = held.pass_if_remote(ctx, conv.0.as_bytes(), hop, body).await {
        return answer;
    }
    let sent = ctx.service.send(user, request).await?;

    let mut out = BytesMut::with_capacity(sent.message.len() + 16);
    out.extend_from_slice(br#"{"message":"#);
    out.extend_from_slice(&sent.message);
    out.extend_from_slice(b"}");
    let mut response = json_response(StatusCode::CREATED, out.freeze());
    if sent.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}
