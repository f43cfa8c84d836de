//! `GET /v1/poll`.

use std::time::Duration;

use hyper::StatusCode;

use super::Ctx;
use super::error::ApiError;
use super::request::Query;
use super::response::{Response, json_array, json_response};
use crate::domain::{Cursor, UserId};
use crate::service::poll::PollRequest;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

pub(super) async fn poll(
    ctx: &Ctx,
    user: UserId,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let query = Query::parse(query);
    let cursor = match query.get("cursor") {
        None => None,
        Some(text) => Some(text.parse::<Cursor>().map_err(|_| {
            ApiError::InvalidCursor("`cursor` is not a cursor this server issued".into())
        })?),
    };
    let timeout = match query.number("timeout")? {
        None => ctx.limits.default_poll,
        Some(secs) => Duration::from_secs(secs).min(ctx.limits.max_poll),
    };
    let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let answer = ctx
        .service
        .poll(
            user,
            PollRequest {
                cursor,
                timeout,
                limit,
            },
        )
        .await?;

    let events = json_array(&answer.events);
    let mut body = Vec::with_capacity(events.len() + 64);
    body.extend_from_slice(br#"{"events":"#);
    body.extend_from_slice(&events);
    body.extend_from_slice(
        format!(
            r#","cursor":"{}","timed_out":{}}}"#,
            answer.cursor, answer.timed_out
        )
        .as_bytes(),
    );
    Ok(json_response(StatusCode::OK, body.into()))
}
