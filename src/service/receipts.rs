//! Delivered and read receipts. They reach others through the outbox, which
//! is applied in order, so a receipt never overtakes the sender's own copy
//! of the message it covers.

use std::collections::BTreeSet;
use std::ops::Bound;

use bytes::Bytes;

use super::commit::Commit;
use super::conversations::{ConversationMeta, Membership, sender_of};
use super::{Error, Result, Service};
use crate::domain::{ConversationId, Event, Receipt, ReceiptKind, Seq, UserId, now_ms};
use crate::store::{Mutation, Scan, Table, keys};

/// Most messages scanned to find whom a group receipt concerns.
const MAX_COVERED_SCAN: usize = 10_000;

impl Service {
    pub async fn receipt(
        &self,
        user: UserId,
        conv: ConversationId,
        up_to: Seq,
        kind: ReceiptKind,
    ) -> Result<()> {
        let this = self.clone();
        super::detached(async move { this.receipt_now(user, conv, up_to, kind).await }).await
    }

    async fn receipt_now(
        &self,
        user: UserId,
        conv: ConversationId,
        up_to: Seq,
        kind: ReceiptKind,
    ) -> Result<()> {
        let (meta, membership) = self.membership(user, conv).await?;
        let _handoff = self.handoff_guard().await;
        let mut lock = self.inner.sequencer.lock(conv).await;
        self.still_owner(conv)?;
        self.load_head(conv, &mut lock).await?;
        let newest = match membership {
            Membership::Former(seq) => seq,
            _ => lock.seq(),
        };
        if up_to == 0 || up_to > newest {
            return Err(Error::InvalidField(format!(
                "up_to_seq must be between 1 and {newest}, the newest seq you can see"
            )));
        }
        let old = self.receipt_marks(conv, user).await?;
        let new = old.advance(kind, up_to);
        if new == old {
            return Ok(());
        }
        let from = match kind {
            ReceiptKind::Delivered => old.delivered,
            ReceiptKind::Read => old.read,
        };
        let recipients: BTreeSet<UserId> = match meta {
            ConversationMeta::Direct { members } => {
                members.into_iter().filter(|m| *m != user).collect()
            }
            // Senders still in the group: one removed receives nothing after
            // its removal, receipts included.
            ConversationMeta::Group { group_id } => {
                let senders = self.senders_between(conv, from, up_to).await?;
                match self.group_state(group_id).await? {
                    Some(group) => senders
                        .into_iter()
                        .filter(|s| group.membership(*s) == Membership::Member)
                        .collect(),
                    None => BTreeSet::new(),
                }
            }
        };
        let at = now_ms();
        let event = Event::Receipt {
            receipt: Receipt {
                conversation_id: conv,
                user_id: user,
                kind,
                up_to_seq: up_to,
                at,
            },
        };
        let event = Bytes::from(serde_json::to_vec(&event)?);
        let commit = Commit {
            writes: vec![Mutation::Put {
                table: Table::Receipts,
                row: keys::id_id(conv.0, user.0),
                value: Bytes::from(serde_json::to_vec(&new)?),
            }],
            outbox: recipients
                .into_iter()
                .filter(|r| *r != user)
                .map(|r| (r, event.clone()))
                .collect(),
            ..Commit::default()
        };
        self.inner.committer.commit(commit).await?;
        Ok(())
    }

    /// Senders of the messages with seq in `(after, up_to]` (the newest
    /// [`MAX_COVERED_SCAN`] of them).
    async fn senders_between(
        &self,
        conv: ConversationId,
        after: Seq,
        up_to: Seq,
    ) -> Result<BTreeSet<UserId>> {
        let scan = Scan {
            table: Table::Messages,
            start: Bound::Excluded(keys::id_u64(conv.0, after)),
            end: Bound::Included(keys::id_u64(conv.0, up_to)),
            reverse: true,
            limit: MAX_COVERED_SCAN,
        };
        self.scan(scan)
            .await?
            .iter()
            .map(|(_, json)| sender_of(json))
            .collect()
    }
}
