//! The correctness oracle: did every acked message reach every device of
//! every participant exactly once (after de-duplication by `message_id`),
//! in `seq` order, with the body that was sent? Did any read receipt come
//! before the message it covers?
//!
//! It is pure bookkeeping (no I/O, no clock), so crafted sequences test it.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A message as a device received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub message_id: Uuid,
    pub conversation_id: Uuid,
    /// The conversation's sequence number; `None` for peers without one.
    pub seq: Option<u64>,
    pub prev_message_id: Option<Uuid>,
    /// Hash of the body's canonical JSON text.
    pub body_hash: u64,
}

/// What the oracle knows about one issued send.
#[derive(Debug)]
struct Sent {
    conversation_id: Uuid,
    body_hash: u64,
    /// Devices that must receive it (set when it is acked).
    expected: u32,
    delivered: u32,
    acked: bool,
    /// No ack, but it may have been stored: once any device has it (or
    /// history holds it), every device is owed it, as for an acked one.
    unknown: bool,
    /// History holds it (for an `unknown` send: it was stored).
    in_history: bool,
    /// The seq it was stored at (from its ack or first delivery): one
    /// message at two seqs means it was stored twice.
    seq: Option<u64>,
    /// A caller tag (the ramp's step, for per-step figures).
    tag: u32,
}

impl Sent {
    /// Every expected device must get it: acked, or of unknown outcome and
    /// already seen by some device (so it was stored).
    fn owed(&self) -> bool {
        self.acked || (self.unknown && (self.delivered > 0 || self.in_history))
    }
}

/// Per device and conversation: the highest seq delivered so far.
#[derive(Debug, Default)]
struct Track {
    max_seq: u64,
}

/// The verdict counts. Every field but `duplicated`, `unacked`,
/// `unknown`, `unknown_landed` and `history_unread` fails the run when
/// non-zero.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Acked messages with at least one device that never got them.
    pub lost_messages: u64,
    /// (message, device) deliveries that never happened.
    pub lost_deliveries: u64,
    /// Redeliveries of a message a device already had (allowed:
    /// at-least-once, the client de-duplicates).
    pub duplicated: u64,
    /// A message delivered after a later one of its conversation.
    pub reordered: u64,
    /// The same, for a sender's own copy on its own devices; failing
    /// unless `--allow-copy-reorder` (Carrier keeps these in seq order
    /// too, so its runs need no such allowance).
    pub copies_reordered: u64,
    /// Seqs a device skipped over (a `seq` never seen by anyone, or a
    /// `prev_message_id` that does not name the message before).
    pub gaps: u64,
    /// Wrong body, wrong conversation, a message we never sent, two ids for
    /// one seq, or a replayed send answered differently.
    pub corrupted: u64,
    /// A read receipt that arrived before the message it covers.
    pub early_receipts: u64,
    /// History pages that disagree with what was delivered live.
    pub history_mismatches: u64,
    /// Conversations whose history could not be read (errors, not a
    /// verdict: nothing was compared).
    pub history_unread: u64,
    /// Sends that got no ack and were not stored (a definite rejection, or
    /// every attempt refused); not expected to be delivered.
    pub unacked: u64,
    /// Sends whose outcome stayed unknown: no ack, but an attempt may have
    /// been stored (no answer, or a 5xx). Not lost if never delivered; if
    /// delivered to any device, owed to every device (else lost).
    #[serde(default)]
    pub unknown: u64,
    /// Of `unknown`, those found stored: some device received it, or
    /// history holds it.
    #[serde(default)]
    pub unknown_landed: u64,
}

impl Counts {
    /// Clean by the contract: every participant sees seq order.
    pub fn clean(&self) -> bool {
        self.clean_allowing_copy_reorder() && self.copies_reordered == 0
    }

    /// Clean except for senders' own copies arriving out of order.
    pub fn clean_allowing_copy_reorder(&self) -> bool {
        self.lost_messages == 0
            && self.reordered == 0
            && self.gaps == 0
            && self.corrupted == 0
            && self.early_receipts == 0
            && self.history_mismatches == 0
    }

    pub fn add(&mut self, o: &Counts) {
        self.lost_messages += o.lost_messages;
        self.lost_deliveries += o.lost_deliveries;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.copies_reordered += o.copies_reordered;
        self.gaps += o.gaps;
        self.corrupted += o.corrupted;
        self.early_receipts += o.early_receipts;
        self.history_mismatches += o.history_mismatches;
        self.history_unread += o.history_unread;
        self.unacked += o.unacked;
        self.unknown += o.unknown;
        self.unknown_landed += o.unknown_landed;
    }
}

/// The answer to a delivery: the first one to this device (time it), a
/// redelivery, or something the oracle rejects.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    First { tag: u32 },
    Duplicate,
    Rejected,
}

/// The oracle's state for one run.
#[derive(Debug, Default)]
pub struct Oracle {
    sent: HashMap<Uuid, Sent>,
    /// Per device: every message id it has had (de-duplication).
    seen: Vec<HashSet<Uuid>>,
    tracks: HashMap<(usize, Uuid), Track>,
    /// Per conversation: seq -> (message_id, prev_message_id), from acks and
    /// deliveries; two different ids for one seq is corruption.
    chains: HashMap<Uuid, HashMap<u64, (Uuid, Option<Uuid>)>>,
    counts: Counts,
}

impl Oracle {
    pub fn new(devices: usize) -> Oracle {
        Oracle {
            seen: (0..devices).map(|_| HashSet::new()).collect(),
            ..Oracle::default()
        }
    }

    /// A send is about to go out (before it is on the wire, because a poll
    /// may return it before the ack does).
    pub fn issued(&mut self, message_id: Uuid, conversation_id: Uuid, body_hash: u64, tag: u32) {
        self.sent.insert(
            message_id,
            Sent {
                conversation_id,
                body_hash,
                expected: 0,
                delivered: 0,
                acked: false,
                unknown: false,
                in_history: false,
                seq: None,
                tag,
            },
        );
    }

    /// The send was acked: `devices` devices must now receive it.
    pub fn acked(&mut self, message_id: Uuid, seq: Option<u64>, prev: Option<Uuid>, devices: u32) {
        let Some(sent) = self.sent.get_mut(&message_id) else {
            self.counts.corrupted += 1;
            return;
        };
        sent.acked = true;
        sent.expected = devices;
        let conversation = sent.conversation_id;
        if Self::stored_twice(sent, seq) {
            self.counts.corrupted += 1;
        }
        if let Some(seq) = seq {
            self.chain(conversation, seq, message_id, prev);
        }
    }

    /// The send failed for sure (no ack, not stored).
    pub fn unacked(&mut self) {
        self.counts.unacked += 1;
    }

    /// The send got no ack, but may have been stored: if it shows up on
    /// any device it must reach all `devices`; if it never does, it is not
    /// lost.
    pub fn unknown(&mut self, message_id: Uuid, devices: u32) {
        self.counts.unknown += 1;
        if let Some(sent) = self.sent.get_mut(&message_id) {
            sent.unknown = true;
            sent.expected = devices;
        }
    }

    /// A replayed send (same `message_id`) was not answered with the same
    /// message: the server stored or changed something.
    pub fn replay_mismatch(&mut self) {
        self.counts.corrupted += 1;
    }

    /// A conversation's history could not be read.
    pub fn history_unread(&mut self) {
        self.counts.history_unread += 1;
    }

    /// A poll returned a message event that could not be read.
    pub fn malformed(&mut self) {
        self.counts.corrupted += 1;
    }

    /// Compares a conversation's whole history (every page) with what was
    /// acked and delivered live: the same seqs, ids and bodies, nothing more
    /// and nothing less. Returns (and counts) the places they differ.
    pub fn check_history(&mut self, conversation: Uuid, history: &[Seen]) -> u64 {
        let debug = std::env::var_os("LOADTEST_DEBUG_ORDER").is_some();
        let why = |what: String| {
            if debug {
                eprintln!("history mismatch: conversation {conversation}: {what}");
            }
        };
        let mut bad = 0;
        let mut landed = Vec::new();
        let live = self.chains.get(&conversation);
        let mut seqs = HashSet::new();
        for m in history {
            let Some(seq) = m.seq else {
                why(format!("message {} has no seq", m.message_id));
                bad += 1;
                continue;
            };
            if !seqs.insert(seq) {
                why(format!("seq {seq} twice (message {})", m.message_id));
                bad += 1;
                continue;
            }
            let live_id = live.and_then(|c| c.get(&seq)).map(|(id, _)| *id);
            let sent = self.sent.get(&m.message_id);
            let same_body = sent
                .is_some_and(|s| s.body_hash == m.body_hash && s.conversation_id == conversation);
            // A send of unknown outcome that no device got live but that
            // was stored: not a mismatch, but now owed to every device.
            let landed_unseen = live_id.is_none()
                && same_body
                && sent.is_some_and(|s| s.unknown && !s.acked && s.seq.is_none_or(|k| k == seq));
            if landed_unseen {
                landed.push((m.message_id, seq, m.prev_message_id));
            } else if live_id != Some(m.message_id) || !same_body {
                why(format!(
                    "seq {seq} holds message {} (sent by this run: {}, same body: {same_body}, \
                     acked: {}, unknown outcome: {}, its seq then: {:?}); live at that seq: {live_id:?}",
                    m.message_id,
                    sent.is_some(),
                    sent.is_some_and(|s| s.acked),
                    sent.is_some_and(|s| s.unknown),
                    sent.and_then(|s| s.seq),
                ));
                bad += 1;
            }
        }
        // Anything live that history does not hold.
        if let Some(live) = live {
            for (seq, (id, _)) in live.iter().filter(|(seq, _)| !seqs.contains(seq)) {
                why(format!(
                    "seq {seq} (message {id}) was delivered live, history lacks it"
                ));
                bad += 1;
            }
        }
        for (id, seq, prev) in landed {
            if let Some(sent) = self.sent.get_mut(&id) {
                sent.in_history = true;
                sent.seq = Some(seq);
            }
            self.chain(conversation, seq, id, prev);
        }
        self.counts.history_mismatches += bad;
        bad
    }

    /// Records `seq` as the message's seq; true if it already had another.
    fn stored_twice(sent: &mut Sent, seq: Option<u64>) -> bool {
        match (sent.seq, seq) {
            (Some(known), Some(seq)) => known != seq,
            (None, Some(seq)) => {
                sent.seq = Some(seq);
                false
            }
            _ => false,
        }
    }

    fn chain(&mut self, conversation: Uuid, seq: u64, id: Uuid, prev: Option<Uuid>) {
        let chain = self.chains.entry(conversation).or_default();
        match chain.get(&seq) {
            None => {
                chain.insert(seq, (id, prev));
            }
            Some(&(known, known_prev)) => {
                if known != id || known_prev != prev {
                    self.counts.corrupted += 1;
                }
            }
        }
    }

    /// `device` received `m`; `own` when the device is the sender's.
    pub fn delivered(&mut self, device: usize, m: &Seen, own: bool) -> Delivery {
        let Some(sent) = self.sent.get(&m.message_id) else {
            self.counts.corrupted += 1;
            return Delivery::Rejected;
        };
        if sent.conversation_id != m.conversation_id || sent.body_hash != m.body_hash {
            self.counts.corrupted += 1;
            return Delivery::Rejected;
        }
        let tag = sent.tag;
        if let Some(sent) = self.sent.get_mut(&m.message_id)
            && Self::stored_twice(sent, m.seq)
        {
            self.counts.corrupted += 1;
            return Delivery::Rejected;
        }
        let Some(seen) = self.seen.get_mut(device) else {
            self.counts.corrupted += 1;
            return Delivery::Rejected;
        };
        if !seen.insert(m.message_id) {
            self.counts.duplicated += 1;
            if let Some(seq) = m.seq {
                // A redelivery must still be the same message at the same seq.
                self.chain(m.conversation_id, seq, m.message_id, m.prev_message_id);
            }
            return Delivery::Duplicate;
        }
        if let Some(sent) = self.sent.get_mut(&m.message_id) {
            sent.delivered += 1;
        }
        if let Some(seq) = m.seq {
            self.chain(m.conversation_id, seq, m.message_id, m.prev_message_id);
            let track = self.tracks.entry((device, m.conversation_id)).or_default();
            if seq < track.max_seq {
                if std::env::var_os("LOADTEST_DEBUG_ORDER").is_some() {
                    eprintln!(
                        "out of order: device {device} conversation {} seq {seq} after {} own {own}",
                        m.conversation_id, track.max_seq
                    );
                }
                if own {
                    self.counts.copies_reordered += 1;
                } else {
                    self.counts.reordered += 1;
                }
            } else {
                track.max_seq = seq;
            }
        }
        Delivery::First { tag }
    }

    /// `device` received a read receipt covering `conversation` up to `seq`.
    pub fn receipt(&mut self, device: usize, conversation: Uuid, up_to_seq: u64) {
        let max = self
            .tracks
            .get(&(device, conversation))
            .map_or(0, |t| t.max_seq);
        if up_to_seq > max {
            self.counts.early_receipts += 1;
        }
    }

    /// Acked deliveries still missing, and the tags of the messages they
    /// belong to (for the ramp's drain).
    pub fn outstanding(&self) -> u64 {
        self.sent
            .values()
            .filter(|s| s.owed())
            .map(|s| u64::from(s.expected.saturating_sub(s.delivered)))
            .sum()
    }

    /// Lost messages among those tagged `tag` (so far).
    pub fn lost_with_tag(&self, tag: u32) -> u64 {
        self.sent
            .values()
            .filter(|s| s.owed() && s.tag == tag && s.delivered < s.expected)
            .count() as u64
    }

    /// Every conversation's chain as the oracle knows it: seq -> message id.
    pub fn chain_of(&self, conversation: Uuid) -> Option<&HashMap<u64, (Uuid, Option<Uuid>)>> {
        self.chains.get(&conversation)
    }

    /// Number of distinct messages each device received, summed.
    pub fn unique_deliveries(&self) -> u64 {
        self.seen.iter().map(|s| s.len() as u64).sum()
    }

    /// Final counts: lost messages, and gaps in every conversation's chain.
    pub fn finish(&self) -> Counts {
        let mut counts = self.counts.clone();
        counts.unknown_landed = self
            .sent
            .values()
            .filter(|s| s.unknown && !s.acked && (s.delivered > 0 || s.in_history))
            .count() as u64;
        for sent in self.sent.values().filter(|s| s.owed()) {
            if sent.delivered < sent.expected {
                counts.lost_messages += 1;
                counts.lost_deliveries += u64::from(sent.expected - sent.delivered);
            }
        }
        for chain in self.chains.values() {
            let max = chain.keys().copied().max().unwrap_or(0);
            for seq in 1..=max {
                match chain.get(&seq) {
                    None => counts.gaps += 1,
                    Some((_, prev)) => {
                        let want = if seq == 1 {
                            None
                        } else {
                            chain.get(&(seq - 1)).map(|(id, _)| *id)
                        };
                        if seq == 1 && prev.is_some() || seq > 1 && want.is_some() && *prev != want
                        {
                            counts.gaps += 1;
                        }
                    }
                }
            }
        }
        counts
    }
}

/// Hash of a JSON body's compact text. A sent body is hashed as
/// `serde_json` writes it (object keys sorted, no spaces), a delivered one
/// as the raw text the server returned: the server re-serialises bodies the
/// same way, so any change to a body changes its hash.
pub fn body_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

#[cfg(test)]
#[path = "oracle_tests.rs"]
mod tests;
