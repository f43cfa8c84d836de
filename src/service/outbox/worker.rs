//! The worker: rounds of delivery, oldest entry first.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::deliveries::Pending;
use super::push::encode;
use super::row::{cell_user, entry_id, parse_cell};
use crate::cluster::{Peer, Route};
use crate::domain::UserId;
use crate::service::commit::{Commit, Committer, Watermark};
use crate::service::handles::Handles;
use crate::store::{Mutation, Row, Scan, StoreError, Table};

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

pub struct Outbox {
    pub shared: Handles,
    pub committer: Committer,
    /// Whose outbox this is: this node's, or a departed peer's.
    pub node_key: [u8; 8],
    /// This node's own outbox: entries above the watermark may still be
    /// landing, out of order, and `Pending` counts them. A departed peer's
    /// has nothing in flight.
    pub mine: bool,
}

/// What one round did.
struct Round {
    handled: usize,
    /// Some entries could not be delivered (a peer failed); they stay.
    blocked: bool,
}

impl Outbox {
    /// The watermark entries must be under, for this node's own outbox.
    fn watermark(&self) -> Option<&Watermark> {
        self.mine.then_some(&*self.shared.watermark)
    }

    /// The counts of waiting entries, for this node's own outbox.
    fn pending(&self) -> Option<&Pending> {
        self.mine.then_some(&*self.shared.pending)
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        if let Ok(left) = self
            .shared
            .store
            .scan(Scan::prefix(Table::Outbox, &self.node_key, usize::MAX))
            .await
        {
            // Entries a previous run left behind count toward the depth.
            self.shared.metrics.outbox_depth.set(left.len() as i64);
            if let Some(pending) = self.pending() {
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
                        _ = self.shared.outbox_kick.notified() => {}
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
        if !self.shared.cluster.fresh() {
            // Stood still: what it read before may have been delivered by
            // others since; wait until it rejoined.
            return Ok(Round {
                handled: 0,
                blocked: true,
            });
        }
        let rows = self.landed_rows(after.as_deref()).await?;
        let Some(last_row) = rows.last().map(|(row, _)| row.clone()) else {
            return Ok(Round {
                handled: 0,
                blocked: false,
            });
        };
        let plan = RoundPlan::new(&rows, |user| self.destination(user));
        let mut handled = 0;
        if !plan.local.writes.is_empty() {
            handled += plan.local.writes.len();
            let ids = rows_ids(&plan.local.writes);
            let users: Vec<UserId> = plan.local.appends.iter().map(|(u, _)| *u).collect();
            self.committer.commit(plan.local).await?;
            ids.into_iter()
                .for_each(|id| self.shared.deliveries.delivered(id));
            if let Some(pending) = self.pending() {
                users.iter().for_each(|u| pending.done(u));
            }
        }
        let (done, pushes_failed) = self.push(plan.remote).await;
        if !done.writes.is_empty() {
            handled += done.writes.len();
            self.committer.commit(done).await?;
        }
        if self.watermark().is_some() {
            self.shared.metrics.outbox_depth.sub(handled as i64);
        }
        let blocked = plan.waiting || pushes_failed;
        // Entries left behind are retried before anything after them.
        *after = if blocked { None } else { Some(last_row) };
        Ok(Round { handled, blocked })
    }

    /// The next entries after `after`, up to the first one whose batch may
    /// still be landing (above the watermark).
    async fn landed_rows(&self, after: Option<&[u8]>) -> Result<Vec<Row>, StoreError> {
        let mut scan = Scan::prefix(Table::Outbox, &self.node_key, BATCH);
        if let Some(last) = after {
            scan.start = std::ops::Bound::Excluded(last.to_vec());
        }
        let mut rows = self.shared.store.scan(scan).await?;
        if let Some(watermark) = self.watermark() {
            let complete = watermark.get();
            if let Some(cut) = rows
                .iter()
                .position(|(row, _)| entry_id(row).is_none_or(|id| id > complete))
            {
                rows.truncate(cut);
            }
        }
        Ok(rows)
    }

    /// Where the entry for `user`'s mailbox goes this round.
    fn destination(&self, user: UserId) -> Destination {
        match self.shared.cluster.delivery(user.0.as_bytes()) {
            // A departed peer's entries are delivered by the newest
            // view: this node takes those mailboxes over, and their
            // previous owner is gone (draining comes before serving).
            Route::Local
                if self.watermark().is_none()
                    || self.shared.cluster.settled_owner(user.0.as_bytes()) =>
            {
                Destination::Here
            }
            // This node is about to own the mailbox, but the ring is
            // still changing: this entry (and so every later one for
            // the same mailbox) waits for the next round.
            Route::Local => Destination::Wait,
            Route::Remote(peer) => Destination::Peer(self.peer_index(peer)),
        }
    }

    /// Pushes each peer its entries, all peers at once. Returns the removal
    /// of the rows delivered, and whether some push failed.
    async fn push(&self, remote: Vec<(usize, Vec<&Row>)>) -> (Commit, bool) {
        let mut pushes = tokio::task::JoinSet::new();
        for (i, group) in remote {
            let peer = self.shared.cluster.peers()[i].clone();
            let body = encode(
                group
                    .iter()
                    .map(|(row, cell)| (self.node_key, entry_id(row).unwrap_or(0), cell.as_ref())),
            );
            let rows: Vec<(Vec<u8>, Option<UserId>)> = group
                .iter()
                .map(|(row, cell)| (row.clone(), cell_user(cell)))
                .collect();
            let cluster = self.shared.cluster.clone();
            pushes.spawn(async move {
                let result = cluster.push_appends(&peer, body, PUSH_TIMEOUT).await;
                (peer, rows, result)
            });
        }
        let mut failed = false;
        let mut done = Commit::default();
        while let Some(finished) = pushes.join_next().await {
            let Ok((peer, rows, result)) = finished else {
                failed = true;
                continue;
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer.id, error = %e, entries = rows.len(), "push failed; will retry");
                failed = true;
                continue;
            }
            for (row, user) in rows {
                if let Some(id) = entry_id(&row) {
                    self.shared.deliveries.delivered(id);
                }
                if let (Some(pending), Some(user)) = (self.pending(), user) {
                    pending.done(&user);
                }
                done.writes.push(delete(&row));
            }
        }
        (done, failed)
    }

    fn peer_index(&self, peer: &Peer) -> usize {
        self.shared
            .cluster
            .peers()
            .iter()
            .position(|p| p.id == peer.id)
            .unwrap_or(0)
    }
}

/// Where an entry goes in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Destination {
    /// Appended here, through the committer.
    Here,
    /// This node's soon, but not yet: the next round.
    Wait,
    /// Pushed to the peer at this index.
    Peer(usize),
}

/// What a round does with the entries it read, decided without I/O.
struct RoundPlan<'a> {
    /// Appends for this node's mailboxes with the removal of their rows,
    /// and the removal of malformed rows.
    local: Commit,
    /// Some entry waits for the ring to settle.
    waiting: bool,
    /// Entries to push, by peer index, in row order.
    remote: Vec<(usize, Vec<&'a Row>)>,
}

impl<'a> RoundPlan<'a> {
    fn new(rows: &'a [Row], destination: impl Fn(UserId) -> Destination) -> RoundPlan<'a> {
        let mut plan = RoundPlan {
            local: Commit {
                here: true,
                ..Commit::default()
            },
            waiting: false,
            remote: Vec::new(),
        };
        for entry in rows {
            let (row, cell) = entry;
            let Some((user, event)) = parse_cell(cell) else {
                tracing::error!(row = ?row, "dropping a malformed outbox entry");
                plan.local.writes.push(delete(row));
                continue;
            };
            match destination(user) {
                Destination::Here => {
                    plan.local.appends.push((user, event));
                    plan.local.writes.push(delete(row));
                }
                Destination::Wait => plan.waiting = true,
                Destination::Peer(i) => match plan.remote.iter_mut().find(|(p, _)| *p == i) {
                    Some((_, group)) => group.push(entry),
                    None => plan.remote.push((i, vec![entry])),
                },
            }
        }
        plan
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::service::outbox::row::{outbox_cell, outbox_row};

    #[test]
    fn a_round_keeps_each_peers_entries_in_order_and_drops_malformed_ones() {
        let user = |n: u128| UserId(uuid::Uuid::from_u128(n));
        let entry = |id: u64, u: u128| (outbox_row([0; 8], id), outbox_cell(user(u), b"{}"));
        let rows = vec![
            entry(1, 1),
            entry(2, 2),
            (outbox_row([0; 8], 3), Bytes::from_static(b"short")),
            entry(4, 3),
            entry(5, 2),
            entry(6, 4),
        ];
        let plan = RoundPlan::new(&rows, |u| match u.0.as_u128() {
            1 => Destination::Here,
            4 => Destination::Wait,
            n => Destination::Peer(n as usize),
        });
        assert_eq!(plan.local.appends.len(), 1);
        assert_eq!(
            rows_ids(&plan.local.writes),
            [1, 3],
            "appended, and dropped"
        );
        assert!(plan.local.here);
        assert!(plan.waiting);
        let ids = |group: &Vec<&Row>| {
            group
                .iter()
                .filter_map(|(r, _)| entry_id(r))
                .collect::<Vec<_>>()
        };
        assert_eq!(plan.remote.len(), 2);
        assert_eq!((plan.remote[0].0, ids(&plan.remote[0].1)), (2, vec![2, 5]));
        assert_eq!((plan.remote[1].0, ids(&plan.remote[1].1)), (3, vec![4]));
    }
}
