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
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::commit::Commit;
use super::conversations::{ConversationMeta, Membership};
use super::{Error, Result, Service};
use crate::domain::{
    ConversationId, GroupId, Message, MessageId, Seq, UserId, message_event, now_ms,
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

impl Service {
    pub async fn send(&self, sender: UserId, req: SendRequest) -> Result<Sent> {
        let this = self.clone();
        super::detached(async move { this.send_now(sender, req).await }).await
    }

    async fn send_now(&self, sender: UserId, req: SendRequest) -> Result<Sent> {
        let accepted = Instant::now();
        let fingerprint = fingerprint(&req)?;
        let _claim = self.inner.claims.lock((sender, req.message_id)).await;

        if let Some(record) = self.sent_record(sender, req.message_id).await? {
            if record.fingerprint != fingerprint {
                return Err(Error::IdempotencyConflict);
            }
            let message = self
                .message_at(record.conversation, record.seq)
                .await?
                .ok_or_else(|| Error::Internal("a send record points at no message".into()))?;
            self.inner.metrics.duplicate_sends.inc();
            return Ok(Sent {
                message,
                replayed: true,
            });
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

        let mut head = self.inner.sequencer.lock(conv).await;
        self.still_owner(conv)?;
        self.load_head(conv, &mut head).await?;
        // Again under the lock: membership changes take it too, so the
        // fan-out matches the membership at this seq exactly.
        let group = match req.to {
            Destination::User(_) => None,
            Destination::Group(g) => Some(self.group_members(g, sender).await?),
        };
        // A large group's members read it from its stream: no copies.
        let fan_out_on_read = group.as_ref().is_some_and(|g| g.large_from.is_some());
        let recipients = match (req.to, &group) {
            (Destination::User(to), _) => vec![to],
            (_, Some(group)) if !fan_out_on_read => group
                .members
                .iter()
                .copied()
                .filter(|m| *m != sender)
                .collect(),
            _ => Vec::new(),
        };

        let seq = self.next_seq(conv, &mut head).await?;
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
            seq: message.seq,
        };

        let mut commit = Commit {
            writes: vec![
                Mutation::Put {
                    table: Table::Messages,
                    row: keys::id_u64(conv.0, message.seq),
                    value: json.clone(),
                },
                Mutation::Put {
                    table: Table::Idempotency,
                    row: keys::id_id(sender.0, req.message_id.0),
                    value: record.encode(),
                },
            ],
            appends: recipients.iter().map(|r| (*r, event.clone())).collect(),
            message: Some((conv, message.seq, json.clone())),
            arrival: Some((sender, req.message_id)),
            // Receiver first: a direct message is acknowledged once its
            // recipient's copy is durable, on whichever node owns it.
            await_delivery: match req.to {
                Destination::User(to) if to != sender => Some(to),
                _ => None,
            },
            ..Commit::default()
        };
        // The sender's own copy, in the same commit. The committer writes
        // it in place when this node owns the sender's mailbox (a copy sent
        // later through the outbox would land after messages others sent
        // next, out of seq order) and through the outbox otherwise, in the
        // same order as every other event of this conversation.
        if !recipients.contains(&sender) && !fan_out_on_read {
            commit.appends.push((sender, event.clone()));
        }
        if let (Destination::User(to), 1) = (req.to, message.seq) {
            let meta = ConversationMeta::Direct {
                members: [sender, to],
            };
            commit.writes.extend(meta.rows(conv, now_ms())?);
        }

        let committed = match self.inner.committer.commit(commit).await {
            Ok(committed) => committed,
            Err(e) => {
                head.forget();
                return Err(e.into());
            }
        };
        head.advance(message.seq, message.message_id);
        if fan_out_on_read {
            let item = super::fanout::Item {
                pos: crate::domain::StreamPos {
                    seq: message.seq,
                    sub: 0,
                },
                event: event.clone(),
            };
            self.stream_moved(conv, item).await;
        }
        drop(head);
        if let Some(delivered) = committed.delivered {
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
        tracing::debug!(%conv, seq = message.seq, elapsed_us = accepted.elapsed().as_micros() as u64, "message accepted");
        Ok(Sent {
            message: json,
            replayed: false,
        })
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
    async fn group_members(
        &self,
        g: GroupId,
        user: UserId,
    ) -> Result<std::sync::Arc<super::groups::GroupState>> {
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
