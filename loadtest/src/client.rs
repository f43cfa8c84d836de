//! Raw HTTP/1.1 client connections: one TCP connection per virtual device,
//! bound to a chosen loopback source address so 100,000+ sockets fit in the
//! port space, and a pool of them for sends (idle connections kept per
//! target node, the cap shared by all).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::header::{HOST, HeaderValue};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("timed out")]
    Timeout,
    #[error("bad request: {0}")]
    Build(#[from] hyper::http::Error),
}

/// A whole response: status, headers and the collected body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Picks the source address of each new socket: `127.0.0.2`, `127.0.0.3`,
/// ... in turn when the target is on loopback (each address has its own
/// ~28,000 ephemeral ports); the system's choice otherwise.
#[derive(Debug)]
pub struct Sources {
    count: usize,
    next: AtomicUsize,
    loopback: bool,
}

impl Sources {
    /// For sockets to `targets` (loopback sources only if every target is
    /// on IPv4 loopback).
    pub fn new(targets: &[SocketAddr], count: usize) -> Sources {
        Sources {
            count: count.clamp(1, 250),
            next: AtomicUsize::new(0),
            loopback: !targets.is_empty()
                && targets.iter().all(|t| t.ip().is_loopback() && t.is_ipv4()),
        }
    }

    fn pick(&self) -> Option<SocketAddr> {
        if !self.loopback {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.count;
        let ip = Ipv4Addr::new(127, 0, 0, 2 + n as u8);
        Some(SocketAddr::new(IpAddr::V4(ip), 0))
    }
}

/// One HTTP/1.1 connection. Dropping it closes the socket at once (the
/// connection task is aborted), which is how a cut poll looks to a server.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
    /// The `Host` header of every request on it: the node it is open to.
    host: HeaderValue,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    pub async fn open(target: SocketAddr, sources: &Sources) -> Result<Conn, ClientError> {
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(ClientError::Connect)?;
        if let Some(source) = sources.pick() {
            socket.bind(source).map_err(ClientError::Connect)?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(target))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(ClientError::Connect)?;
        stream.set_nodelay(true).map_err(ClientError::Connect)?;
        let (sender, conn) = handshake(TokioIo::new(stream)).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let host =
            HeaderValue::from_str(&target.to_string()).map_err(|e| ClientError::Build(e.into()))?;
        Ok(Conn { sender, task, host })
    }

    /// Whether the server may still answer on this connection.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed() && !self.task.is_finished()
    }

    /// Sends one request (with this connection's node as its `Host`) and
    /// reads the whole response.
    pub async fn call(&mut self, mut request: Request<Full<Bytes>>) -> Result<Reply, ClientError> {
        request.headers_mut().insert(HOST, self.host.clone());
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// Connections for sends and other short requests to any of the target
/// nodes, opened on demand up to a cap shared by all nodes. A request that
/// finds every connection busy and the cap reached waits for one, and that
/// wait counts in its latency.
pub struct Pool {
    nodes: Vec<SocketAddr>,
    /// Idle connections, one list per node.
    idle: Vec<Mutex<Vec<Conn>>>,
    permits: Semaphore,
    /// Connections open now (for the progress line and the fd budget).
    pub open: AtomicUsize,
}

impl Pool {
    pub fn new(nodes: &[SocketAddr], cap: usize) -> Pool {
        Pool {
            nodes: nodes.to_vec(),
            idle: nodes.iter().map(|_| Mutex::new(Vec::new())).collect(),
            permits: Semaphore::new(cap.max(1)),
            open: AtomicUsize::new(0),
        }
    }

    /// Sends `request` to node `node` (an index into the targets) on an
    /// idle connection (or a new one), within `timeout` from now.
    pub async fn call(
        &self,
        node: usize,
        sources: &Sources,
        request: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        tokio::time::timeout(timeout, self.call_inner(node, sources, request))
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn call_inner(
        &self,
        node: usize,
        sources: &Sources,
        request: Request<Full<Bytes>>,
    ) -> Result<Reply, ClientError> {
        let (Some(&addr), Some(idle)) = (self.nodes.get(node), self.idle.get(node)) else {
            return Err(ClientError::Timeout);
        };
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ClientError::Timeout)?;
        let reused = {
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            let mut found = None;
            while let Some(conn) = idle.pop() {
                if conn.is_open() {
                    found = Some(conn);
                    break;
                }
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
            found
        };
        let was_reused = reused.is_some();
        let mut conn = match reused {
            Some(conn) => conn,
            None => self.fresh(addr, sources).await?,
        };
        let mut result = conn.call(request.clone()).await;
        if was_reused && let Err(first) = result {
            // A kept-alive connection the server closed while idle (its
            // header timeout): try once more on a new one, as HTTP clients
            // do. Every request this pool carries is idempotent (sends by
            // message_id, receipts, history reads). If no new connection
            // opens, the first error stands: the request may have reached
            // the server, so it is not a mere refused connection.
            self.open.fetch_sub(1, Ordering::Relaxed);
            conn = match self.fresh(addr, sources).await {
                Ok(conn) => conn,
                Err(_) => return Err(first),
            };
            result = conn.call(request).await;
        }
        match result {
            Ok(reply) => {
                if conn.is_open() {
                    idle.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                } else {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
                Ok(reply)
            }
            Err(e) => {
                self.open.fetch_sub(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    async fn fresh(&self, addr: SocketAddr, sources: &Sources) -> Result<Conn, ClientError> {
        let conn = Conn::open(addr, sources).await?;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(conn)
    }

    /// Closes every idle connection.
    pub fn close(&self) {
        for idle in &self.idle {
            let drained: Vec<Conn> =
                std::mem::take(&mut *idle.lock().unwrap_or_else(|e| e.into_inner()));
            self.open.fetch_sub(drained.len(), Ordering::Relaxed);
        }
    }
}
