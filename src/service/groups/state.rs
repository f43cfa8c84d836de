//! A group as the store holds it and fan-out needs it, and the rows a
//! group change writes.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::{
    ConversationId, Event, GroupChange, GroupEvent, GroupId, Seq, StreamPos, UserId,
};
use crate::service::Result;
use crate::service::cache::Weigh;
use crate::service::conversations::{Membership, UserConversation};
use crate::service::fanout::rows::{change_row, reader_value};
use crate::store::{Mutation, Table, keys};

/// The row of `groups_by_id`, and the group object of the API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub group_id: GroupId,
    pub name: String,
    pub owner_id: UserId,
    pub member_count: usize,
    pub created_at: i64,
}

/// A group with its members (sorted), as fan-out needs it.
#[derive(Debug)]
pub struct GroupState {
    pub info: GroupInfo,
    pub members: Arc<Vec<UserId>>,
    /// For a large group (fanned out on read): where its stream begins.
    pub large_from: Option<StreamPos>,
    /// The newest membership change placed in its stream (or where the
    /// stream begins): the next change after the same message follows it.
    pub last_change: StreamPos,
}

/// The row of `groups_by_id`: the group object and, for a large group,
/// where its stream begins (kept out of the API's object).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredGroup {
    #[serde(flatten)]
    pub(super) info: GroupInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) large_from: Option<(Seq, u32)>,
}

pub(super) fn group_put(info: &GroupInfo, large_from: Option<StreamPos>) -> Result<Mutation> {
    let stored = StoredGroup {
        info: info.clone(),
        large_from: large_from.map(|p| (p.seq, p.sub)),
    };
    Ok(Mutation::Put {
        table: Table::Groups,
        row: info.group_id.0.as_bytes().to_vec(),
        value: Bytes::from(serde_json::to_vec(&stored)?),
    })
}

pub(super) fn change_put(conv: ConversationId, pos: StreamPos, event: &Bytes) -> Mutation {
    Mutation::Put {
        table: Table::GroupChanges,
        row: change_row(conv, pos),
        value: event.clone(),
    }
}

pub(super) fn reader_put(
    user: UserId,
    g: GroupId,
    after: StreamPos,
    until: Option<StreamPos>,
) -> Mutation {
    Mutation::Put {
        table: Table::GroupReaders,
        row: keys::id_id(user.0, g.0),
        value: reader_value(after, until),
    }
}

impl GroupState {
    pub fn membership(&self, user: UserId) -> Membership {
        if self.members.binary_search(&user).is_ok() {
            Membership::Member
        } else {
            Membership::NotMember
        }
    }
}

impl Weigh for GroupState {
    fn bytes(&self) -> u64 {
        128 + 16 * self.members.len() as u64
    }
}

pub struct CreateGroup {
    pub group_id: Option<GroupId>,
    pub name: String,
    pub members: Vec<UserId>,
}

pub struct ChangeMembers {
    pub add: Vec<UserId>,
    pub remove: Vec<UserId>,
}

/// One member row: `joined_at` (ms) as 8 big-endian bytes.
pub(super) fn member_put(g: GroupId, user: UserId, at: i64) -> Mutation {
    Mutation::Put {
        table: Table::Members,
        row: keys::id_id(g.0, user.0),
        value: Bytes::copy_from_slice(&at.to_be_bytes()),
    }
}

pub(super) fn group_event(
    g: GroupId,
    change: GroupChange,
    user_ids: Vec<UserId>,
    at: i64,
) -> Result<Bytes> {
    let event = Event::Group {
        group: GroupEvent {
            group_id: g,
            change,
            user_ids,
            at,
        },
    };
    Ok(Bytes::from(serde_json::to_vec(&event)?))
}

/// A member's entry in its conversation list for group `g`.
pub(super) fn membership_entry(g: GroupId, now: i64, left_at_seq: Option<Seq>) -> UserConversation {
    UserConversation {
        peer_id: None,
        group_id: Some(g),
        since: now,
        left_at_seq,
    }
}
