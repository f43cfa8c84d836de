//! The handles a node's parts share: built once (see `app.rs`), cloned into
//! the committer, the outbox worker, the takeover and the service. Cloning
//! is shallow.

use std::sync::Arc;

use tokio::sync::Notify;

use super::cache::{HistoryCache, MailboxCache};
use super::commit::watermark::Watermark;
use super::outbox::deliveries::{Deliveries, Pending};
use super::waiters::Waiters;
use crate::cluster::Cluster;
use crate::domain::{MessageId, UserId};
use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
pub struct Handles {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// The ring: which mailboxes and conversations this node owns.
    pub cluster: Arc<Cluster>,
    /// This node's key in shared tables (its outbox, its clock lease).
    pub node_key: [u8; 8],
    /// How far this node's batches have landed: readers skip rows above it.
    pub watermark: Arc<Watermark>,
    /// Copies callers wait for, by outbox id.
    pub deliveries: Arc<Deliveries>,
    /// Mailboxes with entries waiting in this node's outbox.
    pub pending: Arc<Pending>,
    /// Kicked whenever outbox rows were written.
    pub outbox_kick: Arc<Notify>,
    pub mailbox_cache: Arc<MailboxCache>,
    pub history_cache: Arc<HistoryCache>,
    /// Parked polls by user.
    pub mailbox_waiters: Arc<Waiters<UserId>>,
    /// Sends waiting for the `prev_message_id` they name.
    pub arrivals: Arc<Waiters<(UserId, MessageId)>>,
}
