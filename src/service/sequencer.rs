//! The sequencer: each conversation's head (newest seq and message id),
//! and the next seq. Its lock is the conversation's entry in
//! `Inner::sequencer`; sends, group changes and receipts take it, so a
//! message's fan-out matches the membership at its seq.

use serde::Deserialize;

use super::{Error, Result, Service};
use crate::domain::{ConversationId, MessageId, Seq};
use crate::store::{Scan, Table, keys};

/// A conversation's newest message, as the sequencer knows it.
#[derive(Debug, Default)]
pub struct Head {
    loaded: bool,
    /// The ring's epoch when it was loaded: a head learned before the ring
    /// changed may be stale (another node may have sequenced meanwhile).
    epoch: u64,
    seq: Seq,
    last: Option<MessageId>,
}

impl Head {
    /// The newest seq (0 for an empty conversation); valid once loaded.
    pub fn seq(&self) -> Seq {
        self.seq
    }

    /// The newest message's id, which the next message names as its
    /// `prev_message_id`.
    pub fn last(&self) -> Option<MessageId> {
        self.last
    }

    /// Message `seq` with id `id` was committed.
    pub fn advance(&mut self, seq: Seq, id: MessageId) {
        self.seq = seq;
        self.last = Some(id);
    }

    /// A commit failed, but may still land (a failed write is rolled
    /// forward before the store serves anything else): learn the head
    /// again.
    pub fn forget(&mut self) {
        self.loaded = false;
    }
}

impl Service {
    pub(crate) async fn load_head(&self, conv: ConversationId, head: &mut Head) -> Result<()> {
        let epoch = self.inner.cluster.epoch();
        if head.loaded && head.epoch == epoch {
            return Ok(());
        }
        head.epoch = epoch;
        head.seq = 0;
        head.last = None;
        if let Some(page) = self.inner.history_cache.get(&conv)
            && let Some((seq, json)) = page.messages.back()
        {
            head.seq = *seq;
            head.last = Some(message_id_of(json)?);
        } else {
            let newest = self
                .scan(Scan::prefix(Table::Messages, conv.0.as_bytes(), 1).rev())
                .await?;
            if let Some((row, json)) = newest.first() {
                head.seq = keys::trailing_u64(row)
                    .ok_or_else(|| Error::Internal("short message row key".into()))?;
                head.last = Some(message_id_of(json)?);
            }
        }
        head.loaded = true;
        Ok(())
    }

    /// The seq for the next message: the head's, plus one.
    ///
    /// No counter in the store is needed, on a ring either: one node at a
    /// time sequences a conversation. A node writes only while its lease is
    /// fresh, and its peers take its keys only after the lease ran out
    /// (`cluster/lease.rs`); a node that hands keys to a returning peer
    /// first lets every send that checked ownership under the old view
    /// finish (`Service::drain_handoff`), and the returning peer serves
    /// nothing before that (`takeover.rs`). A head learned under an older
    /// view is loaded again (`load_head`). A seq whose commit failed is
    /// not skipped: the head is loaded again from what landed.
    pub(super) fn next_seq(&self, head: &Head) -> Seq {
        head.seq + 1
    }
}

/// The `message_id` of a stored message object.
fn message_id_of(json: &[u8]) -> Result<MessageId> {
    #[derive(Deserialize)]
    struct Id {
        message_id: MessageId,
    }
    Ok(serde_json::from_slice::<Id>(json)?.message_id)
}
