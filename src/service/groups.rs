//! Groups: creation, membership changes, reads. Every change to a group
//! runs under its conversation's sequencer lock, so a message's fan-out
//! always matches the membership at its seq.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::commit::Commit;
use super::conversations::{ConversationMeta, Membership, UserConversation};
use super::fanout::Item;
use super::fanout::rows::{change_pos, change_row, parse_reader_value, reader_value};
use super::locks::KeyGuard;
use super::sequencer::Head;
use super::{Error, Result, Service};
use crate::domain::{
    ConversationId, Event, GroupChange, GroupEvent, GroupId, Seq, StreamPos, UserId, now_ms,
};
use crate::store::{Mutation, Scan, Table, keys};

/// Bytes of member lists the group cache keeps.
const GROUP_CACHE_BYTES: u64 = 32 << 20;

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
struct StoredGroup {
    #[serde(flatten)]
    info: GroupInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    large_from: Option<(Seq, u32)>,
}

fn group_put(info: &GroupInfo, large_from: Option<StreamPos>) -> Result<Mutation> {
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

fn change_put(conv: ConversationId, pos: StreamPos, event: &Bytes) -> Mutation {
    Mutation::Put {
        table: Table::GroupChanges,
        row: change_row(conv, pos),
        value: event.clone(),
    }
}

fn reader_put(user: UserId, g: GroupId, after: StreamPos, until: Option<StreamPos>) -> Mutation {
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

#[derive(Clone)]
struct MembersWeight;

impl Weighter<GroupId, Arc<GroupState>> for MembersWeight {
    fn weight(&self, _: &GroupId, g: &Arc<GroupState>) -> u64 {
        128 + 16 * g.members.len() as u64
    }
}

/// Groups recently used, filled only under the group's sequencer lock.
pub struct GroupCache {
    groups: Cache<GroupId, Arc<GroupState>, MembersWeight>,
}

impl GroupCache {
    pub fn clear(&self) {
        self.groups.clear();
    }

    pub fn new() -> GroupCache {
        GroupCache {
            groups: Cache::with_weighter(1024, GROUP_CACHE_BYTES, MembersWeight),
        }
    }
}

impl Default for GroupCache {
    fn default() -> Self {
        GroupCache::new()
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
fn member_put(g: GroupId, user: UserId, at: i64) -> Mutation {
    Mutation::Put {
        table: Table::Members,
        row: keys::id_id(g.0, user.0),
        value: Bytes::copy_from_slice(&at.to_be_bytes()),
    }
}

fn group_event(g: GroupId, change: GroupChange, user_ids: Vec<UserId>, at: i64) -> Result<Bytes> {
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

impl Service {
    /// The group as the store holds it (through the cache), without filling
    /// the cache: only lock holders may fill it.
    pub(crate) async fn group_state(&self, g: GroupId) -> Result<Option<Arc<GroupState>>> {
        // Never a group (see `create_group_now`), even if an old store holds one.
        if g.is_direct_shaped() {
            return Ok(None);
        }
        if let Some(state) = self.inner.groups.groups.get(&g) {
            return Ok(Some(state));
        }
        self.load_group(g).await
    }

    /// The same, for a holder of the group's lock, filling the cache.
    async fn group_state_locked(
        &self,
        g: GroupId,
        _lock: &KeyGuard<ConversationId, Head>,
    ) -> Result<Option<Arc<GroupState>>> {
        let state = self.group_state(g).await?;
        if let Some(state) = &state {
            self.inner.groups.groups.insert(g, state.clone());
        }
        Ok(state)
    }

    async fn load_group(&self, g: GroupId) -> Result<Option<Arc<GroupState>>> {
        let Some(info) = self.get(Table::Groups, g.0.as_bytes()).await? else {
            return Ok(None);
        };
        let stored: StoredGroup = serde_json::from_slice(&info)?;
        let info = stored.info;
        let large_from = stored.large_from.map(|(seq, sub)| StreamPos { seq, sub });
        let mut last_change = large_from.unwrap_or_default();
        if large_from.is_some() {
            let newest = self
                .scan(Scan::prefix(Table::GroupChanges, g.0.as_bytes(), 1).rev())
                .await?;
            if let Some(pos) = newest.first().and_then(|(row, _)| change_pos(row)) {
                last_change = last_change.max(pos);
            }
        }
        let rows = self
            .scan(Scan::prefix(Table::Members, g.0.as_bytes(), usize::MAX))
            .await?;
        let mut members = Vec::with_capacity(rows.len());
        for (row, _) in rows {
            let user = keys::trailing_id(&row)
                .ok_or_else(|| Error::Internal("short member key".into()))?;
            members.push(UserId(user));
        }
        Ok(Some(Arc::new(GroupState {
            info,
            members: Arc::new(members),
            large_from,
            last_change,
        })))
    }

    pub async fn create_group(&self, owner: UserId, req: CreateGroup) -> Result<GroupInfo> {
        let this = self.clone();
        super::detached(async move { this.create_group_now(owner, req).await }).await
    }

    async fn create_group_now(&self, owner: UserId, req: CreateGroup) -> Result<GroupInfo> {
        let g = req.group_id.unwrap_or_else(|| GroupId(Uuid::new_v4()));
        // Direct conversations' ids are UUIDv5 of the pair, public to all: a
        // group under one would take the pair's conversation over.
        if g.is_direct_shaped() {
            return Err(Error::InvalidField(
                "group_id: a version 5 UUID is reserved for direct conversations; \
                 use a random (v4) or time-ordered (v7) UUID"
                    .into(),
            ));
        }
        let lock = self.inner.sequencer.lock(ConversationId::from(g)).await;
        if let Some(existing) = self.group_state_locked(g, &lock).await? {
            // Idempotent: the same creator and name get the same group back.
            if existing.info.owner_id == owner && existing.info.name == req.name {
                return Ok(existing.info.clone());
            }
            return Err(Error::GroupConflict);
        }
        if self
            .conversation_meta(ConversationId::from(g))
            .await?
            .is_some()
        {
            return Err(Error::GroupConflict);
        }
        let members: BTreeSet<UserId> = req.members.iter().copied().chain([owner]).collect();
        if members.len() > self.inner.settings.max_group_members {
            return Err(Error::InvalidField(format!(
                "a group has at most {} members",
                self.inner.settings.max_group_members
            )));
        }
        let members: Vec<UserId> = members.into_iter().collect();
        let now = now_ms();
        let info = GroupInfo {
            group_id: g,
            name: req.name,
            owner_id: owner,
            member_count: members.len(),
            created_at: now,
        };
        let conv = ConversationId::from(g);
        let mut commit = Commit::default();
        commit
            .writes
            .extend(ConversationMeta::Group { group_id: g }.rows(conv, now)?);
        // Large from birth: every message is read from the group's stream.
        let large_from =
            (members.len() >= self.inner.settings.large_group_threshold).then(StreamPos::default);
        commit.writes.push(group_put(&info, large_from)?);
        let entry = UserConversation {
            peer_id: None,
            group_id: Some(g),
            since: now,
            left_at_seq: None,
        };
        for m in &members {
            commit.writes.push(member_put(g, *m, now));
            commit.writes.push(entry.put(*m, conv)?);
            if let Some(from) = large_from {
                commit.writes.push(reader_put(*m, g, from, None));
            }
        }
        let event = group_event(g, GroupChange::Created, members.clone(), now)?;
        commit.appends = members.iter().map(|m| (*m, event.clone())).collect();
        if let Err(e) = self.inner.committer.commit(commit).await {
            // It may still land: read the group from the store next time.
            self.inner.groups.groups.remove(&g);
            return Err(e.into());
        }
        for m in &members {
            self.inner.streams.forget_readings(m);
        }
        self.inner.groups.groups.insert(
            g,
            Arc::new(GroupState {
                info: info.clone(),
                members: Arc::new(members),
                large_from,
                last_change: large_from.unwrap_or_default(),
            }),
        );
        Ok(info)
    }

    pub async fn change_members(
        &self,
        actor: UserId,
        g: GroupId,
        change: ChangeMembers,
    ) -> Result<GroupInfo> {
        let this = self.clone();
        super::detached(async move { this.change_members_now(actor, g, change).await }).await
    }

    async fn change_members_now(
        &self,
        actor: UserId,
        g: GroupId,
        change: ChangeMembers,
    ) -> Result<GroupInfo> {
        let add: BTreeSet<UserId> = change.add.into_iter().collect();
        let remove: BTreeSet<UserId> = change.remove.into_iter().collect();
        if add.intersection(&remove).next().is_some() {
            return Err(Error::InvalidField(
                "a user cannot be both added and removed".into(),
            ));
        }
        let conv = ConversationId::from(g);
        let mut lock = self.inner.sequencer.lock(conv).await;
        self.still_owner(conv)?;
        let group = self
            .group_state_locked(g, &lock)
            .await?
            .ok_or(Error::NotFound("group"))?;
        if group.membership(actor) != Membership::Member {
            return Err(Error::Forbidden("you are not a member of this group"));
        }
        let leaving_alone = add.is_empty() && remove.iter().all(|u| *u == actor);
        if group.info.owner_id != actor && !leaving_alone {
            return Err(Error::Forbidden(
                "only the owner changes members; a member may remove itself",
            ));
        }

        let before: BTreeSet<UserId> = group.members.iter().copied().collect();
        let removed: Vec<UserId> = remove.intersection(&before).copied().collect();
        let added: Vec<UserId> = add.difference(&before).copied().collect();
        if removed.is_empty() && added.is_empty() {
            return Ok(group.info.clone());
        }
        let after: BTreeSet<UserId> = before
            .iter()
            .filter(|u| !remove.contains(u))
            .chain(added.iter())
            .copied()
            .collect();
        if after.len() > self.inner.settings.max_group_members {
            return Err(Error::InvalidField(format!(
                "a group has at most {} members",
                self.inner.settings.max_group_members
            )));
        }

        self.load_head(conv, &mut lock).await?;
        let last_seq = lock.seq();
        let now = now_ms();
        let info = GroupInfo {
            member_count: after.len(),
            ..group.info.clone()
        };
        let mut commit = Commit::default();
        // Places in the group's stream for the changes: after message
        // `last_seq`, following any change already placed there.
        let mut last_change = group.last_change;
        let mut next_change = || {
            last_change = if last_change.seq == last_seq {
                StreamPos {
                    seq: last_seq,
                    sub: last_change.sub + 1,
                }
            } else {
                StreamPos {
                    seq: last_seq,
                    sub: 1,
                }
            };
            last_change
        };
        let left = (!removed.is_empty())
            .then(|| group_event(g, GroupChange::Left, removed.clone(), now))
            .transpose()?;
        let joined = (!added.is_empty())
            .then(|| group_event(g, GroupChange::Joined, added.clone(), now))
            .transpose()?;
        for u in &removed {
            commit.writes.push(Mutation::Delete {
                table: Table::Members,
                row: keys::id_id(g.0, u.0),
            });
            let entry = UserConversation {
                peer_id: None,
                group_id: Some(g),
                since: now,
                left_at_seq: Some(last_seq),
            };
            commit.writes.push(entry.put(*u, conv)?);
        }
        for u in &added {
            commit.writes.push(member_put(g, *u, now));
            let entry = UserConversation {
                peer_id: None,
                group_id: Some(g),
                since: now,
                left_at_seq: None,
            };
            commit.writes.push(entry.put(*u, conv)?);
        }
        let mut large_from = group.large_from;
        let mut stream_items = Vec::new();
        if let Some(from) = large_from {
            // Fan-out on read: each change is stored once, in the stream,
            // which the removed read up to their removal. Those added get
            // it in their mailbox instead: that tells their node to start
            // reading the stream, after the change.
            if let Some(event) = left {
                let pos = next_change();
                commit.writes.push(change_put(conv, pos, &event));
                for u in &removed {
                    let after = self
                        .get(Table::GroupReaders, &keys::id_id(u.0, g.0))
                        .await?
                        .and_then(|v| parse_reader_value(&v))
                        .map_or(from, |(after, _)| after);
                    commit.writes.push(reader_put(*u, g, after, Some(pos)));
                }
                stream_items.push(Item { pos, event });
            }
            if let Some(event) = joined {
                let pos = next_change();
                commit.writes.push(change_put(conv, pos, &event));
                for u in &added {
                    commit.writes.push(reader_put(*u, g, pos, None));
                    commit.appends.push((*u, event.clone()));
                }
                stream_items.push(Item { pos, event });
            }
        } else {
            if let Some(event) = left {
                // The removed hear of it too; nothing after.
                commit
                    .appends
                    .extend(before.iter().map(|m| (*m, event.clone())));
            }
            if let Some(event) = joined {
                commit
                    .appends
                    .extend(after.iter().map(|m| (*m, event.clone())));
            }
            if after.len() >= self.inner.settings.large_group_threshold {
                // Large from here on: this change still reached every
                // mailbox; what follows it is read from the stream.
                let from = next_change();
                large_from = Some(from);
                for m in &after {
                    commit.writes.push(reader_put(*m, g, from, None));
                }
                tracing::info!(group = %g, members = after.len(), "the group fans out on read from now on");
            }
        }
        commit.writes.push(group_put(&info, large_from)?);
        if let Err(e) = self.inner.committer.commit(commit).await {
            // It may still land: read the group from the store next time.
            self.inner.groups.groups.remove(&g);
            return Err(e.into());
        }
        let last_change = if large_from.is_some() {
            last_change
        } else {
            group.last_change
        };
        self.inner.groups.groups.insert(
            g,
            Arc::new(GroupState {
                info: info.clone(),
                members: Arc::new(after.iter().copied().collect()),
                large_from,
                last_change,
            }),
        );
        for u in removed.iter().chain(&added) {
            self.inner.streams.forget_readings(u);
        }
        if group.large_from.is_none() && large_from.is_some() {
            for m in &after {
                self.inner.streams.forget_readings(m);
            }
        }
        for item in stream_items {
            self.stream_moved(conv, item).await;
        }
        drop(lock);
        Ok(info)
    }

    /// The group, for one of its members.
    pub async fn group(&self, user: UserId, g: GroupId) -> Result<GroupInfo> {
        let group = self.group_state(g).await?.ok_or(Error::NotFound("group"))?;
        if group.membership(user) != Membership::Member {
            return Err(Error::Forbidden("you are not a member of this group"));
        }
        Ok(group.info.clone())
    }

    /// A page of members in user-id order, after `after`; and the cursor
    /// for the next page.
    pub async fn group_members_page(
        &self,
        user: UserId,
        g: GroupId,
        limit: usize,
        after: Option<UserId>,
    ) -> Result<(Vec<(UserId, i64)>, Option<UserId>)> {
        self.group(user, g).await?;
        let mut scan = Scan::prefix(Table::Members, g.0.as_bytes(), limit + 1);
        if let Some(after) = after {
            scan.start = std::ops::Bound::Excluded(keys::id_id(g.0, after.0));
        }
        let rows = self.scan(scan).await?;
        let mut page = Vec::with_capacity(rows.len());
        for (row, value) in rows {
            let user = keys::trailing_id(&row)
                .ok_or_else(|| Error::Internal("short member key".into()))?;
            let at: [u8; 8] = value
                .as_ref()
                .try_into()
                .map_err(|_| Error::Internal("malformed member row".into()))?;
            page.push((UserId(user), i64::from_be_bytes(at)));
        }
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|m| m.0)
        } else {
            None
        };
        Ok((page, next))
    }
}
