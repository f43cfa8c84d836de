//! A stream's newest items as a node keeps them, and who receives which.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::domain::{ConversationId, StreamPos, UserId};

/// Items a tail keeps; a poller further behind reads the store.
pub(super) const TAIL_ITEMS: usize = 256;

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
    pub(super) from: StreamPos,
    pub head: StreamPos,
    pub(super) items: Vec<Item>,
    pub(super) departed: Arc<HashMap<UserId, StreamPos>>,
    pub(super) fetched: Instant,
}

impl Tail {
    /// Items after `after`, at most `limit`; `None` when the tail does not
    /// reach back that far.
    pub(super) fn after(&self, after: StreamPos, limit: usize) -> Option<Vec<Item>> {
        if after < self.from {
            return None;
        }
        let start = self.items.partition_point(|i| i.pos <= after);
        Some(self.items[start..].iter().take(limit).cloned().collect())
    }

    /// A tail with `items` (in order, after `self.head`) added.
    pub(super) fn extended(&self, items: Vec<Item>, head: StreamPos) -> Tail {
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
pub(super) fn departures(event: &[u8]) -> Option<Vec<UserId>> {
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

/// Whether `pos` comes right after `head` in a stream.
pub(super) fn follows(head: StreamPos, pos: StreamPos) -> bool {
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
