//! Wiring: configuration -> store -> committer, caches, waiters -> service
//! -> HTTP server; and the order of a graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::cluster::{self, Cluster};
use crate::config::{Backend, Built, Config, ConfigError};
use crate::http::{self, Ctx, HttpLimits};
use crate::metrics::Metrics;
use crate::service::cache::{HistoryCache, MailboxCache};
use crate::service::commit::clock::{Clock, stored_lease};
use crate::service::commit::{Committer, Watermark, Writer};
use crate::service::handles::Handles;
use crate::service::hold::HoldTimes;
use crate::service::outbox::Outbox;
use crate::service::rate::SendRate;
use crate::service::takeover::Takeover;
use crate::service::waiters::Waiters;
use crate::service::{Parts, Service, Settings};
use crate::store::embedded::EmbeddedStore;
use crate::store::hbase::HbaseStore;
use crate::store::{Store, StoreError};

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stopped before the store could be opened")]
    StoppedWhileOpening,
}

/// Pending sends waiting for their `prev_message_id`, at most (a safety net;
/// each holds no thread).
const MAX_ARRIVAL_WAITERS: usize = 1_000_000;

/// Runs a node on `listener` until `shutdown` completes, then stops
/// gracefully: stop accepting, answer every parked poll, let requests in
/// flight finish, drain the committer, sync the store.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    serve_built(config.build()?, listener, shutdown).await
}

/// [`serve`] for a configuration already built (its secret derived).
pub async fn serve_built(
    built: Built,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AppError> {
    let Built { config, secret } = built;
    let stop_signal = CancellationToken::new();
    {
        let stop_signal = stop_signal.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutting down");
            stop_signal.cancel();
        });
    }
    let node_key = node_key(&config.cluster.node_id);
    let mut embedded = None;
    let store: Arc<dyn Store> = match config.storage.backend {
        Backend::Embedded => {
            let store = Arc::new(EmbeddedStore::open(&config.storage.path)?);
            embedded = Some(store.clone());
            store
        }
        Backend::Hbase => Arc::new(open_hbase(&config, node_key, &stop_signal).await?),
    };
    let node = Node::start_with_secret(&config, &secret, store.clone()).await?;
    {
        let stop = node.stop.clone();
        tokio::spawn(async move {
            stop_signal.cancelled().await;
            stop.cancel();
        });
    }
    let ctx = Arc::new(Ctx {
        service: node.service.clone(),
        auth: Auth::new(&secret),
        metrics_token: config.auth.metrics_token.clone(),
        limits: HttpLimits {
            max_body: config.limits.max_body_bytes,
            default_poll: config.poll.default_timeout,
            max_poll: config.poll.max_timeout,
            header_timeout: config.limits.header_timeout,
            body_timeout: config.limits.body_timeout,
            max_header_bytes: config.limits.max_header_bytes,
            max_query_bytes: config.limits.max_query_bytes,
        },
        holds: HoldTimes::new(config.poll.jitter_percent, config.poll.learn_cuts),
        send_rate: SendRate::new(config.limits.send_rate, config.limits.send_burst),
        sends_in_flight: crate::service::rate::InFlight::new(
            config.limits.max_sends_in_flight,
            config.limits.send_latency_target,
        ),
        group_rate: SendRate::new(
            config.limits.group_change_rate,
            config.limits.group_change_burst,
        ),
        cors: config.cors.clone(),
        demo: config.demo.enabled,
    });
    http::serve(
        listener,
        ctx,
        node.stop.clone(),
        config.server.shutdown_grace,
    )
    .await;
    node.shutdown().await;
    if let Some(embedded) = embedded {
        embedded.flush()?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens the HBase store, waiting (with backoff) while HBase cannot be
/// reached: a node started before its HBase comes up once HBase does.
async fn open_hbase(
    config: &Config,
    node_key: [u8; 8],
    stop: &CancellationToken,
) -> Result<HbaseStore, AppError> {
    let hbase = &config.storage.hbase;
    let mut backoff = Duration::from_millis(250);
    loop {
        match HbaseStore::open(hbase, node_key).await {
            Ok(store) => {
                tracing::info!(thrift = %hbase.thrift, prefix = %hbase.table_prefix, "HBase store open");
                return Ok(store);
            }
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "HBase not reachable yet");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return Err(AppError::StoppedWhileOpening),
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A node's service and the tasks behind it, without the HTTP front.
pub struct Node {
    pub service: Service,
    /// Fired to stop: parked polls answer, the outbox worker ends.
    pub stop: CancellationToken,
    /// Fired after the front has stopped: the committer takes no new work.
    closing: CancellationToken,
    committer: JoinHandle<()>,
    outbox: JoinHandle<()>,
    ring: Vec<JoinHandle<()>>,
}

impl Node {
    /// Builds the service on `store`: resumes the clock, starts the
    /// committer and the outbox worker.
    pub async fn start(config: &Config, store: Arc<dyn Store>) -> Result<Node, AppError> {
        Node::start_with_secret(config, &config.secret()?, store).await
    }

    /// [`Node::start`] with the secret already derived from `config`.
    async fn start_with_secret(
        config: &Config,
        secret: &[u8],
        store: Arc<dyn Store>,
    ) -> Result<Node, AppError> {
        let metrics = Arc::new(Metrics::new());
        for collector in store.collectors() {
            metrics
                .registry
                .register(collector)
                .map_err(|e| StoreError::Unavailable(format!("store metrics: {e}")))?;
        }
        let node_key = node_key(&config.cluster.node_id);
        // Calls between nodes are signed with a key derived from the secret
        // (a single node takes no such call, but never an empty key either).
        let cluster = Cluster::new(&config.cluster, config.server.listen, secret);
        let lease = stored_lease(store.as_ref(), node_key).await?;
        let shared = Handles {
            store: store.clone(),
            metrics: metrics.clone(),
            cluster: cluster.clone(),
            node_key,
            watermark: Arc::new(Watermark::new(lease)),
            deliveries: Arc::default(),
            pending: Arc::default(),
            outbox_kick: Arc::default(),
            mailbox_cache: Arc::new(MailboxCache::new(config.cache.mailbox_bytes)),
            history_cache: Arc::new(HistoryCache::new(config.cache.history_bytes)),
            mailbox_waiters: Waiters::new(
                config.limits.max_polls_per_user,
                config.limits.max_polls_per_node,
            ),
            arrivals: Waiters::new(usize::MAX, MAX_ARRIVAL_WAITERS),
        };
        let closing = CancellationToken::new();
        let (committer, committer_task) = Committer::start(Writer {
            shared: shared.clone(),
            clock: Clock::resume(lease),
            max_batch: config.send.max_batch,
            closing: closing.clone(),
        });
        let stop = CancellationToken::new();
        let service = Service::new(Parts {
            shared: shared.clone(),
            committer: committer.clone(),
            settings: Settings::from_config(config),
            shutdown: stop.clone(),
        });
        metrics.ring_live_nodes.set(cluster.peers().len() as i64);
        let ring = vec![
            cluster::lease::spawn(cluster.clone(), store, stop.clone()),
            tokio::spawn(
                Takeover {
                    service: service.clone(),
                    committer: committer.clone(),
                    shared: shared.clone(),
                }
                .run(stop.clone()),
            ),
        ];
        let outbox = tokio::spawn(
            Outbox {
                shared,
                committer,
                node_key,
                mine: true,
            }
            .run(stop.clone()),
        );
        Ok(Node {
            service,
            stop,
            closing,
            committer: committer_task,
            outbox,
            ring,
        })
    }

    /// Stops the node: parked polls answer, the outbox worker ends, the
    /// committer commits what is queued and ends.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.service.wake_all();
        let _ = self.outbox.await;
        for task in self.ring {
            let _ = task.await;
        }
        self.closing.cancel();
        let _ = self.committer.await;
    }
}

/// This node's 8-byte key in shared tables (the outbox, node state).
pub use crate::cluster::node_key;
