//! A virtual device: one connection, one long poll at a time, re-polling at
//! once with the returned cursor, as a real client does. With
//! `--cut-polls` some polls are cut by dropping the connection at a random
//! moment (as a proxy that kills idle connections would); the device then
//! reconnects and polls again from the same cursor. With several target
//! nodes, a poll that gets no answer (refused, reset, or, on Carrier,
//! nothing within --poll-timeout plus --request-timeout) or a 502/503/504
//! moves the device
//! to the next node, where it polls on from the same cursor (a cursor is a
//! position in the user's mailbox, valid on every node).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Conn;
use crate::engine::Engine;
use crate::failover::{self, Backoff};
use crate::oracle::Delivery;
use crate::stats::Counters;
use crate::wire::Event;

/// The longest random moment at which a poll is cut.
const CUT_WITHIN: Duration = Duration::from_millis(1000);

impl Engine {
    pub async fn device_loop(
        self: Arc<Self>,
        d: usize,
        mut node: usize,
        conn: Conn,
        mut cursor: String,
    ) {
        let device = &self.plan.devices[d];
        let who = &self.plan.users[device.user];
        let mut conn = Some(conn);
        let c = &self.counters;
        let mut backoff = Backoff::default();
        // A Carrier poll's answer is due within its park time plus the usual
        // request bound; past that the node counts as gone. (Nchan parks a
        // poll for as long as its own configuration says.)
        let poll_bound = self.target.ordered().then(|| {
            Duration::from_secs(self.settings.poll_timeout) + self.settings.request_timeout
        });
        while !self.stop.is_cancelled() {
            let mut open = match conn.take() {
                Some(open) if open.is_open() => open,
                _ => match Conn::open(self.nodes[node], &self.sources).await {
                    Ok(open) => open,
                    Err(_) => {
                        Counters::bump(&c.poll_errors);
                        node = self.device_failed_over(node);
                        self.pause(backoff.failed()).await;
                        continue;
                    }
                },
            };
            let request =
                match self
                    .target
                    .poll(who, device.channel, &cursor, self.settings.poll_timeout)
                {
                    Ok(r) => r,
                    Err(_) => return,
                };
            let cut = (rand::random::<f64>() < self.settings.cut_polls)
                .then(|| CUT_WITHIN.mul_f64(rand::random::<f64>()));
            Counters::bump(&c.polls);
            c.parked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = tokio::select! {
                r = within(poll_bound, open.call(request)) => Some(r),
                _ = sleep_or_never(cut) => None,
                _ = self.stop.cancelled() => {
                    c.parked.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            };
            c.parked.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let Some(result) = outcome else {
                // Cut: drop the connection mid-poll, poll again from the same cursor.
                Counters::bump(&c.cut_polls);
                drop(open);
                continue;
            };
            match result {
                Ok(Ok(reply)) => match self.target.parse_poll(&reply, &cursor) {
                    Ok((events, next)) => {
                        backoff.reset();
                        self.on_events(d, &events, Instant::now());
                        cursor = next;
                        conn = Some(open);
                    }
                    Err(_) if failover::unavailable(reply.status) => {
                        Counters::bump(&c.poll_errors);
                        node = self.device_failed_over(node);
                        self.pause(backoff.failed()).await;
                    }
                    Err(_) => {
                        Counters::bump(&c.poll_errors);
                        let wait = if reply.status.as_u16() == 429 {
                            1000
                        } else {
                            100
                        };
                        conn = Some(open);
                        self.pause(Duration::from_millis(wait)).await;
                    }
                },
                // No answer (reset, closed, or nothing in time).
                Ok(Err(_)) | Err(_) => {
                    Counters::bump(&c.poll_errors);
                    node = self.device_failed_over(node);
                    self.pause(backoff.failed()).await;
                }
            }
        }
    }

    /// A device's node failed it: the next node in the list (counted as a
    /// failover when there is another).
    fn device_failed_over(&self, node: usize) -> usize {
        let next = failover::next(node, self.nodes.len());
        if next != node {
            Counters::bump(&self.counters.failovers);
        }
        next
    }

    pub async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stop.cancelled() => {}
        }
    }

    /// Books one poll's events: oracle first, then the latency of each first
    /// delivery to a device of someone other than the sender.
    pub fn on_events(self: &Arc<Self>, d: usize, events: &[Event], now: Instant) {
        if events.is_empty() {
            return;
        }
        let user = self.plan.devices[d].user;
        let mut timed = Vec::new();
        let mut to_mark = Vec::new();
        let mut redelivered = 0;
        {
            let mut books = self.books();
            for event in events {
                match event {
                    Event::Message(m) => {
                        let own = books
                            .meta
                            .get(&m.message_id)
                            .is_some_and(|x| x.sender == user);
                        match books.oracle.delivered(d, m, own) {
                            Delivery::First { tag } => {
                                let Some(meta) = books.meta.get(&m.message_id) else {
                                    continue;
                                };
                                if meta.sender != user {
                                    timed.push((tag, now.saturating_duration_since(meta.due)));
                                    if let Some(seq) = m.seq
                                        && rand::random::<f64>() < self.settings.read_receipts
                                    {
                                        to_mark.push((m.conversation_id, seq));
                                    }
                                }
                            }
                            Delivery::Duplicate => redelivered += 1,
                            Delivery::Rejected => {}
                        }
                    }
                    Event::Read {
                        conversation_id,
                        up_to_seq,
                    } => books.oracle.receipt(d, *conversation_id, *up_to_seq),
                    Event::Malformed => books.oracle.malformed(),
                    Event::Other => {}
                }
            }
        }
        self.counters
            .delivered
            .fetch_add(timed.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.counters
            .redelivered
            .fetch_add(redelivered, std::sync::atomic::Ordering::Relaxed);
        self.rec.deliveries(&timed);
        for (conversation_id, seq) in to_mark {
            let engine = self.clone();
            tokio::spawn(async move { engine.mark_read(user, conversation_id, seq).await });
        }
    }

    async fn mark_read(&self, user: usize, conversation_id: uuid::Uuid, seq: u64) {
        let who = &self.plan.users[user];
        let Ok(request) = self.target.read_receipt(who, conversation_id, seq) else {
            return;
        };
        match self.call_as(user, 2 * self.nodes.len(), request).await {
            Ok(reply) if reply.status.is_success() => Counters::bump(&self.counters.receipts),
            _ => Counters::bump(&self.counters.send_errors),
        }
    }
}

/// `f`, bounded by `bound` if there is one.
async fn within<T>(
    bound: Option<Duration>,
    f: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    match bound {
        Some(bound) => tokio::time::timeout(bound, f).await,
        None => Ok(f.await),
    }
}

async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
