//! The committer batches what waits together and fails a batch as a whole.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use bytes::Bytes;

use super::clock::Clock;
use super::*;
use crate::cluster::Cluster;
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::service::cache::{HistoryCache, MailboxCache};
use crate::service::handles::Handles;
use crate::service::outbox::deliveries::{Deliveries, Pending};
use crate::service::waiters::Waiters;
use crate::store::{Mutation, Row, Scan, Store, StoreError, Table};

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
        shared: Handles {
            store,
            node_key: [0; 8],
            mailbox_cache: Arc::new(MailboxCache::new(1 << 20)),
            history_cache: Arc::new(HistoryCache::new(1 << 20)),
            mailbox_waiters: Waiters::new(8, 8),
            arrivals: Waiters::new(8, 8),
            outbox_kick: Arc::new(tokio::sync::Notify::new()),
            metrics: Arc::new(Metrics::new()),
            watermark: Arc::new(Watermark::new(0)),
            cluster: Cluster::new(
                &crate::config::ClusterConfig::default(),
                std::net::SocketAddr::from(([127, 0, 0, 1], 1)),
                b"",
            ),
            deliveries: Arc::new(Deliveries::default()),
            pending: Arc::new(Pending::default()),
        },
        clock: Clock::resume(0),
        max_batch: 1024,
        closing: tokio_util::sync::CancellationToken::new(),
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
