//! Who takes part in a conversation, and each user's list of conversations.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Error, Result, Service};
use crate::domain::{ConversationId, GroupId, Message, ReceiptKind, Seq, UserId};
use crate::store::{Mutation, Scan, Table, keys};

/// Most conversations one listing considers; beyond this a user's oldest
/// conversations drop out of "recent". Each costs a read of its newest
/// message when not cached, so this bounds what one call can cost.
const MAX_LISTED: usize = 1_000;
/// Most messages scanned to count one conversation's unread messages.
const MAX_UNREAD_SCAN: usize = 1_000;

/// The row of `conversations_by_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ConversationMeta {
    Direct { members: [UserId; 2] },
    Group { group_id: GroupId },
}

/// The row of `conversations_by_user`: one user's view of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserConversation {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<UserId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<GroupId>,
    /// When the user joined (a group) or the first message was sent (ms).
    pub since: i64,
    /// Set when the user left a group: the last seq it may read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_at_seq: Option<Seq>,
}

/// How much of a conversation a user may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Member,
    /// Left (removed from a group) after this seq.
    Former(Seq),
    NotMember,
}

impl ConversationMeta {
    /// The rows that make a direct conversation exist for both users.
    pub fn rows(&self, conv: ConversationId, now: i64) -> Result<Vec<Mutation>> {
        let mut rows = vec![Mutation::Put {
            table: Table::Conversations,
            row: conv.0.as_bytes().to_vec(),
            value: Bytes::from(serde_json::to_vec(self)?),
        }];
        if let ConversationMeta::Direct { members: [a, b] } = *self {
            for (user, peer) in [(a, b), (b, a)] {
                let entry = UserConversation {
                    peer_id: Some(peer),
                    group_id: None,
                    since: now,
                    left_at_seq: None,
                };
                rows.push(entry.put(user, conv)?);
                if a == b {
                    break;
                }
            }
        }
        Ok(rows)
    }
}

impl UserConversation {
    pub fn put(&self, user: UserId, conv: ConversationId) -> Result<Mutation> {
        Ok(Mutation::Put {
            table: Table::UserConversations,
            row: keys::id_id(user.0, conv.0),
            value: Bytes::from(serde_json::to_vec(self)?),
        })
    }
}

/// The row of `receipts_by_conv_user`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptMarks {
    pub delivered: Seq,
    pub read: Seq,
}

impl ReceiptMarks {
    /// The marks after a receipt; `read` implies `delivered`. Never backwards.
    pub fn advance(self, kind: ReceiptKind, up_to: Seq) -> ReceiptMarks {
        match kind {
            ReceiptKind::Delivered => ReceiptMarks {
                delivered: self.delivered.max(up_to),
                read: self.read,
            },
            ReceiptKind::Read => ReceiptMarks {
                delivered: self.delivered.max(up_to),
                read: self.read.max(up_to),
            },
        }
    }
}

impl Service {
    pub(crate) async fn conversation_meta(
        &self,
        conv: ConversationId,
    ) -> Result<Option<ConversationMeta>> {
        match self.get(Table::Conversations, conv.0.as_bytes()).await? {
            Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
            None => Ok(None),
        }
    }

    /// How much of `conv` the user may read: 404 for an unknown
    /// conversation, 403 for one it never took part in.
    pub(crate) async fn membership(
        &self,
        user: UserId,
        conv: ConversationId,
    ) -> Result<(ConversationMeta, Membership)> {
        let meta = self
            .conversation_meta(conv)
            .await?
            .ok_or(Error::NotFound("conversation"))?;
        let membership = match &meta {
            ConversationMeta::Direct { members } if members.contains(&user) => Membership::Member,
            ConversationMeta::Direct { .. } => Membership::NotMember,
            ConversationMeta::Group { group_id } => {
                let group = self
                    .group_state(*group_id)
                    .await?
                    .ok_or(Error::NotFound("conversation"))?;
                match group.membership(user) {
                    Membership::Member => Membership::Member,
                    _ => match self.user_conversation(user, conv).await? {
                        Some(UserConversation {
                            left_at_seq: Some(seq),
                            ..
                        }) => Membership::Former(seq),
                        _ => Membership::NotMember,
                    },
                }
            }
        };
        if membership == Membership::NotMember {
            return Err(Error::Forbidden("you are not in this conversation"));
        }
        Ok((meta, membership))
    }

    async fn user_conversation(
        &self,
        user: UserId,
        conv: ConversationId,
    ) -> Result<Option<UserConversation>> {
        match self
            .get(Table::UserConversations, &keys::id_id(user.0, conv.0))
            .await?
        {
            Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
            None => Ok(None),
        }
    }

    pub(crate) async fn receipt_marks(
        &self,
        conv: ConversationId,
        user: UserId,
    ) -> Result<ReceiptMarks> {
        match self
            .get(Table::Receipts, &keys::id_id(conv.0, user.0))
            .await?
        {
            Some(b) => Ok(serde_json::from_slice(&b)?),
            None => Ok(ReceiptMarks::default()),
        }
    }

    /// The newest message of `conv` at or below `up_to`.
    pub(crate) async fn newest_message(
        &self,
        conv: ConversationId,
        up_to: Option<Seq>,
    ) -> Result<Option<Bytes>> {
        if up_to.is_none()
            && let Some(page) = self.inner.history_cache.get(&conv)
            && let Some((_, json)) = page.messages.back()
        {
            return Ok(Some(json.clone()));
        }
        let scan = Scan {
            table: Table::Messages,
            start: std::ops::Bound::Included(keys::id_u64(conv.0, 0)),
            end: std::ops::Bound::Included(keys::id_u64(conv.0, up_to.unwrap_or(u64::MAX))),
            reverse: true,
            limit: 1,
        };
        Ok(self.scan(scan).await?.pop().map(|(_, json)| json))
    }

    /// Recent conversations, most recently active first.
    pub async fn conversations(
        &self,
        user: UserId,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Value>> {
        let rows = self
            .scan(Scan::prefix(
                Table::UserConversations,
                user.0.as_bytes(),
                MAX_LISTED,
            ))
            .await?;
        let mut listed = Vec::with_capacity(rows.len());
        for (row, value) in rows {
            let conv = ConversationId(
                keys::trailing_id(&row).ok_or_else(|| Error::Internal("short row key".into()))?,
            );
            let entry: UserConversation = serde_json::from_slice(&value)?;
            let last = match self.newest_message(conv, entry.left_at_seq).await? {
                Some(json) => Some(serde_json::from_slice::<Message>(&json)?),
                None => None,
            };
            let updated_at = last.as_ref().map_or(entry.since, |m| m.sent_at);
            listed.push((updated_at, conv, entry, last));
        }
        listed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));

        let mut page = Vec::new();
        for (updated_at, conv, entry, last) in listed.into_iter().skip(offset).take(limit) {
            let unread = match &last {
                Some(m) => self.unread(conv, user, m.seq).await?,
                None => 0,
            };
            let mut item = json!({
                "conversation_id": conv,
                "kind": if entry.group_id.is_some() { "group" } else { "direct" },
                "last_message": last,
                "unread": unread,
                "updated_at": updated_at,
            });
            if let Some(peer) = entry.peer_id {
                item["peer_id"] = json!(peer);
            }
            if let Some(group) = entry.group_id {
                item["group_id"] = json!(group);
            }
            page.push(item);
        }
        Ok(page)
    }

    /// Messages from others after the user's last read receipt (counted up
    /// to [`MAX_UNREAD_SCAN`]).
    async fn unread(&self, conv: ConversationId, user: UserId, newest: Seq) -> Result<u64> {
        let read = self.receipt_marks(conv, user).await?.read;
        if read >= newest {
            return Ok(0);
        }
        let scan = Scan {
            table: Table::Messages,
            start: std::ops::Bound::Excluded(keys::id_u64(conv.0, read)),
            end: std::ops::Bound::Included(keys::id_u64(conv.0, newest)),
            reverse: true,
            limit: MAX_UNREAD_SCAN,
        };
        let mut unread = 0;
        for (_, json) in self.scan(scan).await? {
            if sender_of(&json)? != user {
                unread += 1;
            }
        }
        Ok(unread)
    }
}

/// The `sender_id` of a stored message object.
pub(crate) fn sender_of(json: &[u8]) -> Result<UserId> {
    #[derive(Deserialize)]
    struct Sender {
        sender_id: UserId,
    }
    Ok(serde_json::from_slice::<Sender>(json)?.sender_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_never_move_backwards() {
        let m = ReceiptMarks::default().advance(ReceiptKind::Read, 5);
        assert_eq!(
            m,
            ReceiptMarks {
                delivered: 5,
                read: 5
            }
        );
        let m = m.advance(ReceiptKind::Delivered, 3);
        assert_eq!(
            m,
            ReceiptMarks {
                delivered: 5,
                read: 5
            }
        );
        let m = m
            .advance(ReceiptKind::Delivered, 9)
            .advance(ReceiptKind::Read, 2);
        assert_eq!(
            m,
            ReceiptMarks {
                delivered: 9,
                read: 5
            }
        );
    }
}
