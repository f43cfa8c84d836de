//! The committer task: drains its queue into one store write per batch,
//! assigns positions, then updates caches and wakes readers.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{Notify, mpsc};

use super::batch::Batch;
use super::clock::Clock;
use super::committer::{Committed, Committer, Request};
use crate::domain::{Position, UserId};
use crate::service::cache::StoredEvent;
use crate::service::handles::Handles;
use crate::store::{Fence, Mutation, StoreError, Table, keys};

/// What the committer task owns.
pub struct Writer {
    /// Appends to mailboxes this node does not own go to the outbox.
    pub shared: Handles,
    pub clock: Clock,
    pub max_batch: usize,
    /// Fired at shutdown: take no new work, finish what is queued.
    pub closing: tokio_util::sync::CancellationToken,
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
                    if self.shared.cluster.is_multi_node() {
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
        if !self.shared.cluster.fresh()
            || (!self.shared.cluster.joined() && requests.iter().any(|r| !r.commit.here))
        {
            return Err(StoreError::Unavailable(
                "this node's lease lapsed, or it is rejoining the ring".into(),
            ));
        }
        let epoch = self.shared.cluster.epoch();
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
                let behind = self.shared.pending.has(&user) || queued.contains(&user);
                if c.here || (!behind && self.shared.cluster.serves(user.0.as_bytes())) {
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
            let store = self.shared.store.clone();
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
        let commits = requests.iter_mut().map(|r| &mut r.commit);
        let batch = Batch::plan(commits, &mut self.clock, self.shared.node_key);
        let delivered: Vec<Option<(u64, Arc<Notify>)>> = batch
            .awaited
            .iter()
            .map(|id| id.map(|id| (id, self.shared.deliveries.register(id))))
            .collect();
        self.shared.watermark.issue(batch.newest);
        self.shared
            .metrics
            .commit_batch_size
            .observe(requests.len() as f64);
        let started = Instant::now();
        let result = self.write(batch.writes).await;
        let durable_at = Instant::now();
        self.shared
            .metrics
            .store_seconds
            .with_label_values(&["write"])
            .observe((durable_at - started).as_secs_f64());
        match result {
            Ok(()) => {
                self.shared.watermark.raise(batch.newest);
                self.landed(
                    requests,
                    batch.positions,
                    delivered,
                    batch.outbox_rows,
                    durable_at,
                );
            }
            Err(e) => self.failed(requests, delivered, e),
        }
    }

    /// Writes the batch; an empty batch (a barrier) only raises the
    /// watermark.
    async fn write(&self, writes: Vec<Mutation>) -> Result<(), StoreError> {
        if writes.is_empty() {
            Ok(())
        } else if self.shared.cluster.is_multi_node() {
            // Checked again as late as possible: the lease may have lapsed
            // since `route` (scans, a stopped process).
            let cluster = self.shared.cluster.clone();
            let fence: Fence = Arc::new(move || cluster.fresh());
            self.shared.store.write_fenced(writes, fence).await
        } else {
            self.shared.store.write(writes).await
        }
    }

    /// The batch failed, but may still land (the store rolls it forward
    /// before serving anything else), so what the caches know of these
    /// mailboxes and conversations may be short of the store.
    fn failed(
        &self,
        requests: Vec<Request>,
        delivered: Vec<Option<(u64, Arc<Notify>)>>,
        e: StoreError,
    ) {
        tracing::warn!(error = %e, sends = requests.len(), "commit failed");
        for request in &requests {
            for (user, _) in &request.commit.appends {
                self.shared.mailbox_cache.forget(user);
            }
            if let Some((conv, _, _)) = &request.commit.message {
                self.shared.history_cache.forget(conv);
            }
        }
        for (request, notify) in requests.into_iter().zip(delivered) {
            if let Some((id, _)) = notify {
                self.shared.deliveries.remove(id);
            }
            let _ = request
                .reply
                .send(Err(StoreError::Unavailable(e.to_string())));
        }
    }

    /// The batch is durable: counts the outbox, fills the caches, then
    /// wakes readers (a woken poll must find what woke it) and answers.
    fn landed(
        &self,
        requests: Vec<Request>,
        positions: Vec<Vec<u64>>,
        delivered: Vec<Option<(u64, Arc<Notify>)>>,
        outbox_rows: i64,
        durable_at: Instant,
    ) {
        if self.shared.cluster.is_multi_node() {
            for request in &requests {
                for (user, _) in &request.commit.outbox {
                    self.shared.pending.add(*user);
                }
            }
        }
        if outbox_rows > 0 {
            self.shared.metrics.outbox_depth.add(outbox_rows);
            self.shared.outbox_kick.notify_one();
        }
        for (request, mine) in requests.iter().zip(&positions) {
            for ((user, event), position) in request.commit.appends.iter().zip(mine) {
                self.shared.mailbox_cache.append(
                    *user,
                    StoredEvent {
                        position: *position,
                        json: event.clone(),
                        durable_at: Some(durable_at),
                    },
                );
            }
            if let Some((conv, seq, json)) = &request.commit.message {
                self.shared.history_cache.append(*conv, *seq, json.clone());
            }
        }
        for ((request, mine), delivered) in requests.into_iter().zip(positions).zip(delivered) {
            for (user, _) in &request.commit.appends {
                self.shared.mailbox_waiters.wake(user);
            }
            if let Some(key) = &request.commit.arrival {
                self.shared.arrivals.wake(key);
            }
            self.shared
                .metrics
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
