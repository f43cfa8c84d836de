//! The HTTP/1.1 front: accepting connections, routing, one module per
//! resource, and `error.rs`, the one place failures become statuses.
//!
//! HTTP/1.1 only, on purpose: the clients Carrier serves sit behind proxies
//! that speak nothing else.

mod conversations;
mod cors;
mod demo;
mod error;
mod forward;
mod groups;
mod internal;
mod messages;
mod ops;
mod poll;
mod receipts;
mod request;
mod response;
mod router;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::config::CorsConfig;
use crate::service::Service;
use crate::service::hold::HoldTimes;
use crate::service::rate::SendRate;

pub use error::ApiError;

/// What every request handler may use. Built once by `app`.
pub struct Ctx {
    pub service: Service,
    pub auth: Auth,
    pub limits: HttpLimits,
    /// The bearer token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
    /// Poll hold times: jitter and learned cut-offs.
    pub holds: HoldTimes,
    /// The per-user send rate limit.
    pub send_rate: SendRate,
    /// Sends in progress on this node, bounded.
    pub sends_in_flight: crate::service::rate::InFlight,
    /// Group creations and member changes per user.
    pub group_rate: SendRate,
    pub cors: CorsConfig,
    /// Whether `/demo` serves the demo chat page.
    pub demo: bool,
}

#[derive(Clone, Debug)]
pub struct HttpLimits {
    pub max_body: usize,
    pub default_poll: Duration,
    pub max_poll: Duration,
    /// A client must send its whole request head within this time.
    pub header_timeout: Duration,
    /// A client must send its whole body within this time.
    pub body_timeout: Duration,
    /// Largest request head: `431` beyond it.
    pub max_header_bytes: usize,
    /// Longest query string.
    pub max_query_bytes: usize,
}

/// Where hyper stops reading a head: twice the configured limit, and at
/// least 16 KiB above it.
fn hard_head_limit(max_header_bytes: usize) -> usize {
    (max_header_bytes * 2).max(max_header_bytes + 16 * 1024)
}

/// Serves connections until `shutdown` fires, then waits (at most `grace`)
/// for requests in flight. Parked polls answer on `shutdown` by themselves.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    ctx.service.metrics().expect_routes(router::labels());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_timeout)
        .keep_alive(true)
        // hyper's own limit, past which it answers a bare `431`, sits well
        // above ours: heads between the two get the contract's error shape
        // from the router.
        .max_header_size(hard_head_limit(ctx.limits.max_header_bytes))
        .max_buf_size((hard_head_limit(ctx.limits.max_header_bytes) + 8192).max(64 * 1024));

    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Typically out of file descriptors: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            router::handle(ctx.clone(), req).map(Ok::<_, Infallible>)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        // `map`, not an async block: a block that awaits a moved-in future
        // stores it twice, and a task lives as long as its connection.
        tokio::spawn(connection.map(|ended| {
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }));
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("shutdown grace ran out; closing the remaining connections"),
    }
}
