//! Group commit: the one task that writes sends, receipts and group changes
//! to the store.
//!
//! It drains every request waiting in its queue into a single store write
//! (one fsync, or one HBase round trip), so durability costs one sync per
//! batch, not per message. Being the only writer of mailbox rows, it also
//! assigns mailbox positions: in commit order, so a reader can never see a
//! later position before an earlier one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::cache::{HistoryCache, MailboxCache, StoredEvent};
use super::clock::Clock;
use super::outbox::{Deliveries, Pending};
use super::waiters::Waiters;
use crate::cluster::Cluster;
use crate::domain::{ConversationId, MessageId, Position, Seq, UserId};
use crate::metrics::Metrics;
use crate::store::{Fence, Mutation, Store, StoreError, Table, keys};

/// One unit of work that must become durable as a whole.
#[derive(Default)]
pub struct Commit {
    /// Rows to put or delete as they are.
    pub writes: Vec<Mutation>,
    /// Events to append to mailboxes; positions are assigned at commit.
    pub appends: Vec<(UserId, Bytes)>,
    /// Events owed to mailboxes through the outbox (the sender's copy,
    /// receipts): written durably now, appended by the outbox worker.
    pub outbox: Vec<(UserId, Bytes)>,
    /// A message entering a conversation, for the history cache.
    pub message: Option<(ConversationId, Seq, Bytes)>,
    /// A send to announce to pipelined sends waiting for it.
    pub arrival: Option<(UserId, MessageId)>,
    /// The recipient whose copy the caller waits for when another node owns
    /// its mailbox (a direct message: receiver first).
    pub await_delivery: Option<UserId>,
    /// Append here whatever the serving view says: the caller checked that
    /// this node owns the mailboxes by both views (pushed and re-routed
    /// copies, which must not go round the outbox again).
    pub here: bool,
}

/// What a commit became.
#[derive(Debug)]
pub struct Committed {
    /// The position of each append this node made, in order.
    pub positions: Vec<Position>,
    /// Fired when the copy for `await_delivery` reached its owner.
    pub delivered: Option<Arc<tokio::sync::Notify>>,
}

struct Request {
    commit: Commit,
    accepted_at: Instant,
    reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// The committer's queue. Cloning is shallow.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::UnboundedSender<Request>,
}

/// The newest position (mailbox row or outbox id) of a batch that has fully
/// landed. On HBase a batch's rows become readable one by one while it is
/// written, and a failed batch lands later, when it is rolled forward
/// (store/hbase/intents.rs); readers ignore this node's rows above the
/// watermark, so they never see a later position before an earlier one.
///
/// It also knows the newest position this node's clock has issued. On a
/// ring, a mailbox this node took over may hold rows another node wrote at
/// positions above both (that node's clock ran ahead, as a restarted
/// node's does): those are complete, and are read at once.
#[derive(Debug)]
pub struct Watermark {
    complete: AtomicU64,
    issued: AtomicU64,
}

impl Watermark {
    /// Everything at or below `position` (the clock's lease at start) is
    /// already complete in the store.
    pub fn new(position: u64) -> Watermark {
        Watermark {
            complete: AtomicU64::new(position),
            issued: AtomicU64::new(position),
        }
    }

    pub fn get(&self) -> u64 {
        self.complete.load(Ordering::Acquire)
    }

    /// Whether a reader may see the row at `position`: not one of this
    /// node's batches still being written.
    pub fn visible(&self, position: u64) -> bool {
        position <= self.get() || position > self.issued.load(Ordering::Acquire)
    }

    /// Before a batch with positions up to `position` is written.
    fn issue(&self, position: u64) {
        self.issued.fetch_max(position, Ordering::AcqRel);
    }

    fn raise(&self, position: u64) {
        self.complete.fetch_max(position, Ordering::AcqRel);
    }
}

/// What the committer task owns.
pub struct Writer {
    pub store: Arc<dyn Store>,
    pub node_key: [u8; 8],
    pub clock: Clock,
    pub max_batch: usize,
    pub mailbox_cache: Arc<MailboxCache>,
    pub history_cache: Arc<HistoryCache>,
    pub mailbox_waiters: Arc<Waiters<UserId>>,
    pub arrivals: Arc<Waiters<(UserId, MessageId)>>,
    /// Kicked whenever outbox rows were written.
    pub outbox_kick: Arc<tokio::sync::Notify>,
    pub metrics: Arc<Metrics>,
    /// Raised after each batch that fully landed.
    pub watermark: Arc<Watermark>,
    /// Fired at shutdown: take no new work, finish what is queued.
    pub closing: tokio_util::sync::CancellationToken,
    /// Which mailboxes this node owns; appends to others go to the outbox.
    pub cluster: Arc<Cluster>,
    /// Copies callers wait for, by outbox id.
    pub deliveries: Arc<Deliveries>,
    /// Mailboxes with entries waiting in this node's outbox.
    pub pending: Arc<Pending>,
}

/// Users this node appended to since the ring last changed. Before its
/// first append to any other user, the clock is raised above the user's
/// newest stored position: another node may have owned the mailbox.
#[derive(Default)]
struct Warm {
    epoch: u64,
    users: std::collections::HashSet<UserId>,
}

/// Past this many users the set is emptied (at the cost of a scan each).
const MAX_WARM: usize = 1_000_000;

impl Committer {
    /// Starts the committer task; it ends when `closing` fires (or every
    /// `Committer` is dropped) and its queue is drained.
    pub fn start(writer: Writer) -> (Committer, tokio::task::JoinHandle<()>) {
        let (queue, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(writer.run(rx));
        (Committer { queue }, task)
    }

    /// Makes `commit` durable; returns once it is on disk.
    pub async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            commit,
            accepted_at: Instant::now(),
            reply,
        };
        self.queue
            .send(request)
            .map_err(|_| StoreError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the committer stopped".into()))?
    }
}

/// The outbox row key of this node's entry `id`.
pub fn outbox_row(node_key: [u8; 8], id: u64) -> Vec<u8> {
    let mut row = Vec::with_capacity(16);
    row.extend_from_slice(&node_key);
    row.extend_from_slice(&id.to_be_bytes());
    row
}

/// The outbox cell: `user(16) || event JSON`.
pub fn outbox_cell(user: UserId, event: &[u8]) -> Bytes {
    let mut cell = BytesMut::with_capacity(16 + event.len());
    cell.put_slice(user.0.as_bytes());
    cell.put_slice(event);
    cell.freeze()
}

/// The node-state row holding the clock's lease.
pub fn clock_row(node_key: [u8; 8]) -> Vec<u8> {
    let mut row = node_key.to_vec();
    row.extend_from_slice(b"clock");
    row
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut warm = Warm::default();
        let mut batch = Vec::with_capacity(self.max_batch);
        let closing = self.closing.clone();
        loop {
            tokio::select! {
                biased;
                received = rx.recv_many(&mut batch, self.max_batch) => {
                    if received == 0 {
                        break;
                    }
                    let mut requests = std::mem::take(&mut batch);
                    if self.cluster.is_multi_node() {
                        match self.route(&mut requests, &mut warm).await {
                            Ok(()) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, sends = requests.len(), "commit refused");
                                for request in requests {
                                    let _ = request.reply.send(Err(e.clone()));
                                }
                                continue;
                            }
                        }
                    }
                    self.commit_batch(requests).await;
                }
                // Later sends fail fast with "shutting down"; queued ones still commit.
                _ = closing.cancelled(), if !rx.is_closed() => rx.close(),
            }
        }
    }

    /// On a ring of several nodes: moves appends to mailboxes other nodes
    /// own into the outbox, and raises the clock above the newest stored
    /// position of each user this node appends to for the first time since
    /// the ring changed.
    async fn route(&mut self, requests: &mut [Request], warm: &mut Warm) -> Result<(), StoreError> {
        // A node that stood still may have lost what it sequenced to
        // another node meanwhile: it commits nothing of its own until it
        // rejoined. Copies it was handed while rejoining may still land.
        if !self.cluster.fresh()
            || (!self.cluster.joined() && requests.iter().any(|r| !r.commit.here))
        {
            return Err(StoreError::Unavailable(
                "this node's lease lapsed, or it is rejoining the ring".into(),
            ));
        }
        let epoch = self.cluster.epoch();
        if warm.epoch != epoch || warm.users.len() > MAX_WARM {
            warm.epoch = epoch;
            warm.users.clear();
        }
        let mut cold = Vec::new();
        let mut queued: Vec<UserId> = Vec::new();
        for request in requests.iter_mut() {
            let c = &mut request.commit;
            let appends = std::mem::take(&mut c.appends);
            for (user, event) in appends {
                // In place only when nothing for this mailbox waits in the
                // outbox, which would be overtaken.
                let behind = self.pending.has(&user) || queued.contains(&user);
                if c.here || (!behind && self.cluster.serves(user.0.as_bytes())) {
                    if !warm.users.contains(&user) && !cold.contains(&user) {
                        cold.push(user);
                    }
                    c.appends.push((user, event));
                } else {
                    if !queued.contains(&user) {
                        queued.push(user);
                    }
                    c.outbox.push((user, event));
                }
            }
        }
        if cold.is_empty() {
            return Ok(());
        }
        let mut scans = tokio::task::JoinSet::new();
        for user in cold.iter().copied() {
            let store = self.store.clone();
            scans.spawn(async move {
                store
                    .scan(crate::store::Scan::prefix(Table::Mailboxes, user.0.as_bytes(), 1).rev())
                    .await
            });
        }
        let mut newest = 0;
        while let Some(done) = scans.join_next().await {
            let rows =
                done.map_err(|e| StoreError::Unavailable(format!("a scan stopped: {e}")))??;
            if let Some(p) = rows.first().and_then(|(row, _)| keys::trailing_u64(row)) {
                newest = newest.max(p);
            }
        }
        self.clock.raise_above(newest);
        warm.users.extend(cold);
        Ok(())
    }

    async fn commit_batch(&mut self, mut requests: Vec<Request>) {
        let mut writes = Vec::new();
        let mut positions: Vec<Vec<u64>> = Vec::with_capacity(requests.len());
        let mut delivered: Vec<Option<(u64, Arc<tokio::sync::Notify>)>> =
            Vec::with_capacity(requests.len());
        let mut outbox_rows = 0;
        for request in &mut requests {
            writes.append(&mut request.commit.writes);
            let c = &request.commit;
            let mut mine = Vec::with_capacity(c.appends.len());
            for (user, event) in &c.appends {
                let position = self.clock.tick();
                tracing::trace!(%user, position, event = %String::from_utf8_lossy(&event[..event.len().min(600)]), "append");
                writes.push(Mutation::Put {
                    table: Table::Mailboxes,
                    row: keys::id_u64(user.0, position),
                    value: event.clone(),
                });
                mine.push(position);
            }
            let mut notify = None;
            for (user, event) in &c.outbox {
                let id = self.clock.tick();
                if c.await_delivery == Some(*user) && notify.is_none() {
                    notify = Some((id, self.deliveries.register(id)));
                }
                writes.push(Mutation::Put {
                    table: Table::Outbox,
                    row: outbox_row(self.node_key, id),
                    value: outbox_cell(*user, event),
                });
                outbox_rows += 1;
            }
            positions.push(mine);
            delivered.push(notify);
        }
        if let Some(lease) = self.clock.renew() {
            // First in the batch: on a store without atomic batches the
            // lease lands no later than the positions it covers.
            writes.insert(
                0,
                Mutation::Put {
                    table: Table::NodeState,
                    row: clock_row(self.node_key),
                    value: Bytes::copy_from_slice(&lease.to_be_bytes()),
                },
            );
        }

        // A barrier (nothing to write) takes a fresh tick: on a node that
        // just took mailboxes over, rows their previous owner wrote up to
        // now become readable.
        let newest = if writes.is_empty() {
            self.clock.tick()
        } else {
            self.clock.last()
        };
        self.watermark.issue(newest);
        self.metrics
            .commit_batch_size
            .observe(requests.len() as f64);
        let started = Instant::now();
        // An empty batch (a barrier) only raises the watermark.
        let result = if writes.is_empty() {
            Ok(())
        } else if self.cluster.is_multi_node() {
            // Checked again as late as possible: the lease may have lapsed
            // since `route` (scans, a stopped process).
            let cluster = self.cluster.clone();
            let fence: Fence = Arc::new(move || cluster.fresh());
            self.store.write_fenced(writes, fence).await
        } else {
            self.store.write(writes).await
        };
        let durable_at = Instant::now();
        self.metrics
            .store_seconds
            .with_label_values(&["write"])
            .observe((durable_at - started).as_secs_f64());

        if let Err(e) = result {
            tracing::warn!(error = %e, sends = requests.len(), "commit failed");
            // The batch may still land (the store rolls it forward before
            // serving anything else), so what the caches know of these
            // mailboxes and conversations may be short of the store.
            for request in &requests {
                for (user, _) in &request.commit.appends {
                    self.mailbox_cache.forget(user);
                }
                if let Some((conv, _, _)) = &request.commit.message {
                    self.history_cache.forget(conv);
                }
            }
            for (request, notify) in requests.into_iter().zip(delivered) {
                if let Some((id, _)) = notify {
                    self.deliveries.remove(id);
                }
                let _ = request
                    .reply
                    .send(Err(StoreError::Unavailable(e.to_string())));
            }
            return;
        }
        self.watermark.raise(newest);
        if self.cluster.is_multi_node() {
            for request in &requests {
                for (user, _) in &request.commit.outbox {
                    self.pending.add(*user);
                }
            }
        }
        if outbox_rows > 0 {
            self.metrics.outbox_depth.add(outbox_rows);
            self.outbox_kick.notify_one();
        }

        // Caches first, then wakes: a woken poll must find what woke it.
        for (request, mine) in requests.iter().zip(&positions) {
            for ((user, event), position) in request.commit.appends.iter().zip(mine) {
                self.mailbox_cache.append(
                    *user,
                    StoredEvent {
                        position: *position,
                        json: event.clone(),
                        durable_at: Some(durable_at),
                    },
                );
            }
            if let Some((conv, seq, json)) = &request.commit.message {
                self.history_cache.append(*conv, *seq, json.clone());
            }
        }
        for ((request, mine), delivered) in requests.into_iter().zip(positions).zip(delivered) {
            for (user, _) in &request.commit.appends {
                self.mailbox_waiters.wake(user);
            }
            if let Some(key) = &request.commit.arrival {
                self.arrivals.wake(key);
            }
            self.metrics
                .stage_seconds
                .with_label_values(&["durable"])
                .observe((durable_at - request.accepted_at).as_secs_f64());
            let positions = mine.into_iter().map(Position).collect();
            let _ = request.reply.send(Ok(Committed {
                positions,
                delivered: delivered.map(|(_, notify)| notify),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::domain::UserId;
    use crate::store::{Row, Scan};

    /// A store whose writes wait at a gate and record their sizes.
    struct GatedStore {
        gate: Semaphore,
        writes: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl Store for GatedStore {
        async fn get(&self, _: Table, _: &[u8]) -> Result<Option<Bytes>, StoreError> {
            Ok(None)
        }
        async fn scan(&self, _: Scan) -> Result<Vec<Row>, StoreError> {
            Ok(Vec::new())
        }
        async fn write(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
            let permit = self
                .gate
                .acquire()
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            permit.forget();
            self.writes.lock().unwrap().push(batch.len());
            Ok(())
        }
        async fn check_and_put(
            &self,
            _: Table,
            _: &[u8],
            _: Option<&[u8]>,
            _: Bytes,
        ) -> Result<bool, StoreError> {
            Err(StoreError::Unavailable("not used here".into()))
        }
        async fn increment(&self, _: Table, _: &[u8], _: i64) -> Result<i64, StoreError> {
            Err(StoreError::Unavailable("not used here".into()))
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn writer(store: Arc<GatedStore>) -> Writer {
        Writer {
            store,
            node_key: [0; 8],
            clock: Clock::resume(0),
            max_batch: 1024,
            mailbox_cache: Arc::new(MailboxCache::new(1 << 20)),
            history_cache: Arc::new(HistoryCache::new(1 << 20)),
            mailbox_waiters: Waiters::new(8, 8),
            arrivals: Waiters::new(8, 8),
            outbox_kick: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::new(Metrics::new()),
            watermark: Arc::new(Watermark::new(0)),
            closing: tokio_util::sync::CancellationToken::new(),
            cluster: Cluster::new(
                &crate::config::ClusterConfig::default(),
                std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
                b"",
            ),
            deliveries: Arc::new(Deliveries::default()),
            pending: Arc::new(Pending::default()),
        }
    }

    fn one_append(n: u128) -> Commit {
        Commit {
            appends: vec![(
                UserId(uuid::Uuid::from_u128(n % 3)),
                Bytes::from_static(b"{}"),
            )],
            ..Commit::default()
        }
    }

    #[tokio::test]
    async fn commits_waiting_together_share_one_write() {
        let store = Arc::new(GatedStore {
            gate: Semaphore::new(0),
            writes: Mutex::new(Vec::new()),
        });
        let (committer, _task) = Committer::start(writer(store.clone()));
        // The first commit holds the store; fifty more queue behind it.
        let first = tokio::spawn({
            let c = committer.clone();
            async move { c.commit(one_append(0)).await }
        });
        tokio::task::yield_now().await;
        let rest: Vec<_> = (1..=50)
            .map(|n| {
                let c = committer.clone();
                tokio::spawn(async move { c.commit(one_append(n)).await })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        store.gate.add_permits(2);
        first.await.unwrap().unwrap();
        let mut positions = Vec::new();
        for r in rest {
            positions.extend(r.await.unwrap().unwrap().positions);
        }
        // Two writes: the first alone, then the fifty together (plus the
        // clock lease in the first).
        assert_eq!(store.writes.lock().unwrap().len(), 2);
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "positions follow commit order"
        );
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_commit_in_it() {
        let store = Arc::new(GatedStore {
            gate: Semaphore::new(0),
            writes: Mutex::new(Vec::new()),
        });
        let (committer, _task) = Committer::start(writer(store.clone()));
        let pending: Vec<_> = (0..5)
            .map(|n| {
                let c = committer.clone();
                tokio::spawn(async move { c.commit(one_append(n)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        store.gate.close();
        for p in pending {
            assert!(matches!(p.await.unwrap(), Err(StoreError::Unavailable(_))));
        }
    }
}
