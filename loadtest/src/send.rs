//! The send side: each scheduled send is booked with the oracle before it
//! goes out (a poll may return it before its ack does), then sent on a
//! pooled connection without anyone waiting for it. A send that gets no
//! answer or a 502/503/504 is retried with the same `message_id` and body
//! (on the user's next node when there are several), with backoff, until
//! the phase's retry deadline; its failed attempts and its ack feed the
//! per-user outage figure. With `--retry-sends` a fraction of acked sends
//! is sent again with the same `message_id`, and the replay must answer the
//! identical message.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use crate::engine::{Engine, Meta};
use crate::failover::{self, Backoff};
use crate::oracle::body_hash;
use crate::stats::Counters;
use crate::target::{Ack, Dest};

/// Why a send attempt failed.
#[derive(Debug)]
enum SendFailure {
    /// No answer (connect error, timeout, closed connection); whether the
    /// server may have stored it all the same.
    Request { may_have_landed: bool },
    /// An answer that is not an ack, with its status.
    Rejected(u16),
}

impl SendFailure {
    /// Worth another attempt (on another node): no answer, or "unavailable".
    fn retryable(&self) -> bool {
        match self {
            SendFailure::Request { .. } => true,
            SendFailure::Rejected(status) => {
                hyper::StatusCode::from_u16(*status).is_ok_and(failover::unavailable)
            }
        }
    }

    /// The server may have stored the message despite this answer (a 5xx
    /// may come from a node whose forward to the owner broke mid-way).
    fn may_have_landed(&self) -> bool {
        match self {
            SendFailure::Request { may_have_landed } => *may_have_landed,
            SendFailure::Rejected(status) => *status >= 500,
        }
    }
}

/// How a send ended.
enum Outcome {
    Acked(Ack),
    /// Not stored: refused everywhere, or a definite rejection.
    NotStored,
    /// No ack, but some attempt may have been stored.
    Unknown,
}

impl Engine {
    /// Issues send number `i`, due at `due` (never waits).
    pub fn issue(self: &Arc<Self>, i: u64, due: Instant, tag: u32) {
        let n = self.plan.convs.len() as u64;
        if n == 0 {
            return;
        }
        let conv_index = (i % n) as usize;
        let conv = &self.plan.convs[conv_index];
        // Round robin over conversations, and over each one's members.
        let turn = (i / n) as usize;
        let sender = conv.members[(turn + conv_index) % conv.members.len()];
        let message_id = Uuid::new_v4();
        let body = json!({"i": i, "from": sender, "pad": self.pad});
        let hash = body_hash(&body.to_string());
        {
            let mut books = self.books();
            books.oracle.issued(message_id, conv.id, hash, tag);
            books.meta.insert(message_id, Meta { due, sender });
        }
        Counters::bump(&self.counters.issued);
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let engine = self.clone();
        let dest = self.plan.dest(conv, sender);
        tokio::spawn(async move {
            engine
                .send(conv_index, sender, dest, message_id, body, due, tag)
                .await;
            engine.inflight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        conv_index: usize,
        sender: usize,
        dest: Dest,
        message_id: Uuid,
        body: serde_json::Value,
        due: Instant,
        tag: u32,
    ) {
        let conv = &self.plan.convs[conv_index];
        let mut expected = self.plan.expected(conv);
        if !conv.group && !self.target.copies_to_sender() {
            expected -= self.plan.per_user as u32;
        }
        match self
            .send_until_acked(sender, dest, message_id, conv.id, &body)
            .await
        {
            Outcome::Acked(ack) => {
                Counters::bump(&self.counters.acked);
                let at = Instant::now().saturating_duration_since(self.started);
                self.last_ack_us
                    .fetch_max(at.as_micros() as u64, Ordering::Relaxed);
                self.rec
                    .ack(tag, Instant::now().saturating_duration_since(due));
                self.books()
                    .oracle
                    .acked(message_id, ack.seq, ack.prev, expected);
                if rand::random::<f64>() < self.settings.retry_sends {
                    self.replay(sender, dest, message_id, conv.id, &body, &ack)
                        .await;
                }
            }
            Outcome::NotStored => {
                Counters::bump(&self.counters.send_errors);
                self.books().oracle.unacked();
            }
            Outcome::Unknown => {
                Counters::bump(&self.counters.send_errors);
                self.books().oracle.unknown(message_id, expected);
            }
        }
    }

    /// Attempts a send on the sender's current node until it is acked, it
    /// is rejected for good, or the retry deadline passes.
    async fn send_until_acked(
        &self,
        sender: usize,
        dest: Dest,
        message_id: Uuid,
        conversation: Uuid,
        body: &serde_json::Value,
    ) -> Outcome {
        let mut backoff = Backoff::default();
        let mut may_have_landed = false;
        let mut first = true;
        loop {
            if !first {
                Counters::bump(&self.counters.send_retries);
            }
            first = false;
            let node = self.sender_node(sender);
            let started = self.now();
            self.outage_book().attempted(sender);
            let failure = match self
                .send_once(node, sender, dest, message_id, conversation, body)
                .await
            {
                Ok(ack) => {
                    self.outage_book().acked(sender, started, self.now());
                    return Outcome::Acked(ack);
                }
                Err(failure) => failure,
            };
            // Nchan publishes are not idempotent: never sent twice, and a
            // failure counts as before (unacked, nothing owed).
            if !self.target.ordered() {
                return Outcome::NotStored;
            }
            may_have_landed |= failure.may_have_landed();
            if !failure.retryable() {
                return if may_have_landed {
                    Outcome::Unknown
                } else {
                    Outcome::NotStored
                };
            }
            let failed_at = self.now();
            self.outage_book().failed(sender, started, failed_at);
            self.sender_failed_over(sender, node);
            let wait = backoff.failed();
            let deadline = Duration::from_micros(self.retry_until_us.load(Ordering::Relaxed));
            if self.stop.is_cancelled() || failed_at + wait > deadline {
                return if may_have_landed {
                    Outcome::Unknown
                } else {
                    Outcome::NotStored
                };
            }
            self.pause(wait).await;
        }
    }

    /// A client that lost the ack sends the same thing again: the answer
    /// must be the same message, marked as replayed, and nothing new stored
    /// (the oracle sees a second copy as a duplicate under a new seq).
    async fn replay(
        &self,
        sender: usize,
        dest: Dest,
        message_id: Uuid,
        conversation: Uuid,
        body: &serde_json::Value,
        first: &Ack,
    ) {
        Counters::bump(&self.counters.replays);
        let node = self.sender_node(sender);
        match self
            .send_once(node, sender, dest, message_id, conversation, body)
            .await
        {
            Ok(again) if again.message == first.message && again.replayed => {}
            // Another message, or a conflict: the server forgot or changed it.
            Ok(_) | Err(SendFailure::Rejected(409)) => self.books().oracle.replay_mismatch(),
            // No answer, or "come back later" (429, 503): an error, not a
            // wrong answer.
            Err(_) => Counters::bump(&self.counters.send_errors),
        }
    }

    async fn send_once(
        &self,
        node: usize,
        sender: usize,
        dest: Dest,
        message_id: Uuid,
        conversation: Uuid,
        body: &serde_json::Value,
    ) -> Result<Ack, SendFailure> {
        let who = &self.plan.users[sender];
        let requests = self
            .target
            .send(who, dest, message_id, conversation, body)
            .map_err(|_| SendFailure::Request {
                may_have_landed: false,
            })?;
        let mut ack = None;
        for request in requests {
            let reply = self
                .pool
                .call(node, &self.sources, request, self.settings.request_timeout)
                .await
                .map_err(|e| SendFailure::Request {
                    may_have_landed: failover::may_have_landed(&e),
                })?;
            let this = self
                .target
                .parse_ack(&reply)
                .map_err(|_| SendFailure::Rejected(reply.status.as_u16()))?;
            ack.get_or_insert(this);
        }
        ack.ok_or(SendFailure::Request {
            may_have_landed: false,
        })
    }
}
