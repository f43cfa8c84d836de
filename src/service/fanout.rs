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

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use quick_cache::sync::Cache;

use super::{Error, Result, Service};
use crate::cluster::Cluster;
use crate::domain::{ConversationId, StreamPos, UserId, message_event};
use crate::store::{Scan, Table, keys};

/// Items a tail keeps; a poller further behind reads the store.
const TAIL_ITEMS: usize = 256;
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

/// One item of a stream: a message, or a membership change.
#[derive(Clone, Debug)]
pub struct Item {
    pub pos: StreamPos,
    pub event: Bytes,
}

/// The newest items of a stream, after `from` through `head`, and every
/// departure recorded in it.
#[derive(Debug)]
pub struct Tail {
    from: StreamPos,
    pub head: StreamPos,
    items: Vec<Item>,
    departed: Arc<HashMap<UserId, StreamPos>>,
    fetched: Instant,
}

impl Tail {
    /// Items after `after`, at most `limit`; `None` when the tail does not
    /// reach back that far.
    fn after(&self, after: StreamPos, limit: usize) -> Option<Vec<Item>> {
        if after < self.from {
            return None;
        }
        let start = self.items.partition_point(|i| i.pos <= after);
        Some(self.items[start..].iter().take(limit).cloned().collect())
    }

    /// A tail with `items` (in order, after `self.head`) added.
    fn extended(&self, items: Vec<Item>, head: StreamPos) -> Tail {
        let mut departed = self.departed.clone();
        for item in &items {
            if let Some(left) = departures(&item.event) {
                let map = Arc::make_mut(&mut departed);
                for user in left {
                    map.insert(user, item.pos);
                }
            }
        }
        let mut all: Vec<Item> = self.items.iter().cloned().chain(items).collect();
        let mut from = self.from;
        if all.len() > TAIL_ITEMS {
            let cut = all.len() - TAIL_ITEMS;
            from = all[cut - 1].pos;
            all.drain(..cut);
        }
        Tail {
            from,
            head,
            items: all,
            departed,
            fetched: Instant::now(),
        }
    }
}

/// The users a change item removed, if it is a `left` change.
fn departures(event: &[u8]) -> Option<Vec<UserId>> {
    if !is_group_event(event) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(event).ok()?;
    let group = &value["group"];
    if group["change"] != "left" {
        return None;
    }
    let users = group["user_ids"].as_array()?;
    Some(
        users
            .iter()
            .filter_map(|u| u.as_str()?.parse().ok())
            .collect(),
    )
}

/// Whether a mailbox event is a group change (which may start or end the
/// user's reading of a large group).
pub fn is_group_event(event: &[u8]) -> bool {
    event.starts_with(br#"{"type":"group""#)
}

struct Stream {
    tail: RwLock<Option<Arc<Tail>>>,
    /// One load or refresh at a time; owners' updates take it too.
    refresh: tokio::sync::Mutex<()>,
}

/// What a user reads of one large group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    pub group: ConversationId,
    /// Items after this one.
    pub after: StreamPos,
    /// Items through this one (the change that removed the user).
    pub until: Option<StreamPos>,
}

impl Reading {
    /// Whether the user receives the item at `pos` of this stream, given
    /// the departures the stream recorded.
    pub fn receives(&self, pos: StreamPos, tail: &Tail, user: UserId) -> bool {
        let until = match (self.until, tail.departed.get(&user)) {
            // A departure after this stint began ends it, even when this
            // node's copy of the user's rows is older than the departure.
            (until, Some(d)) if *d > self.after => Some(until.map_or(*d, |u| u.min(*d))),
            (until, _) => until,
        };
        pos > self.after && until.is_none_or(|u| pos <= u)
    }
}

struct Readings {
    loaded: Instant,
    list: Arc<Vec<Reading>>,
}

/// The node's tails and cached reader rows, and on a ring who wants to
/// hear of which stream.
pub struct Streams {
    streams: Cache<ConversationId, Arc<Stream>>,
    readers: Cache<UserId, Arc<Readings>>,
    /// As a group's owner: the nodes with polls parked on its stream, and
    /// until when they asked to be told.
    watchers: DashMap<ConversationId, Vec<(usize, Instant)>>,
    /// As another node: when this node last asked each owner to tell it.
    watching: DashMap<ConversationId, Instant>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            streams: Cache::new(STREAMS),
            readers: Cache::new(READERS),
            watchers: DashMap::new(),
            watching: DashMap::new(),
        }
    }
}

impl Streams {
    /// Forgets everything (the ring changed: owners may have moved).
    pub fn clear(&self) {
        self.streams.clear();
        self.readers.clear();
        self.watchers.clear();
        self.watching.clear();
    }

    /// Node `node` has polls parked on stream `g` (this node owns it).
    pub fn watched_by(&self, g: ConversationId, node: usize) {
        let until = Instant::now() + WATCH_FOR;
        let mut entry = self.watchers.entry(g).or_default();
        entry.retain(|(n, until)| *n != node && *until > Instant::now());
        entry.push((node, until));
    }

    /// The nodes to tell that stream `g` moved.
    fn watchers_of(&self, g: ConversationId) -> Vec<usize> {
        let now = Instant::now();
        self.watchers
            .get(&g)
            .map(|w| {
                w.iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether this node should ask the owner of `g` (again) to tell it.
    fn should_watch(&self, g: ConversationId) -> bool {
        let now = Instant::now();
        let mut due = false;
        self.watching
            .entry(g)
            .and_modify(|last| {
                if now.duration_since(*last) >= REWATCH {
                    *last = now;
                    due = true;
                }
            })
            .or_insert_with(|| {
                due = true;
                now
            });
        due
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

/// The key of a change row.
pub fn change_row(g: ConversationId, pos: StreamPos) -> Vec<u8> {
    let mut row = keys::id_u64(g.0, pos.seq);
    row.extend_from_slice(&pos.sub.to_be_bytes());
    row
}

/// The place a change row's key names.
pub fn change_pos(row: &[u8]) -> Option<StreamPos> {
    read_pos(row.get(16..)?)
}

fn put_pos(out: &mut Vec<u8>, pos: StreamPos) {
    out.extend_from_slice(&pos.seq.to_be_bytes());
    out.extend_from_slice(&pos.sub.to_be_bytes());
}

fn read_pos(b: &[u8]) -> Option<StreamPos> {
    Some(StreamPos {
        seq: u64::from_be_bytes(b.get(..8)?.try_into().ok()?),
        sub: u32::from_be_bytes(b.get(8..12)?.try_into().ok()?),
    })
}

/// A reader row's value: `after`, then `until` once the user left.
pub fn reader_value(after: StreamPos, until: Option<StreamPos>) -> Bytes {
    let mut out = Vec::with_capacity(24);
    put_pos(&mut out, after);
    if let Some(until) = until {
        put_pos(&mut out, until);
    }
    Bytes::from(out)
}

pub fn parse_reader_value(b: &[u8]) -> Option<(StreamPos, Option<StreamPos>)> {
    let after = read_pos(b)?;
    let until = match b.len() {
        12 => None,
        24 => Some(read_pos(&b[12..])?),
        _ => return None,
    };
    Some((after, until))
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
            let watchers = self.inner.streams.watchers_of(g);
            if !watchers.is_empty() {
                tell_peers(self.inner.cluster.clone(), &watchers, g, pos);
            }
        }
    }

    /// A poll parked here on stream `g`: on a ring, makes sure the group's
    /// owner will tell this node when the stream moves.
    pub(crate) fn watch_stream(&self, g: ConversationId) {
        let cluster = &self.inner.cluster;
        if !cluster.is_multi_node() || !self.inner.streams.should_watch(g) {
            return;
        }
        let crate::cluster::Route::Remote(owner) = cluster.route(g.0.as_bytes()) else {
            return;
        };
        let addr = owner.addr;
        let mut body = g.0.as_bytes().to_vec();
        body.extend_from_slice(&cluster.me().node_key);
        let body = Bytes::from(body);
        let cluster = cluster.clone();
        tokio::spawn(async move {
            if let Err(e) = cluster.watch(addr, body, WAKE_TIMEOUT).await {
                tracing::debug!(%addr, error = %e, "asking to be told of a stream failed");
            }
        });
    }

    /// A peer asks to be told when stream `g` moves (body: `g(16) || its
    /// node key(8)`).
    pub fn stream_watched(&self, body: &[u8]) -> Result<()> {
        let (g, key) = body
            .split_first_chunk::<16>()
            .filter(|(_, key)| key.len() == 8)
            .ok_or_else(|| Error::InvalidField("malformed watch body".into()))?;
        let node = self
            .inner
            .cluster
            .peers()
            .iter()
            .position(|p| p.node_key.as_slice() == key)
            .ok_or_else(|| Error::InvalidField("no such node".into()))?;
        self.inner
            .streams
            .watched_by(ConversationId(uuid::Uuid::from_bytes(*g)), node);
        Ok(())
    }

    /// A peer says stream `g` reached `pos`: refreshes the tail if pollers
    /// here wait on it, and wakes them.
    pub async fn stream_woken(&self, g: ConversationId, pos: StreamPos) -> Result<()> {
        if !self.inner.stream_waiters.has(&g) {
            return Ok(());
        }
        self.stream_tail(g, Some(pos)).await?;
        self.inner.stream_waiters.wake(&g);
        Ok(())
    }
}

/// How long an owner tells a node that asked; it asks again every REWATCH
/// while it has polls parked on the stream.
const WATCH_FOR: Duration = Duration::from_secs(60);
const REWATCH: Duration = Duration::from_secs(20);
/// A wake is a hint (readers look again after [`STALE`] anyway): short.
const WAKE_TIMEOUT: Duration = Duration::from_millis(500);

/// A wake body: the conversation (16 bytes), then seq (8) and sub (4).
pub fn wake_body(g: ConversationId, pos: StreamPos) -> Bytes {
    let mut body = Vec::with_capacity(28);
    body.extend_from_slice(g.0.as_bytes());
    put_pos(&mut body, pos);
    Bytes::from(body)
}

pub fn parse_wake(body: &[u8]) -> Option<(ConversationId, StreamPos)> {
    if body.len() != 28 {
        return None;
    }
    let g = uuid::Uuid::from_slice(&body[..16]).ok()?;
    Some((ConversationId(g), read_pos(&body[16..])?))
}

/// Tells the live nodes among `watchers`, without waiting, that stream `g`
/// reached `pos`.
fn tell_peers(cluster: Arc<Cluster>, watchers: &[usize], g: ConversationId, pos: StreamPos) {
    let body = wake_body(g, pos);
    let newest = cluster.newest();
    for (i, peer) in cluster.peers().iter().enumerate() {
        if i == cluster.me_index() || !newest.live[i] || !watchers.contains(&i) {
            continue;
        }
        let (cluster, body, addr) = (cluster.clone(), body.clone(), peer.addr);
        tokio::spawn(async move {
            if let Err(e) = cluster.wake(addr, body, WAKE_TIMEOUT).await {
                tracing::debug!(%addr, error = %e, "a stream wake was not taken");
            }
        });
    }
}

fn read_tail(stream: &Stream) -> Option<Arc<Tail>> {
    stream
        .tail
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// Whether `pos` comes right after `head` in a stream.
fn follows(head: StreamPos, pos: StreamPos) -> bool {
    if pos.sub == 0 {
        pos.seq == head.seq + 1
    } else {
        head == StreamPos {
            seq: pos.seq,
            sub: pos.sub - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: u64, sub: u32) -> StreamPos {
        StreamPos { seq, sub }
    }

    #[test]
    fn positions_follow_messages_then_their_changes() {
        assert!(follows(pos(3, 0), pos(4, 0)));
        assert!(follows(pos(3, 2), pos(4, 0)));
        assert!(follows(pos(3, 0), pos(3, 1)));
        assert!(follows(pos(3, 1), pos(3, 2)));
        assert!(!follows(pos(3, 0), pos(5, 0)));
        assert!(!follows(pos(3, 0), pos(3, 2)));
    }

    #[test]
    fn an_owner_tells_each_node_that_asked_once() {
        let streams = Streams::default();
        let (g, other) = (
            ConversationId(uuid::Uuid::from_u128(1)),
            ConversationId(uuid::Uuid::from_u128(2)),
        );
        assert!(streams.watchers_of(g).is_empty(), "nobody asked");
        streams.watched_by(g, 2);
        streams.watched_by(g, 2);
        streams.watched_by(g, 0);
        let mut told = streams.watchers_of(g);
        told.sort();
        assert_eq!(told, [0, 2]);
        assert!(streams.watchers_of(other).is_empty());
        // A node asks once, then not again for REWATCH.
        assert!(streams.should_watch(g));
        assert!(!streams.should_watch(g));
        streams.clear();
        assert!(streams.watchers_of(g).is_empty());
        assert!(
            streams.should_watch(g),
            "after a ring change it asks at once"
        );
    }

    #[test]
    fn reader_rows_round_trip() {
        let v = reader_value(pos(7, 1), None);
        assert_eq!(parse_reader_value(&v), Some((pos(7, 1), None)));
        let v = reader_value(pos(7, 1), Some(pos(9, 2)));
        assert_eq!(parse_reader_value(&v), Some((pos(7, 1), Some(pos(9, 2)))));
        assert_eq!(parse_reader_value(b"short"), None);
    }

    #[test]
    fn a_recorded_departure_ends_reading_even_with_stale_rows() {
        let user = UserId(uuid::Uuid::from_u128(5));
        let mut departed = HashMap::new();
        departed.insert(user, pos(10, 1));
        let tail = Tail {
            from: StreamPos::default(),
            head: pos(12, 0),
            items: Vec::new(),
            departed: Arc::new(departed),
            fetched: Instant::now(),
        };
        let stale = Reading {
            group: ConversationId(uuid::Uuid::from_u128(1)),
            after: pos(2, 1),
            until: None,
        };
        assert!(
            !stale.receives(pos(2, 1), &tail, user),
            "after is exclusive"
        );
        assert!(stale.receives(pos(10, 0), &tail, user));
        assert!(
            stale.receives(pos(10, 1), &tail, user),
            "its own removal, last"
        );
        assert!(!stale.receives(pos(11, 0), &tail, user));
        // Back in the group after that departure: reads again.
        let rejoined = Reading {
            after: pos(11, 1),
            ..stale
        };
        assert!(rejoined.receives(pos(12, 0), &tail, user));
    }
}
