//! Group commit: the one task that writes sends, receipts and group changes
//! to the store.
//!
//! It drains every request waiting in its queue into a single store write
//! (one fsync, or one HBase round trip), so durability costs one sync per
//! batch, not per message. Being the only writer of mailbox rows, it also
//! assigns mailbox positions: in commit order, so a reader can never see a
//! later position before an earlier one.
//!
//! - `committer.rs`: the handle callers use ([`Commit`] in, [`Committed`] out);
//! - `writer.rs`: the task ([`Writer`]) that batches, writes and wakes;
//! - `batch.rs`: a batch laid out, positions assigned (a pure plan);
//! - `watermark.rs`: how far batches have landed ([`Watermark`]);
//! - [`clock`]: the positions it hands out, and the lease row that keeps them
//!   increasing across restarts.

mod batch;
pub mod clock;
mod committer;
pub mod watermark;
mod writer;

#[cfg(test)]
mod tests;

pub use committer::{Commit, Committed, Committer};
pub use watermark::Watermark;
pub use writer::Writer;
