//! Routing: path and method to handler, with the request metrics around it.

use std::future::{Future, ready};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::Either;

use hyper::body::Incoming;
use hyper::{Method, Request};

use super::error::ApiError;
use super::response::Response;
use super::{
    Ctx, conversations, cors, demo, forward, groups, internal, messages, ops, poll, receipts,
};
use crate::domain::{ConversationId, GroupId, UserId};

/// The routes of the contract. Path parameters stay text until the
/// handler parses them, so a bad id is a 400, not a 404.
enum Route<'a> {
    Send,
    Poll,
    Conversations,
    History(&'a str),
    CreateGroup,
    Group(&'a str),
    Members(&'a str),
    Receipts,
    Healthz,
    Readyz,
    Metrics,
    /// A file of the demo page (an extension, off by default).
    Demo(&'a str),
    /// The ring as this node sees it (an extension).
    Cluster,
    /// Appends a peer pushes (between nodes only, signed).
    Appends,
    /// A large group's stream moved on at its owner (between nodes, signed).
    Wake,
    /// A node asks a large group's owner to tell it (between nodes, signed).
    Watch,
}

/// Every route, one of each: the metrics labels come from it. A new
/// variant must be added to `name_and_methods` (the compiler says so) and
/// here (`every_route_is_listed_once` checks the two agree on the paths
/// the router knows).
const ALL: [Route<'static>; 16] = [
    Route::Send,
    Route::Poll,
    Route::Conversations,
    Route::History(""),
    Route::CreateGroup,
    Route::Group(""),
    Route::Members(""),
    Route::Receipts,
    Route::Healthz,
    Route::Readyz,
    Route::Metrics,
    Route::Demo(""),
    Route::Cluster,
    Route::Appends,
    Route::Wake,
    Route::Watch,
];

/// The label of a request no route matched.
const UNKNOWN: &str = "unknown";

/// Every metrics label the router emits.
pub(super) fn labels() -> impl Iterator<Item = &'static str> {
    ALL.iter().map(|r| r.name_and_methods().0).chain([UNKNOWN])
}

impl<'a> Route<'a> {
    fn of(path: &'a str) -> Option<Route<'a>> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        Some(match segments.as_slice() {
            ["v1", "messages"] => Route::Send,
            ["v1", "poll"] => Route::Poll,
            ["v1", "conversations"] => Route::Conversations,
            ["v1", "conversations", id, "messages"] => Route::History(id),
            ["v1", "groups"] => Route::CreateGroup,
            ["v1", "groups", id] => Route::Group(id),
            ["v1", "groups", id, "members"] => Route::Members(id),
            ["v1", "receipts"] => Route::Receipts,
            ["healthz"] => Route::Healthz,
            ["readyz"] => Route::Readyz,
            ["metrics"] => Route::Metrics,
            ["v1", "cluster"] => Route::Cluster,
            ["internal", "v1", "appends"] => Route::Appends,
            ["internal", "v1", "wake"] => Route::Wake,
            ["internal", "v1", "watch"] => Route::Watch,
            ["demo"] => Route::Demo(""),
            ["demo", file] => Route::Demo(file),
            _ => return None,
        })
    }

    /// The metrics label, and the methods the route accepts.
    fn name_and_methods(&self) -> (&'static str, &'static str) {
        match self {
            Route::Send => ("send", "POST"),
            Route::Poll => ("poll", "GET"),
            Route::Conversations => ("conversations", "GET"),
            Route::History(_) => ("history", "GET"),
            Route::CreateGroup => ("groups_create", "POST"),
            Route::Group(_) => ("group_get", "GET"),
            Route::Members(_) => ("group_members", "GET, POST"),
            Route::Receipts => ("receipts", "POST"),
            Route::Healthz => ("healthz", "GET"),
            Route::Readyz => ("readyz", "GET"),
            Route::Metrics => ("metrics", "GET"),
            Route::Demo(_) => ("demo", "GET"),
            Route::Cluster => ("cluster", "GET"),
            Route::Appends => ("appends", "POST"),
            Route::Wake => ("wake", "POST"),
            Route::Watch => ("watch", "POST"),
        }
    }
}

/// Answers one request. Not an `async fn`: hyper keeps the returned future
/// for as long as the request is in flight (a parked poll's whole hold), and
/// an async fn would store its arguments beside the futures they move into.
/// Here the routing and CORS checks run at once, and the future is the
/// handler's own, mapped.
pub(super) fn handle(
    ctx: Arc<Ctx>,
    req: Request<Incoming>,
) -> impl Future<Output = Response> + Send + 'static {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let route = Route::of(&path);
    let name = route.as_ref().map_or(UNKNOWN, |r| r.name_and_methods().0);
    let origin = cors::allowed_origin(&ctx, req.headers());
    let query_len = req.uri().query().map_or(0, str::len);
    let preflight = route
        .as_ref()
        .and_then(|r| cors::preflight(&ctx, req.method(), req.headers(), r.name_and_methods().1));
    let early = match (route, preflight) {
        _ if head_bytes(&req) > ctx.limits.max_header_bytes => {
            Some(Err(ApiError::HeadTooLarge(ctx.limits.max_header_bytes)))
        }
        (_, Some(preflight)) => Some(Ok(preflight)),
        (_, None) if query_len > ctx.limits.max_query_bytes => Some(Err(ApiError::field(format!(
            "the query string is over the limit of {} bytes",
            ctx.limits.max_query_bytes
        )))),
        (Some(_), None) => None,
        (None, None) => Some(Err(ApiError::UnknownRoute)),
    };
    let done = move |ctx: &Ctx, result| finish(ctx, result, name, origin, started);
    match early {
        Some(result) => Either::Left(ready(done(&ctx, result))),
        None => {
            Either::Right(dispatch(ctx.clone(), path, req).map(move |result| done(&ctx, result)))
        }
    }
}

/// The size of the request head as it came on the wire (near enough:
/// the request line and every `name: value\r\n`).
fn head_bytes(req: &Request<Incoming>) -> usize {
    let target = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers().iter().fold(line, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

/// CORS headers, the request's log line and metrics.
fn finish(
    ctx: &Ctx,
    result: Result<Response, ApiError>,
    name: &'static str,
    origin: Option<hyper::header::HeaderValue>,
    started: Instant,
) -> Response {
    let mut response = result.unwrap_or_else(ApiError::into_response);
    if let Some(origin) = origin {
        cors::allow(&mut response, origin);
    }

    let elapsed = started.elapsed();
    tracing::debug!(
        route = name,
        status = response.status().as_u16(),
        elapsed_us = elapsed.as_micros() as u64,
        "request"
    );
    let metrics = ctx.service.metrics();
    metrics
        .requests
        .with_label_values(&[name, response.status().as_str()])
        .inc();
    metrics
        .request_seconds
        .with_label_values(&[name])
        .observe(elapsed.as_secs_f64());
    response
}

async fn dispatch(
    ctx: Arc<Ctx>,
    path: String,
    req: Request<Incoming>,
) -> Result<Response, ApiError> {
    let ctx = &*ctx;
    let Some(route) = Route::of(&path) else {
        return Err(ApiError::UnknownRoute);
    };
    let (_, methods) = route.name_and_methods();
    let method = req.method().clone();
    if !methods.split(", ").any(|m| m == method.as_str()) {
        return Err(ApiError::MethodNotAllowed(methods));
    }
    match route {
        Route::Healthz => return Ok(ops::healthz()),
        Route::Readyz => return Ok(ops::readyz(ctx).await),
        Route::Metrics => return ops::metrics(ctx, &req),
        Route::Demo(file) => return demo::file(ctx.demo, file),
        Route::Cluster => return ops::cluster(ctx, &req),
        // A single node has no peers: its internal routes do not exist.
        Route::Appends | Route::Wake | Route::Watch if !ctx.service.cluster().is_multi_node() => {
            return Err(ApiError::UnknownRoute);
        }
        Route::Appends => return Box::pin(internal::appends(ctx, req)).await,
        Route::Wake => return Box::pin(internal::wake(ctx, req)).await,
        Route::Watch => return Box::pin(internal::watch(ctx, req)).await,
        _ => {}
    }
    if !ctx.service.cluster().available() {
        return Err(crate::service::Error::Rejoining.into());
    }
    let user = authenticate(ctx, &req)?;
    let hop = forward::is_hop(ctx, &req);
    // Routes whose owner is known before the body is read: by the user
    // (its mailbox) or by the conversation in the path. The others
    // (sends, new groups, receipts) decide once their body is parsed.
    let key: Option<[u8; 16]> = match &route {
        Route::Poll | Route::Conversations => Some(user.0.into_bytes()),
        Route::History(id) => id.parse::<ConversationId>().ok().map(|c| c.0.into_bytes()),
        Route::Group(id) | Route::Members(id) => id
            .parse::<GroupId>()
            .ok()
            .map(|g| ConversationId::from(g).0.into_bytes()),
        _ => None,
    };
    let owner = match key {
        Some(key) => forward::owner_of(ctx, &key, hop)?,
        None => None,
    };
    if let (Some(peer), false) = (owner, matches!(route, Route::Poll)) {
        return Box::pin(forward::pass_on(ctx, peer, req)).await;
    }
    // Each handler's future is boxed, so a parked poll's future is the size
    // of the poll handler, not of the largest handler.
    match route {
        Route::Send => Box::pin(messages::send(ctx, user, hop, req)).await,
        Route::Poll => {
            // A parked poll should not keep the request's headers alive.
            let query = req.uri().query().map(str::to_owned);
            let via = poll::Via::of(ctx, owner, hop, &req);
            drop(req);
            Box::pin(poll::poll(ctx, user, query.as_deref(), via)).await
        }
        Route::Conversations => Box::pin(conversations::list(ctx, user, &req)).await,
        Route::History(id) => Box::pin(conversations::history(ctx, user, id, &req)).await,
        Route::CreateGroup => Box::pin(groups::create(ctx, user, hop, req)).await,
        Route::Group(id) => Box::pin(groups::get(ctx, user, id)).await,
        Route::Members(id) if method == Method::GET => {
            Box::pin(groups::members(ctx, user, id, &req)).await
        }
        Route::Members(id) => Box::pin(groups::change(ctx, user, id, req)).await,
        Route::Receipts => Box::pin(receipts::post(ctx, user, hop, req)).await,
        Route::Healthz
        | Route::Readyz
        | Route::Metrics
        | Route::Demo(_)
        | Route::Cluster
        | Route::Appends
        | Route::Wake
        | Route::Watch => Err(ApiError::UnknownRoute),
    }
}

fn authenticate(ctx: &Ctx, req: &Request<Incoming>) -> Result<UserId, ApiError> {
    let header = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    Ok(ctx.auth.user_from_header(header)?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_route_is_listed_once() {
        let paths = [
            "/v1/messages",
            "/v1/poll",
            "/v1/conversations",
            "/v1/conversations/c/messages",
            "/v1/groups",
            "/v1/groups/g",
            "/v1/groups/g/members",
            "/v1/receipts",
            "/healthz",
            "/readyz",
            "/metrics",
            "/demo",
            "/v1/cluster",
            "/internal/v1/appends",
            "/internal/v1/wake",
            "/internal/v1/watch",
        ];
        let routed: BTreeSet<&str> = paths
            .iter()
            .filter_map(|p| Route::of(p))
            .map(|r| r.name_and_methods().0)
            .collect();
        let listed: BTreeSet<&str> = ALL.iter().map(|r| r.name_and_methods().0).collect();
        assert_eq!(listed.len(), ALL.len(), "one label per route");
        assert_eq!(routed, listed);
        assert!(Route::of("/v1/nothing").is_none());
        assert_eq!(labels().filter(|l| *l == UNKNOWN).count(), 1);
    }
}
