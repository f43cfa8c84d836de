//! Leases in the store decide who is in the ring.
//!
//! Every `heartbeat_interval` each node increments its own counter
//! (`counters`, row `lease:<node id>`) and reads everyone's. A peer whose
//! counter has not moved for a whole `lease`, counted while this node held
//! its own, leaves the newest view; a move puts it back. A node writes only
//! for three quarters of the lease after a renewal began
//! ([`Cluster::fresh`]), so by the time its peers take its keys it has
//! stopped writing, however slow or stopped it was; one whose lease lapsed
//! rejoins before it writes again.
//!
//! Counting from when this node *saw* a counter move, never from a stored
//! timestamp, keeps clocks out of it: the sighting comes after the renewal,
//! and the renewal after the moment the renewing node counts from.
//!
//! Probing peers over HTTP instead would let a node that its peers cannot
//! reach, or that is too busy to answer, be replaced while it still writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::store::{Scan, Store, Table};

/// The counter row of node `id`.
fn row(id: &str) -> Vec<u8> {
    [b"lease:".as_slice(), id.as_bytes()].concat()
}

/// What this node saw of its peers' counters.
pub struct Watch {
    lease: Duration,
    seen: Vec<Option<Seen>>,
}

#[derive(Clone, Copy)]
struct Seen {
    value: i64,
    moved: Instant,
}

impl Watch {
    pub fn new(nodes: usize, lease: Duration) -> Watch {
        Watch {
            lease,
            seen: vec![None; nodes],
        }
    }

    /// Counts every peer's silence from `now` again: this node could not
    /// watch meanwhile (its own lease had lapsed).
    pub fn restart(&mut self, now: Instant) {
        for seen in self.seen.iter_mut().flatten() {
            seen.moved = now;
        }
    }

    /// Node `i`'s counter read `value` at `now` (0 for a node that never ran).
    pub fn observe(&mut self, i: usize, value: i64, now: Instant) {
        match &mut self.seen[i] {
            Some(seen) if seen.value == value => {}
            slot => *slot = Some(Seen { value, moved: now }),
        }
    }

    /// Whether node `i` renewed within the lease, as of `now`. A node not
    /// read yet is presumed up: presuming it down would have a starting
    /// node take over keys that node still serves.
    pub fn live(&self, i: usize, now: Instant) -> bool {
        self.seen[i].is_none_or(|s| now.saturating_duration_since(s.moved) < self.lease)
    }
}

/// Runs [`run`] on a thread and runtime of its own, over the store's
/// heartbeat connection: request work can neither delay a renewal's turn
/// on the async threads nor queue it behind its own store calls, and a
/// renewal that misses its lease takes the node out of the ring.
///
/// The returned task ends with `stop`; the thread ends with it, or when
/// the calling runtime goes away without `stop` (a node dropped in a test).
pub fn spawn(
    cluster: Arc<Cluster>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (alive, gone) = tokio::sync::oneshot::channel::<()>();
    let lease_store = store.heartbeat_store().unwrap_or_else(|| store.clone());
    let (thread_cluster, thread_stop) = (cluster.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("carrier-lease".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(async move {
                    tokio::select! {
                        () = run(thread_cluster, lease_store, thread_stop) => {}
                        _ = gone => {}
                    }
                }),
                Err(e) => tracing::error!(error = %e, "no runtime for the lease thread"),
            }
        });
    match thread {
        Ok(_) => tokio::spawn(async move {
            // Held here: dropped with this task, which ends the thread.
            let _alive = alive;
            stop.cancelled().await;
        }),
        Err(e) => {
            tracing::error!(error = %e, "no thread for the lease; renewing on the shared runtime");
            tokio::spawn(run(cluster, store, stop))
        }
    }
}

/// Renews this node's lease and follows its peers' until `stop`.
pub async fn run(cluster: Arc<Cluster>, store: Arc<dyn Store>, stop: CancellationToken) {
    if !cluster.is_multi_node() {
        return;
    }
    let settings = cluster.settings.clone();
    let n = cluster.peers().len();
    let mine = row(&cluster.me().id);
    let mut watch = Watch::new(n, settings.lease);
    let mut ticker = tokio::time::interval(settings.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut started = false;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.cancelled() => return,
        }
        let began = Instant::now();
        let lapsed = !cluster.fresh();
        let renewal = tokio::time::timeout(
            settings.heartbeat_timeout,
            store.increment(Table::Counters, &mine, 1),
        )
        .await;
        match renewal {
            Ok(Ok(_)) => cluster.renewed(began),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot renew this node's lease");
                continue;
            }
            Err(_) => {
                tracing::warn!("renewing this node's lease timed out");
                continue;
            }
        }
        let rejoin = lapsed && started;
        if lapsed {
            watch.restart(began);
        }
        if rejoin {
            tracing::warn!(
                lease_ms = settings.lease.as_millis() as u64,
                "this node's lease lapsed (it stood still or lost the store): rejoining"
            );
            cluster.set_joined(false);
        }
        started = true;

        let scan = Scan::prefix(Table::Counters, b"lease:", n + 64);
        let rows = match tokio::time::timeout(settings.heartbeat_timeout, store.scan(scan)).await {
            Ok(Ok(rows)) => rows,
            _ => {
                tracing::warn!("cannot read the peers' leases");
                continue;
            }
        };
        let now = Instant::now();
        let mut live = vec![true; n];
        for (i, peer) in cluster.peers().iter().enumerate() {
            if i == cluster.me_index() {
                continue;
            }
            let key = row(&peer.id);
            let value = rows
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_ref()).ok())
                .map_or(0, i64::from_be_bytes);
            watch.observe(i, value, now);
            live[i] = watch.live(i, now);
        }
        if cluster.set_newest(live.clone(), rejoin) {
            let down: Vec<&str> = cluster
                .peers()
                .iter()
                .zip(&live)
                .filter(|(_, l)| !**l)
                .map(|(p, _)| p.id.as_str())
                .collect();
            tracing::info!(?down, "ring changed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::{ClusterConfig, PeerConfig};
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Mutation, Row, StoreError};
    use bytes::Bytes;

    /// A store whose own calls never answer (every pooled connection busy
    /// with requests), with a heartbeat connection that does.
    struct Saturated(Arc<EmbeddedStore>);

    #[async_trait::async_trait]
    impl Store for Saturated {
        async fn get(&self, _: Table, _: &[u8]) -> Result<Option<Bytes>, StoreError> {
            std::future::pending().await
        }
        async fn scan(&self, _: Scan) -> Result<Vec<Row>, StoreError> {
            std::future::pending().await
        }
        async fn write(&self, _: Vec<Mutation>) -> Result<(), StoreError> {
            std::future::pending().await
        }
        async fn check_and_put(
            &self,
            _: Table,
            _: &[u8],
            _: Option<&[u8]>,
            _: Bytes,
        ) -> Result<bool, StoreError> {
            std::future::pending().await
        }
        async fn increment(&self, _: Table, _: &[u8], _: i64) -> Result<i64, StoreError> {
            std::future::pending().await
        }
        async fn ping(&self) -> Result<(), StoreError> {
            Ok(())
        }
        fn heartbeat_store(&self) -> Option<Arc<dyn Store>> {
            Some(self.0.clone())
        }
    }

    #[tokio::test]
    async fn renewals_do_not_queue_behind_the_store_s_request_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let config = ClusterConfig {
            node_id: "n1".into(),
            peers: ["n1", "n2"]
                .iter()
                .enumerate()
                .map(|(i, id)| PeerConfig {
                    id: (*id).into(),
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                })
                .collect(),
            heartbeat_interval: Duration::from_millis(20),
            heartbeat_timeout: Duration::from_millis(200),
            lease: Duration::from_secs(2),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::new(&config, ([127, 0, 0, 1], 1).into(), b"secret");
        assert!(!cluster.fresh());
        let stop = CancellationToken::new();
        let task = spawn(cluster.clone(), Arc::new(Saturated(store)), stop.clone());
        // Bounded in count, not a timing threshold: a renewal through the
        // saturated store itself would never land.
        let mut renewed = false;
        for _ in 0..500 {
            if cluster.fresh() {
                renewed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap();
        assert!(renewed, "the lease was never renewed");
    }

    const LEASE: Duration = Duration::from_millis(3000);

    #[test]
    fn a_peer_is_down_only_after_a_whole_lease_without_a_renewal() {
        let t0 = Instant::now();
        let mut watch = Watch::new(2, LEASE);
        assert!(watch.live(1, t0), "presumed up before the first reading");
        watch.observe(1, 7, t0);
        watch.observe(1, 7, t0 + Duration::from_millis(2999));
        assert!(watch.live(1, t0 + Duration::from_millis(2999)));
        assert!(!watch.live(1, t0 + LEASE));
        // One renewal puts it back.
        watch.observe(1, 8, t0 + Duration::from_millis(3100));
        assert!(watch.live(1, t0 + Duration::from_millis(3100)));
    }

    #[test]
    fn a_node_that_never_ran_leaves_after_one_lease() {
        let t0 = Instant::now();
        let mut watch = Watch::new(2, LEASE);
        watch.observe(1, 0, t0);
        assert!(watch.live(1, t0 + Duration::from_millis(100)));
        assert!(!watch.live(1, t0 + LEASE));
    }

    #[test]
    fn silence_is_not_counted_while_this_node_could_not_watch() {
        let t0 = Instant::now();
        let mut watch = Watch::new(2, LEASE);
        watch.observe(1, 5, t0);
        // This node stood still for 10 s; on waking it counts afresh.
        let woke = t0 + Duration::from_secs(10);
        watch.restart(woke);
        watch.observe(1, 5, woke);
        assert!(
            watch.live(1, woke),
            "the peer gets a whole lease to show up"
        );
        assert!(!watch.live(1, woke + LEASE));
    }

    #[tokio::test]
    async fn a_node_writes_only_for_three_quarters_of_its_lease() {
        use crate::config::{ClusterConfig, PeerConfig};
        use std::net::SocketAddr;
        let config = ClusterConfig {
            node_id: "n1".into(),
            peers: (1..=2)
                .map(|i| PeerConfig {
                    id: format!("n{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                })
                .collect(),
            lease: Duration::from_millis(400),
            ..ClusterConfig::default()
        };
        let cluster = Cluster::new(&config, SocketAddr::from(([127, 0, 0, 1], 1)), b"s");
        assert!(!cluster.fresh(), "no lease before the first renewal");
        cluster.renewed(Instant::now());
        assert!(cluster.fresh());
        tokio::time::sleep(Duration::from_millis(320)).await;
        assert!(!cluster.fresh(), "300 ms after the renewal began, it stops");
    }
}
