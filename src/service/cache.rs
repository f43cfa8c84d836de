//! Write-through caches of what polls and history pages read most: the
//! tail of each active mailbox and the newest page of each active
//! conversation. Bounded in bytes, evicting the least recently used.
//!
//! Only the committer writes them, after the store has the data and before
//! anyone is woken, so they are never staler than the store. (Conversation
//! pages may also be filled by a reader that holds the conversation's
//! sequencer lock, which no send can hold at the same time.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};

use crate::domain::{ConversationId, Seq, UserId};

/// Events kept per mailbox tail; polls of a caught-up device need one or two.
const TAIL_EVENTS: usize = 64;
/// Messages kept per conversation page; the default history page is 50.
const PAGE_MESSAGES: usize = 100;

/// What a cached value costs in memory, roughly: the caches here (and the
/// group cache) are bounded in bytes, not entries.
pub trait Weigh {
    fn bytes(&self) -> u64;
}

/// Weighs a cached value by its [`Weigh::bytes`]; the one weighter of
/// every byte-bounded cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByBytes;

impl<K, V: Weigh> Weighter<K, Arc<V>> for ByBytes {
    fn weight(&self, _: &K, value: &Arc<V>) -> u64 {
        value.bytes()
    }
}

/// One mailbox event as stored, with when it became durable (for the
/// delivery-latency metric).
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub position: u64,
    pub json: Bytes,
    pub durable_at: Option<Instant>,
}

/// Every event of a mailbox after `known_from`, oldest first.
#[derive(Clone, Debug)]
pub struct Tail {
    pub known_from: u64,
    pub events: VecDeque<StoredEvent>,
}

impl Tail {
    /// The newest position this tail knows of.
    pub fn head(&self) -> u64 {
        self.events.back().map_or(self.known_from, |e| e.position)
    }
}

impl Weigh for Tail {
    fn bytes(&self) -> u64 {
        64 + self
            .events
            .iter()
            .map(|e| e.json.len() as u64 + 48)
            .sum::<u64>()
    }
}

/// Stripes of [`Removals`]; users share one per 1/1024th of the id space.
const REMOVAL_STRIPES: usize = 1024;

/// How many tails were dropped (evicted, forgotten, cleared), counted per
/// stripe of users: a reader compares the count from before its store read
/// with the count when it would remember the mailbox empty. A tail the
/// committer started after the read, then dropped, may hold the only
/// trace of an event the read missed.
#[derive(Clone)]
struct Removals(Arc<[AtomicU64]>);

impl Removals {
    fn new() -> Removals {
        Removals((0..REMOVAL_STRIPES).map(|_| AtomicU64::new(0)).collect())
    }

    fn stripe(&self, user: &UserId) -> &AtomicU64 {
        let (high, low) = user.0.as_u64_pair();
        &self.0[(high ^ low) as usize % REMOVAL_STRIPES]
    }

    fn count(&self, user: &UserId) -> u64 {
        self.stripe(user).load(Ordering::Acquire)
    }

    fn bump(&self, user: &UserId) {
        self.stripe(user).fetch_add(1, Ordering::AcqRel);
    }
}

/// Called under the shard's lock, so a reader that then finds the tail
/// absent (which takes that lock) also sees the count raised.
impl Lifecycle<UserId, Arc<Tail>> for Removals {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), user: UserId, _: Arc<Tail>) {
        self.bump(&user);
    }
}

pub struct MailboxCache {
    tails: Cache<UserId, Arc<Tail>, ByBytes, DefaultHashBuilder, Removals>,
    removals: Removals,
}

impl MailboxCache {
    pub fn new(bytes: u64) -> MailboxCache {
        let removals = Removals::new();
        MailboxCache {
            tails: Cache::with(
                (bytes / 2048).max(16) as usize,
                bytes,
                ByBytes,
                DefaultHashBuilder::default(),
                removals.clone(),
            ),
            removals,
        }
    }

    pub fn get(&self, user: &UserId) -> Option<Arc<Tail>> {
        self.tails.get(user)
    }

    /// Drops every tail (the ring changed: another node may have appended).
    /// Each is counted as it goes, under its shard's lock (see `forget`).
    pub fn clear(&self) {
        for stripe in self.removals.0.iter() {
            stripe.fetch_add(1, Ordering::AcqRel);
        }
        self.tails.retain(|user, _| {
            self.removals.bump(user);
            false
        });
    }

    /// Drops a tail that may have fallen behind the store. Counted even if
    /// there is none (a failed batch may still land), and again as the
    /// tail goes, under its shard's lock: a reader that could have missed
    /// an event it held must not find it gone with the count unchanged.
    pub fn forget(&self, user: &UserId) {
        self.removals.bump(user);
        self.tails.remove_if(user, |_| {
            self.removals.bump(user);
            true
        });
    }

    /// A count to take before reading `user`'s mailbox from the store, for
    /// [`MailboxCache::remember_empty`].
    pub fn removals(&self, user: &UserId) -> u64 {
        self.removals.count(user)
    }

    /// Remembers that a reader found nothing after `head` in the store,
    /// unless a tail exists. A commit racing the read appends, after the
    /// store has its event, to whatever tail exists or to a new one, which
    /// is kept. If such a tail may have been dropped since the read began
    /// (the count taken then, `removals`, moved), nothing is remembered:
    /// an empty tail at `head` would hide that event for good. (Without
    /// this, every poll of a user whose tail was evicted reads the store;
    /// a large group's members are many such users.)
    pub fn remember_empty(&self, user: UserId, head: u64, removals: u64) {
        let _ = self.tails.get_or_insert_with(&user, || {
            // Checked once this reader holds the vacant slot: a tail
            // dropped before then was counted already.
            if self.removals.count(&user) != removals {
                return Err(());
            }
            Ok(Arc::new(Tail {
                known_from: head,
                events: VecDeque::new(),
            }))
        });
    }

    /// Appends a just-committed event, in place unless a reader holds the
    /// tail right now. Positions come from one clock in commit order, so an
    /// absent tail can start at this event: nothing lies between
    /// `position - 1` and it.
    pub fn append(&self, user: UserId, event: StoredEvent) {
        let mut pending = Some(event);
        let result = self.tails.entry(&user, None, |_, tail| {
            if let Some(event) = pending.take()
                && event.position > tail.head()
            {
                let tail = Arc::make_mut(tail);
                if tail.events.len() == TAIL_EVENTS
                    && let Some(dropped) = tail.events.pop_front()
                {
                    tail.known_from = dropped.position;
                }
                tail.events.push_back(event);
            }
            EntryAction::Retain(())
        });
        if let (EntryResult::Vacant(slot), Some(event)) = (result, pending) {
            let _ = slot.insert(Arc::new(Tail {
                known_from: event.position - 1,
                events: VecDeque::from([event]),
            }));
        }
    }
}

/// The newest messages of a conversation, oldest first, contiguous by seq.
#[derive(Clone, Debug)]
pub struct Page {
    pub messages: VecDeque<(Seq, Bytes)>,
}

impl Page {
    pub fn first_seq(&self) -> Seq {
        self.messages.front().map_or(0, |m| m.0)
    }

    pub fn last_seq(&self) -> Seq {
        self.messages.back().map_or(0, |m| m.0)
    }
}

impl Weigh for Page {
    fn bytes(&self) -> u64 {
        64 + self
            .messages
            .iter()
            .map(|m| m.1.len() as u64 + 40)
            .sum::<u64>()
    }
}

pub struct HistoryCache {
    pages: Cache<ConversationId, Arc<Page>, ByBytes>,
}

impl HistoryCache {
    pub fn new(bytes: u64) -> HistoryCache {
        HistoryCache {
            pages: Cache::with_weighter((bytes / 8192).max(16) as usize, bytes, ByBytes),
        }
    }

    pub fn get(&self, conv: &ConversationId) -> Option<Arc<Page>> {
        self.pages.get(conv)
    }

    /// Drops every page (the ring changed).
    pub fn clear(&self) {
        self.pages.clear();
    }

    /// Drops a page that may have fallen behind the store.
    pub fn forget(&self, conv: &ConversationId) {
        self.pages.remove(conv);
    }

    /// Stores a page read from the store, under the conversation's lock.
    pub fn fill(&self, conv: ConversationId, mut messages: VecDeque<(Seq, Bytes)>) {
        while messages.len() > PAGE_MESSAGES {
            messages.pop_front();
        }
        self.pages.insert(conv, Arc::new(Page { messages }));
    }

    /// Appends a just-committed message; a page that would get a gap is dropped.
    pub fn append(&self, conv: ConversationId, seq: Seq, json: Bytes) {
        let mut pending = Some(json);
        let result = self.pages.entry(&conv, None, |_, page| {
            if page.last_seq() + 1 != seq {
                return EntryAction::Remove;
            }
            if let Some(json) = pending.take() {
                let page = Arc::make_mut(page);
                if page.messages.len() == PAGE_MESSAGES {
                    page.messages.pop_front();
                }
                page.messages.push_back((seq, json));
            }
            EntryAction::Retain(())
        });
        if let (EntryResult::Vacant(slot), Some(json), 1) = (result, pending, seq) {
            let _ = slot.insert(Arc::new(Page {
                messages: VecDeque::from([(seq, json)]),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn ev(position: u64) -> StoredEvent {
        StoredEvent {
            position,
            json: Bytes::from_static(b"{}"),
            durable_at: None,
        }
    }

    #[test]
    fn a_tail_knows_everything_after_its_floor() {
        let c = MailboxCache::new(1 << 20);
        let u = UserId(Uuid::from_u128(1));
        c.append(u, ev(10));
        c.append(u, ev(12));
        let t = c.get(&u).unwrap();
        assert_eq!((t.known_from, t.head(), t.events.len()), (9, 12, 2));
        for p in 13..13 + TAIL_EVENTS as u64 {
            c.append(u, ev(p));
        }
        let t = c.get(&u).unwrap();
        assert_eq!(t.events.len(), TAIL_EVENTS);
        assert_eq!(t.known_from + 1, t.events[0].position);
    }

    #[test]
    fn an_empty_mailbox_remembered_by_a_reader_never_hides_a_commit() {
        let c = MailboxCache::new(1 << 20);
        let u = UserId(Uuid::from_u128(2));
        // The reader first: the commit after it lands in its tail.
        c.remember_empty(u, 7, c.removals(&u));
        c.append(u, ev(9));
        let t = c.get(&u).unwrap();
        assert_eq!((t.known_from, t.head()), (7, 9));
        // The commit first (the reader's scan missed it): its tail stays.
        let v = UserId(Uuid::from_u128(3));
        let seen = c.removals(&v);
        c.append(v, ev(20));
        c.remember_empty(v, 7, seen);
        let t = c.get(&v).unwrap();
        assert_eq!((t.known_from, t.head(), t.events.len()), (19, 20, 1));
    }

    /// Regression: a reader found nothing after 7; a commit appended 9 to
    /// a new tail; the tail was dropped; the reader then remembered the
    /// mailbox as empty after 7, and polls answered empty while 9 sat in
    /// the store, until that tail was evicted again.
    #[test]
    fn a_read_older_than_a_dropped_tail_does_not_remember_it_empty() {
        let c = MailboxCache::new(1 << 20);
        let u = UserId(Uuid::from_u128(4));
        let seen = c.removals(&u);
        c.append(u, ev(9));
        c.forget(&u);
        c.remember_empty(u, 7, seen);
        assert!(
            c.get(&u).is_none_or(|t| t.head() >= 9),
            "the tail hides position 9"
        );
        // The same, every tail dropped at a ring change.
        let v = UserId(Uuid::from_u128(6));
        let seen = c.removals(&v);
        c.append(v, ev(9));
        c.clear();
        c.remember_empty(v, 7, seen);
        assert!(c.get(&v).is_none_or(|t| t.head() >= 9));
        // A read that began after the drop remembers the mailbox as usual.
        c.remember_empty(v, 9, c.removals(&v));
        assert_eq!(c.get(&v).map(|t| t.known_from), Some(9));
    }

    /// The same, the tail evicted to make room for others.
    #[test]
    fn a_read_older_than_an_evicted_tail_does_not_remember_it_empty() {
        let c = MailboxCache::new(64 * 1024);
        let u = UserId(Uuid::from_u128(5));
        // A full cache first: a tail that came in while there was room
        // would be kept in the hot section.
        for other in 1_000..11_000u128 {
            c.append(UserId(Uuid::from_u128(other)), ev(5));
        }
        let seen = c.removals(&u);
        c.append(u, ev(9));
        let mut other = 11_000u128;
        while c.tails.peek(&u).is_some() {
            assert!(other < 111_000, "the tail was never evicted");
            c.append(UserId(Uuid::from_u128(other)), ev(5));
            other += 1;
        }
        c.remember_empty(u, 7, seen);
        assert!(
            c.get(&u).is_none_or(|t| t.head() >= 9),
            "the tail hides position 9"
        );
    }

    #[test]
    fn pages_stay_contiguous() {
        let c = HistoryCache::new(1 << 20);
        let conv = ConversationId(Uuid::from_u128(1));
        c.append(conv, 3, Bytes::new());
        assert!(
            c.get(&conv).is_none(),
            "a page never starts mid-conversation by itself"
        );
        c.append(conv, 1, Bytes::new());
        c.append(conv, 2, Bytes::new());
        assert_eq!(c.get(&conv).unwrap().last_seq(), 2);
        c.append(conv, 4, Bytes::new());
        assert!(c.get(&conv).is_none(), "a gap drops the page");
    }

    #[test]
    fn bounded_in_bytes() {
        let c = MailboxCache::new(64 * 1024);
        for i in 0..10_000u128 {
            c.append(UserId(Uuid::from_u128(i)), ev(5));
        }
        let kept = (0..10_000u128)
            .filter(|i| c.get(&UserId(Uuid::from_u128(*i))).is_some())
            .count();
        assert!(kept < 10_000 && kept > 0, "kept {kept}");
    }
}
