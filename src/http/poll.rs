//! `GET /v1/poll`.

use std::time::Duration;

use hyper::StatusCode;
use tokio::time::Instant;

use super::Ctx;
use super::error::ApiError;
use super::request::Query;
use super::response::{Response, json_array, json_response};
use crate::domain::{Cursor, UserId};
use crate::service::poll::PollRequest;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Longest `device` name (an extension: see docs/api.md).
const MAX_DEVICE: usize = 64;

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
    let requested = match query.number("timeout")? {
        None => ctx.limits.default_poll,
        Some(secs) => Duration::from_secs(secs).min(ctx.limits.max_poll),
    };
    let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let device = query.get("device").unwrap_or("");
    if device.len() > MAX_DEVICE {
        return Err(ApiError::field(format!(
            "query parameter `device` is longer than {MAX_DEVICE} bytes"
        )));
    }
    let parks = cursor.is_some() && !requested.is_zero();
    let timeout = if parks {
        let hold = ctx.holds.hold(user, device, requested, rand::random());
        if hold.capped {
            ctx.service.metrics().poll_holds_shortened.inc();
        }
        hold.duration
    } else {
        requested
    };
    let watch = parks.then(|| CutWatch {
        ctx,
        user,
        device,
        since: Instant::now(),
        hold: timeout,
        answered: false,
    });
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
        .await;
    if let Some(watch) = watch {
        watch.answered(matches!(&answer, Ok(a) if a.timed_out));
    }
    let answer = answer?;

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

/// Watches one poll that may park: dropped before it answered (hyper drops
/// the handler when the connection closes), it reports a cut.
struct CutWatch<'a> {
    ctx: &'a Ctx,
    user: UserId,
    device: &'a str,
    since: Instant,
    hold: Duration,
    answered: bool,
}

impl CutWatch<'_> {
    fn answered(mut self, timed_out: bool) {
        self.answered = true;
        if timed_out && self.since.elapsed() >= self.hold {
            self.ctx.holds.held_fully(self.user, self.device);
        }
    }
}

impl Drop for CutWatch<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let held = self.since.elapsed();
        if self.ctx.holds.cut(self.user, self.device, held, self.hold) {
            self.ctx.service.metrics().poll_cuts.inc();
            tracing::debug!(
                held_ms = held.as_millis() as u64,
                hold_ms = self.hold.as_millis() as u64,
                "poll cut before its hold ended"
            );
        }
    }
}
