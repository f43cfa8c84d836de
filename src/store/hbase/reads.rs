//! Gets that arrive together go to HBase together.
//!
//! A send reads its idempotency record, a head load its counter, a replay
//! its message: one `get` round trip each was the larger part of a ring's
//! HBase calls (docs/benchmarks.md, "Where a ring's HBase calls go"). Here
//! a get joins its table's queue; at most [`CALLS_PER_TABLE`]
//! `getRowsWithColumns` calls per table are out at once, and each takes
//! everything queued when it leaves (at most [`MAX_ROWS`] rows). Unloaded, a
//! get goes out alone at once, as before; loaded, gets share round trips
//! the way sends share a commit.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::wire::THbaseSyncClient;
use super::{COLUMN, HbaseStore};
use crate::store::{StoreError, Table};

/// Calls per table in flight at once: more lanes lower the wait behind a
/// call, fewer make fuller calls.
const CALLS_PER_TABLE: usize = 2;
/// Rows one call asks for.
const MAX_ROWS: usize = 256;

type Answer = oneshot::Sender<Result<Option<Bytes>, StoreError>>;

#[derive(Default)]
struct Queue {
    waiting: Vec<(Vec<u8>, Answer)>,
    /// Calls out for this table (each loops until the queue is empty).
    running: usize,
}

/// The per-table queues of one store.
pub(super) struct Reads {
    tables: Vec<Mutex<Queue>>,
}

impl Reads {
    pub(super) fn new() -> Reads {
        Reads {
            tables: Table::ALL.iter().map(|_| Mutex::default()).collect(),
        }
    }

    /// Row `row`'s cell, through the table's queue.
    pub(super) async fn get(
        &self,
        store: &HbaseStore,
        table: Table,
        row: Vec<u8>,
    ) -> Result<Option<Bytes>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut queue = self.queue(table);
            queue.waiting.push((row, tx));
            let start = queue.running < CALLS_PER_TABLE;
            if start {
                queue.running += 1;
            }
            start
        };
        if start {
            // A task of its own: the caller's future may be dropped (a
            // client went away) while others wait on this call.
            let store = store.clone();
            tokio::spawn(async move { store.reads().drain(&store, table).await });
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "an HBase read was dropped unanswered".into(),
            ))
        })
    }

    fn queue(&self, table: Table) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while the lock is held cannot leave the queue half-changed
        // (pushes and drains are single steps), so a poisoned lock is usable.
        self.tables[table as usize]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends everything queued for `table`, a call at a time, until the
    /// queue is empty.
    async fn drain(&self, store: &HbaseStore, table: Table) {
        loop {
            let batch: Vec<(Vec<u8>, Answer)> = {
                let mut queue = self.queue(table);
                if queue.waiting.is_empty() {
                    queue.running -= 1;
                    return;
                }
                let n = queue.waiting.len().min(MAX_ROWS);
                queue.waiting.drain(..n).collect()
            };
            let rows: Vec<Vec<u8>> = batch
                .iter()
                .map(|(row, _)| row.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let result = fetch(store, table, rows).await;
            for (row, answer) in batch {
                // The asker may have gone away: nothing to tell it.
                let _ = answer.send(match &result {
                    Ok(found) => Ok(found.get(&row).cloned()),
                    Err(e) => Err(e.clone()),
                });
            }
        }
    }
}

/// One `getRowsWithColumns`: the cells of those `rows` that exist.
async fn fetch(
    store: &HbaseStore,
    table: Table,
    rows: Vec<Vec<u8>>,
) -> Result<HashMap<Vec<u8>, Bytes>, StoreError> {
    let name = store.table(table);
    let results = store
        .call("getRows", table.name(), true, move |c| {
            c.get_rows_with_columns(
                name.clone(),
                rows.clone(),
                vec![COLUMN.to_vec()],
                BTreeMap::new(),
            )
        })
        .await?;
    let mut found = HashMap::with_capacity(results.len());
    for result in results {
        let Some(row) = result.row else { continue };
        let cell = result
            .columns
            .and_then(|columns| columns.into_values().next());
        if let Some(cell) = cell {
            found.insert(row, Bytes::from(cell.value.unwrap_or_default()));
        }
    }
    Ok(found)
}
