//! Calls between nodes: forwarded requests, pushed appends, join checks. One
//! pooled keep-alive HTTP/1.1 client for all of them.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Dialling a peer on loopback or a LAN takes far less; past this it is down.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

pub struct PeerClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A peer's whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("peer {0} unreachable: {1}")]
    Unreachable(SocketAddr, String),
    #[error("peer {0} did not answer in time")]
    Timeout(SocketAddr),
}

impl Default for PeerClient {
    fn default() -> Self {
        PeerClient::new()
    }
}

impl PeerClient {
    pub fn new() -> PeerClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            // Forwarded long polls each hold a connection while parked.
            .pool_max_idle_per_host(4096)
            .build(connector);
        PeerClient { http }
    }

    /// One request to `addr`, its answer read whole, within `timeout`.
    pub async fn call(
        &self,
        addr: SocketAddr,
        method: Method,
        path_and_query: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, CallError> {
        let unreachable = |e: &dyn std::fmt::Display| CallError::Unreachable(addr, e.to_string());
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path_and_query}"));
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(Full::new(body)).map_err(|e| unreachable(&e))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| unreachable(&e))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| unreachable(&e))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout(addr))?
    }
}
