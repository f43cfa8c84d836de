//! The outbox worker: delivers the mailbox appends a commit deferred (the
//! sender's own copy, receipts, and every copy owed to a mailbox another
//! node owns), oldest first, retrying until they land.
//!
//! Copies for this node's mailboxes are appended through the committer,
//! together with the removal of their entries. Copies for another node's
//! are pushed to it (`/internal/v1/appends`, signed), then removed. Each
//! destination gets its entries in id order, and an entry is retried
//! before any later one to the same place, so a conversation's events
//! reach every mailbox in seq order.
//!
//! On the embedded store each entry lands exactly once. Otherwise a lost
//! answer, or two nodes draining a departed peer's outbox at once, can
//! deliver an entry twice; the receiving node remembers the entries it took
//! recently (by outbox and id) and drops repeats. An entry counts as taken
//! once its commit there succeeded; a repeat arriving while that commit is
//! in flight is refused, and pushed again. Only a repeat that reaches a
//! node after it restarted gets through, and clients de-duplicate by
//! `message_id`.
//!
//! The same worker drains a departed peer's outbox (`drain`), routing its
//! entries to whoever owns each mailbox now.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::committer::{Commit, Committer, Watermark};
use crate::cluster::{Cluster, Peer, Route};
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::store::{Mutation, Row, Scan, Store, StoreError, Table, keys};

/// Entries applied per round.
const BATCH: usize = 512;
/// Longest pause between retries while the store or a peer is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Look again this often even without a kick (entries left by a crash).
const IDLE_RESCAN: Duration = Duration::from_secs(5);
/// A push includes the receiving node's commit. A timed-out push loses
/// nothing: the receiver's commit runs on, and a repeat is refused until
/// its outcome is known, then answered as taken or taken afresh. Short,
/// since a round waits for all its pushes: a peer that stopped answering
/// delays the others this long, and a returning peer's settle (FLUSH_WAIT)
/// and join (JOIN_WAIT) are sized on it (5 s here made joins time out in
/// the cluster suite).
const PUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a round some of whose entries could not be delivered.
const BLOCKED_PAUSE: Duration = Duration::from_millis(100);

/// Copies a caller waits for, by outbox id: the worker fires each once it
/// reached its owner.
#[derive(Default)]
pub struct Deliveries(DashMap<u64, Arc<Notify>>);

impl Deliveries {
    pub fn register(&self, id: u64) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.0.insert(id, notify.clone());
        notify
    }

    pub fn remove(&self, id: u64) {
        self.0.remove(&id);
    }

    fn delivered(&self, id: u64) {
        if let Some((_, notify)) = self.0.remove(&id) {
            notify.notify_one();
        }
    }
}

/// How many entries of this node's own outbox wait for each mailbox. While
/// some do, the committer sends that mailbox's new events through the
/// outbox too, behind them: appending in place would overtake them (a copy
/// whose push is still timing out against a peer that just stopped, and
/// whose mailbox this node took over meanwhile).
#[derive(Default)]
pub struct Pending(DashMap<UserId, u32>);

impl Pending {
    pub fn has(&self, user: &UserId) -> bool {
        self.0.contains_key(user)
    }

    pub fn add(&self, user: UserId) {
        *self.0.entry(user).or_default() += 1;
    }

    fn done(&self, user: &UserId) {
        self.0.remove_if_mut(user, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

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
                for (_, cell) in &left {
                    if let Some((user, _)) = cell.split_first_chunk::<16>() {
                        pending.add(UserId(uuid::Uuid::from_bytes(*user)));
                    }
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
                .position(|(row, _)| keys::trailing_u64(row).is_none_or(|id| id > complete))
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
            let Some((user, _)) = cell.split_first_chunk::<16>() else {
                tracing::error!(row = ?row, "dropping a malformed outbox entry");
                local.writes.push(delete(row));
                continue;
            };
            let user = UserId(uuid::Uuid::from_bytes(*user));
            match self.cluster.delivery(user.0.as_bytes()) {
                // A departed peer's entries are delivered by the newest
                // view: this node takes those mailboxes over, and their
                // previous owner is gone (draining comes before serving).
                Route::Local
                    if self.watermark.is_none()
                        || self.cluster.settled_owner(user.0.as_bytes()) =>
                {
                    local.appends.push((user, cell.slice(16..)));
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
            let body = encode(group.iter().map(|(row, cell)| {
                (
                    self.node_key,
                    keys::trailing_u64(row).unwrap_or(0),
                    cell.as_ref(),
                )
            }));
            let rows: Vec<(Vec<u8>, Option<UserId>)> = group
                .iter()
                .map(|(row, cell)| {
                    let user = cell
                        .split_first_chunk::<16>()
                        .map(|(u, _)| UserId(uuid::Uuid::from_bytes(*u)));
                    (row.clone(), user)
                })
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
                        if let Some(id) = keys::trailing_u64(&row) {
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
            Mutation::Delete { row, .. } => keys::trailing_u64(row),
            Mutation::Put { .. } => None,
        })
        .collect()
}

/// One pushed entry: which outbox entry it is (so a repeat is recognised),
/// and what to append.
#[derive(Debug)]
pub struct Pushed {
    /// The outbox's node key and the entry's id.
    pub entry: ([u8; 8], u64),
    pub user: UserId,
    pub event: Bytes,
}

/// A push body: per entry, `len(u32) || outbox node key(8) || id(8) ||
/// cell`, the cell being `user(16) || event`, numbers big-endian.
pub fn encode<'a>(entries: impl Iterator<Item = ([u8; 8], u64, &'a [u8])>) -> Bytes {
    let mut body = BytesMut::new();
    for (node, id, cell) in entries {
        body.put_u32((16 + cell.len()) as u32);
        body.put_slice(&node);
        body.put_u64(id);
        body.put_slice(cell);
    }
    body.freeze()
}

/// The entries of a push body; `None` if it is malformed.
pub fn decode(body: &Bytes) -> Option<Vec<Pushed>> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let len = u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        let frame = body.get(at..at.checked_add(len)?)?;
        let (node, rest) = frame.split_first_chunk::<8>()?;
        let (id, rest) = rest.split_first_chunk::<8>()?;
        let (user, _) = rest.split_first_chunk::<16>()?;
        entries.push(Pushed {
            entry: (*node, u64::from_be_bytes(*id)),
            user: UserId(uuid::Uuid::from_bytes(*user)),
            event: body.slice(at + 32..at + len),
        });
        at += len;
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::committer::outbox_cell;

    #[test]
    fn push_bodies_round_trip_and_reject_truncation() {
        let a = outbox_cell(UserId(uuid::Uuid::from_u128(1)), br#"{"type":"x"}"#);
        let b = outbox_cell(UserId(uuid::Uuid::from_u128(2)), b"{}");
        let body = encode([([1; 8], 7, a.as_ref()), ([2; 8], 9, b.as_ref())].into_iter());
        let entries = decode(&body).expect("well formed");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].user, UserId(uuid::Uuid::from_u128(1)));
        assert_eq!(entries[0].entry, ([1; 8], 7));
        assert_eq!(&entries[0].event[..], br#"{"type":"x"}"#);
        assert_eq!(entries[1].entry, ([2; 8], 9));
        assert_eq!(&entries[1].event[..], b"{}");
        for cut in 1..body.len() {
            if cut == 4 + 16 + a.len() {
                continue;
            }
            assert!(decode(&body.slice(..cut)).is_none(), "cut at {cut}");
        }
        assert!(decode(&Bytes::from_static(&[0, 0, 0, 3, 1, 2, 3])).is_none());
    }
}
