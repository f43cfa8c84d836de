//! The worker: rounds of delivery, oldest entry first.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::deliveries::{Deliveries, Pending};
use super::push::encode;
use super::row::{cell_user, entry_id, parse_cell};
use crate::cluster::{Cluster, Peer, Route};
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::service::commit::{Commit, Committer, Watermark};
use crate::store::{Mutation, Row, Scan, Store, StoreError, Table};

/// Entries applied per round.
const BATCH: usize = 512;
/// Longest pause between retries while the store or a peer is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Look again this often even without a kick (entries left by a crash).
const IDLE_RESCAN: Duration = Duration::from_secs(5);
/// A push includes the receiving node's commit, which may wait for the
/// batch ahead of it and then write its own, each write taking up to a
/// store call timeout (5 s on HBase by default); 2 s timed out under load.
/// A timed-out push loses nothing (the receiver refuses a repeat until the
/// commit's outcome is known), but it is re-sent every `BLOCKED_PAUSE` to
/// a node that is already slow. Not longer, since a round waits for all
/// its pushes: a peer that stopped answering delays the others this long.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause after a round some of whose entries could not be delivered.
const BLOCKED_PAUSE: Duration = Duration::from_millis(100);

pub struct Outbox {
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    /// Whose outbox this is: this node's, or a departed peer's.
    pub node_key: [u8; 8],
    pub kick: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Entries above it may still be landing, out of order. `None` for a
    /// departed peer's outbox, of which nothing is in flight.
    pub watermark: Option<Arc<Watermark>>,
    pub cluster: Arc<Cluster>,
    pub deliveries: Arc<Deliveries>,
    /// Counts of this node's own entries (`None` for a departed peer's).
    pub pending: Option<Arc<Pending>>,
}

/// What one round did.
struct Round {
    handled: usize,
    /// Some entries could not be delivered (a peer failed); they stay.
    blocked: bool,
}

impl Outbox {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        if let Ok(left) = self
            .store
            .scan(Scan::prefix(Table::Outbox, &self.node_key, usize::MAX))
            .await
        {
            // Entries a previous run left behind count toward the depth.
            self.metrics.outbox_depth.set(left.len() as i64);
            if let Some(pending) = &self.pending {
                for user in left.iter().filter_map(|(_, cell)| cell_user(cell)) {
                    pending.add(user);
                }
            }
        }
        // The last row applied: new entries always sort after it, and
        // starting there skips the tombstones of applied ones.
        let mut after: Option<Vec<u8>> = None;
        while !shutdown.is_cancelled() {
            let pause = match self.round(&mut after).await {
                Ok(Round {
                    handled: 0,
                    blocked: false,
                }) => {
                    tokio::select! {
                        _ = self.kick.notified() => {}
                        _ = tokio::time::sleep(IDLE_RESCAN) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
                Ok(Round { blocked: false, .. }) => {
                    backoff = Duration::from_millis(50);
                    continue;
                }
                // A peer failed: its entries route elsewhere once the
                // lease lapses and it leaves the ring, so look again soon.
                Ok(Round { blocked: true, .. }) => BLOCKED_PAUSE,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox apply failed");
                    backoff
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Delivers every entry; fails if some could not be delivered.
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let mut total = 0;
        let mut after = None;
        loop {
            let round = self.round(&mut after).await?;
            total += round.handled;
            if round.blocked {
                return Err(StoreError::Unavailable(
                    "some entries could not be delivered yet".into(),
                ));
            }
            if round.handled == 0 {
                return Ok(total);
            }
        }
    }

    async fn round(&self, after: &mut Option<Vec<u8>>) -> Result<Round, StoreError> {
        if !self.cluster.fresh() {
            // Stood still: what it read before may have been delivered by
            // others since; wait until it rejoined.
            return Ok(Round {
                handled: 0,
                blocked: true,
            });
        }
        let mut scan = Scan::prefix(Table::Outbox, &self.node_key, BATCH);
        if let Some(last) = after {
            scan.start = std::ops::Bound::Excluded(last.clone());
        }
        let mut rows = self.store.scan(scan).await?;
        if let Some(watermark) = &self.watermark {
            let complete = watermark.get();
            if let Some(cut) = rows
                .iter()
                .position(|(row, _)| entry_id(row).is_none_or(|id| id > complete))
            {
                rows.truncate(cut);
            }
        }
        if rows.is_empty() {
            return Ok(Round {
                handled: 0,
                blocked: false,
            });
        }
        let last_row = rows.last().map(|(row, _)| row.clone());

        let mut local = Commit {
            here: true,
            ..Commit::default()
        };
        let mut waiting = false;
        let mut remote: Vec<(usize, Vec<&Row>)> = Vec::new();
        for entry in &rows {
            let (row, cell) = entry;
            let Some((user, event)) = parse_cell(cell) else {
                tracing::error!(row = ?row, "dropping a malformed outbox entry");
                local.writes.push(delete(row));
                continue;
            };
            match self.cluster.delivery(user.0.as_bytes()) {
                // A departed peer's entries are delivered by the newest
                // view: this node takes those mailboxes over, and their
                // previous owner is gone (draining comes before serving).
                Route::Local
                    if self.watermark.is_none()
                        || self.cluster.settled_owner(user.0.as_bytes()) =>
                {
                    local.appends.push((user, event));
                    local.writes.push(delete(row));
                }
                // This node is about to own the mailbox, but the ring is
                // still changing: this entry (and so every later one for
                // the same mailbox) waits for the next round.
                Route::Local => waiting = true,
                Route::Remote(peer) => {
                    let i = self.peer_index(peer);
                    match remote.iter_mut().find(|(p, _)| *p == i) {
                        Some((_, group)) => group.push(entry),
                        None => remote.push((i, vec![entry])),
                    }
                }
            }
        }

        let mut handled = 0;
        let local_ids: Vec<u64> = rows_ids(&local.writes);
        let local_users: Vec<UserId> = local.appends.iter().map(|(u, _)| *u).collect();
        if !local.writes.is_empty() {
            handled += local.writes.len();
            self.committer.commit(local).await?;
            for id in local_ids {
                self.deliveries.delivered(id);
            }
            if let Some(pending) = &self.pending {
                local_users.iter().for_each(|u| pending.done(u));
            }
        }

        let mut pushes = tokio::task::JoinSet::new();
        for (i, group) in remote {
            let peer = self.cluster.peers()[i].clone();
            let body = encode(
                group
                    .iter()
                    .map(|(row, cell)| (self.node_key, entry_id(row).unwrap_or(0), cell.as_ref())),
            );
            let rows: Vec<(Vec<u8>, Option<UserId>)> = group
                .iter()
                .map(|(row, cell)| (row.clone(), cell_user(cell)))
                .collect();
            let cluster = self.cluster.clone();
            pushes.spawn(async move {
                let result = cluster.push_appends(&peer, body, PUSH_TIMEOUT).await;
                (peer, rows, result)
            });
        }
        let mut blocked = waiting;
        let mut done = Commit::default();
        while let Some(finished) = pushes.join_next().await {
            let Ok((peer, rows, result)) = finished else {
                blocked = true;
                continue;
            };
            match result {
                Ok(()) => {
                    for (row, user) in rows {
                        if let Some(id) = entry_id(&row) {
                            self.deliveries.delivered(id);
                        }
                        if let (Some(pending), Some(user)) = (&self.pending, user) {
                            pending.done(&user);
                        }
                        done.writes.push(Mutation::Delete {
                            table: Table::Outbox,
                            row,
                        });
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.id, error = %e, entries = rows.len(), "push failed; will retry");
                    blocked = true;
                }
            }
        }
        if !done.writes.is_empty() {
            handled += done.writes.len();
            self.committer.commit(done).await?;
        }
        if self.watermark.is_some() {
            self.metrics.outbox_depth.sub(handled as i64);
        }
        // Entries left behind are retried before anything after them.
        *after = if blocked { None } else { last_row };
        Ok(Round { handled, blocked })
    }

    fn peer_index(&self, peer: &Peer) -> usize {
        self.cluster
            .peers()
            .iter()
            .position(|p| p.id == peer.id)
            .unwrap_or(0)
    }
}

fn delete(row: &[u8]) -> Mutation {
    Mutation::Delete {
        table: Table::Outbox,
        row: row.to_vec(),
    }
}

fn rows_ids(writes: &[Mutation]) -> Vec<u64> {
    writes
        .iter()
        .filter_map(|m| match m {
            Mutation::Delete { row, .. } => entry_id(row),
            Mutation::Put { .. } => None,
        })
        .collect()
}
