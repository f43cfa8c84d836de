//! The embedded engine: one fjall database in a local folder, one keyspace
//! per table.
//!
//! Every mutation runs under one lock, so a read-modify-write sees no write
//! slip in between, and every batch is fsynced before it becomes visible, so
//! no reader ever acts on a write a crash could still lose.

use std::fmt::Display;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use fjall::{Database, Guard, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use super::{Mutation, Row, Scan, Store, StoreError, Table};

/// A [`Store`] on a local fjall database.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Indexed by `Table as usize`, which is the order of [`Table::ALL`].
    keyspaces: Vec<Keyspace>,
    /// Held by every mutation; guards no data, only ordering.
    serial: Mutex<()>,
}

impl EmbeddedStore {
    /// Opens (or creates, folder included) the database at `path`.
    pub fn open(path: &Path) -> Result<EmbeddedStore, StoreError> {
        // Durability is ours: fjall writes nothing to the OS on its own, and
        // each batch asks for exactly the one fsync it needs.
        let db = Database::builder(path)
            .manual_journal_persist(true)
            .open()
            .map_err(unavailable(format_args!("opening {}", path.display())))?;
        let keyspaces = Table::ALL
            .iter()
            .map(|table| {
                db.keyspace(table.name(), KeyspaceCreateOptions::default)
                    .map_err(unavailable(format_args!("opening table {}", table.name())))
            })
            .collect::<Result<_, _>>()?;
        let serial = Mutex::new(());
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                keyspaces,
                serial,
            }),
        })
    }

    /// Syncs data and metadata one last time; called at shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .persist(PersistMode::SyncAll)
            .map_err(unavailable("final sync"))
    }

    /// Runs `f` on a blocking thread, so no async thread waits on an fsync.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }
}

impl Inner {
    fn keyspace(&self, table: Table) -> &Keyspace {
        &self.keyspaces[table as usize]
    }

    fn serial(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data, so a panic while it was held left nothing half-done.
        self.serial.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads through a snapshot: a plain keyspace read would also see a batch
    /// that is only partly applied.
    fn get(&self, table: Table, row: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.db
            .snapshot()
            .get(self.keyspace(table), row)
            .map(|cell| cell.map(|v| Bytes::copy_from_slice(&v)))
            .map_err(unavailable(format_args!("reading {}", table.name())))
    }

    fn scan(&self, scan: Scan) -> Result<Vec<Row>, StoreError> {
        let range = self
            .db
            .snapshot()
            .range(self.keyspace(scan.table), (scan.start, scan.end));
        if scan.reverse {
            take_rows(range.rev(), scan.limit, scan.table)
        } else {
            take_rows(range, scan.limit, scan.table)
        }
    }

    /// Commits `batch` atomically, fsynced before any reader can see it.
    /// Taking the guard proves the caller holds the serial lock.
    fn apply(
        &self,
        _serial: &MutexGuard<'_, ()>,
        batch: impl IntoIterator<Item = Mutation>,
    ) -> Result<(), StoreError> {
        let mut tx = self.db.batch().durability(Some(PersistMode::SyncData));
        for mutation in batch {
            match mutation {
                Mutation::Put { table, row, value } => {
                    tx.insert(self.keyspace(table), row, value.as_ref())
                }
                Mutation::Delete { table, row } => tx.remove(self.keyspace(table), row),
            }
        }
        tx.commit().map_err(unavailable("committing a batch"))
    }

    fn write(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        let serial = self.serial();
        self.apply(&serial, batch)
    }

    fn check_and_put(
        &self,
        table: Table,
        row: Vec<u8>,
        expected: Option<Vec<u8>>,
        value: Bytes,
    ) -> Result<bool, StoreError> {
        let serial = self.serial();
        // An empty cell counts as absent, as on HBase.
        let current = self.get(table, &row)?.filter(|c| !c.is_empty());
        let expected = expected.filter(|e| !e.is_empty());
        if current.as_deref() != expected.as_deref() {
            return Ok(false);
        }
        self.apply(&serial, [Mutation::Put { table, row, value }])?;
        Ok(true)
    }

    fn increment(&self, table: Table, row: Vec<u8>, delta: i64) -> Result<i64, StoreError> {
        let serial = self.serial();
        let current = match self.get(table, &row)? {
            None => 0,
            Some(cell) => {
                let bytes = cell.as_ref().try_into().map_err(|_| {
                    StoreError::Corrupt(format!(
                        "counter in {} has {} bytes, not 8",
                        table.name(),
                        cell.len()
                    ))
                })?;
                i64::from_be_bytes(bytes)
            }
        };
        // HBase's increment wraps on overflow; so do we.
        let next = current.wrapping_add(delta);
        let value = Bytes::copy_from_slice(&next.to_be_bytes());
        self.apply(&serial, [Mutation::Put { table, row, value }])?;
        Ok(next)
    }
}

/// The first `limit` rows of `iter`; stops reading there.
fn take_rows(
    iter: impl Iterator<Item = Guard>,
    limit: usize,
    table: Table,
) -> Result<Vec<Row>, StoreError> {
    iter.take(limit)
        .map(|guard| {
            let (key, value) = guard
                .into_inner()
                .map_err(unavailable(format_args!("scanning {}", table.name())))?;
            // Copied: a fjall value is a view into a cached block, which it would pin.
            Ok((key.to_vec(), Bytes::copy_from_slice(&value)))
        })
        .collect()
}

fn unavailable(context: impl Display) -> impl FnOnce(fjall::Error) -> StoreError {
    move |e| StoreError::Unavailable(format!("{context}: {e}"))
}

#[async_trait]
impl Store for EmbeddedStore {
    // Reads run inline: they mostly hit the memtable and block cache, where a
    // hop to a blocking thread would cost more than the read.
    async fn get(&self, table: Table, row: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.inner.get(table, row)
    }

    async fn scan(&self, scan: Scan) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(scan)
    }

    async fn write(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        self.blocking(move |inner| inner.write(batch)).await
    }

    async fn check_and_put(
        &self,
        table: Table,
        row: &[u8],
        expected: Option<&[u8]>,
        value: Bytes,
    ) -> Result<bool, StoreError> {
        let (row, expected) = (row.to_vec(), expected.map(<[u8]>::to_vec));
        self.blocking(move |inner| inner.check_and_put(table, row, expected, value))
            .await
    }

    async fn increment(&self, table: Table, row: &[u8], delta: i64) -> Result<i64, StoreError> {
        let row = row.to_vec();
        self.blocking(move |inner| inner.increment(table, row, delta))
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // fjall's only public poison check; it takes the journal lock, which
        // an fsync in flight holds.
        self.blocking(|inner| {
            inner
                .db
                .persist(PersistMode::Buffer)
                .map_err(unavailable("ping"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::store::contract::store_contract_tests;

    /// A store in a fresh folder, which lives as long as the returned guard.
    fn temp_store() -> (EmbeddedStore, TempDir) {
        let dir = TempDir::new().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open store");
        (store, dir)
    }

    store_contract_tests!(temp_store());

    fn put(table: Table, row: &[u8], value: &'static [u8]) -> Mutation {
        Mutation::Put {
            table,
            row: row.to_vec(),
            value: Bytes::from_static(value),
        }
    }

    #[test]
    fn keyspaces_follow_table_order() {
        for (i, table) in Table::ALL.into_iter().enumerate() {
            assert_eq!(table as usize, i, "{table:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writes_survive_reopen() {
        let dir = TempDir::new().expect("temp dir");
        let path = dir.path().join("not/yet/there");
        {
            let store = EmbeddedStore::open(&path).expect("open");
            store
                .write(vec![
                    put(Table::Messages, b"m1", b"hello"),
                    put(Table::Mailboxes, b"u1", b"event"),
                ])
                .await
                .expect("write");
            let won = store
                .check_and_put(Table::Groups, b"g", None, Bytes::from_static(b"owner"))
                .await
                .expect("check_and_put");
            assert!(won);
            assert_eq!(
                store
                    .increment(Table::Counters, b"c", 41)
                    .await
                    .expect("inc"),
                41
            );
            store
                .write(vec![Mutation::Delete {
                    table: Table::Messages,
                    row: b"m1".to_vec(),
                }])
                .await
                .expect("delete");
        }
        let store = EmbeddedStore::open(&path).expect("reopen");
        let messages = store.get(Table::Messages, b"m1").await.expect("get");
        let mailboxes = store.get(Table::Mailboxes, b"u1").await.expect("get");
        let groups = store.get(Table::Groups, b"g").await.expect("get");
        assert_eq!(messages, None);
        assert_eq!(mailboxes, Some(Bytes::from_static(b"event")));
        assert_eq!(groups, Some(Bytes::from_static(b"owner")));
        assert_eq!(
            store
                .increment(Table::Counters, b"c", 1)
                .await
                .expect("inc"),
            42
        );
        store.ping().await.expect("ping");
        store.flush().expect("flush");
    }

    /// What a crashed process leaves: the folder as the OS holds it while the
    /// store is still open, without the sync fjall does on drop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn acknowledged_writes_survive_a_crash() {
        let (store, dir) = temp_store();
        store
            .write(vec![put(Table::Messages, b"m1", b"hello")])
            .await
            .expect("write");
        let won = store
            .check_and_put(Table::Groups, b"g", None, Bytes::from_static(b"owner"))
            .await
            .expect("check_and_put");
        assert!(won);
        assert_eq!(
            store
                .increment(Table::Counters, b"c", 7)
                .await
                .expect("inc"),
            7
        );

        let image = TempDir::new().expect("temp dir");
        copy_folder(dir.path(), image.path());
        let recovered = EmbeddedStore::open(image.path()).expect("recover");
        let message = recovered.get(Table::Messages, b"m1").await.expect("get");
        let group = recovered.get(Table::Groups, b"g").await.expect("get");
        let counter = recovered.get(Table::Counters, b"c").await.expect("get");
        assert_eq!(message, Some(Bytes::from_static(b"hello")));
        assert_eq!(group, Some(Bytes::from_static(b"owner")));
        assert_eq!(counter, Some(Bytes::copy_from_slice(&7i64.to_be_bytes())));
        drop(store);
    }

    fn copy_folder(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("create folder");
        for entry in std::fs::read_dir(from).expect("read folder") {
            let entry = entry.expect("folder entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("file type").is_dir() {
                copy_folder(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).expect("copy file");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hundred_concurrent_writes_all_land() {
        let (store, _dir) = temp_store();
        let store = Arc::new(store);
        let tasks: Vec<_> = (0u32..100)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    let row = i.to_be_bytes().to_vec();
                    let value = Bytes::from(i.to_string());
                    store
                        .write(vec![Mutation::Put {
                            table: Table::Outbox,
                            row,
                            value,
                        }])
                        .await
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("write");
        }
        let rows = store
            .scan(Scan::prefix(Table::Outbox, &[], usize::MAX))
            .await
            .expect("scan");
        let expected: Vec<Row> = (0u32..100)
            .map(|i| (i.to_be_bytes().to_vec(), Bytes::from(i.to_string())))
            .collect();
        assert_eq!(rows, expected);
    }

    /// Cross-table atomicity is the embedded engine's own promise (HBase's is
    /// per row), so it is tested here rather than in the contract.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn readers_never_see_half_a_batch() {
        let (store, _dir) = temp_store();
        let store = Arc::new(store);
        let writer = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0u32..200 {
                    let row = i.to_be_bytes();
                    store
                        .write(vec![
                            put(Table::Messages, &row, b"m"),
                            put(Table::Mailboxes, &row, b"e"),
                        ])
                        .await
                        .expect("write");
                }
            })
        };
        while !writer.is_finished() {
            for i in 0u32..200 {
                let row = i.to_be_bytes();
                if store
                    .get(Table::Messages, &row)
                    .await
                    .expect("get")
                    .is_some()
                {
                    let other = store.get(Table::Mailboxes, &row).await.expect("get");
                    assert!(
                        other.is_some(),
                        "row {i}: message without its mailbox event"
                    );
                }
            }
            tokio::task::yield_now().await;
        }
        writer.await.expect("writer");
    }
}
