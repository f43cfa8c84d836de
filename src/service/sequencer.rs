//! The sequencer: each conversation's head (newest seq and message id),
//! and the next seq. Its lock is the conversation's entry in
//! `Inner::sequencer`; sends, group changes and receipts take it, so a
//! message's fan-out matches the membership at its seq.

use std::time::Instant;

use bytes::Bytes;
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
    /// On a ring: the conversation's counter when the head was loaded, if
    /// it was read. Seqs between the head and it were handed out but never
    /// stored (a send whose commit failed, or a node that stopped between
    /// taking a seq and committing; see `next_seq`).
    counter: Option<Seq>,
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
    /// again (and the counter, on a ring).
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
        head.counter = None;
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

    /// The seq for the next message. On one node it is `head + 1`. On a
    /// ring two nodes may briefly both believe they own the conversation
    /// (one was stopped, and resumes), so the seq comes from an atomic
    /// increment of the conversation's counter in the store: never handed
    /// out twice, whatever the nodes believe.
    ///
    /// A seq can be handed out and never stored: its commit failed, or its
    /// node stopped in between and, being stale when it resumed, refused to
    /// commit (the committer writes nothing while the node is not in the
    /// ring). Such seqs are found when the head is loaded (the counter is
    /// ahead of the newest message) and given to the next sends, so the
    /// order stays gap-free.
    pub(super) async fn next_seq(&self, conv: ConversationId, head: &mut Head) -> Result<Seq> {
        if !self.inner.cluster.is_multi_node() {
            return Ok(head.seq + 1);
        }
        let row = seq_row(conv);
        let counter = match head.counter {
            Some(counter) => counter,
            None => {
                let stored = self.get(Table::Counters, &row).await?;
                let at = match &stored {
                    Some(b) => counter_value(b)?,
                    None => 0,
                };
                if at < head.seq {
                    // A conversation that began on a single node has
                    // messages but no counter yet: start it at the head.
                    let started = self
                        .inner
                        .store
                        .check_and_put(
                            Table::Counters,
                            &row,
                            stored.as_deref(),
                            Bytes::copy_from_slice(&(head.seq as i64).to_be_bytes()),
                        )
                        .await?;
                    if !started {
                        tracing::info!(%conv, "another node started the conversation's counter first");
                    }
                }
                let counter = at.max(head.seq);
                if counter > head.seq && self.inner.cluster.previous_owner_alive(conv.0.as_bytes())
                {
                    // The conversation just moved here from a node that is
                    // still up: a commit of its may still land in those
                    // seqs. Wait for it (bounded) before reusing them.
                    self.await_stragglers(conv, head, counter).await?;
                }
                if counter > head.seq {
                    self.inner.metrics.seqs_reclaimed.inc_by(counter - head.seq);
                    tracing::info!(%conv, head = head.seq, counter, "reusing seqs handed out but never stored");
                }
                head.counter = Some(counter);
                counter
            }
        };
        if counter > head.seq {
            return Ok(head.seq + 1);
        }
        let started = Instant::now();
        let n = self.inner.store.increment(Table::Counters, &row, 1).await?;
        self.observe_store("increment", started);
        let n = u64::try_from(n).map_err(|_| Error::Internal("negative seq counter".into()))?;
        if n != head.seq + 1 {
            // Another node sequenced this conversation since this one
            // learned its head: both believed they owned it.
            self.inner.metrics.seq_fence_skips.inc();
            tracing::warn!(%conv, head = head.seq, counter = n, "the seq counter was ahead of the head");
            head.last = match self.message_at(conv, n - 1).await? {
                Some(json) => Some(message_id_of(&json)?),
                None => head.last,
            };
            head.seq = n - 1;
        }
        head.counter = Some(n);
        Ok(n)
    }

    /// Follows messages landing above the head, up to `counter`, for at
    /// most the store's call timeout and a second.
    async fn await_stragglers(
        &self,
        conv: ConversationId,
        head: &mut Head,
        counter: Seq,
    ) -> Result<()> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.inner.settings.straggler_wait;
        let from = head.seq;
        while head.seq < counter && tokio::time::Instant::now() < deadline {
            match self.message_at(conv, head.seq + 1).await? {
                Some(json) => {
                    head.seq += 1;
                    head.last = Some(message_id_of(&json)?);
                }
                None => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
        tracing::info!(
            %conv,
            landed = head.seq - from,
            reused = counter - head.seq,
            waited_ms = started.elapsed().as_millis() as u64,
            "waited for the previous owner's last commits"
        );
        Ok(())
    }
}

/// The counter row holding a conversation's newest handed-out seq.
fn seq_row(conv: ConversationId) -> Vec<u8> {
    let mut row = b"seq:".to_vec();
    row.extend_from_slice(conv.0.as_bytes());
    row
}

fn counter_value(b: &[u8]) -> Result<Seq> {
    let bytes: [u8; 8] = b
        .try_into()
        .map_err(|_| Error::Internal("malformed seq counter".into()))?;
    u64::try_from(i64::from_be_bytes(bytes))
        .map_err(|_| Error::Internal("negative seq counter".into()))
}

/// The `message_id` of a stored message object.
fn message_id_of(json: &[u8]) -> Result<MessageId> {
    #[derive(Deserialize)]
    struct Id {
        message_id: MessageId,
    }
    Ok(serde_json::from_slice::<Id>(json)?.message_id)
}
