//! A bounded pool of blocking Thrift connections, used from async code.
//!
//! The Thrift client is blocking, so every call runs on tokio's blocking
//! threads, never on the async workers. A semaphore bounds the calls in
//! flight (and so the connections and blocking threads Carrier uses);
//! waiting for a permit is async and bounded by the call timeout. Sockets
//! carry connect, read and write timeouts, so no call can hang past its
//! deadline; a connection that failed at the transport or protocol level is
//! dropped, never returned, and the next call dials afresh.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::HistogramVec;
use thrift::protocol::{TBinaryInputProtocol, TBinaryOutputProtocol};
use thrift::transport::{
    ReadHalf, TBufferedReadTransport, TBufferedWriteTransport, TIoChannel, TTcpChannel, WriteHalf,
};
use tokio::sync::Semaphore;

use super::wire::HbaseSyncClient;

type Input = TBinaryInputProtocol<TBufferedReadTransport<ReadHalf<TTcpChannel>>>;
type Output = TBinaryOutputProtocol<TBufferedWriteTransport<WriteHalf<TTcpChannel>>>;
/// One Thrift1 connection to the gateway.
pub(super) type Client = HbaseSyncClient<Input, Output>;

/// Read buffer per connection: scans return pages of rows.
const READ_BUFFER: usize = 64 * 1024;
/// Write buffer per connection: a group commit is one large `mutateRows`.
const WRITE_BUFFER: usize = 64 * 1024;
/// Connections dialled at once. A burst of dials (a cold pool under load)
/// overflows the Thrift server's accept backlog; a dropped SYN is resent
/// only after a second, past the connect timeout.
const DIALS_AT_ONCE: usize = 8;

/// Why a call did not return a result.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    #[error("no HBase connection free within {0:?}")]
    Busy(Duration),
    #[error("HBase Thrift call did not finish within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the HBase Thrift server at {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error(transparent)]
    Thrift(thrift::Error),
}

#[derive(Clone)]
pub(super) struct Settings {
    pub addr: String,
    pub size: usize,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    pub max_idle: Duration,
}

struct Idle {
    client: Client,
    since: Instant,
}

pub(super) struct Pool {
    settings: Settings,
    /// Open connections nobody is using, most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// One permit per call in flight; `settings.size` in all.
    permits: Arc<Semaphore>,
    /// One permit per dial in progress.
    dials: Arc<Semaphore>,
    /// Time per Thrift method, for docs/benchmarks.md's "where the time goes".
    seconds: HistogramVec,
}

impl Pool {
    pub(super) fn new(settings: Settings, seconds: HistogramVec) -> Pool {
        Pool {
            permits: Arc::new(Semaphore::new(settings.size)),
            dials: Arc::new(Semaphore::new(DIALS_AT_ONCE)),
            idle: Mutex::new(Vec::with_capacity(settings.size)),
            settings,
            seconds,
        }
    }

    /// Runs `f` on a pooled connection off the async threads.
    ///
    /// `retry`: the call may be sent twice (reads and puts, not
    /// check-and-put or increment). It is then retried once on a fresh
    /// connection when a reused one turns out to be broken, which is how an
    /// idle connection the server has closed shows itself.
    pub(super) async fn call<T, F>(
        self: &Arc<Self>,
        method: &'static str,
        table: &'static str,
        retry: bool,
        f: F,
    ) -> Result<T, CallError>
    where
        T: Send + 'static,
        F: Fn(&mut Client) -> thrift::Result<T> + Send + 'static,
    {
        let timeout = self.settings.call_timeout;
        let permit = tokio::time::timeout(timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| CallError::Busy(timeout))?
            .map_err(|_| CallError::Busy(timeout))?;
        let started = Instant::now();
        let idle = self.checkout();
        let dial = match idle {
            Some(_) => None,
            None => Some(
                tokio::time::timeout(timeout, self.dials.clone().acquire_owned())
                    .await
                    .map_err(|_| CallError::Busy(timeout))?
                    .map_err(|_| CallError::Busy(timeout))?,
            ),
        };
        let pool = self.clone();
        // The blocking thread keeps the permit until it really ends, so a
        // call abandoned at its deadline still counts against the pool.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.run(retry, idle, dial, f)
        });
        // Sockets time out on their own; this bounds a call made of several
        // reads (a scan) and the dial before it.
        let deadline = self.settings.connect_timeout + timeout * 2;
        let result = match tokio::time::timeout(deadline, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(CallError::Thrift(thrift::Error::from(format!(
                "the HBase call panicked: {join}"
            )))),
            Err(_) => Err(CallError::Timeout(deadline)),
        };
        self.seconds
            .with_label_values(&[method, table])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    fn run<T>(
        &self,
        retry: bool,
        idle: Option<Client>,
        dial: Option<tokio::sync::OwnedSemaphorePermit>,
        f: impl Fn(&mut Client) -> thrift::Result<T>,
    ) -> Result<T, CallError> {
        let (mut client, reused) = match idle {
            Some(client) => (client, true),
            None => {
                let dialled = self.dial();
                drop(dial);
                (dialled?, false)
            }
        };
        match f(&mut client) {
            Ok(v) => {
                self.checkin(client);
                Ok(v)
            }
            Err(e) if connection_is_sound(&e) => {
                self.checkin(client);
                Err(CallError::Thrift(e))
            }
            Err(e) => {
                drop(client);
                // A dead idle connection fails at once; a call that timed
                // out would only time out again, doubling the wait.
                if !(retry && reused) || timed_out(&e) {
                    return Err(CallError::Thrift(e));
                }
                tracing::debug!(error = %e, "a pooled HBase connection was broken; dialling again");
                let mut client = self.dial()?;
                let result = f(&mut client);
                if result.as_ref().err().is_none_or(connection_is_sound) {
                    self.checkin(client);
                }
                result.map_err(CallError::Thrift)
            }
        }
    }

    /// A connection idle for less than `max_idle`, if one is open.
    fn checkout(&self) -> Option<Client> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < self.settings.max_idle {
                return Some(conn.client);
            }
        }
        None
    }

    fn checkin(&self, client: Client) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.settings.size {
            idle.push(Idle {
                client,
                since: Instant::now(),
            });
        }
    }

    pub(super) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(super) fn seconds(&self) -> &HistogramVec {
        &self.seconds
    }

    /// Forgets every idle connection (after the server went away, they are
    /// all dead).
    pub(super) fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn dial(&self) -> Result<Client, CallError> {
        let addr = &self.settings.addr;
        let fail = |error| CallError::Connect {
            addr: addr.clone(),
            error,
        };
        let targets: Vec<SocketAddr> = addr.to_socket_addrs().map_err(fail)?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for target in targets {
            match TcpStream::connect_timeout(&target, self.settings.connect_timeout) {
                Ok(stream) => return self.wrap(stream).map_err(fail),
                Err(e) => last = e,
            }
        }
        Err(fail(last))
    }

    fn wrap(&self, stream: TcpStream) -> std::io::Result<Client> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(self.settings.call_timeout))?;
        stream.set_write_timeout(Some(self.settings.call_timeout))?;
        let (read, write) = TTcpChannel::with_stream(stream)
            .split()
            .map_err(std::io::Error::other)?;
        Ok(HbaseSyncClient::new(
            TBinaryInputProtocol::new(
                TBufferedReadTransport::with_capacity(READ_BUFFER, read),
                true,
            ),
            TBinaryOutputProtocol::new(
                TBufferedWriteTransport::with_capacity(WRITE_BUFFER, write),
                true,
            ),
        ))
    }
}

/// Whether `e` is a socket read or write timeout (which Linux reports as
/// EAGAIN, and the thrift crate as an unknown transport error).
fn timed_out(e: &thrift::Error) -> bool {
    match e {
        thrift::Error::Transport(t) => {
            t.kind == thrift::TransportErrorKind::TimedOut
                || t.message.contains("os error 11")
                || t.message.contains("timed out")
        }
        _ => false,
    }
}

/// Whether the connection can carry another call after `e`: the server
/// answered with an exception declared in the IDL, so the stream is still
/// in step. Transport, protocol and application errors leave it unknown.
fn connection_is_sound(e: &thrift::Error) -> bool {
    matches!(e, thrift::Error::User(_))
}
