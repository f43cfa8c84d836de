//! Long polling: answer at once when events wait, else park until one
//! arrives, the hold time passes, the ring moves the user to another node,
//! or the node shuts down.

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fanout::{Reading, is_group_event};
use super::waiters::Refused;
use super::{Error, Result, Service};
use crate::domain::{ConversationId, Cursor, Event, Position, Seq, UserId};
use crate::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct PollRequest {
    pub cursor: Option<Cursor>,
    /// Already clamped to the configured maximum.
    pub timeout: Duration,
    pub limit: usize,
}

#[derive(Debug)]
pub struct PollAnswer {
    /// Each event's JSON, oldest first.
    pub events: Vec<Bytes>,
    pub cursor: Cursor,
    pub timed_out: bool,
}

impl PollAnswer {
    /// Nothing arrived before the hold ended.
    fn timed_out(cursor: Cursor) -> PollAnswer {
        PollAnswer {
            events: Vec::new(),
            cursor,
            timed_out: true,
        }
    }
}

/// Ready once any of `wakes` is.
fn any_ready<F: std::future::Future + Unpin>(
    wakes: &mut [F],
) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| {
        for w in wakes.iter_mut() {
            if std::pin::Pin::new(&mut *w).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
}

/// A parked poll, counted in the gauge while it lives; one dropped before
/// it answered was cut by its client or something in between.
struct Parked<'a> {
    metrics: &'a Metrics,
    since: Instant,
    answered: bool,
}

impl<'a> Parked<'a> {
    fn new(metrics: &'a Metrics) -> Parked<'a> {
        metrics.parked_polls.inc();
        Parked {
            metrics,
            since: Instant::now(),
            answered: false,
        }
    }

    fn answer(mut self) {
        self.answered = true;
        self.metrics
            .poll_wait_seconds
            .observe(self.since.elapsed().as_secs_f64());
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.metrics.parked_polls.dec();
        if !self.answered {
            self.metrics.polls_abandoned.inc();
        }
    }
}

impl Service {
    pub async fn poll(&self, user: UserId, req: PollRequest) -> Result<PollAnswer> {
        let Some(cursor) = req.cursor else {
            return Ok(PollAnswer {
                events: Vec::new(),
                cursor: Box::pin(self.stream_head(user)).await?,
                timed_out: false,
            });
        };
        let shutdown = &self.inner.shutdown;
        // Boxed: a parked poll's future is as large as its largest await,
        // and reading is far larger than waiting.
        let first = Box::pin(self.gather(user, &cursor, req.limit, None)).await?;
        if !first.events.is_empty() {
            return Ok(self.answer(first, false));
        }
        if req.timeout.is_zero() || shutdown.is_cancelled() {
            return Ok(PollAnswer::timed_out(first.cursor));
        }

        let registration = self
            .inner
            .mailbox_waiters
            .register(user)
            .map_err(|r| self.refused(r))?;
        let parked = Parked::new(&self.inner.metrics);
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut cursor = first.cursor;
        loop {
            // Registered before reading, so a wake between the read and
            // the wait is not lost: on the mailbox, and on every large
            // group the user reads.
            let readings = Box::pin(self.readings(user)).await?;
            let streams: Vec<_> = readings
                .iter()
                .filter(|r| r.until.is_none())
                .filter_map(|r| {
                    self.watch_stream(r.group);
                    self.inner.stream_waiters.register(r.group).ok()
                })
                .collect();
            let mut woken = pin!(registration.notified());
            woken.as_mut().enable();
            let mut stream_woken: Vec<_> = streams.iter().map(|r| Box::pin(r.notified())).collect();
            for w in &mut stream_woken {
                w.as_mut().enable();
            }
            let batch =
                Box::pin(self.gather(user, &cursor, req.limit, Some(readings.clone()))).await?;
            if !batch.events.is_empty() {
                parked.answer();
                return Ok(self.answer(batch, true));
            }
            cursor = batch.cursor;
            let any_stream = any_ready(&mut stream_woken);
            // Another node's tail is looked at again after STALE even
            // without a wake (a wake can be lost). Only users in large
            // groups carry this second timer, boxed.
            let mut recheck =
                (!streams.is_empty()).then(|| Box::pin(tokio::time::sleep(super::fanout::STALE)));
            let recheck = std::future::poll_fn(|cx| match recheck.as_mut() {
                Some(sleep) => sleep.as_mut().poll(cx),
                None => std::task::Poll::Pending,
            });
            tokio::select! {
                _ = woken => {}
                _ = any_stream => {}
                _ = recheck => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
            }
            // The ring moved the user elsewhere (the takeover wakes every
            // poll when it does): the client's next poll reaches the new
            // owner, which gets the events this node no longer receives.
            if !self.inner.cluster.serves(user.0.as_bytes()) {
                break;
            }
        }
        parked.answer();
        Ok(PollAnswer::timed_out(cursor))
    }

    /// A poll refused for the parked-poll limit of its user or the node.
    fn refused(&self, r: Refused) -> Error {
        let limit = match r {
            Refused::PerKey => "user",
            Refused::Total => "node",
        };
        self.inner
            .metrics
            .polls_refused
            .with_label_values(&[limit])
            .inc();
        Error::TooManyPolls(limit)
    }

    /// The cursor of a new device: the mailbox's head, and the head of
    /// every large group's stream the user reads.
    async fn stream_head(&self, user: UserId) -> Result<Cursor> {
        let mut cursor = Cursor::at(self.head(user).await?);
        for r in self.readings(user).await?.iter() {
            if r.until.is_some() {
                continue;
            }
            let tail = self.stream_tail(r.group, None).await?;
            cursor.set_group(r.group, tail.head.max(r.after));
        }
        Ok(cursor)
    }

    /// Up to `limit` events after `cursor`: the mailbox's first, then those
    /// of the user's large groups (`known`: the caller just looked them up).
    async fn gather(
        &self,
        user: UserId,
        cursor: &Cursor,
        limit: usize,
        known: Option<Arc<Vec<Reading>>>,
    ) -> Result<Gathered> {
        let batch = self.read_after(user, cursor.mailbox, limit).await?;
        let readings = match known {
            // It may have joined or left a large group.
            _ if batch.events.iter().any(|e| is_group_event(&e.json)) => {
                self.inner.streams.forget_readings(&user);
                self.readings(user).await?
            }
            Some(known) => known,
            None => self.readings(user).await?,
        };
        let mut mailbox = batch.events;
        let mut reached = batch.cursor;
        if !readings.is_empty() {
            // A receipt for a large group's message waits until this
            // device has the message from the stream (an earlier answer):
            // the mailbox and the stream are two sources, read in turn.
            let early = mailbox.iter().position(|e| {
                receipt_of(&e.json).is_some_and(|(conv, up_to)| {
                    readings.iter().any(|r| {
                        r.group == conv
                            && cursor.group(conv).map_or(r.after, |p| p.max(r.after)).seq < up_to
                    })
                })
            });
            if let Some(i) = early {
                mailbox.truncate(i);
                reached = mailbox
                    .last()
                    .map_or(cursor.mailbox, |e| Position(e.position));
            }
        }
        let mut next = Cursor::at(reached);
        let mut events: Vec<Delivered> = mailbox
            .into_iter()
            .map(|e| Delivered {
                json: e.json,
                durable_at: e.durable_at,
            })
            .collect();
        for r in readings.iter() {
            let given = cursor.group(r.group);
            let after = given.map_or(r.after, |p| p.max(r.after));
            if r.until.is_some_and(|until| after >= until) {
                // Left, and caught up to where it left: nothing more.
                continue;
            }
            if events.len() >= limit {
                next.set_group(r.group, after);
                continue;
            }
            let (items, tail) = self
                .stream_after(r.group, after, limit - events.len())
                .await?;
            if given.is_some_and(|p| p > tail.head) {
                // Ahead of the stream here: maybe only of this node's copy.
                let tail = self.stream_tail(r.group, given).await?;
                if given.is_some_and(|p| p > tail.head) {
                    return Err(Error::InvalidCursor);
                }
            }
            let mut reached = after;
            for item in items {
                reached = item.pos;
                if r.receives(item.pos, &tail, user) {
                    events.push(Delivered {
                        json: item.event,
                        durable_at: None,
                    });
                }
            }
            next.set_group(r.group, reached);
        }
        Ok(Gathered {
            events,
            cursor: next,
        })
    }

    fn answer(&self, batch: Gathered, was_parked: bool) -> PollAnswer {
        let metrics = &self.inner.metrics;
        metrics.events_delivered.inc_by(batch.events.len() as u64);
        let now = Instant::now();
        let events = batch
            .events
            .into_iter()
            .map(|e| {
                if was_parked && let Some(at) = e.durable_at {
                    metrics
                        .delivery_seconds
                        .observe(now.saturating_duration_since(at).as_secs_f64());
                }
                e.json
            })
            .collect();
        PollAnswer {
            events,
            cursor: batch.cursor,
            timed_out: false,
        }
    }
}

/// The conversation and `up_to_seq` of a receipt event.
fn receipt_of(event: &[u8]) -> Option<(ConversationId, Seq)> {
    if !event.starts_with(br#"{"type":"receipt""#) {
        return None;
    }
    let parsed: Event = serde_json::from_slice(event).ok()?;
    match parsed {
        Event::Receipt { receipt } => Some((receipt.conversation_id, receipt.up_to_seq)),
        _ => None,
    }
}

/// What one read of a user's mailbox and streams found.
struct Gathered {
    events: Vec<Delivered>,
    cursor: Cursor,
}

struct Delivered {
    json: Bytes,
    durable_at: Option<Instant>,
}
