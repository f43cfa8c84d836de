//! The outbox worker: delivers the mailbox appends a commit deferred (the
//! sender's own copy, receipts, and every copy owed to a mailbox another
//! node owns), oldest first, retrying until they land.
//!
//! Copies for this node's mailboxes are appended through the committer,
//! together with the removal of their entries. Copies for another node's
//! are pushed to it (`/internal/v1/appends`, signed), then removed. Each
//! destination gets its entries in id order, and an entry is retried
//! before any later one to the same place, so a conversation's events
//! reach every mailbox in seq order.
//!
//! On the embedded store each entry lands exactly once. Otherwise a lost
//! answer, or two nodes draining a departed peer's outbox at once, can
//! deliver an entry twice; the receiving node remembers the entries it took
//! recently (by outbox and id) and drops repeats. An entry counts as taken
//! once its commit there succeeded; a repeat arriving while that commit is
//! in flight is refused, and pushed again. Only a repeat that reaches a
//! node after it restarted gets through, and clients de-duplicate by
//! `message_id`.
//!
//! The same worker drains a departed peer's outbox (`drain`), routing its
//! entries to whoever owns each mailbox now.

//! - `worker.rs`: the worker ([`Outbox`]) and its rounds;
//! - [`row`]: the row format the committer writes and the worker reads;
//! - [`push`]: the body of a push to a peer ([`encode`], [`decode`]);
//! - [`deliveries`]: what the committer and the worker share about entries
//!   in flight ([`Deliveries`], [`Pending`]).

pub mod deliveries;
pub mod push;
pub mod row;
mod worker;

pub use deliveries::{Deliveries, Pending};
pub use push::{Pushed, decode, encode};
pub use worker::Outbox;
