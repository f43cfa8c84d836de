//! Groups: creation, membership changes, reads. Every change to a group
//! runs under its conversation's sequencer lock, so a message's fan-out
//! always matches the membership at its seq.
//!
//! - `state.rs`: the group ([`GroupState`]) and the rows a change writes;
//! - `plan.rs`: a membership change decided without I/O, then its commit.

mod plan;
mod state;

use std::collections::BTreeSet;
use std::sync::Arc;

use quick_cache::sync::Cache;
use uuid::Uuid;

use self::plan::{Delta, MemberPlan};
pub use self::state::{ChangeMembers, CreateGroup, GroupInfo, GroupState};
use self::state::{StoredGroup, group_event, group_put, member_put, membership_entry, reader_put};
use super::cache::ByBytes;
use super::commit::Commit;
use super::conversations::{ConversationMeta, Membership};
use super::fanout::rows::{change_pos, parse_reader_value};
use super::locks::KeyGuard;
use super::sequencer::Head;
use super::{Error, Result, Service};
use crate::domain::{ConversationId, GroupChange, GroupId, StreamPos, UserId, now_ms};
use crate::store::{Scan, Table, keys};

/// Bytes of member lists the group cache keeps.
const GROUP_CACHE_BYTES: u64 = 32 << 20;

/// Groups recently used, filled only under the group's sequencer lock.
pub struct GroupCache {
    groups: Cache<GroupId, Arc<GroupState>, ByBytes>,
}

impl GroupCache {
    pub fn clear(&self) {
        self.groups.clear();
    }

    pub fn new() -> GroupCache {
        GroupCache {
            groups: Cache::with_weighter(1024, GROUP_CACHE_BYTES, ByBytes),
        }
    }
}

impl Default for GroupCache {
    fn default() -> Self {
        GroupCache::new()
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
        let _handoff = self.handoff_guard().await;
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
        // Large from birth: every message is read from the group's stream.
        let large_from =
            (members.len() >= self.inner.settings.large_group_threshold).then(StreamPos::default);
        let commit = creation(&info, &members, large_from)?;
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
        let _handoff = self.handoff_guard().await;
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

/// The commit creating group `info` with `members` (sorted, the owner
/// among them): its rows, each member's, and the `created` event in every
/// member's mailbox.
fn creation(info: &GroupInfo, members: &[UserId], large_from: Option<StreamPos>) -> Result<Commit> {
    let (g, now) = (info.group_id, info.created_at);
    let conv = ConversationId::from(g);
    let mut commit = Commit::default();
    commit
        .writes
        .extend(ConversationMeta::Group { group_id: g }.rows(conv, now)?);
    commit.writes.push(group_put(info, large_from)?);
    let entry = membership_entry(g, now, None);
    for m in members {
        commit.writes.push(member_put(g, *m, now));
        commit.writes.push(entry.put(*m, conv)?);
        if let Some(from) = large_from {
            commit.writes.push(reader_put(*m, g, from, None));
        }
    }
    let event = group_event(g, GroupChange::Created, members.to_vec(), now)?;
    commit.appends = members.iter().map(|m| (*m, event.clone())).collect();
    Ok(commit)
}
