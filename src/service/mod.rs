//! The service layer: what Carrier does, free of HTTP (no hyper type here).
//!
//! # The send path
//!
//! [`send`] claims the message id and checks idempotency, then under the
//! conversation's lock the [`sequencer`] gives it the next seq and [`send`]
//! hands one [`commit::Commit`] (the message, its record, the recipients'
//! copies) to the committer ([`commit`]), which batches commits into one
//! store write and assigns mailbox positions. Copies for mailboxes another
//! node owns, the sender's own copy when it lives elsewhere, and receipts
//! go to the [`outbox`], whose worker delivers them in order. A large
//! group's message is written once and read from its stream ([`fanout`]).
//!
//! # The poll path
//!
//! [`poll`] registers with the [`waiters`] first, then reads the user's
//! [`mailbox`] (through the [`cache`]) and the streams of its large groups
//! ([`fanout`]), and parks until the committer wakes it, for a hold time
//! fitted to the client ([`hold`]).
//!
//! # The rest
//!
//! - Request paths: [`send`], [`poll`], [`history`], [`groups`],
//!   [`receipts`], [`conversations`], [`mailbox`].
//! - Ordering and durability: [`sequencer`], [`commit`] (the committer, its
//!   clock and watermark), [`outbox`].
//! - Large groups: [`fanout`].
//! - On a ring: [`takeover`] (taking pushed appends, following peers as
//!   they leave and return).
//! - Machinery: [`waiters`], [`locks`], [`cache`], [`hold`], [`rate`];
//!   [`handles`]: what the node's parts share, built once.

pub mod cache;
pub mod commit;
pub mod conversations;
pub mod fanout;
pub mod groups;
pub mod handles;
pub mod history;
pub mod hold;
pub mod locks;
pub mod mailbox;
pub mod outbox;
pub mod poll;
pub mod rate;
pub mod receipts;
pub mod send;
pub mod sequencer;
pub mod takeover;
pub mod waiters;

#[cfg(test)]
mod ring_tests;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use self::cache::{HistoryCache, MailboxCache};
use self::commit::{Committer, Watermark};
use self::groups::GroupCache;
use self::handles::Handles;
use self::locks::KeyedLocks;
use self::waiters::Waiters;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::domain::{ConversationId, MessageId, UserId};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// What a caller can do about a failed request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of the request is missing, ill-typed or out of range.
    #[error("{0}")]
    InvalidField(String),
    #[error("the cursor is malformed or ahead of the mailbox")]
    InvalidCursor,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("message_id was already used for a different message")]
    IdempotencyConflict,
    #[error("group_id was already used for a different group")]
    GroupConflict,
    #[error("prev_message_id names a message that did not arrive in this conversation")]
    PrevMissing,
    #[error("too many parked polls for this {0}")]
    TooManyPolls(&'static str),
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The node is (re)joining the ring and serves nothing until it has.
    #[error("this node is joining the ring; retry shortly")]
    Rejoining,
    /// The conversation moved to another node while the request waited for
    /// its sequencer; a retry reaches the new owner.
    #[error("this conversation moved to another node; retry")]
    Moved,
    /// A peer pushed appends for a mailbox this node does not own.
    #[error("this node does not own that mailbox")]
    NotOwner,
    /// A peer pushed entries an earlier push of which is still being
    /// committed: whether they were taken is not known yet, so the peer
    /// keeps them and pushes again.
    #[error("an earlier push of these entries is still being committed; retry")]
    PushInFlight,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Error::Unavailable(e),
            StoreError::Corrupt(what) => Error::Internal(what),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("stored JSON: {e}"))
    }
}

/// Pushed entries remembered to recognise repeats (about 40 bytes each).
const REMEMBERED_PUSHES: usize = 500_000;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs a change to its end even if the caller stops waiting. A client
/// that disconnects makes hyper drop its request's future; a commit already
/// queued still lands, so what the node keeps in memory about it (the
/// sequencer's head, the group cache) must be updated too, or the next send
/// reuses the seq and overwrites the message. Found by the load tester.
async fn detached<T, F>(change: F) -> Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    tokio::spawn(change)
        .await
        .map_err(|e| Error::Internal(format!("a change stopped half-way: {e}")))?
}

/// The service handle. Cloning is shallow.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    committer: Committer,
    metrics: Arc<Metrics>,
    /// Parked polls by user.
    mailbox_waiters: Arc<Waiters<UserId>>,
    /// Parked polls by the large groups their users read.
    stream_waiters: Arc<Waiters<ConversationId>>,
    /// Large groups' streams and who reads them.
    streams: fanout::Streams,
    /// Sends waiting for the `prev_message_id` they name.
    arrivals: Arc<Waiters<(UserId, MessageId)>>,
    /// The sequencer: one lock per conversation, holding its head.
    sequencer: Arc<KeyedLocks<ConversationId, sequencer::Head>>,
    /// Read-held by every request that writes under a sequencer lock, from
    /// its ownership check until its commit ends; a ring change takes it to
    /// write before this node reports itself settled (see `drain_handoff`).
    handoff: tokio::sync::RwLock<()>,
    /// One in-flight send per (sender, message_id), so concurrent retries
    /// become replays instead of races.
    claims: Arc<KeyedLocks<(UserId, MessageId), ()>>,
    mailbox_cache: Arc<MailboxCache>,
    history_cache: Arc<HistoryCache>,
    /// Mailbox rows above it are still being written (see `Watermark`).
    watermark: Arc<Watermark>,
    groups: GroupCache,
    settings: Settings,
    shutdown: CancellationToken,
    /// The ring: who owns which user and conversation.
    cluster: Arc<Cluster>,
    /// Outbox entries (node key, id) peers pushed here recently, whose
    /// commit succeeded.
    pushes: quick_cache::sync::Cache<([u8; 8], u64), ()>,
    /// Pushed entries whose commit is in flight (see `take_appends`).
    taking: Arc<dashmap::DashMap<([u8; 8], u64), ()>>,
}

/// The knobs the service reads per request, taken from the configuration once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub prev_wait: Duration,
    pub max_group_members: usize,
    /// Groups of at least this many members fan out on read.
    pub large_group_threshold: usize,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            prev_wait: config.send.prev_wait,
            max_group_members: config.limits.max_group_members,
            large_group_threshold: config.send.large_group_threshold,
        }
    }
}

/// Everything a [`Service`] is built from (see `app.rs`).
pub struct Parts {
    pub shared: Handles,
    pub committer: Committer,
    pub settings: Settings,
    pub shutdown: CancellationToken,
}

impl Service {
    pub fn new(parts: Parts) -> Service {
        Service {
            inner: Arc::new(Inner {
                store: parts.shared.store,
                committer: parts.committer,
                metrics: parts.shared.metrics,
                mailbox_waiters: parts.shared.mailbox_waiters,
                // One registration per large group per parked poll; the
                // per-user and per-node limits apply to the polls already.
                stream_waiters: Waiters::new(usize::MAX / 4, usize::MAX / 4),
                streams: fanout::Streams::default(),
                arrivals: parts.shared.arrivals,
                sequencer: KeyedLocks::new(),
                handoff: tokio::sync::RwLock::new(()),
                claims: KeyedLocks::new(),
                mailbox_cache: parts.shared.mailbox_cache,
                history_cache: parts.shared.history_cache,
                watermark: parts.shared.watermark,
                groups: GroupCache::new(),
                settings: parts.settings,
                shutdown: parts.shutdown,
                cluster: parts.shared.cluster,
                pushes: quick_cache::sync::Cache::new(REMEMBERED_PUSHES),
                taking: Arc::default(),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the store answers and the node is in the ring.
    pub async fn ready(&self) -> bool {
        !self.inner.shutdown.is_cancelled()
            && self.inner.cluster.available()
            && self.inner.store.ping().await.is_ok()
    }

    /// Held from a request's ownership check to the end of its commit (see
    /// `Inner::handoff`). Taken before the sequencer lock, never after.
    pub(crate) async fn handoff_guard(&self) -> tokio::sync::RwLockReadGuard<'_, ()> {
        self.inner.handoff.read().await
    }

    /// Returns once every request that checked its ownership before the
    /// serving view last changed has finished its commit (or failed).
    ///
    /// This is what makes a conversation's hand-off to a returning node
    /// safe without a seq counter in the store: the returning node serves
    /// nothing until every live peer reports itself settled, and a peer
    /// reports that only after this. Requests that come later check
    /// ownership against the new view and are refused as `Moved`.
    pub async fn drain_handoff(&self) {
        drop(self.inner.handoff.write().await);
    }

    /// Checked under a conversation's sequencer lock: requests queued on
    /// the lock when the ring changed must not be sequenced here too.
    fn still_owner(&self, conv: ConversationId) -> Result<()> {
        let cluster = &self.inner.cluster;
        if cluster.is_multi_node() && !(cluster.available() && cluster.serves(conv.0.as_bytes())) {
            return Err(Error::Moved);
        }
        Ok(())
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.inner.cluster
    }

    /// Wakes every parked poll: at shutdown all answer; after a ring change
    /// those whose user moved away do.
    pub fn wake_all(&self) {
        self.inner.mailbox_waiters.wake_all();
        self.inner.stream_waiters.wake_all();
    }
}

/// Store reads with their latency recorded; writes go through the committer.
impl Service {
    async fn get(&self, table: crate::store::Table, row: &[u8]) -> Result<Option<bytes::Bytes>> {
        let started = std::time::Instant::now();
        let result = self.inner.store.get(table, row).await;
        self.observe_store("get", started);
        Ok(result?)
    }

    async fn scan(&self, scan: crate::store::Scan) -> Result<Vec<crate::store::Row>> {
        let started = std::time::Instant::now();
        let result = self.inner.store.scan(scan).await;
        self.observe_store("scan", started);
        Ok(result?)
    }

    fn observe_store(&self, op: &str, started: std::time::Instant) {
        self.inner
            .metrics
            .store_seconds
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
    }

    /// The stored message object at `seq`.
    async fn message_at(
        &self,
        conv: ConversationId,
        seq: crate::domain::Seq,
    ) -> Result<Option<bytes::Bytes>> {
        self.get(
            crate::store::Table::Messages,
            &crate::store::keys::id_u64(conv.0, seq),
        )
        .await
    }
}
