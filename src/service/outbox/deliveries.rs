//! What the committer and the outbox worker share about entries in
//! flight: which copies callers wait for, and which mailboxes have entries
//! waiting. Its own module, so neither imports the other for it.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::domain::UserId;

/// Copies a caller waits for, by outbox id: the worker fires each once it
/// reached its owner.
#[derive(Default)]
pub struct Deliveries(DashMap<u64, Arc<Notify>>);

impl Deliveries {
    pub fn register(&self, id: u64) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.0.insert(id, notify.clone());
        notify
    }

    pub fn remove(&self, id: u64) {
        self.0.remove(&id);
    }

    pub(super) fn delivered(&self, id: u64) {
        if let Some((_, notify)) = self.0.remove(&id) {
            notify.notify_one();
        }
    }
}

/// How many entries of this node's own outbox wait for each mailbox. While
/// some do, the committer sends that mailbox's new events through the
/// outbox too, behind them: appending in place would overtake them (a copy
/// whose push is still timing out against a peer that just stopped, and
/// whose mailbox this node took over meanwhile).
#[derive(Default)]
pub struct Pending(DashMap<UserId, u32>);

impl Pending {
    pub fn has(&self, user: &UserId) -> bool {
        self.0.contains_key(user)
    }

    pub fn add(&self, user: UserId) {
        *self.0.entry(user).or_default() += 1;
    }

    pub(super) fn done(&self, user: &UserId) {
        self.0.remove_if_mut(user, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}
