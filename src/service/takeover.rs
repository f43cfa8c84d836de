//! Life on a ring of nodes: taking the appends peers push, and following
//! the ring as peers leave and return.
//!
//! When a peer leaves the newest view (its lease lapsed), this node first finishes
//! what the peer left behind (its last half-written batch, then its
//! outbox, delivered to the mailboxes' new owners), then forgets what it
//! cached (another node may have written meanwhile), and only then routes
//! requests by the new view. A node starting, or resuming after standing
//! still, serves nothing until its peers route to it again.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio_util::sync::CancellationToken;

use super::commit::{Commit, Committer};
use super::handles::Handles;
use super::outbox::{Outbox, Pushed};
use super::{Error, Result, Service};
use crate::cluster::{Cluster, Peer, View};
use crate::domain::UserId;
use crate::store::{Scan, Table, keys};

/// How often a joining node says it still waits for its peers.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// How long a node waits for its outbox to deliver what it owed before a
/// peer joined (entries for a peer that is failing wait for its lease).
const FLUSH_WAIT: Duration = Duration::from_secs(5);

impl Service {
    /// Appends events a peer pushed for mailboxes this node owns, dropping
    /// entries it took already (a push whose answer was lost, or a departed
    /// peer's outbox drained by two nodes at once).
    ///
    /// An entry counts as taken only once its commit succeeded: on Ok the
    /// pusher deletes its rows, so an Ok for an entry whose commit may
    /// still fail loses the copy. A push repeating an entry whose commit
    /// is in flight is refused, and pushed again later. The commit runs
    /// detached: a pusher that timed out drops this request, and the claim
    /// must still last until the commit's outcome is known.
    pub async fn take_appends(&self, entries: Vec<Pushed>) -> Result<()> {
        let cluster = &self.inner.cluster;
        // A joining node takes them too: its peers deliver what they owe
        // its mailboxes before it serves (see `Takeover::follow`).
        if !cluster.fresh() {
            return Err(Error::Rejoining);
        }
        if entries
            .iter()
            .any(|e| !cluster.owns_mailbox(e.user.0.as_bytes()))
        {
            return Err(Error::NotOwner);
        }
        let (claim, appends) = self.claim_pushes(entries)?;
        if appends.is_empty() {
            return Ok(());
        }
        let service = self.clone();
        super::detached(async move { service.commit_pushes(claim, appends).await }).await
    }

    /// Claims the entries not taken yet, in order, with their appends; the
    /// whole push is refused if any entry's commit is in flight.
    fn claim_pushes(&self, entries: Vec<Pushed>) -> Result<(Claim, Vec<(UserId, Bytes)>)> {
        let taking = &self.inner.taking;
        let mut claim = Claim {
            taking: taking.clone(),
            entries: Vec::with_capacity(entries.len()),
        };
        let mut appends = Vec::with_capacity(entries.len());
        let mut repeats = 0;
        for e in entries {
            let state = match taking.entry(e.entry) {
                Entry::Occupied(_) => Claimed::InFlight,
                // Looked up under the claim's lock: a commit marks its
                // entries taken before it releases their claims.
                Entry::Vacant(_) if self.inner.pushes.get(&e.entry).is_some() => Claimed::Taken,
                Entry::Vacant(slot) => {
                    slot.insert(());
                    Claimed::Now
                }
            };
            match state {
                // Dropping `claim` releases what this push claimed so far.
                Claimed::InFlight => return Err(Error::PushInFlight),
                Claimed::Taken => repeats += 1,
                Claimed::Now => {
                    claim.entries.push(e.entry);
                    appends.push((e.user, e.event));
                }
            }
        }
        self.inner.metrics.pushed_repeats.inc_by(repeats);
        Ok((claim, appends))
    }

    /// Commits claimed entries; only once that succeeded are they taken.
    async fn commit_pushes(&self, claim: Claim, appends: Vec<(UserId, Bytes)>) -> Result<()> {
        self.inner
            .committer
            .commit(Commit {
                appends,
                here: true,
                ..Commit::default()
            })
            .await?;
        for entry in &claim.entries {
            self.inner.pushes.insert(*entry, ());
        }
        // `claim` is dropped, releasing the entries, only after this.
        Ok(())
    }

    /// Forgets what this node cached about mailboxes and conversations: after
    /// the ring changed, another node may have written them.
    pub fn cool_down(&self) {
        self.inner.mailbox_cache.clear();
        self.inner.history_cache.clear();
        self.inner.groups.clear();
        self.inner.streams.clear();
    }
}

/// What a claim found for one pushed entry.
enum Claimed {
    /// Another push's commit of it is in flight.
    InFlight,
    /// Committed already: a repeat.
    Taken,
    /// Claimed by this push.
    Now,
}

/// Pushed entries whose commit is in flight. Dropped when the commit's
/// outcome is known (or the task ends), it releases them: a later push
/// then finds them taken if the commit succeeded, or claims them afresh.
struct Claim {
    taking: Arc<DashMap<([u8; 8], u64), ()>>,
    entries: Vec<([u8; 8], u64)>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        for entry in &self.entries {
            self.taking.remove(entry);
        }
    }
}

/// The task that follows the ring (see the module docs).
pub struct Takeover {
    pub service: Service,
    pub committer: Committer,
    pub shared: Handles,
}

impl Takeover {
    pub async fn run(self, stop: CancellationToken) {
        if !self.shared.cluster.is_multi_node() {
            return;
        }
        let mut changes = self.shared.cluster.subscribe();
        loop {
            let newest = self.shared.cluster.newest();
            let serving = self.shared.cluster.serving();
            let rejoining = !self.shared.cluster.joined();
            if rejoining || newest.epoch != serving.epoch {
                self.follow(&newest, &serving, rejoining, &stop).await;
                if stop.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn follow(
        &self,
        newest: &Arc<View>,
        serving: &View,
        rejoining: bool,
        stop: &CancellationToken,
    ) {
        let me = self.shared.cluster.me_index();
        // Peers that left since the last view; all departed ones when
        // (re)joining, since this node cannot know what it missed.
        let departed: Vec<&Peer> = self
            .shared
            .cluster
            .peers()
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me && !newest.live[*i] && (rejoining || serving.live[*i]))
            .map(|(_, p)| p)
            .collect();
        // Peers that are back: they take over keys this node served, and
        // must not serve them before what this node did for those keys
        // has landed (its commits and its outbox).
        let returned = !rejoining
            && (0..newest.live.len()).any(|i| i != me && newest.live[i] && !serving.live[i]);
        if !rejoining {
            for peer in &departed {
                if !self.settle(peer, stop).await {
                    // It came back (or this node stops) before its outbox
                    // was delivered: serving its keys now would let new
                    // events overtake what it still owes. Follow the ring
                    // as it is now instead.
                    tracing::info!(peer = %peer.id, "a departed peer returned before this node finished what it left");
                    return;
                }
            }
        }
        self.service.cool_down();
        self.shared.cluster.publish(newest.clone());
        // Polls of users this node no longer serves end now, not at the
        // end of their hold.
        self.service.wake_all();
        self.shared
            .metrics
            .ring_live_nodes
            .set(newest.live.iter().filter(|l| **l).count() as i64);
        // Sends that checked their ownership under the old view finish
        // before this node reports itself settled: a returning peer takes
        // their conversations only then, and sequences from what landed.
        self.service.drain_handoff().await;
        // Raise the watermark past positions a mailbox's previous owner
        // may have written, now that this node owns it. Its success also
        // says that a batch of this node's that failed has been rolled
        // forward (the store finishes one before it takes the next): a
        // returning peer must find every seq that will ever land.
        if !self.barrier(newest.epoch, stop).await {
            // The ring changed again (or this node stops): follow that.
            return;
        }
        if returned {
            self.flush_outbox(stop).await;
        }
        self.shared.cluster.set_settled(newest.epoch);
        if rejoining {
            self.wait_to_be_routed(stop).await;
            self.shared.cluster.set_joined(true);
            // The live peers settled these while this node was away, unless
            // the whole ring restarted; doing it again is harmless.
            for peer in &departed {
                self.settle(peer, stop).await;
            }
        }
        tracing::info!(
            epoch = newest.epoch,
            rejoined = rejoining,
            "serving by the new ring"
        );
    }

    /// Commits the empty barrier batch, retrying with backoff until it
    /// lands (true), or a newer view or the node's stop makes it moot.
    async fn barrier(&self, epoch: u64, stop: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let landed = self
                .committer
                .commit(Commit {
                    here: true,
                    ..Commit::default()
                })
                .await;
            match landed {
                Ok(_) => return true,
                Err(e) => tracing::warn!(error = %e, "the barrier commit failed; retrying"),
            }
            if stop.is_cancelled() || self.shared.cluster.newest().epoch != epoch {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return false,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Finishes a departed peer's half-written batch and drains its outbox,
    /// retrying until done (true), the peer returns, or the node stops.
    async fn settle(&self, peer: &Peer, stop: &CancellationToken) -> bool {
        let outbox = Outbox {
            shared: self.shared.clone(),
            committer: self.committer.clone(),
            node_key: peer.node_key,
            mine: false,
        };
        let index = self
            .shared
            .cluster
            .peers()
            .iter()
            .position(|p| p.id == peer.id);
        let mut pause = Duration::from_millis(100);
        loop {
            let result = async {
                self.shared.store.finish_batches_of(peer.node_key).await?;
                outbox.drain().await
            }
            .await;
            match result {
                Ok(drained) => {
                    tracing::info!(peer = %peer.id, drained, "finished what a departed peer left");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.id, error = %e, "cannot finish a departed peer's work yet")
                }
            }
            let back = index.is_some_and(|i| self.shared.cluster.newest().live[i]);
            if back || stop.is_cancelled() {
                return false;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return false,
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// Waits (bounded) until this node's outbox has delivered every entry
    /// committed before now: a returning peer that owns a conversation
    /// this node sequenced must not append its next events before these.
    async fn flush_outbox(&self, stop: &CancellationToken) {
        let mark = self.shared.watermark.get();
        let deadline = tokio::time::Instant::now() + FLUSH_WAIT;
        let key = self.shared.cluster.me().node_key;
        loop {
            let oldest = self
                .shared
                .store
                .scan(Scan::prefix(Table::Outbox, &key, 1))
                .await;
            match oldest {
                Ok(rows) => {
                    let id = rows.first().and_then(|(row, _)| keys::trailing_u64(row));
                    if id.is_none_or(|id| id > mark) {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read this node's outbox"),
            }
            if tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
                tracing::warn!("a peer returned before this node's outbox delivered what it owed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until every live peer routes this node's keys to it
    /// and has settled (its commits and outbox entries for them landed), so
    /// two nodes do not both serve them.
    async fn wait_to_be_routed(&self, stop: &CancellationToken) {
        // No deadline: serving before a live peer settled could sequence a
        // conversation while that peer still commits to it. A peer that
        // dies leaves the newest view and is not waited for.
        let mut warn_at = tokio::time::Instant::now() + JOIN_WAIT;
        let me = self.shared.cluster.me().id.clone();
        loop {
            let newest = self.shared.cluster.newest();
            let mut waiting = Vec::new();
            for (i, peer) in self.shared.cluster.peers().iter().enumerate() {
                if i == self.shared.cluster.me_index() || !newest.live[i] {
                    continue;
                }
                if !routes_to(&self.shared.cluster, peer, &me).await {
                    waiting.push(peer.id.clone());
                }
            }
            if waiting.is_empty() || stop.is_cancelled() {
                return;
            }
            if tokio::time::Instant::now() >= warn_at {
                tracing::warn!(
                    ?waiting,
                    "still waiting for peers to route to this node and settle"
                );
                warn_at += JOIN_WAIT;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether `peer`'s serving view has node `me` up, and is settled.
async fn routes_to(cluster: &Cluster, peer: &Peer, me: &str) -> bool {
    let Ok(view) = cluster
        .view_of(peer, cluster.settings.heartbeat_timeout)
        .await
    else {
        return false;
    };
    view.settled && view.peers.iter().any(|p| p.id == me && p.state == "up")
}
