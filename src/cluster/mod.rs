//! The ring of nodes: who owns which user and conversation, which peers
//! answer, and the calls nodes make to one another.
//!
//! Membership is decided by leases in the store (`lease.rs`), not by
//! nodes probing each other: a node whose lease lapsed stops writing
//! before its peers take its keys, so a slow or stopped node and the node
//! replacing it never both write.
//!
//! Two views of the ring are kept. The leases' *newest* verdict routes
//! outbox deliveries and decides which pushed appends this node accepts;
//! the *serving* view, which requests are routed by, follows it only after
//! this node has finished what a departed peer left behind (its write log
//! and its outbox: `service/takeover.rs`). A single node has a ring of one
//! and skips all of it.

pub mod client;
pub mod lease;
pub mod peer_api;
pub mod ring;
pub mod signing;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sha2::Sha256;
use tokio::sync::watch;

pub use ring::View;
pub use signing::{Claim, SignatureError};

use signing::Signer;

use crate::config::ClusterConfig;

/// One node of the configured ring.
#[derive(Clone, Debug)]
pub struct Peer {
    pub id: String,
    pub addr: SocketAddr,
    /// Its key in shared tables (write log, outbox, clock lease).
    pub node_key: [u8; 8],
}

/// Timings from `[cluster]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub lease: Duration,
    pub remote_wait: Duration,
    pub forward_timeout: Duration,
}

pub struct Cluster {
    peers: Vec<Peer>,
    seeds: Vec<u64>,
    me: usize,
    multi: bool,
    serving: RwLock<Arc<View>>,
    /// The serving view's epoch, read without the lock on the send path.
    serving_epoch: AtomicU64,
    newest: RwLock<Arc<View>>,
    /// The newest view's epoch, for the takeover task to follow.
    changes: watch::Sender<u64>,
    /// False while starting and after a pause: data requests get 503
    /// until the peers have this node back in their serving views.
    joined: AtomicBool,
    /// The newest serving epoch this node has settled.
    settled_epoch: AtomicU64,
    origin: Instant,
    /// Until when (ms since `origin`) this node may write: three quarters
    /// of the lease after its last renewal began. Peers wait the whole
    /// lease, counted from when they saw that renewal, before taking over.
    writable_until_ms: AtomicU64,
    /// Signs and checks calls between nodes (`signing.rs`).
    signer: Signer,
    pub settings: Settings,
    pub client: client::PeerClient,
}

/// Where a key's requests go.
pub enum Route<'a> {
    Local,
    Remote(&'a Peer),
}

impl Cluster {
    /// The ring from `[cluster]`; `listen` is this node's address when no
    /// peers are configured. `secret` is the configured secret: the key
    /// that signs calls between nodes is derived from it.
    pub fn new(config: &ClusterConfig, listen: SocketAddr, secret: &[u8]) -> Arc<Cluster> {
        let mut peers: Vec<Peer> = config
            .peers
            .iter()
            .map(|p| Peer {
                id: p.id.clone(),
                addr: p.addr,
                node_key: node_key(&p.id),
            })
            .collect();
        if peers.is_empty() {
            peers.push(Peer {
                id: config.node_id.clone(),
                addr: listen,
                node_key: node_key(&config.node_id),
            });
        }
        let me = peers
            .iter()
            .position(|p| p.id == config.node_id)
            .unwrap_or(0);
        let seeds = peers.iter().map(|p| ring::seed(&p.id)).collect();
        // Everyone is presumed up until a lease lapses: presuming peers down would
        // have a starting node take over their users while they serve them.
        let view = Arc::new(View {
            epoch: 1,
            live: vec![true; peers.len()],
        });
        let settings = Settings {
            heartbeat_interval: config.heartbeat_interval,
            heartbeat_timeout: config.heartbeat_timeout,
            lease: config.lease,
            remote_wait: config.remote_wait,
            forward_timeout: config.forward_timeout,
        };
        let multi = peers.len() > 1;
        Arc::new(Cluster {
            client: client::PeerClient::new(),
            peers,
            seeds,
            me,
            multi,
            serving: RwLock::new(view.clone()),
            serving_epoch: AtomicU64::new(view.epoch),
            newest: RwLock::new(view),
            changes: watch::channel(1).0,
            joined: AtomicBool::new(!multi),
            settled_epoch: AtomicU64::new(1),
            origin: Instant::now(),
            writable_until_ms: AtomicU64::new(0),
            signer: Signer::new(secret),
            settings,
        })
    }

    /// Whether other nodes share the store.
    pub fn is_multi_node(&self) -> bool {
        self.multi
    }

    pub fn me(&self) -> &Peer {
        &self.peers[self.me]
    }

    pub fn me_index(&self) -> usize {
        self.me
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    pub fn serving(&self) -> Arc<View> {
        read(&self.serving)
    }

    /// The serving view's epoch: state learned under another may be stale.
    pub fn epoch(&self) -> u64 {
        self.serving_epoch.load(Ordering::Acquire)
    }

    pub fn newest(&self) -> Arc<View> {
        read(&self.newest)
    }

    /// The owner of `key` in `view`.
    pub fn owner_in(&self, view: &View, key: &[u8]) -> usize {
        ring::owner(&self.seeds, &view.live, key).unwrap_or(self.me)
    }

    /// Where requests for `key` go now.
    pub fn route(&self, key: &[u8]) -> Route<'_> {
        self.route_in(&self.serving, key)
    }

    fn route_in(&self, view: &RwLock<Arc<View>>, key: &[u8]) -> Route<'_> {
        if !self.multi {
            return Route::Local;
        }
        match self.owner_in(&read(view), key) {
            i if i == self.me => Route::Local,
            i => Route::Remote(&self.peers[i]),
        }
    }

    /// Whether this node serves `key` now.
    pub fn serves(&self, key: &[u8]) -> bool {
        matches!(self.route(key), Route::Local)
    }

    /// Where a deferred append for `key` should be delivered: by the
    /// newest view, which may be ahead of the serving one.
    pub fn delivery(&self, key: &[u8]) -> Route<'_> {
        self.route_in(&self.newest, key)
    }

    /// Whether this node may append to `key`'s mailbox now: it is in the
    /// ring, and owns the mailbox (see [`Cluster::owns_mailbox`]).
    pub fn settled_owner(&self, key: &[u8]) -> bool {
        !self.multi || (self.available() && self.owns_mailbox(key))
    }

    /// Whether the newest view makes this node the owner of `key`'s
    /// mailbox, and the serving view does too or names a node that has
    /// left (while the views differ otherwise, another node may still be
    /// writing there). A joining node takes pushed appends on this alone:
    /// its peers deliver their outboxes to it before it serves.
    pub fn owns_mailbox(&self, key: &[u8]) -> bool {
        if !self.multi {
            return true;
        }
        let newest = self.newest();
        let serving_owner = self.owner_in(&self.serving(), key);
        // The serving view may still name a peer whose lease lapsed (this
        // node is finishing what it left): that peer writes nothing more.
        self.owner_in(&newest, key) == self.me
            && (serving_owner == self.me || !newest.live[serving_owner])
    }

    /// Records that nothing routed by views before `epoch` is still on its
    /// way from this node: its commits landed and its outbox delivered.
    pub fn set_settled(&self, epoch: u64) {
        self.settled_epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    /// Whether the serving view is settled (see [`Cluster::set_settled`]):
    /// a joining node waits for this on every peer before it serves.
    pub fn settled(&self) -> bool {
        self.settled_epoch.load(Ordering::Acquire) >= self.epoch()
    }

    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    pub fn set_joined(&self, joined: bool) {
        self.joined.store(joined, Ordering::Release);
    }

    /// Records a renewal of this node's lease that began at `began`.
    pub fn renewed(&self, began: Instant) {
        let until = began.saturating_duration_since(self.origin) + self.settings.lease * 3 / 4;
        self.writable_until_ms
            .fetch_max(until.as_millis() as u64, Ordering::AcqRel);
    }

    /// Whether this node's lease still lets it write. False from three
    /// quarters of the lease after the last renewal began: the node may be
    /// about to be declared dead, and must not write until it rejoined.
    pub fn fresh(&self) -> bool {
        if !self.multi {
            return true;
        }
        (self.origin.elapsed().as_millis() as u64) < self.writable_until_ms.load(Ordering::Acquire)
    }

    /// Whether data requests may be served (joined and not paused).
    pub fn available(&self) -> bool {
        self.joined() && self.fresh()
    }

    /// Sets the leases' verdict; returns whether the newest view changed.
    pub fn set_newest(&self, live: Vec<bool>, force: bool) -> bool {
        let mut newest = self.newest.write().unwrap_or_else(|e| e.into_inner());
        if newest.live == live && !force {
            return false;
        }
        let epoch = newest.epoch.max(self.epoch()) + 1;
        *newest = Arc::new(View { epoch, live });
        drop(newest);
        self.changes.send_replace(epoch);
        true
    }

    /// Makes `view` the one requests are routed by.
    pub fn publish(&self, view: Arc<View>) {
        let mut serving = self.serving.write().unwrap_or_else(|e| e.into_inner());
        self.serving_epoch.store(view.epoch, Ordering::Release);
        *serving = view;
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The signature header of a call from this node.
    pub fn sign_call(&self, method: &str, path: &str, content: &[u8]) -> String {
        self.signer.sign(&self.me().id, method, path, content)
    }

    /// Checks the head of a call signed by a peer. A single node has no
    /// peers, so it refuses every signature: nothing may pose as one.
    pub fn check_call(
        &self,
        value: &str,
        method: &str,
        path: &str,
    ) -> Result<Claim, SignatureError> {
        if !self.multi {
            return Err(SignatureError::UnknownNode);
        }
        let me = &self.me().id;
        let known = |node: &str| node != me && self.peers.iter().any(|p| p.id == node);
        self.signer.check(value, method, path, known)
    }
}

fn read(lock: &RwLock<Arc<View>>) -> Arc<View> {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A node's 8-byte key in shared tables: SHA-256 of its id, first 8 bytes.
pub fn node_key(node_id: &str) -> [u8; 8] {
    use sha2::Digest as _;
    let digest = Sha256::digest(node_id.as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PeerConfig;

    fn three(me: &str) -> Arc<Cluster> {
        let config = ClusterConfig {
            node_id: me.into(),
            peers: (1..=3)
                .map(|i| PeerConfig {
                    id: format!("n{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], 8080 + i)),
                })
                .collect(),
            ..ClusterConfig::default()
        };
        Cluster::new(&config, SocketAddr::from(([127, 0, 0, 1], 1)), b"a secret")
    }

    #[test]
    fn every_node_agrees_on_owners_and_each_key_is_served_once() {
        let nodes = [three("n1"), three("n2"), three("n3")];
        for i in 0..300u32 {
            let key = i.to_be_bytes();
            let serving = nodes.iter().filter(|n| n.serves(&key)).count();
            assert_eq!(serving, 1);
        }
    }

    #[test]
    fn a_down_peer_moves_in_the_newest_view_before_the_serving_one() {
        let n1 = three("n1");
        let key = (0..1000u32)
            .map(|i| i.to_be_bytes())
            .find(|k| matches!(n1.route(k), Route::Remote(p) if p.id == "n2"))
            .expect("some key of n2");
        assert!(n1.set_newest(vec![true, false, true], false));
        assert!(!n1.set_newest(vec![true, false, true], false));
        assert!(matches!(n1.route(&key), Route::Remote(p) if p.id == "n2"));
        assert!(!matches!(n1.delivery(&key), Route::Remote(p) if p.id == "n2"));
        n1.publish(n1.newest());
        assert!(!matches!(n1.route(&key), Route::Remote(p) if p.id == "n2"));
    }

    #[test]
    fn peers_check_each_others_calls_and_nobody_else_does() {
        let (n1, n2) = (three("n1"), three("n2"));
        let value = n1.sign_call("POST", "/internal/v1/wake", b"body");
        let claim = n2
            .check_call(&value, "POST", "/internal/v1/wake")
            .expect("a peer's call");
        assert_eq!(claim.node, "n1");
        assert!(claim.covers(b"body").is_ok());
        // A node does not take its own calls, nor a single node anyone's.
        assert_eq!(
            n1.check_call(&value, "POST", "/internal/v1/wake")
                .unwrap_err(),
            SignatureError::UnknownNode
        );
        let one = Cluster::new(
            &ClusterConfig::default(),
            SocketAddr::from(([127, 0, 0, 1], 1)),
            b"a secret",
        );
        let forged = one.sign_call("POST", "/internal/v1/wake", b"body");
        assert!(
            one.check_call(&forged, "POST", "/internal/v1/wake")
                .is_err()
        );
    }

    #[test]
    fn a_single_node_serves_everything_and_is_always_available() {
        let one = Cluster::new(
            &ClusterConfig::default(),
            SocketAddr::from(([127, 0, 0, 1], 1)),
            b"s",
        );
        assert!(!one.is_multi_node());
        assert!(one.serves(b"anything"));
        assert!(one.available());
    }
}
