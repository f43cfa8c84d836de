//! The committer's handle: what a caller hands it ([`Commit`]) and gets
//! back ([`Committed`]). The task behind it is in `writer.rs`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::domain::{ConversationId, MessageId, Position, Seq, UserId};
use crate::store::{Mutation, StoreError};

/// One unit of work that must become durable as a whole.
#[derive(Default)]
pub struct Commit {
    /// Rows to put or delete as they are.
    pub writes: Vec<Mutation>,
    /// Events to append to mailboxes; positions are assigned at commit.
    pub appends: Vec<(UserId, Bytes)>,
    /// Events owed to mailboxes through the outbox (the sender's copy,
    /// receipts): written durably now, appended by the outbox worker.
    pub outbox: Vec<(UserId, Bytes)>,
    /// A message entering a conversation, for the history cache.
    pub message: Option<(ConversationId, Seq, Bytes)>,
    /// A send to announce to pipelined sends waiting for it.
    pub arrival: Option<(UserId, MessageId)>,
    /// The recipient whose copy the caller waits for when another node owns
    /// its mailbox (a direct message: receiver first).
    pub await_delivery: Option<UserId>,
    /// Append here whatever the serving view says: the caller checked that
    /// this node owns the mailboxes by both views (pushed and re-routed
    /// copies, which must not go round the outbox again).
    pub here: bool,
}

/// What a commit became.
#[derive(Debug)]
pub struct Committed {
    /// The position of each append this node made, in order.
    pub positions: Vec<Position>,
    /// Fired when the copy for `await_delivery` reached its owner.
    pub delivered: Option<Arc<tokio::sync::Notify>>,
}

/// A commit waiting in the queue, with where to answer.
pub(super) struct Request {
    pub(super) commit: Commit,
    pub(super) accepted_at: Instant,
    pub(super) reply: oneshot::Sender<Result<Committed, StoreError>>,
}

/// The committer's queue. Cloning is shallow.
#[derive(Clone)]
pub struct Committer {
    pub(super) queue: mpsc::UnboundedSender<Request>,
}

impl Committer {
    /// Makes `commit` durable; returns once it is on disk.
    pub async fn commit(&self, commit: Commit) -> Result<Committed, StoreError> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            commit,
            accepted_at: Instant::now(),
            reply,
        };
        self.queue
            .send(request)
            .map_err(|_| StoreError::Unavailable("the node is shutting down".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the committer stopped".into()))?
    }
}
