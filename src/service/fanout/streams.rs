//! Each node's tails of the streams its pollers read, and its cache of who
//! reads which stream; reading a stream from them or from the store.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use super::rows::{change_pos, change_row, parse_reader_value};
use super::tail::{Item, Reading, TAIL_ITEMS, Tail, departures, follows};
use super::watch::{Watch, tell_peers};
use crate::domain::{ConversationId, StreamPos, UserId, message_event};
use crate::service::{Error, Result, Service};
use crate::store::{Scan, Table, keys};

/// Items one store read brings.
const FETCH: usize = 1024;
/// How old another node's tail may be before a reader looks again: the
/// bound on delivery delay when a wake from the owner is lost.
pub const STALE: Duration = Duration::from_secs(1);
/// How long a user's reader rows are trusted. A change about the user
/// reaches its mailbox, and reading it there drops them at once; this only
/// bounds what a lost drop could cost.
const READERS_TTL: Duration = Duration::from_secs(300);
/// Streams and users whose state a node keeps.
const STREAMS: usize = 4096;
const READERS: usize = 1 << 17;

/// A user's reader rows, as loaded.
struct Readings {
    loaded: Instant,
    list: Arc<Vec<Reading>>,
}

/// The node's tails and cached reader rows, and on a ring who wants to
/// hear of which stream.
pub struct Streams {
    streams: Cache<ConversationId, Arc<Stream>>,
    readers: Cache<UserId, Arc<Readings>>,
    /// Who wants to hear of which stream, on a ring.
    pub(super) watch: Watch,
}

/// A stream's tail on this node.
struct Stream {
    tail: RwLock<Option<Arc<Tail>>>,
    /// One load or refresh at a time; owners' updates take it too.
    refresh: tokio::sync::Mutex<()>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            streams: Cache::new(STREAMS),
            readers: Cache::new(READERS),
            watch: Watch::default(),
        }
    }
}

impl Streams {
    /// Forgets everything (the ring changed: owners may have moved).
    pub fn clear(&self) {
        self.streams.clear();
        self.readers.clear();
        self.watch.clear();
    }

    pub fn forget_readings(&self, user: &UserId) {
        self.readers.remove(user);
    }

    fn stream(&self, g: ConversationId) -> Arc<Stream> {
        self.streams
            .get_or_insert_with(&g, || {
                Ok::<_, std::convert::Infallible>(Arc::new(Stream {
                    tail: RwLock::new(None),
                    refresh: tokio::sync::Mutex::new(()),
                }))
            })
            .unwrap_or_else(|never: std::convert::Infallible| match never {})
    }
}

impl Service {
    /// The large groups `user` reads (cached).
    pub(crate) async fn readings(&self, user: UserId) -> Result<Arc<Vec<Reading>>> {
        let streams = &self.inner.streams;
        if let Some(r) = streams.readers.get(&user)
            && r.loaded.elapsed() < READERS_TTL
        {
            return Ok(r.list.clone());
        }
        let rows = self
            .scan(Scan::prefix(
                Table::GroupReaders,
                user.0.as_bytes(),
                usize::MAX,
            ))
            .await?;
        let mut list = Vec::with_capacity(rows.len());
        for (row, value) in rows {
            let group = keys::trailing_id(&row)
                .ok_or_else(|| Error::Internal("short reader key".into()))?;
            let (after, until) = parse_reader_value(&value)
                .ok_or_else(|| Error::Internal("malformed reader row".into()))?;
            list.push(Reading {
                group: ConversationId(group),
                after,
                until,
            });
        }
        let list = Arc::new(list);
        streams.readers.insert(
            user,
            Arc::new(Readings {
                loaded: Instant::now(),
                list: list.clone(),
            }),
        );
        Ok(list)
    }

    /// The stream's tail, at least through `through` when given. The
    /// owner's tail is kept current as it commits; another node's is looked
    /// at again once older than [`STALE`].
    pub(crate) async fn stream_tail(
        &self,
        g: ConversationId,
        through: Option<StreamPos>,
    ) -> Result<Arc<Tail>> {
        let stream = self.inner.streams.stream(g);
        let owner = self.inner.cluster.serves(g.0.as_bytes());
        let usable = |t: &Tail| {
            through.is_none_or(|p| t.head >= p) && (owner || t.fetched.elapsed() < STALE)
        };
        let current = read_tail(&stream);
        if let Some(t) = &current
            && usable(t)
        {
            return Ok(t.clone());
        }
        let _one = stream.refresh.lock().await;
        let current = read_tail(&stream);
        if let Some(t) = &current
            && usable(t)
        {
            return Ok(t.clone());
        }
        let tail = match current {
            Some(t) => Arc::new(self.refreshed(g, &t).await?),
            None => Arc::new(self.load_tail(g).await?),
        };
        *stream.tail.write().unwrap_or_else(|e| e.into_inner()) = Some(tail.clone());
        Ok(tail)
    }

    async fn load_tail(&self, g: ConversationId) -> Result<Tail> {
        let newest = self
            .scan(Scan::prefix(Table::Messages, g.0.as_bytes(), 1).rev())
            .await?
            .first()
            .and_then(|(row, _)| keys::trailing_u64(row))
            .unwrap_or(0);
        let back = (TAIL_ITEMS / 2) as u64;
        let from = if newest <= back {
            StreamPos::default()
        } else {
            StreamPos::end_of(newest - back)
        };
        let mut departed = HashMap::new();
        for (row, event) in self
            .scan(Scan::prefix(
                Table::GroupChanges,
                g.0.as_bytes(),
                usize::MAX,
            ))
            .await?
        {
            if let (Some(pos), Some(left)) = (change_pos(&row), departures(&event)) {
                for user in left {
                    departed.insert(user, pos);
                }
            }
        }
        let empty = Tail {
            from,
            head: from,
            items: Vec::new(),
            departed: Arc::new(departed),
            fetched: Instant::now(),
        };
        self.refreshed(g, &empty).await
    }

    /// `tail` with what the store holds after its head.
    async fn refreshed(&self, g: ConversationId, tail: &Tail) -> Result<Tail> {
        let (items, head) = self.fetch(g, tail.head, FETCH).await?;
        let mut full = items.len() == FETCH;
        let mut tail = tail.extended(items, head);
        while full {
            let (items, head) = self.fetch(g, tail.head, FETCH).await?;
            full = items.len() == FETCH;
            tail = tail.extended(items, head);
        }
        Ok(tail)
    }

    /// Up to `limit` items after `after` from the store, and the place
    /// through which the answer is complete.
    ///
    /// Messages are read before changes: a change after message `s` is
    /// committed before message `s + 1` is sequenced, so every change up to
    /// the newest message read is visible to the second scan. Rows of one
    /// batch become readable one at a time, so messages count only up to
    /// the first missing seq.
    async fn fetch(
        &self,
        g: ConversationId,
        after: StreamPos,
        limit: usize,
    ) -> Result<(Vec<Item>, StreamPos)> {
        let mut messages = Scan::prefix(Table::Messages, g.0.as_bytes(), limit);
        messages.start = Bound::Included(keys::id_u64(g.0, after.seq + 1));
        let messages = self.scan(messages).await?;
        let mut changes = Scan::prefix(Table::GroupChanges, g.0.as_bytes(), limit);
        changes.start = Bound::Excluded(change_row(g, after));
        let changes = self.scan(changes).await?;

        let mut items = Vec::with_capacity(messages.len() + changes.len());
        let mut newest = after.seq;
        for (row, json) in &messages {
            match keys::trailing_u64(row) {
                Some(seq) if seq == newest + 1 => {
                    newest = seq;
                    items.push(Item {
                        pos: StreamPos { seq, sub: 0 },
                        event: message_event(json),
                    });
                }
                _ => break,
            }
        }
        let mut cut = after.max(StreamPos {
            seq: newest,
            sub: 0,
        });
        let changes_full = changes.len() == limit;
        let mut last_change = None;
        for (row, event) in changes {
            let pos = change_pos(&row).ok_or_else(|| Error::Internal("short change key".into()))?;
            last_change = Some(pos);
            if pos.seq <= newest {
                cut = cut.max(pos);
                items.push(Item { pos, event });
            }
        }
        if changes_full && let Some(last) = last_change {
            cut = cut.min(last);
        }
        items.retain(|i| i.pos <= cut);
        items.sort_by_key(|i| i.pos);
        if items.len() > limit {
            items.truncate(limit);
            cut = items.last().map_or(cut, |i| i.pos);
        }
        Ok((items, cut))
    }

    /// Items of stream `g` after `after`, at most `limit`, and the tail
    /// (for its head and departures).
    pub(crate) async fn stream_after(
        &self,
        g: ConversationId,
        after: StreamPos,
        limit: usize,
    ) -> Result<(Vec<Item>, Arc<Tail>)> {
        let tail = self.stream_tail(g, None).await?;
        if let Some(items) = tail.after(after, limit) {
            return Ok((items, tail));
        }
        let (items, _) = self.fetch(g, after, limit).await?;
        Ok((items, tail))
    }

    /// After this node committed `item` to the stream of `g` (under its
    /// sequencer lock): updates the tail, wakes local pollers, and tells
    /// the other nodes.
    pub(crate) async fn stream_moved(&self, g: ConversationId, item: Item) {
        let pos = item.pos;
        let stream = self.inner.streams.stream(g);
        {
            let _one = stream.refresh.lock().await;
            let current = read_tail(&stream);
            let next = match current {
                Some(t) if t.head >= pos => Some(t),
                Some(t) if follows(t.head, pos) => Some(Arc::new(t.extended(vec![item], pos))),
                // Not loaded, or it missed something: the next reader loads it.
                _ => None,
            };
            *stream.tail.write().unwrap_or_else(|e| e.into_inner()) = next;
        }
        self.inner.stream_waiters.wake(&g);
        if self.inner.cluster.is_multi_node() {
            let watchers = self.inner.streams.watch.watchers_of(g);
            if !watchers.is_empty() {
                tell_peers(self.inner.cluster.clone(), &watchers, g, pos);
            }
        }
    }
}

fn read_tail(stream: &Stream) -> Option<Arc<Tail>> {
    stream
        .tail
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}
