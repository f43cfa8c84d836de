//! The outbox worker: applies the mailbox appends a commit deferred (the
//! sender's own copy, receipts), oldest first, retrying until they land.
//!
//! An entry and its removal commit together with the append, so on the
//! embedded store each entry lands exactly once; on a store with per-row
//! atomicity a crash in between can repeat one, which clients already
//! de-duplicate by `message_id`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::committer::{Commit, Committer, Watermark};
use crate::domain::UserId;
use crate::metrics::Metrics;
use crate::store::{Mutation, Scan, Store, StoreError, Table, keys};

/// Entries applied per commit.
const BATCH: usize = 512;
/// Longest pause between retries while the store is failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Look again this often even without a kick (entries left by a crash).
const IDLE_RESCAN: Duration = Duration::from_secs(5);

pub struct Outbox {
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    pub node_key: [u8; 8],
    pub kick: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    /// Entries above it may still be landing, out of order.
    pub watermark: Arc<Watermark>,
}

impl Outbox {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut counted = false;
        // The last row applied: new entries always sort after it, and
        // starting there skips the tombstones of applied ones.
        let mut after: Option<Vec<u8>> = None;
        while !shutdown.is_cancelled() {
            match self.apply_some(&mut counted, &mut after).await {
                Ok(0) => {
                    tokio::select! {
                        _ = self.kick.notified() => {}
                        _ = tokio::time::sleep(IDLE_RESCAN) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox apply failed");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Applies the oldest entries; returns how many.
    async fn apply_some(
        &self,
        counted: &mut bool,
        after: &mut Option<Vec<u8>>,
    ) -> Result<usize, StoreError> {
        if !*counted {
            // Entries a previous run left behind count toward the depth.
            let left = self
                .store
                .scan(Scan::prefix(Table::Outbox, &self.node_key, usize::MAX))
                .await?;
            self.metrics.outbox_depth.set(left.len() as i64);
            *counted = true;
        }
        let mut scan = Scan::prefix(Table::Outbox, &self.node_key, BATCH);
        if let Some(last) = after {
            scan.start = std::ops::Bound::Excluded(last.clone());
        }
        let mut rows = self.store.scan(scan).await?;
        let complete = self.watermark.get();
        if let Some(cut) = rows
            .iter()
            .position(|(row, _)| keys::trailing_u64(row).is_none_or(|id| id > complete))
        {
            rows.truncate(cut);
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let mut commit = Commit::default();
        for (row, cell) in &rows {
            let Some((user, event)) = cell.split_first_chunk::<16>() else {
                tracing::error!(row = ?row, "dropping a malformed outbox entry");
                commit.writes.push(Mutation::Delete {
                    table: Table::Outbox,
                    row: row.clone(),
                });
                continue;
            };
            commit.appends.push((
                UserId(uuid::Uuid::from_bytes(*user)),
                cell.slice(16..16 + event.len()),
            ));
            commit.writes.push(Mutation::Delete {
                table: Table::Outbox,
                row: row.clone(),
            });
        }
        self.committer.commit(commit).await?;
        self.metrics.outbox_depth.sub(rows.len() as i64);
        *after = rows.last().map(|(row, _)| row.clone());
        Ok(rows.len())
    }
}
