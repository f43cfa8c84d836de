//! A membership change decided without I/O: who changes ([`Delta`]) and
//! where the change goes ([`MemberPlan`]), then the commit that carries it
//! out.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::state::{
    ChangeMembers, GroupInfo, GroupState, change_put, group_event, group_put, member_put,
    membership_entry, reader_put,
};
use crate::domain::{ConversationId, GroupChange, Seq, StreamPos, UserId};
use crate::service::commit::Commit;
use crate::service::conversations::Membership;
use crate::service::fanout::Item;
use crate::service::{Error, Result};
use crate::store::{Mutation, Table, keys};

/// Who a membership change removes and adds, checked against the group
/// and the rules; `None` when it changes nothing.
#[derive(Debug, PartialEq)]
pub(super) struct Delta {
    pub(super) removed: Vec<UserId>,
    pub(super) added: Vec<UserId>,
    pub(super) before: BTreeSet<UserId>,
    pub(super) after: BTreeSet<UserId>,
}

impl Delta {
    pub(super) fn new(
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
pub(super) struct MemberPlan {
    pub(super) delta: Delta,
    pub(super) info: GroupInfo,
    /// Where the stream begins after the change (`None`: still small).
    pub(super) large_from: Option<StreamPos>,
    /// The stream places of the `left` and `joined` changes (large groups).
    pub(super) left_at: Option<StreamPos>,
    pub(super) joined_at: Option<StreamPos>,
    /// The newest change placed in the stream, after this one.
    pub(super) last_change: StreamPos,
    /// The group's newest message when the change is made.
    pub(super) last_seq: Seq,
}

impl MemberPlan {
    pub(super) fn new(
        group: &GroupState,
        delta: Delta,
        last_seq: Seq,
        threshold: usize,
    ) -> MemberPlan {
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
    pub(super) fn commit(
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
    pub(super) fn state(&self) -> GroupState {
        GroupState {
            info: self.info.clone(),
            members: Arc::new(self.delta.after.iter().copied().collect()),
            large_from: self.large_from,
            last_change: self.last_change,
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::GroupId;

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
