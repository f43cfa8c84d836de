//! `GET /v1/poll`.

use std::time::Duration;

use hyper::StatusCode;
use tokio::time::Instant;

use super::error::ApiError;
use super::forward::{self, HOLD_MS, Outgoing};
use super::request::Query;
use super::response::{Response, json_array, json_response};
use super::{Ctx, HttpLimits};
use crate::cluster::Peer;
use crate::domain::{Cursor, UserId};
use crate::service::poll::PollRequest;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Longest `device` name (an extension: see docs/api.md).
const MAX_DEVICE: usize = 64;

/// Where a poll is served.
pub(super) enum Via<'a> {
    /// Here. A poll a peer passed on comes with the hold that peer chose.
    Here { given_hold: Option<Duration> },
    /// By the node owning the user's mailbox; this node chooses the hold
    /// and watches for cuts, since it holds the client's connection.
    Owner {
        peer: &'a Peer,
        authorization: Option<hyper::header::HeaderValue>,
    },
}

impl<'a> Via<'a> {
    pub(super) fn of(
        ctx: &Ctx,
        owner: Option<&'a Peer>,
        hop: bool,
        req: &hyper::Request<hyper::body::Incoming>,
    ) -> Via<'a> {
        let _ = ctx;
        match owner {
            Some(peer) => Via::Owner {
                peer,
                authorization: req.headers().get(hyper::header::AUTHORIZATION).cloned(),
            },
            None => Via::Here {
                given_hold: hop
                    .then(|| req.headers().get(HOLD_MS))
                    .flatten()
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_millis),
            },
        }
    }
}

/// A poll's query parameters, checked.
struct PollQuery<'a> {
    cursor: Option<Cursor>,
    /// The hold the client asked for, capped at the server's maximum.
    requested: Duration,
    limit: usize,
    /// The client's name for its device (hold times are learned per device).
    device: &'a str,
}

impl<'a> PollQuery<'a> {
    fn parse(query: &'a Query, limits: &HttpLimits) -> Result<PollQuery<'a>, ApiError> {
        let cursor = match query.get("cursor") {
            None => None,
            Some(text) => Some(text.parse::<Cursor>().map_err(|_| {
                ApiError::InvalidCursor("`cursor` is not a cursor this server issued".into())
            })?),
        };
        let requested = match query.number("timeout")? {
            None => limits.default_poll,
            Some(secs) => Duration::from_secs(secs).min(limits.max_poll),
        };
        let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
        let device = query.get("device").unwrap_or("");
        if device.len() > MAX_DEVICE {
            return Err(ApiError::field(format!(
                "query parameter `device` is longer than {MAX_DEVICE} bytes"
            )));
        }
        Ok(PollQuery {
            cursor,
            requested,
            limit,
            device,
        })
    }
}

pub(super) async fn poll(
    ctx: &Ctx,
    user: UserId,
    query: Option<&str>,
    via: Via<'_>,
) -> Result<Response, ApiError> {
    let raw_query = query;
    let query = Query::parse(query);
    let PollQuery {
        cursor,
        requested,
        limit,
        device,
    } = PollQuery::parse(&query, &ctx.limits)?;
    let parks = cursor.is_some() && !requested.is_zero();
    if let Via::Here {
        given_hold: Some(hold),
    } = via
    {
        // Passed on by the node the client reached, which watches it.
        return answer(ctx, user, cursor, hold.min(ctx.limits.max_poll), limit).await;
    }
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
    let response = match via {
        Via::Owner {
            peer,
            authorization,
        } => {
            let extra = vec![(
                hyper::header::HeaderName::from_static(HOLD_MS),
                hyper::header::HeaderValue::from(timeout.as_millis() as u64),
            )];
            // Boxed: only a poll this node passes on needs the forward's
            // state, and a poll parked here should not carry its size.
            Box::pin(forward::forward(
                ctx,
                Outgoing {
                    method: hyper::Method::GET,
                    path_and_query: format!("/v1/poll?{}", raw_query.unwrap_or("")),
                    authorization,
                    extra,
                    body: bytes::Bytes::new(),
                    timeout: timeout + FORWARD_MARGIN,
                    peer,
                },
            ))
            .await
        }
        Via::Here { .. } => answer(ctx, user, cursor, timeout, limit).await,
    };
    if let Some(watch) = watch {
        let timed_out = matches!(&response, Ok(r) if r.status() == StatusCode::OK
            && r.headers().get(TIMED_OUT).is_some());
        watch.answered(timed_out);
    }
    response.map(|mut r| {
        r.headers_mut().remove(TIMED_OUT);
        r
    })
}

/// Marks (between this module's functions only) an answer that timed out.
const TIMED_OUT: &str = "x-carrier-timed-out";
/// A forwarded poll's owner answers at the hold's end; allow for the hop.
const FORWARD_MARGIN: Duration = Duration::from_secs(5);

/// Serves the poll here.
async fn answer(
    ctx: &Ctx,
    user: UserId,
    cursor: Option<Cursor>,
    timeout: Duration,
    limit: usize,
) -> Result<Response, ApiError> {
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
    let mut response = json_response(StatusCode::OK, body.into());
    if answer.timed_out {
        response
            .headers_mut()
            .insert(TIMED_OUT, hyper::header::HeaderValue::from_static("true"));
    }
    Ok(response)
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
