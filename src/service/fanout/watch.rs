//! On a ring: a node with polls parked on a large group's stream asks the
//! group's owner to tell it when the stream moves (`/internal/v1/watch`);
//! the owner tells it (`/internal/v1/wake`). A wake is only a hint: readers
//! look again after [`STALE`](super::STALE) anyway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use super::rows::wake_body;
use crate::cluster::Cluster;
use crate::domain::{ConversationId, StreamPos};
use crate::service::{Error, Result, Service};

/// How long an owner tells a node that asked; it asks again every REWATCH
/// while it has polls parked on the stream.
const WATCH_FOR: Duration = Duration::from_secs(60);
const REWATCH: Duration = Duration::from_secs(20);
/// A wake is a hint (readers look again after [`STALE`] anyway): short.
const WAKE_TIMEOUT: Duration = Duration::from_millis(500);

/// Who wants to hear of which stream.
#[derive(Default)]
pub(super) struct Watch {
    /// As a group's owner: the nodes with polls parked on its stream, and
    /// until when they asked to be told.
    watchers: DashMap<ConversationId, Vec<(usize, Instant)>>,
    /// As another node: when this node last asked each owner to tell it.
    watching: DashMap<ConversationId, Instant>,
}

impl Watch {
    /// Forgets everything (the ring changed: owners may have moved).
    pub(super) fn clear(&self) {
        self.watchers.clear();
        self.watching.clear();
    }

    /// Node `node` has polls parked on stream `g` (this node owns it).
    pub(super) fn watched_by(&self, g: ConversationId, node: usize) {
        let until = Instant::now() + WATCH_FOR;
        let mut entry = self.watchers.entry(g).or_default();
        entry.retain(|(n, until)| *n != node && *until > Instant::now());
        entry.push((node, until));
    }

    /// The nodes to tell that stream `g` moved.
    pub(super) fn watchers_of(&self, g: ConversationId) -> Vec<usize> {
        let now = Instant::now();
        self.watchers
            .get(&g)
            .map(|w| {
                w.iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether this node should ask the owner of `g` (again) to tell it.
    fn should_watch(&self, g: ConversationId) -> bool {
        let now = Instant::now();
        let mut due = false;
        self.watching
            .entry(g)
            .and_modify(|last| {
                if now.duration_since(*last) >= REWATCH {
                    *last = now;
                    due = true;
                }
            })
            .or_insert_with(|| {
                due = true;
                now
            });
        due
    }
}

impl Service {
    /// A poll parked here on stream `g`: on a ring, makes sure the group's
    /// owner will tell this node when the stream moves.
    pub(crate) fn watch_stream(&self, g: ConversationId) {
        let cluster = &self.inner.cluster;
        if !cluster.is_multi_node() || !self.inner.streams.watch.should_watch(g) {
            return;
        }
        let crate::cluster::Route::Remote(owner) = cluster.route(g.0.as_bytes()) else {
            return;
        };
        let addr = owner.addr;
        let mut body = g.0.as_bytes().to_vec();
        body.extend_from_slice(&cluster.me().node_key);
        let body = Bytes::from(body);
        let cluster = cluster.clone();
        tokio::spawn(async move {
            if let Err(e) = cluster.watch(addr, body, WAKE_TIMEOUT).await {
                tracing::debug!(%addr, error = %e, "asking to be told of a stream failed");
            }
        });
    }

    /// A peer asks to be told when stream `g` moves (body: `g(16) || its
    /// node key(8)`).
    pub fn stream_watched(&self, body: &[u8]) -> Result<()> {
        let (g, key) = body
            .split_first_chunk::<16>()
            .filter(|(_, key)| key.len() == 8)
            .ok_or_else(|| Error::InvalidField("malformed watch body".into()))?;
        let node = self
            .inner
            .cluster
            .peers()
            .iter()
            .position(|p| p.node_key.as_slice() == key)
            .ok_or_else(|| Error::InvalidField("no such node".into()))?;
        self.inner
            .streams
            .watch
            .watched_by(ConversationId(uuid::Uuid::from_bytes(*g)), node);
        Ok(())
    }

    /// A peer says stream `g` reached `pos`: refreshes the tail if pollers
    /// here wait on it, and wakes them.
    pub async fn stream_woken(&self, g: ConversationId, pos: StreamPos) -> Result<()> {
        if !self.inner.stream_waiters.has(&g) {
            return Ok(());
        }
        self.stream_tail(g, Some(pos)).await?;
        self.inner.stream_waiters.wake(&g);
        Ok(())
    }
}

/// Tells the live nodes among `watchers`, without waiting, that stream `g`
/// reached `pos`.
pub(super) fn tell_peers(
    cluster: Arc<Cluster>,
    watchers: &[usize],
    g: ConversationId,
    pos: StreamPos,
) {
    let body = wake_body(g, pos);
    let newest = cluster.newest();
    for (i, peer) in cluster.peers().iter().enumerate() {
        if i == cluster.me_index() || !newest.live[i] || !watchers.contains(&i) {
            continue;
        }
        let (cluster, body, addr) = (cluster.clone(), body.clone(), peer.addr);
        tokio::spawn(async move {
            if let Err(e) = cluster.wake(addr, body, WAKE_TIMEOUT).await {
                tracing::debug!(%addr, error = %e, "a stream wake was not taken");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_tells_each_node_that_asked_once() {
        let streams = Watch::default();
        let (g, other) = (
            ConversationId(uuid::Uuid::from_u128(1)),
            ConversationId(uuid::Uuid::from_u128(2)),
        );
        assert!(streams.watchers_of(g).is_empty(), "nobody asked");
        streams.watched_by(g, 2);
        streams.watched_by(g, 2);
        streams.watched_by(g, 0);
        let mut told = streams.watchers_of(g);
        told.sort();
        assert_eq!(told, [0, 2]);
        assert!(streams.watchers_of(other).is_empty());
        // A node asks once, then not again for REWATCH.
        assert!(streams.should_watch(g));
        assert!(!streams.should_watch(g));
        streams.clear();
        assert!(streams.watchers_of(g).is_empty());
        assert!(
            streams.should_watch(g),
            "after a ring change it asks at once"
        );
    }
}
