//! HBase through its Thrift1 gateway: the store for data that outlives one
//! machine.
//!
//! Each [`Table`] is an HBase table named `<prefix><table name>` with one
//! column family `d`; a row's cell is the column `d:`. Row keys are the
//! embedded store's, byte for byte (see docs/architecture.md).
//!
//! HBase applies a `mutateRows` row by row, so a batch that fails half-way
//! leaves some of its rows behind. `intents.rs` makes every batch
//! all-or-nothing again by writing it first as one row (single-row writes
//! are atomic in HBase) and rolling it forward until it has fully landed.

mod intents;
mod pool;
mod range;
mod reads;
#[allow(clippy::all)]
mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus::{HistogramOpts, HistogramVec};

use self::intents::Intents;
use self::pool::{CallError, Client, Pool, Settings};
use self::range::Range;
use self::reads::Reads;
use self::wire::{
    AlreadyExists, BatchMutation, ColumnDescriptor, IOError, IllegalArgument, TCell,
    THbaseSyncClient, TScan,
};
use super::{FAMILY, Fence, Mutation, Row, Scan, Store, StoreError, Table};
use crate::config::HbaseConfig;

/// The column every cell lives in: family `d`, empty qualifier.
const COLUMN: &[u8] = b"d:";
/// Rows fetched per `scannerGetList` round trip.
const SCAN_PAGE: usize = 1000;

/// The store over a pool of Thrift connections. Cloning is shallow.
#[derive(Clone)]
pub struct HbaseStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Arc<Pool>,
    /// `Table as usize` -> the HBase table name with the prefix.
    names: Vec<Vec<u8>>,
    /// The batch log that makes writes all-or-nothing.
    intents: Intents,
    /// Gets waiting to share a round trip.
    reads: Reads,
}

impl HbaseStore {
    /// Connects, creates missing tables (safe when several nodes start at
    /// once) and finishes a batch this node left half-written when it last
    /// stopped. `node_key` keeps this node's batch log apart from others'.
    pub async fn open(config: &HbaseConfig, node_key: [u8; 8]) -> Result<HbaseStore, StoreError> {
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "hbase_call_seconds",
                "HBase Thrift calls by method and table, from asking for a connection to the answer",
            )
            .buckets(crate::metrics::LATENCY_BUCKETS.to_vec()),
            &["method", "table"],
        )
        .map_err(|e| StoreError::Unavailable(format!("hbase metrics: {e}")))?;
        let pool = Arc::new(Pool::new(
            Settings {
                addr: config.thrift.clone(),
                size: config.pool_size,
                connect_timeout: config.connect_timeout,
                call_timeout: config.call_timeout,
                max_idle: config.max_idle,
            },
            seconds,
        ));
        let name = |table: &str| format!("{}{table}", config.table_prefix).into_bytes();
        let names = Table::ALL.iter().map(|t| name(t.name())).collect();
        let store = HbaseStore {
            inner: Arc::new(Inner {
                intents: Intents::new(name(intents::TABLE), node_key, config.call_timeout),
                reads: Reads::new(),
                pool,
                names,
            }),
        };
        store.create_tables().await?;
        store.inner.intents.recover(&store).await?;
        Ok(store)
    }

    /// This store over one connection of its own, with no batch log of its
    /// own to finish first (see [`Store::heartbeat_store`]).
    fn heartbeat_channel(&self) -> HbaseStore {
        let pool = &self.inner.pool;
        let settings = Settings {
            size: 1,
            ..pool.settings().clone()
        };
        HbaseStore {
            inner: Arc::new(Inner {
                pool: Arc::new(Pool::new(settings, pool.seconds().clone())),
                names: self.inner.names.clone(),
                intents: self.inner.intents.unlogged(),
                reads: Reads::new(),
            }),
        }
    }

    /// The Thrift call-time histogram, for the node's `/metrics`.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![Box::new(self.inner.pool.seconds().clone())]
    }

    fn reads(&self) -> &Reads {
        &self.inner.reads
    }

    fn table(&self, table: Table) -> Vec<u8> {
        self.inner.names[table as usize].clone()
    }

    async fn create_tables(&self) -> Result<(), StoreError> {
        let existing = self
            .call("getTableNames", "", true, |c| c.get_table_names())
            .await?;
        let mut wanted: Vec<Vec<u8>> = self.inner.names.clone();
        wanted.push(self.inner.intents.table().to_vec());
        for name in wanted {
            if existing.contains(&name) {
                continue;
            }
            let label = String::from_utf8_lossy(&name).into_owned();
            tracing::info!(table = %label, "creating HBase table");
            let created = self
                .call("createTable", "", false, move |c| {
                    c.create_table(name.clone(), vec![family()])
                })
                .await;
            match created {
                Ok(()) => {}
                // Another node created it first.
                Err(StoreError::Unavailable(e))
                    if e.contains("already exists") || e.contains("TableExistsException") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Runs one Thrift call (or a few, for a scan) on a pooled connection.
    async fn write_maybe_fenced(
        &self,
        batch: Vec<Mutation>,
        fence: Option<Fence>,
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let deletes = batch.iter().any(|m| matches!(m, Mutation::Delete { .. }));
        self.inner.intents.write(self, batch, fence).await?;
        if deletes {
            // HBase stamps cells with the region server's clock in
            // milliseconds, and a delete hides every put with the same or an
            // older stamp: a put of the same row in the same millisecond
            // would vanish. Let the clock move on before anyone writes again.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }

    async fn call<T, F>(
        &self,
        method: &'static str,
        table: &'static str,
        retry: bool,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut Client) -> thrift::Result<T> + Send + 'static,
    {
        self.inner
            .pool
            .call(method, table, retry, f)
            .await
            .map_err(|e| self.failure(method, e))
    }

    fn failure(&self, method: &str, e: CallError) -> StoreError {
        if matches!(e, CallError::Connect { .. } | CallError::Timeout(_)) {
            // The server went away; every idle connection is dead too.
            self.inner.pool.clear();
        }
        let text = match &e {
            CallError::Thrift(thrift::Error::User(u)) => user_error(u.as_ref()),
            other => other.to_string(),
        };
        StoreError::Unavailable(format!("hbase {method}: {text}"))
    }

    /// `mutateRows` for each table the batch touches, all at once: one
    /// round trip per table (the Thrift server spreads each over the
    /// region servers). Any order is fine: the intent log makes the batch
    /// all-or-nothing.
    async fn apply(&self, batch: &[Mutation]) -> Result<(), StoreError> {
        self.apply_at(batch, None).await
    }

    /// [`HbaseStore::apply`], with every cell stamped `at` when given (a
    /// replay from the intent log: see [`intents`]) instead of by the
    /// region server's clock.
    async fn apply_at(&self, batch: &[Mutation], at: Option<i64>) -> Result<(), StoreError> {
        let mut by_table: BTreeMap<usize, BTreeMap<Vec<u8>, Vec<wire::Mutation>>> = BTreeMap::new();
        for m in batch {
            let (table, row, mutation) = match m {
                Mutation::Put { table, row, value } => (table, row, put(value)),
                Mutation::Delete { table, row } => (table, row, delete()),
            };
            by_table
                .entry(*table as usize)
                .or_default()
                .entry(row.clone())
                .or_default()
                .push(mutation);
        }
        let mut calls = tokio::task::JoinSet::new();
        for (table, rows) in by_table {
            let name = self.inner.names[table].clone();
            let rows: Vec<BatchMutation> = rows
                .into_iter()
                .map(|(row, mutations)| BatchMutation {
                    row: Some(row),
                    mutations: Some(mutations),
                })
                .collect();
            let store = self.clone();
            let label = Table::ALL[table].name();
            calls.spawn(async move {
                match at {
                    None => {
                        store
                            .call("mutateRows", label, true, move |c| {
                                c.mutate_rows(name.clone(), rows.clone(), BTreeMap::new())
                            })
                            .await
                    }
                    Some(at) => {
                        store
                            .call("mutateRowsTs", label, true, move |c| {
                                c.mutate_rows_ts(name.clone(), rows.clone(), at, BTreeMap::new())
                            })
                            .await
                    }
                }
            });
        }
        // Every call runs to its end, so a failure leaves no call behind
        // that could land after the batch is rolled forward.
        let mut first_error = None;
        while let Some(done) = calls.join_next().await {
            let result = done
                .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("hbase mutateRows: {e}"))));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn scan_now(&self, scan: Scan) -> Result<Vec<Row>, StoreError> {
        if scan.limit == 0 {
            return Ok(Vec::new());
        }
        let range = Range::of(&scan);
        let name = self.table(scan.table);
        let (limit, label) = (scan.limit, scan.table.name());
        let rows = self
            .call("scan", label, true, move |c| {
                scan_rows(c, &name, &range, limit)
            })
            .await?;
        Ok(rows)
    }
}

/// Opens a scanner, pages through it until `limit` rows pass `range`'s
/// filter (or the rows run out), and closes it.
fn scan_rows(
    c: &mut Client,
    table: &[u8],
    range: &Range,
    limit: usize,
) -> thrift::Result<Vec<Row>> {
    let cells = scan_cells(c, table, range, limit)?;
    Ok(cells
        .into_iter()
        .map(|(row, cell)| (row, Bytes::from(cell.value.unwrap_or_default())))
        .collect())
}

/// [`scan_rows`], keeping each cell's timestamp.
fn scan_cells(
    c: &mut Client,
    table: &[u8],
    range: &Range,
    limit: usize,
) -> thrift::Result<Vec<(Vec<u8>, TCell)>> {
    let want = limit.saturating_add(range.extra());
    let page = want.min(SCAN_PAGE);
    let scan = TScan {
        start_row: range.start.clone(),
        stop_row: range.stop.clone(),
        columns: Some(vec![FAMILY.as_bytes().to_vec()]),
        caching: Some(page as i32),
        reversed: Some(range.reverse),
        // Every field is spelled out: the generated `Default` sets each to
        // `Some(empty)`, which HBase reads as filters and limits.
        timestamp: None,
        filter_string: None,
        batch_size: None,
        sort_columns: None,
        cache_blocks: None,
    };
    let id = c.scanner_open_with_scan(table.to_vec(), scan, BTreeMap::new())?;
    let mut rows = Vec::with_capacity(limit.min(SCAN_PAGE));
    let result = (|| -> thrift::Result<()> {
        loop {
            let asked = (want - rows.len().min(want)).clamp(1, SCAN_PAGE);
            let got = c.scanner_get_list(id, asked as i32)?;
            let ended = got.len() < asked;
            for r in got {
                let Some(row) = r.row else { continue };
                if !range.admits(&row) {
                    if range.past_end(&row) {
                        return Ok(());
                    }
                    continue;
                }
                let cell = r
                    .columns
                    .and_then(|cols| cols.into_values().next())
                    .unwrap_or(TCell {
                        value: None,
                        timestamp: None,
                    });
                rows.push((row, cell));
                if rows.len() == limit {
                    return Ok(());
                }
            }
            if ended {
                return Ok(());
            }
        }
    })();
    let closed = c.scanner_close(id);
    result?;
    closed?;
    Ok(rows)
}

#[async_trait]
impl Store for HbaseStore {
    fn heartbeat_store(&self) -> Option<Arc<dyn Store>> {
        Some(Arc::new(self.heartbeat_channel()))
    }

    async fn get(&self, table: Table, row: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.inner.intents.settle(self).await?;
        self.reads().get(self, table, row.to_vec()).await
    }

    async fn scan(&self, scan: Scan) -> Result<Vec<Row>, StoreError> {
        self.inner.intents.settle(self).await?;
        self.scan_now(scan).await
    }

    async fn write(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        self.write_maybe_fenced(batch, None).await
    }

    async fn write_fenced(&self, batch: Vec<Mutation>, fence: Fence) -> Result<(), StoreError> {
        self.write_maybe_fenced(batch, Some(fence)).await
    }

    async fn check_and_put(
        &self,
        table: Table,
        row: &[u8],
        expected: Option<&[u8]>,
        value: Bytes,
    ) -> Result<bool, StoreError> {
        self.inner.intents.settle(self).await?;
        let (name, row) = (self.table(table), row.to_vec());
        // An empty expected value matches an absent cell (and an empty one,
        // which Store's contract makes the same thing).
        let expected = expected.unwrap_or_default().to_vec();
        let mutation = put(&value);
        self.call("checkAndPut", table.name(), false, move |c| {
            c.check_and_put(
                name.clone(),
                row.clone(),
                COLUMN.to_vec(),
                expected.clone(),
                mutation.clone(),
                BTreeMap::new(),
            )
        })
        .await
    }

    async fn increment(&self, table: Table, row: &[u8], delta: i64) -> Result<i64, StoreError> {
        self.inner.intents.settle(self).await?;
        let (name, row) = (self.table(table), row.to_vec());
        let result = self
            .call("atomicIncrement", table.name(), false, move |c| {
                c.atomic_increment(name.clone(), row.clone(), COLUMN.to_vec(), delta)
            })
            .await;
        match result {
            // HBase refuses to add to a cell that is not an 8-byte long.
            Err(StoreError::Unavailable(e)) if e.contains("not a long") => Err(
                StoreError::Corrupt(format!("counter in {} is not 8 bytes: {e}", table.name())),
            ),
            other => other,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A read through a region server, not only the master: the Thrift
        // server answers table listings while regions are still offline.
        self.inner.intents.settle(self).await?;
        let name = self.table(Table::NodeState);
        self.call("get", Table::NodeState.name(), true, move |c| {
            c.get(
                name.clone(),
                b"ping".to_vec(),
                COLUMN.to_vec(),
                BTreeMap::new(),
            )
        })
        .await
        .map(drop)
    }

    async fn finish_batches_of(&self, node_key: [u8; 8]) -> Result<(), StoreError> {
        self.inner.intents.settle(self).await?;
        self.inner.intents.recover_other(self, node_key).await
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        HbaseStore::collectors(self)
    }
}

fn family() -> ColumnDescriptor {
    ColumnDescriptor {
        name: Some(FAMILY.as_bytes().to_vec()),
        // Carrier overwrites in place; older versions are never read.
        max_versions: Some(1),
        compression: Some("NONE".to_owned()),
        in_memory: Some(false),
        bloom_filter_type: Some("ROW".to_owned()),
        bloom_filter_vector_size: Some(0),
        bloom_filter_nb_hashes: Some(0),
        block_cache_enabled: Some(true),
        time_to_live: Some(i32::MAX),
    }
}

fn put(value: &[u8]) -> wire::Mutation {
    wire::Mutation {
        is_delete: Some(false),
        column: Some(COLUMN.to_vec()),
        value: Some(value.to_vec()),
        // Durable on return: the region server syncs its WAL first.
        write_to_w_a_l: Some(true),
    }
}

fn delete() -> wire::Mutation {
    wire::Mutation {
        is_delete: Some(true),
        column: Some(COLUMN.to_vec()),
        value: None,
        write_to_w_a_l: Some(true),
    }
}

/// The text of an exception the server declared.
fn user_error(e: &(dyn std::error::Error + Send + Sync + 'static)) -> String {
    if let Some(io) = e.downcast_ref::<IOError>() {
        return io.message.clone().unwrap_or_else(|| "IOError".to_owned());
    }
    if let Some(ia) = e.downcast_ref::<IllegalArgument>() {
        let message = ia.message.clone().unwrap_or_default();
        return format!("illegal argument: {message}");
    }
    if let Some(exists) = e.downcast_ref::<AlreadyExists>() {
        let message = exists.message.clone().unwrap_or_default();
        return format!("already exists: {message}");
    }
    e.to_string()
}
