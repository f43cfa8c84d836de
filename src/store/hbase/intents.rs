//! All-or-nothing batches on a store that is atomic per row only.
//!
//! A batch is first written whole as one row of this node's intent log
//! (HBase applies a single row atomically), then applied table by table.
//! If applying fails part-way, or the outcome is unknown (a timeout), the
//! batch stays *pending*: before this store serves any other read or write
//! it applies the batch again (every mutation is idempotent) until it has
//! landed (writing its log row again first when that write was the one
//! that failed: rows are applied only once their log row is stored). If
//! the process dies instead, [`Intents::recover`] applies it at the next
//! start, before the node serves.
//!
//! So a batch a caller was told failed may still land, but never partly,
//! and always before anything that follows it: the service treats a failed
//! write as "outcome unknown" and reloads what it had cached.
//!
//! An intent row is deleted together with the next intent's write (no
//! round trip of its own), so the newest one stays after its batch landed
//! and recovery cannot tell a finished batch from an unfinished one. It
//! replays the newest either way, which is safe because of how:
//!
//! - A replay stamps every cell with the timestamp HBase gave the intent
//!   row when it was logged (`mutateRowsTs`), and its deletes remove only
//!   versions up to that stamp. Whatever anyone wrote after the batch is
//!   stamped later by the region servers and stays on top; a batch that
//!   had landed is only rewritten underneath itself. Replaying with new
//!   stamps instead brought back overwritten receipts, removed members and
//!   delivered outbox rows.
//! - First applications keep the region server's stamps, like
//!   check-and-put and increments: no node's clock is ever mixed with the
//!   servers', and the hot path is unchanged.
//! - Recovery (of this node at start, of a departed one at a settle) then
//!   deletes the rows it replayed, so a batch is replayed at most once
//!   after it finished: a later delete hides an older-stamped put only
//!   until a major compaction drops its marker.
//!
//! What stamps cannot order: writes within the clock skew between the
//! intent log's region server and a row's (HBase bounds it; NTP keeps it
//! to milliseconds), and a write in the very millisecond of the intent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{BatchMutation, HbaseStore, TCell, THbaseSyncClient, delete, put};
use crate::store::{Fence, Mutation, StoreError, Table};

/// The log's table name, after the deployment prefix.
pub(super) const TABLE: &str = "intents_by_node_seq";

/// After a failed attempt to finish a batch, calls fail at once for this
/// long instead of each trying (and timing out) in turn.
const RETRY_GAP: Duration = Duration::from_millis(250);

pub(super) struct Intents {
    table: Vec<u8>,
    node_key: [u8; 8],
    state: Mutex<State>,
    /// Set while a failed batch is pending, so calls skip the lock otherwise.
    unsettled: AtomicBool,
    /// When finishing the pending batch last failed.
    failed_at: std::sync::Mutex<Option<Instant>>,
    /// How long a caller waits for another to finish the pending batch.
    wait: Duration,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Intent rows whose batches have fully landed, to delete.
    finished: Vec<u64>,
    /// A batch that may be partly applied.
    pending: Option<Pending>,
}

struct Pending {
    id: u64,
    batch: Vec<Mutation>,
    /// Whether its log row is known to be stored. Rows are applied only
    /// once it is, so a crash never leaves a torn batch without its log.
    logged: bool,
    /// Asked right before the log row is sent; a refusal drops the batch.
    fence: Option<Fence>,
}

impl Intents {
    pub(super) fn new(table: Vec<u8>, node_key: [u8; 8], wait: Duration) -> Intents {
        Intents {
            table,
            node_key,
            state: Mutex::new(State::default()),
            unsettled: AtomicBool::new(false),
            failed_at: std::sync::Mutex::new(None),
            wait,
        }
    }

    /// A log with nothing pending, for a store that writes no batches (the
    /// lease's own connection).
    pub(super) fn unlogged(&self) -> Intents {
        Intents::new(self.table.clone(), self.node_key, self.wait)
    }

    pub(super) fn table(&self) -> &[u8] {
        &self.table
    }

    pub(super) fn row(&self, id: u64) -> Vec<u8> {
        let mut row = self.node_key.to_vec();
        row.extend_from_slice(&id.to_be_bytes());
        row
    }

    /// A node's log rows, oldest first, each cell with its timestamp.
    pub(super) async fn log_of(
        &self,
        store: &HbaseStore,
        node_key: [u8; 8],
    ) -> Result<Vec<(Vec<u8>, TCell)>, StoreError> {
        let name = self.table.clone();
        let range = super::range::Range::prefix(&node_key);
        store
            .call("scan", TABLE, true, move |c| {
                super::scan_cells(c, &name, &range, usize::MAX)
            })
            .await
    }

    /// Finishes the newest batch of another node's log (it departed) and
    /// empties that log (see the module docs).
    pub(super) async fn recover_other(
        &self,
        store: &HbaseStore,
        node_key: [u8; 8],
    ) -> Result<(), StoreError> {
        let log = self.log_of(store, node_key).await?;
        if !log.is_empty() {
            tracing::info!(
                rows = log.len(),
                "finishing the newest batch of a departed node"
            );
        }
        self.replay(store, &log).await
    }

    /// Finishes the batch a previous run of this node may have left
    /// unfinished, and empties the log.
    pub(super) async fn recover(&self, store: &HbaseStore) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        let log = self.log_of(store, self.node_key).await?;
        let newest = log
            .last()
            .and_then(|(row, _)| crate::store::keys::trailing_u64(row))
            .unwrap_or(0);
        if !log.is_empty() {
            tracing::info!(
                rows = log.len(),
                "replaying the batch the last run logged last"
            );
        }
        self.replay(store, &log).await?;
        state.finished.clear();
        let now_us = u64::try_from(crate::domain::now_ms())
            .unwrap_or(0)
            .saturating_mul(1000);
        state.next_id = (newest + 1).max(now_us);
        Ok(())
    }

    /// Applies the newest batch of `log` stamped as of its logging, then
    /// deletes the rows of `log` (and no row logged after them).
    async fn replay(&self, store: &HbaseStore, log: &[(Vec<u8>, TCell)]) -> Result<(), StoreError> {
        let Some(replay) = Replay::of(log)? else {
            return Ok(());
        };
        store.apply_at(&replay.batch, Some(replay.at)).await?;
        let rows: Vec<BatchMutation> = log
            .iter()
            .map(|(row, _)| BatchMutation {
                row: Some(row.clone()),
                mutations: Some(vec![delete()]),
            })
            .collect();
        let (name, upto) = (self.table.clone(), replay.upto);
        store
            .call("mutateRowsTs", TABLE, true, move |c| {
                c.mutate_rows_ts(name.clone(), rows.clone(), upto, BTreeMap::new())
            })
            .await
    }

    /// Writes `batch` all-or-nothing (see the module docs).
    pub(super) async fn write(
        &self,
        store: &HbaseStore,
        batch: Vec<Mutation>,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        self.finish(store, &mut state).await?;
        let result = self.write_new(store, &mut state, batch, fence).await;
        if result.is_err() {
            // Whatever part of it landed, the rest lands before anything else.
            self.unsettled.store(true, Ordering::Release);
        }
        result
    }

    async fn write_new(
        &self,
        store: &HbaseStore,
        state: &mut State,
        batch: Vec<Mutation>,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        let id = state.next_id;
        state.next_id += 1;
        // From here on the outcome may be unknown.
        state.pending = Some(Pending {
            id,
            batch,
            logged: false,
            fence,
        });
        self.finish(store, state).await
    }

    /// Stores the pending batch's log row, deleting finished ones with it.
    async fn log(
        &self,
        store: &HbaseStore,
        id: u64,
        batch: &[Mutation],
        finished: &[u64],
        fence: Option<Fence>,
        refused: &Arc<AtomicBool>,
    ) -> Result<(), StoreError> {
        let mut rows = vec![BatchMutation {
            row: Some(self.row(id)),
            mutations: Some(vec![put(&encode(batch))]),
        }];
        rows.extend(finished.iter().map(|old| BatchMutation {
            row: Some(self.row(*old)),
            mutations: Some(vec![delete()]),
        }));
        let name = self.table.clone();
        let refused = refused.clone();
        store
            .call("mutateRows", TABLE, true, move |c| {
                // As late as it can be asked: on the thread about to send.
                if fence.as_ref().is_some_and(|f| !f()) {
                    refused.store(true, Ordering::Release);
                    return Err(thrift::Error::User(Box::new(std::io::Error::other(
                        "this node may no longer write (its lease lapsed)",
                    ))));
                }
                c.mutate_rows(name.clone(), rows.clone(), Default::default())
            })
            .await
    }

    /// Applies a batch that failed, if one is pending, before anything
    /// else happens. While HBase stays unreachable this fails fast instead
    /// of queueing every caller behind the one trying.
    pub(super) async fn settle(&self, store: &HbaseStore) -> Result<(), StoreError> {
        if !self.unsettled.load(Ordering::Acquire) {
            return Ok(());
        }
        let unreachable = || {
            StoreError::Unavailable("HBase unreachable: an earlier write is not finished".into())
        };
        let failed_at = *self.failed_at.lock().unwrap_or_else(|p| p.into_inner());
        if failed_at.is_some_and(|at| at.elapsed() < RETRY_GAP) {
            return Err(unreachable());
        }
        let mut state = tokio::time::timeout(self.wait, self.state.lock())
            .await
            .map_err(|_| unreachable())?;
        self.finish(store, &mut state).await
    }

    /// Logs the pending batch (unless its log row is known to be stored)
    /// and applies it.
    async fn finish(&self, store: &HbaseStore, state: &mut State) -> Result<(), StoreError> {
        let Some(pending) = &mut state.pending else {
            return Ok(());
        };
        let mut result = Ok(());
        if !pending.logged {
            let refused = Arc::new(AtomicBool::new(false));
            result = self
                .log(
                    store,
                    pending.id,
                    &pending.batch,
                    &state.finished,
                    pending.fence.clone(),
                    &refused,
                )
                .await;
            if refused.load(Ordering::Acquire) {
                // Nothing of it was sent: dropped, so it cannot land after
                // the node that takes over has looked for it.
                state.pending = None;
                self.unsettled.store(false, Ordering::Release);
                return result;
            }
            if result.is_ok() {
                pending.logged = true;
                state.finished.clear();
            }
        }
        if result.is_ok() {
            result = store.apply(&pending.batch).await;
        }
        if let Err(e) = result {
            *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            return Err(e);
        }
        state.finished.push(pending.id);
        state.pending = None;
        self.unsettled.store(false, Ordering::Release);
        Ok(())
    }
}

/// What replaying a log does.
#[derive(Debug, PartialEq)]
struct Replay {
    /// The newest batch: the only one that can be unfinished.
    batch: Vec<Mutation>,
    /// Its log row's timestamp, which every cell of the replay gets.
    at: i64,
    /// The newest stamp in the log: its rows are deleted up to it.
    upto: i64,
}

impl Replay {
    fn of(log: &[(Vec<u8>, TCell)]) -> Result<Option<Replay>, StoreError> {
        let Some((_, newest)) = log.last() else {
            return Ok(None);
        };
        let unstamped = || StoreError::Corrupt("an HBase intent row without a timestamp".into());
        let at = newest.timestamp.ok_or_else(unstamped)?;
        let mut upto = at;
        for (_, cell) in log {
            upto = upto.max(cell.timestamp.ok_or_else(unstamped)?);
        }
        let batch = decode(newest.value.as_deref().unwrap_or_default())?;
        Ok(Some(Replay { batch, at, upto }))
    }
}

/// `[kind(1) table(1) row_len(4) row value_len(4) value]...`; kind 0 puts, 1 deletes.
pub(super) fn encode(batch: &[Mutation]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in batch {
        let (kind, table, row, value): (u8, Table, &[u8], &[u8]) = match m {
            Mutation::Put { table, row, value } => (0, *table, row, value),
            Mutation::Delete { table, row } => (1, *table, row, &[]),
        };
        out.push(kind);
        out.push(table as u8);
        out.extend_from_slice(&(row.len() as u32).to_be_bytes());
        out.extend_from_slice(row);
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

fn decode(mut b: &[u8]) -> Result<Vec<Mutation>, StoreError> {
    let bad = || StoreError::Corrupt("unreadable row in the HBase intent log".into());
    let take = |n: usize, b: &mut &[u8]| -> Result<Vec<u8>, StoreError> {
        let (head, rest) = b.split_at_checked(n).ok_or_else(bad)?;
        *b = rest;
        Ok(head.to_vec())
    };
    let mut batch = Vec::new();
    while !b.is_empty() {
        let head = take(2, &mut b)?;
        let table = *Table::ALL.get(usize::from(head[1])).ok_or_else(bad)?;
        let len = u32::from_be_bytes(take(4, &mut b)?.try_into().map_err(|_| bad())?);
        let row = take(len as usize, &mut b)?;
        let len = u32::from_be_bytes(take(4, &mut b)?.try_into().map_err(|_| bad())?);
        let value = take(len as usize, &mut b)?;
        batch.push(match head[0] {
            0 => Mutation::Put {
                table,
                row,
                value: value.into(),
            },
            1 => Mutation::Delete { table, row },
            _ => return Err(bad()),
        });
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_garbage_is_corrupt() {
        let batch = vec![
            Mutation::Put {
                table: Table::Messages,
                row: b"conv\x00\x01".to_vec(),
                value: bytes::Bytes::from_static(b"{\"m\":1}"),
            },
            Mutation::Delete {
                table: Table::Outbox,
                row: vec![0xff; 16],
            },
            Mutation::Put {
                table: Table::Counters,
                row: Vec::new(),
                value: bytes::Bytes::new(),
            },
        ];
        let encoded = encode(&batch);
        assert_eq!(decode(&encoded).expect("decodes"), batch);
        // A torn cell never decodes into mutations that were not written.
        for cut in 1..encoded.len() {
            if let Ok(prefix) = decode(&encoded[..cut]) {
                assert!(
                    prefix.len() < batch.len() && batch.starts_with(&prefix),
                    "cut at {cut}"
                );
            }
        }
        let mut wrong_table = encoded.clone();
        wrong_table[1] = 200;
        assert!(decode(&wrong_table).is_err());
    }

    /// A replay is the newest batch stamped with its own log time (not
    /// the newest stamp, not now), and deletes every row it saw.
    #[test]
    fn a_replay_is_stamped_with_its_log_time() {
        let batch = |value: &'static [u8]| {
            vec![Mutation::Put {
                table: Table::Receipts,
                row: b"r".to_vec(),
                value: bytes::Bytes::from_static(value),
            }]
        };
        let cell = |b: &[Mutation], at| TCell {
            value: Some(encode(b)),
            timestamp: at,
        };
        assert_eq!(Replay::of(&[]).expect("empty log"), None);
        // Stamps from another clock need not follow the ids.
        let log = [
            (b"1".to_vec(), cell(&batch(b"old"), Some(500))),
            (b"2".to_vec(), cell(&batch(b"new"), Some(400))),
        ];
        let replay = Replay::of(&log)
            .expect("replay")
            .expect("something to replay");
        assert_eq!(
            replay,
            Replay {
                batch: batch(b"new"),
                at: 400,
                upto: 500,
            }
        );
        let unstamped = [(b"1".to_vec(), cell(&batch(b"x"), None))];
        assert!(matches!(
            Replay::of(&unstamped),
            Err(StoreError::Corrupt(_))
        ));
    }
}
