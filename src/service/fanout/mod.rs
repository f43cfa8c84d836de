//! Fan-out on read, for large groups.
//!
//! A group with at least `send.large_group_threshold` members stops copying
//! what happens in it into every member's mailbox. Each message is stored
//! once (the conversation log) and each membership change once
//! (`group_changes`, placed after the message it followed): together they
//! are the group's *stream*. A member's poll reads the streams of its large
//! groups next to its mailbox, and its cursor carries where it is in each.
//! Sending to a 100,000-member group writes what a 1:1 send writes.
//!
//! Users added to a large group get that change in their mailbox: that is
//! how their node learns to read the stream, after the change. Everyone
//! else, the removed included, gets each change from the stream.
//!
//! Each node keeps the newest part of each stream its pollers read
//! ([`Tail`]). The group's owner updates its tail as it commits; another
//! node refreshes its own when the owner tells it the stream moved
//! (`/internal/v1/wake`), and at the latest [`STALE`] after its last look.
//!
//! Who reads what: a reader row per (user, group) says after where, and
//! once the user left, through where (its removal), it reads. A node caches a user's rows;
//! the tail also records every departure, so a stale row never lets a user
//! read past the change that removed it.

//!
//! - `streams.rs`: the node's tails and reader cache, and reading a stream;
//! - `tail.rs`: a tail, its items and who receives which ([`Reading`]);
//! - [`rows`]: the change, reader and wake row formats;
//! - `watch.rs`: on a ring, who tells whom that a stream moved.

pub mod rows;
mod streams;
mod tail;
mod watch;

#[cfg(test)]
mod tests;

pub use rows::parse_wake;
pub use streams::{STALE, Streams};
pub use tail::{Item, Reading, Tail, is_group_event};
