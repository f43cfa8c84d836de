//! The send path.
//!
//! 1. Claim `(sender, message_id)`: concurrent retries of one send queue
//!    here and then find the first one's record (a replay).
//! 2. Idempotency: a stored record with the same fingerprint is replayed,
//!    another fingerprint is a conflict. Records never expire.
//! 3. Access and ordering: the conversation, the sender's membership, the
//!    `prev_message_id` it waits for (bounded).
//! 4. The sequencer: under the conversation's lock, `seq = head + 1` and
//!    `prev_message_id` chains to the head.
//! 5. One commit holds the message, its idempotency record, the
//!    recipients' mailbox events and the sender's own copy. The ack waits
//!    for that commit's fsync.

use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::commit::Commit;
use super::conversations::{ConversationMeta, Membership};
use super::fanout::Item;
use super::groups::GroupState;
use super::{Error, Result, Service};
use crate::domain::{
    ConversationId, GroupId, Message, MessageId, Seq, StreamPos, UserId, message_event, now_ms,
};
use crate::store::{Mutation, Table, keys};

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    User(UserId),
    Group(GroupId),
}

#[derive(Clone, Debug)]
pub struct SendRequest {
    pub message_id: MessageId,
    pub to: Destination,
    pub body: serde_json::Value,
    pub prev_message_id: Option<MessageId>,
}

/// The stored message object, byte for byte what every replay returns.
#[derive(Debug)]
pub struct Sent {
    pub message: Bytes,
    pub replayed: bool,
}

/// Where an accepted send landed: `fingerprint(32) || conversation(16) || seq(8)`.
struct SentRecord {
    fingerprint: [u8; 32],
    conversation: ConversationId,
    seq: Seq,
}

impl SentRecord {
    fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(56);
        b.extend_from_slice(&self.fingerprint);
        b.extend_from_slice(self.conversation.0.as_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        b.freeze()
    }

    fn decode(b: &[u8]) -> Result<SentRecord> {
        let bad = || Error::Internal("malformed send record".into());
        let fingerprint = b.get(..32).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        let conv: [u8; 16] = b
            .get(32..48)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        let seq: [u8; 8] = b
            .get(48..56)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?;
        Ok(SentRecord {
            fingerprint,
            conversation: ConversationId(uuid::Uuid::from_bytes(conv)),
            seq: u64::from_be_bytes(seq),
        })
    }
}

/// What makes two sends "the same": destination and body (keys sorted,
/// since serde_json's map is ordered).
fn fingerprint(req: &SendRequest) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    match req.to {
        Destination::User(u) => {
            h.update(b"u");
            h.update(u.0.as_bytes());
        }
        Destination::Group(g) => {
            h.update(b"g");
            h.update(g.0.as_bytes());
        }
    }
    h.update(serde_json::to_vec(&req.body)?);
    Ok(h.finalize().into())
}

/// What a send writes besides the message, decided without I/O once the
/// destination, its group (if any) and the seq are known.
#[derive(Debug, PartialEq)]
struct SendPlan {
    /// Mailboxes that get a copy in the commit, the sender's own last.
    copies: Vec<UserId>,
    /// A large group's members read it from its stream: no copies.
    fan_out_on_read: bool,
    /// Receiver first: a direct message is acknowledged once its
    /// recipient's copy is durable, on whichever node owns it.
    await_delivery: Option<UserId>,
    /// A direct conversation's first message creates its metadata rows.
    direct_meta: Option<[UserId; 2]>,
}

impl SendPlan {
    fn new(sender: UserId, to: Destination, group: Option<&GroupState>, seq: Seq) -> SendPlan {
        let fan_out_on_read = group.is_some_and(|g| g.large_from.is_some());
        let mut copies = match (to, group) {
            (Destination::User(to), _) => vec![to],
            (_, Some(group)) if !fan_out_on_read => group
                .members
                .iter()
                .copied()
                .filter(|m| *m != sender)
                .collect(),
            _ => Vec::new(),
        };
        // The sender's own copy, in the same commit. The committer writes
        // it in place when this node owns the sender's mailbox (a copy sent
        // later through the outbox would land after messages others sent
        // next, out of seq order) and through the outbox otherwise, in the
        // same order as every other event of this conversation.
        if !copies.contains(&sender) && !fan_out_on_read {
            copies.push(sender);
        }
        SendPlan {
            copies,
            fan_out_on_read,
            await_delivery: match to {
                Destination::User(to) if to != sender => Some(to),
                _ => None,
            },
            direct_meta: match (to, seq) {
                (Destination::User(to), 1) => Some([sender, to]),
                _ => None,
            },
        }
    }

    /// The one commit holding the message, its idempotency record and the
    /// copies.
    fn commit(
        &self,
        message: &Message,
        json: Bytes,
        event: Bytes,
        record: &SentRecord,
    ) -> Result<Commit> {
        let (conv, sender) = (message.conversation_id, message.sender_id);
        let mut writes = vec![
            Mutation::Put {
                table: Table::Messages,
                row: keys::id_u64(conv.0, message.seq),
                value: json.clone(),
            },
            Mutation::Put {
                table: Table::Idempotency,
                row: keys::id_id(sender.0, message.message_id.0),
                value: record.encode(),
            },
        ];
        if let Some(members) = self.direct_meta {
            writes.extend(ConversationMeta::Direct { members }.rows(conv, now_ms())?);
        }
        Ok(Commit {
            writes,
            appends: self.copies.iter().map(|u| (*u, event.clone())).collect(),
            message: Some((conv, message.seq, json)),
            arrival: Some((sender, message.message_id)),
            await_delivery: self.await_delivery,
            ..Commit::default()
        })
    }
}

impl Service {
    pub async fn send(&self, sender: UserId, req: SendRequest) -> Result<Sent> {
        let this = self.clone();
        super::detached(async move { this.send_now(sender, req).await }).await
    }

    async fn send_now(&self, sender: UserId, req: SendRequest) -> Result<Sent> {
        let accepted = Instant::now();
        let fingerprint = fingerprint(&req)?;
        let _claim = self.inner.claims.lock((sender, req.message_id)).await;
        if let Some(replay) = self.replay(sender, req.message_id, fingerprint).await? {
            return Ok(replay);
        }
        let conv = match req.to {
            Destination::User(to) => ConversationId::direct(sender, to),
            Destination::Group(g) => {
                self.group_members(g, sender).await?;
                ConversationId::from(g)
            }
        };
        if let Some(prev) = req.prev_message_id {
            self.await_prev(sender, prev, conv).await?;
        }
        let (message, seq, delivered) = self.sequence(sender, conv, req, fingerprint).await?;
        if let Some(delivered) = delivered {
            let wait = self.inner.cluster.settings.remote_wait;
            if tokio::time::timeout(wait, delivered.notified())
                .await
                .is_err()
            {
                // Durable in the conversation and the outbox, which keeps
                // trying: acknowledged, and counted.
                self.inner.metrics.sends_acked_before_delivery.inc();
            }
        }
        self.inner.metrics.messages_accepted.inc();
        tracing::debug!(%conv, seq, elapsed_us = accepted.elapsed().as_micros() as u64, "message accepted");
        Ok(Sent {
            message,
            replayed: false,
        })
    }

    /// The stored message, if this send was accepted before (the same
    /// fingerprint); a conflict if the id was used for another message.
    async fn replay(
        &self,
        sender: UserId,
        id: MessageId,
        fingerprint: [u8; 32],
    ) -> Result<Option<Sent>> {
        let Some(record) = self.sent_record(sender, id).await? else {
            return Ok(None);
        };
        if record.fingerprint != fingerprint {
            return Err(Error::IdempotencyConflict);
        }
        let message = self
            .message_at(record.conversation, record.seq)
            .await?
            .ok_or_else(|| Error::Internal("a send record points at no message".into()))?;
        self.inner.metrics.duplicate_sends.inc();
        Ok(Some(Sent {
            message,
            replayed: true,
        }))
    }

    /// Under the conversation's sequencer lock: takes the next seq and
    /// commits the message with its copies. Returns the stored message, its
    /// seq, and what fires once a remote recipient has its copy.
    async fn sequence(
        &self,
        sender: UserId,
        conv: ConversationId,
        req: SendRequest,
        fingerprint: [u8; 32],
    ) -> Result<(Bytes, Seq, Option<Arc<Notify>>)> {
        let _handoff = self.handoff_guard().await;
        let mut head = self.inner.sequencer.lock(conv).await;
        self.still_owner(conv)?;
        self.load_head(conv, &mut head).await?;
        // Again under the lock: membership changes take it too, so the
        // fan-out matches the membership at this seq exactly.
        let group = match req.to {
            Destination::User(_) => None,
            Destination::Group(g) => Some(self.group_members(g, sender).await?),
        };
        let seq = self.next_seq(&head);
        let plan = SendPlan::new(sender, req.to, group.as_deref(), seq);
        let message = Message {
            message_id: req.message_id,
            conversation_id: conv,
            sender_id: sender,
            seq,
            prev_message_id: head.last(),
            sent_at: now_ms(),
            body: req.body,
        };
        let json = Bytes::from(serde_json::to_vec(&message)?);
        let event = message_event(&json);
        let record = SentRecord {
            fingerprint,
            conversation: conv,
            seq,
        };
        let commit = plan.commit(&message, json.clone(), event.clone(), &record)?;
        let committed = match self.inner.committer.commit(commit).await {
            Ok(committed) => committed,
            Err(e) => {
                head.forget();
                return Err(e.into());
            }
        };
        head.advance(seq, message.message_id);
        if plan.fan_out_on_read {
            let pos = StreamPos { seq, sub: 0 };
            self.stream_moved(conv, Item { pos, event }).await;
        }
        Ok((json, seq, committed.delivered))
    }

    async fn sent_record(&self, sender: UserId, id: MessageId) -> Result<Option<SentRecord>> {
        let row = keys::id_id(sender.0, id.0);
        match self.get(Table::Idempotency, &row).await? {
            Some(b) => SentRecord::decode(&b).map(Some),
            None => Ok(None),
        }
    }

    /// Waits (bounded) until the sender's `prev` is stored in `conv`.
    async fn await_prev(
        &self,
        sender: UserId,
        prev: MessageId,
        conv: ConversationId,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.inner.settings.prev_wait;
        loop {
            let registration = self
                .inner
                .arrivals
                .register((sender, prev))
                .map_err(|_| Error::PrevMissing)?;
            let mut arrived = pin!(registration.notified());
            arrived.as_mut().enable();
            match self.sent_record(sender, prev).await? {
                Some(r) if r.conversation == conv => return Ok(()),
                Some(_) => return Err(Error::PrevMissing),
                None => {}
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(Error::PrevMissing);
            }
        }
    }

    /// Group `g`, if `user` is one of its members.
    async fn group_members(&self, g: GroupId, user: UserId) -> Result<Arc<GroupState>> {
        let group = self.group_state(g).await?.ok_or(Error::NotFound("group"))?;
        match group.membership(user) {
            Membership::Member => Ok(group),
            _ => Err(Error::Forbidden("you are not a member of this group")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_ignores_key_order_but_not_content() {
        let to = Destination::User(UserId(uuid::Uuid::from_u128(1)));
        let req = |body: &str| SendRequest {
            message_id: MessageId(uuid::Uuid::from_u128(9)),
            to,
            body: serde_json::from_str(body).unwrap(),
            prev_message_id: None,
        };
        let a = fingerprint(&req(r#"{"a":1,"b":2}"#)).unwrap();
        assert_eq!(a, fingerprint(&req(r#"{"b":2,"a":1}"#)).unwrap());
        assert_ne!(a, fingerprint(&req(r#"{"a":1,"b":3}"#)).unwrap());
        let mut other = req(r#"{"a":1,"b":2}"#);
        other.to = Destination::Group(GroupId(uuid::Uuid::from_u128(1)));
        assert_ne!(a, fingerprint(&other).unwrap());
    }

    fn user(n: u128) -> UserId {
        UserId(uuid::Uuid::from_u128(n))
    }

    fn group(members: &[u128], large: bool) -> GroupState {
        let members: Vec<UserId> = members.iter().map(|n| user(*n)).collect();
        GroupState {
            info: super::super::groups::GroupInfo {
                group_id: GroupId(uuid::Uuid::from_u128(100)),
                name: "g".into(),
                owner_id: members[0],
                member_count: members.len(),
                created_at: 0,
            },
            members: Arc::new(members),
            large_from: large.then(StreamPos::default),
            last_change: StreamPos::default(),
        }
    }

    #[test]
    fn a_direct_message_copies_receiver_then_sender_and_awaits_the_receiver() {
        let (a, b) = (user(1), user(2));
        let first = SendPlan::new(a, Destination::User(b), None, 1);
        assert_eq!(first.copies, [b, a]);
        assert_eq!(first.await_delivery, Some(b));
        assert_eq!(first.direct_meta, Some([a, b]), "the first creates it");
        assert!(!first.fan_out_on_read);
        let later = SendPlan::new(a, Destination::User(b), None, 2);
        assert_eq!(later.direct_meta, None);
        let to_self = SendPlan::new(a, Destination::User(a), None, 2);
        assert_eq!(to_self.copies, [a], "one copy to oneself");
        assert_eq!(to_self.await_delivery, None);
    }

    #[test]
    fn a_group_message_copies_every_member_unless_the_group_is_large() {
        let g = Destination::Group(GroupId(uuid::Uuid::from_u128(100)));
        let small = SendPlan::new(user(2), g, Some(&group(&[1, 2, 3], false)), 1);
        assert_eq!(small.copies, [user(1), user(3), user(2)], "sender last");
        assert_eq!((small.await_delivery, small.direct_meta), (None, None));
        let large = SendPlan::new(user(2), g, Some(&group(&[1, 2, 3], true)), 1);
        assert!(large.fan_out_on_read);
        assert!(large.copies.is_empty(), "read from the stream");
    }

    #[test]
    fn send_records_round_trip() {
        let r = SentRecord {
            fingerprint: [7; 32],
            conversation: ConversationId(uuid::Uuid::from_u128(5)),
            seq: 42,
        };
        let back = SentRecord::decode(&r.encode()).unwrap();
        assert_eq!(
            (back.fingerprint, back.conversation, back.seq),
            (r.fingerprint, r.conversation, r.seq)
        );
        assert!(SentRecord::decode(&[1, 2, 3]).is_err());
    }
}
