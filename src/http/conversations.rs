//! `GET /v1/conversations` and `GET /v1/conversations/{id}/messages`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::Ctx;
use super::error::ApiError;
use super::request::Query;
use super::response::{Response, json_array, json_response, json_value};
use crate::domain::{ConversationId, UserId};
use crate::service::history::Window;

pub(super) async fn list(
    ctx: &Ctx,
    user: UserId,
    req: &Request<Incoming>,
) -> Result<Response, ApiError> {
    let query = Query::parse(req.uri().query());
    let limit = query.limit(50, 500)?;
    let offset = query.number("offset")?.unwrap_or(0) as usize;
    let conversations = ctx.service.conversations(user, limit, offset).await?;
    Ok(json_value(
        StatusCode::OK,
        &json!({ "conversations": conversations }),
    ))
}

pub(super) async fn history(
    ctx: &Ctx,
    user: UserId,
    id: &str,
    req: &Request<Incoming>,
) -> Result<Response, ApiError> {
    let conv: ConversationId = id
        .parse()
        .map_err(|_| ApiError::field("the conversation id in the path must be a UUID"))?;
    let query = Query::parse(req.uri().query());
    let limit = query.limit(50, 500)?;
    let window = match (query.number("before_seq")?, query.number("offset")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("give `before_seq` or `offset`, not both"));
        }
        (Some(0), None) => return Err(ApiError::field("`before_seq` must be at least 1")),
        (Some(seq), None) => Window::Before(seq),
        (None, offset) => Window::Newest {
            offset: offset.unwrap_or(0),
        },
    };
    let messages = ctx.service.history(user, conv, limit, window).await?;
    let array = json_array(&messages);
    let mut body = Vec::with_capacity(array.len() + 16);
    body.extend_from_slice(br#"{"messages":"#);
    body.extend_from_slice(&array);
    body.extend_from_slice(b"}");
    Ok(json_response(StatusCode::OK, body.into()))
}
