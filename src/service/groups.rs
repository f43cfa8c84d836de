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

/// Who a membership change removes and adds, checked against the group
/// and the rules; `None` when it changes nothing.
#[derive(Debug, PartialEq)]
struct Delta {
    removed: Vec<UserId>,
    added: Vec<UserId>,
    before: BTreeSet<UserId>,
    after: BTreeSet<UserId>,
}

impl Delta {
    fn new(
        group: &GroupState,
        actor: UserId,
        change: ChangeMembers,
        max_members: usize,
    ) -> Result<Option<Delta>> {
        let add: BTreeSet<UserId> = change.add.into_iter().collect();
        let remove: BTreeSet<UserId> = change.remove.into_iter().collect();
        if add.intersection(&remove).next().is_some() {
            return Err(Error::InvalidField(
                "a user cannot be both added and removed".into(),
            ));
        }
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
            return Ok(None);
        }
        let after: BTreeSet<UserId> = before
            .iter()
            .filter(|u| !remove.contains(u))
            .chain(added.iter())
            .copied()
            .collect();
        if after.len() > max_members {
            return Err(Error::InvalidField(format!(
                "a group has at most {max_members} members"
            )));
        }
        Ok(Some(Delta {
            removed,
            added,
            before,
            after,
        }))
    }
}

/// Where a membership change goes, decided without I/O once the group's
/// newest seq is known.
///
/// In a large group (fan-out on read) each change is stored once, in the
/// stream, which the removed read up to their removal; those added get it
/// in their mailbox instead: that tells their node to start reading the
/// stream, after the change. In a small group every member's mailbox gets
/// it (the removed too; nothing after), and a group that grows past the
/// threshold is large from the place after this change on.
#[derive(Debug, PartialEq)]
struct MemberPlan {
    delta: Delta,
    info: GroupInfo,
    /// Where the stream begins after the change (`None`: still small).
    large_from: Option<StreamPos>,
    /// The stream places of the `left` and `joined` changes (large groups).
    left_at: Option<StreamPos>,
    joined_at: Option<StreamPos>,
    /// The newest change placed in the stream, after this one.
    last_change: StreamPos,
    /// The group's newest message when the change is made.
    last_seq: Seq,
}

impl MemberPlan {
    fn new(group: &GroupState, delta: Delta, last_seq: Seq, threshold: usize) -> MemberPlan {
        // Places in the group's stream: after message `last_seq`,
        // following any change already placed there.
        let mut last_change = group.last_change;
        let mut next_change = || {
            last_change = StreamPos {
                seq: last_seq,
                sub: if last_change.seq == last_seq {
                    last_change.sub + 1
                } else {
                    1
                },
            };
            last_change
        };
        let (mut left_at, mut joined_at, mut large_from) = (None, None, group.large_from);
        if large_from.is_some() {
            left_at = (!delta.removed.is_empty()).then(&mut next_change);
            joined_at = (!delta.added.is_empty()).then(&mut next_change);
        } else if delta.after.len() >= threshold {
            large_from = Some(next_change());
        }
        let last_change = if large_from.is_some() {
            last_change
        } else {
            group.last_change
        };
        MemberPlan {
            info: GroupInfo {
                member_count: delta.after.len(),
                ..group.info.clone()
            },
            delta,
            large_from,
            left_at,
            joined_at,
            last_change,
            last_seq,
        }
    }

    /// The commit carrying the plan out, and the items it adds to the
    /// group's stream. `reading_from`: where each removed member of a large
    /// group began reading, in `delta.removed` order.
    fn commit(
        &self,
        group: &GroupState,
        now: i64,
        reading_from: &[StreamPos],
    ) -> Result<(Commit, Vec<Item>)> {
        let (g, d) = (self.info.group_id, &self.delta);
        let conv = ConversationId::from(g);
        let last_seq = self.last_seq;
        let mut commit = Commit::default();
        let mut items = Vec::new();
        let left = (!d.removed.is_empty())
            .then(|| group_event(g, GroupChange::Left, d.removed.clone(), now))
            .transpose()?;
        let joined = (!d.added.is_empty())
            .then(|| group_event(g, GroupChange::Joined, d.added.clone(), now))
            .transpose()?;
        for u in &d.removed {
            commit.writes.push(Mutation::Delete {
                table: Table::Members,
                row: keys::id_id(g.0, u.0),
            });
            commit
                .writes
                .push(membership_entry(g, now, Some(last_seq)).put(*u, conv)?);
        }
        for u in &d.added {
            commit.writes.push(member_put(g, *u, now));
            commit
                .writes
                .push(membership_entry(g, now, None).put(*u, conv)?);
        }
        if group.large_from.is_some() {
            if let (Some(event), Some(pos)) = (left, self.left_at) {
                commit.writes.push(change_put(conv, pos, &event));
                for (u, after) in d.removed.iter().zip(reading_from) {
                    commit.writes.push(reader_put(*u, g, *after, Some(pos)));
                }
                items.push(Item { pos, event });
            }
            if let (Some(event), Some(pos)) = (joined, self.joined_at) {
                commit.writes.push(change_put(conv, pos, &event));
                for u in &d.added {
                    commit.writes.push(reader_put(*u, g, pos, None));
                    commit.appends.push((*u, event.clone()));
                }
                items.push(Item { pos, event });
            }
        } else {
            if let Some(event) = left {
                commit
                    .appends
                    .extend(d.before.iter().map(|m| (*m, event.clone())));
            }
            if let Some(event) = joined {
                commit
                    .appends
                    .extend(d.after.iter().map(|m| (*m, event.clone())));
            }
            if let Some(from) = self.large_from {
                for m in &d.after {
                    commit.writes.push(reader_put(*m, g, from, None));
                }
            }
        }
        commit.writes.push(group_put(&self.info, self.large_from)?);
        Ok((commit, items))
    }

    /// The group as it is once the change landed.
    fn state(&self) -> GroupState {
        GroupState {
            info: self.info.clone(),
            members: Arc::new(self.delta.after.iter().copied().collect()),
            large_from: self.large_from,
            last_change: self.last_change,
        }
    }
}

/// A member's entry in its conversation list for group `g`.
fn membership_entry(g: GroupId, now: i64, left_at_seq: Option<Seq>) -> UserConversation {
    UserConversation {
        peer_id: None,
        group_id: Some(g),
        since: now,
        left_at_seq,
    }
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
        let conv = ConversationId::from(g);
        let mut lock = self.inner.sequencer.lock(conv).await;
        self.still_owner(conv)?;
        let group = self
            .group_state_locked(g, &lock)
            .await?
            .ok_or(Error::NotFound("group"))?;
        let max = self.inner.settings.max_group_members;
        let Some(delta) = Delta::new(&group, actor, change, max)? else {
            return Ok(group.info.clone());
        };
        self.load_head(conv, &mut lock).await?;
        let threshold = self.inner.settings.large_group_threshold;
        let plan = MemberPlan::new(&group, delta, lock.seq(), threshold);
        if plan.large_from.is_some() && group.large_from.is_none() {
            tracing::info!(group = %g, members = plan.delta.after.len(), "the group fans out on read from now on");
        }
        // Where each removed member began reading the stream: kept in its
        // reader row, now closed at its removal.
        let mut reading_from = Vec::new();
        if let (Some(from), Some(_)) = (group.large_from, plan.left_at) {
            for u in &plan.delta.removed {
                let after = self
                    .get(Table::GroupReaders, &keys::id_id(u.0, g.0))
                    .await?
                    .and_then(|v| parse_reader_value(&v))
                    .map_or(from, |(after, _)| after);
                reading_from.push(after);
            }
        }
        let (commit, stream_items) = plan.commit(&group, now_ms(), &reading_from)?;
        if let Err(e) = self.inner.committer.commit(commit).await {
            // It may still land: read the group from the store next time.
            self.inner.groups.groups.remove(&g);
            return Err(e.into());
        }
        self.inner.groups.groups.insert(g, Arc::new(plan.state()));
        let delta = &plan.delta;
        for u in delta.removed.iter().chain(&delta.added) {
            self.inner.streams.forget_readings(u);
        }
        if group.large_from.is_none() && plan.large_from.is_some() {
            for m in &delta.after {
                self.inner.streams.forget_readings(m);
            }
        }
        for item in stream_items {
            self.stream_moved(conv, item).await;
        }
        drop(lock);
        Ok(plan.info)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: u128) -> UserId {
        UserId(Uuid::from_u128(n))
    }

    fn group(owner: u128, members: &[u128], large_from: Option<StreamPos>) -> GroupState {
        GroupState {
            info: GroupInfo {
                group_id: GroupId(Uuid::from_u128(100)),
                name: "g".into(),
                owner_id: user(owner),
                member_count: members.len(),
                created_at: 0,
            },
            members: Arc::new(members.iter().map(|n| user(*n)).collect()),
            large_from,
            last_change: large_from.unwrap_or_default(),
        }
    }

    fn change(add: &[u128], remove: &[u128]) -> ChangeMembers {
        ChangeMembers {
            add: add.iter().map(|n| user(*n)).collect(),
            remove: remove.iter().map(|n| user(*n)).collect(),
        }
    }

    #[test]
    fn only_the_owner_changes_members_but_anyone_may_leave() {
        let g = group(1, &[1, 2, 3], None);
        assert!(matches!(
            Delta::new(&g, user(2), change(&[4], &[]), 10),
            Err(Error::Forbidden(_))
        ));
        let leaving = Delta::new(&g, user(2), change(&[], &[2]), 10).unwrap();
        assert_eq!(leaving.map(|d| d.removed), Some(vec![user(2)]));
        assert!(matches!(
            Delta::new(&g, user(9), change(&[], &[9]), 10),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            Delta::new(&g, user(1), change(&[4], &[4]), 10),
            Err(Error::InvalidField(_))
        ));
        assert!(matches!(
            Delta::new(&g, user(1), change(&[4, 5], &[]), 4),
            Err(Error::InvalidField(_))
        ));
        let nothing = Delta::new(&g, user(1), change(&[2], &[7]), 10).unwrap();
        assert_eq!(nothing, None, "adding members and removing strangers");
    }

    #[test]
    fn a_small_group_growing_past_the_threshold_turns_large_after_the_change() {
        let g = group(1, &[1, 2], None);
        let delta = Delta::new(&g, user(1), change(&[3], &[]), 10)
            .unwrap()
            .unwrap();
        let plan = MemberPlan::new(&g, delta, 7, 3);
        let from = StreamPos { seq: 7, sub: 1 };
        assert_eq!(plan.large_from, Some(from));
        assert_eq!((plan.left_at, plan.joined_at), (None, None));
        assert_eq!(plan.last_change, from);
        assert_eq!(plan.info.member_count, 3);
        let (commit, items) = plan.commit(&g, 0, &[]).unwrap();
        assert_eq!(
            commit.appends.len(),
            3,
            "this change still reaches every mailbox"
        );
        assert!(items.is_empty());
    }

    #[test]
    fn a_large_group_places_its_changes_in_the_stream_one_after_another() {
        let mut g = group(1, &[1, 2, 3], Some(StreamPos::default()));
        g.last_change = StreamPos { seq: 5, sub: 1 };
        let delta = Delta::new(&g, user(1), change(&[4], &[2]), 10)
            .unwrap()
            .unwrap();
        let plan = MemberPlan::new(&g, delta, 5, 3);
        assert_eq!(plan.left_at, Some(StreamPos { seq: 5, sub: 2 }));
        assert_eq!(plan.joined_at, Some(StreamPos { seq: 5, sub: 3 }));
        assert_eq!(plan.last_change, StreamPos { seq: 5, sub: 3 });
        let (commit, items) = plan.commit(&g, 0, &[StreamPos::default()]).unwrap();
        assert_eq!(items.len(), 2, "left, then joined");
        let told: Vec<UserId> = commit.appends.iter().map(|(u, _)| *u).collect();
        assert_eq!(told, [user(4)], "only the added hear of it by mailbox");
        let after_a_new_message = MemberPlan::new(
            &g,
            Delta::new(&g, user(1), change(&[5], &[]), 10)
                .unwrap()
                .unwrap(),
            6,
            3,
        );
        assert_eq!(
            after_a_new_message.joined_at,
            Some(StreamPos { seq: 6, sub: 1 })
        );
    }
}
