//! Storage: one HBase-shaped trait, two engines.
//!
//! The service layer sees tables of rows addressed by byte keys, each row
//! holding one cell in the column family [`FAMILY`]. Scans run over ordered
//! row-key ranges in either direction. That is exactly what HBase's Thrift1
//! gateway offers, so the embedded engine ([`embedded::EmbeddedStore`]) can
//! never let the service lean on something HBase lacks.

pub mod embedded;
pub mod hbase;
pub mod keys;

#[cfg(test)]
pub(crate) mod contract;

use std::ops::Bound;

use async_trait::async_trait;
use bytes::Bytes;

/// The one column family every table has. HBase stores the cell at `d:`.
pub const FAMILY: &str = "d";

/// The tables Carrier keeps; each is named for its row key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    /// `conversation(16) || seq(8)`: the conversation log, one message per row.
    Messages,
    /// `user(16) || position(8)`: a user's mailbox, one event per row.
    Mailboxes,
    /// `sender(16) || message_id(16)`: where a sent message landed, for idempotency.
    Idempotency,
    /// `conversation(16)`: who takes part in a conversation.
    Conversations,
    /// `user(16) || conversation(16)`: the conversations a user is in.
    UserConversations,
    /// `group(16)`: a group's name, owner and size.
    Groups,
    /// `group(16) || user(16)`: a group's members.
    Members,
    /// `conversation(16) || user(16)`: how far a user has received and read.
    Receipts,
    /// `node(8) || id(8)`: mailbox appends still owed to someone (the sender's copy).
    Outbox,
    /// `node(8) || name`: small per-node records (the clock floor).
    NodeState,
    /// `name`: counters updated by atomic increment.
    Counters,
    /// `user(16) || group(16)`: the large groups a user reads, and from
    /// (and, once it left, until) where in each group's stream.
    GroupReaders,
    /// `group(16) || seq(8) || sub(4)`: a large group's membership changes,
    /// each placed in its stream after message `seq`.
    GroupChanges,
}

impl Table {
    pub const ALL: [Table; 13] = [
        Table::Messages,
        Table::Mailboxes,
        Table::Idempotency,
        Table::Conversations,
        Table::UserConversations,
        Table::Groups,
        Table::Members,
        Table::Receipts,
        Table::Outbox,
        Table::NodeState,
        Table::Counters,
        Table::GroupReaders,
        Table::GroupChanges,
    ];

    /// The table's name, before any deployment prefix.
    pub fn name(self) -> &'static str {
        match self {
            Table::Messages => "messages_by_conv_seq",
            Table::Mailboxes => "mailbox_by_user_pos",
            Table::Idempotency => "sends_by_sender_msg",
            Table::Conversations => "conversations_by_id",
            Table::UserConversations => "conversations_by_user",
            Table::Groups => "groups_by_id",
            Table::Members => "members_by_group_user",
            Table::Receipts => "receipts_by_conv_user",
            Table::Outbox => "outbox_by_node_id",
            Table::NodeState => "node_state",
            Table::Counters => "counters",
            Table::GroupReaders => "large_groups_by_user",
            Table::GroupChanges => "changes_by_group_pos",
        }
    }
}

/// One change in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    Put {
        table: Table,
        row: Vec<u8>,
        value: Bytes,
    },
    Delete {
        table: Table,
        row: Vec<u8>,
    },
}

/// An ordered range of rows, read oldest-key-first or, with `reverse`,
/// newest-key-first; at most `limit` rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub table: Table,
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
    pub reverse: bool,
    pub limit: usize,
}

impl Scan {
    /// Every row whose key starts with `prefix`, in key order.
    pub fn prefix(table: Table, prefix: &[u8], limit: usize) -> Scan {
        let start = Bound::Included(prefix.to_vec());
        let end = match keys::prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        Scan {
            table,
            start,
            end,
            reverse: false,
            limit,
        }
    }

    /// The same range, read from its last row backwards.
    pub fn rev(mut self) -> Scan {
        self.reverse = true;
        self
    }
}

/// A row's key and its cell.
pub type Row = (Vec<u8>, Bytes);

/// Asked right before a write is sent: whether this node may still write.
pub type Fence = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

/// What the caller can do about a failed store operation.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the write; nothing was applied
    /// that the caller was told about, and a retry may succeed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A cell holds bytes Carrier did not write; a bug or a damaged store.
    #[error("storage holds unreadable data: {0}")]
    Corrupt(String),
}

/// The HBase-shaped storage every engine implements.
///
/// Writes are durable when they return `Ok` (on disk, fsynced, or in
/// HBase's WAL). A `write` lands whole or not at all. A failed `write` may
/// still land (whole), but before any later call returns. On HBase its rows
/// become readable one at a time while it runs (see docs/architecture.md).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The cell of one row, if the row exists.
    async fn get(&self, table: Table, row: &[u8]) -> Result<Option<Bytes>, StoreError>;

    /// Rows of one range, in the scan's order, at most `scan.limit`.
    async fn scan(&self, scan: Scan) -> Result<Vec<Row>, StoreError>;

    /// Applies every mutation; durable on return. One call is one disk
    /// sync (or one round trip), so callers batch.
    async fn write(&self, batch: Vec<Mutation>) -> Result<(), StoreError>;

    /// `write`, unless `fence` refuses as late as the engine can ask, just
    /// before anything is sent. A refused write fails and never lands.
    /// On a ring, a node whose lease lapsed while a write waited (for a
    /// connection, for the write before it, or because the process was
    /// stopped) must not write after the node taking over has looked.
    async fn write_fenced(&self, batch: Vec<Mutation>, fence: Fence) -> Result<(), StoreError> {
        if !fence() {
            return Err(StoreError::Unavailable(
                "this node may no longer write (its lease lapsed)".into(),
            ));
        }
        self.write(batch).await
    }

    /// Puts `value` only if the row's cell equals `expected` (`None`: the
    /// row is absent). Returns whether it was put. Durable on `Ok(true)`.
    async fn check_and_put(
        &self,
        table: Table,
        row: &[u8],
        expected: Option<&[u8]>,
        value: Bytes,
    ) -> Result<bool, StoreError>;

    /// Adds `delta` to the row's counter (an 8-byte big-endian i64, as HBase
    /// keeps it; absent counts as 0) and returns the new value. Durable.
    async fn increment(&self, table: Table, row: &[u8], delta: i64) -> Result<i64, StoreError>;

    /// Succeeds when the store can serve; used by `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// The same store over a connection of its own, for the ring's lease
    /// renewals: they must not queue behind request traffic for a pooled
    /// connection, nor behind a pending batch. `None`: this store has no
    /// such queue (the embedded one), use it as it is. Writes no batches.
    fn heartbeat_store(&self) -> Option<std::sync::Arc<dyn Store>> {
        None
    }

    /// Finishes the batch another node (by its node key) may have left
    /// half-written when it died, so a node taking over its users and
    /// conversations starts from whole batches. Only a store several nodes
    /// share has anything to do here.
    async fn finish_batches_of(&self, _node_key: [u8; 8]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The engine's own Prometheus series, registered by the node.
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        Vec::new()
    }
}
