//! Long polling: answer at once when events wait, else park until one
//! arrives, the hold time passes, the ring moves the user to another node,
//! or the node shuts down.

use std::pin::pin;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::waiters::Refused;
use super::{Error, Result, Service};
use crate::domain::{Cursor, UserId};
use crate::metrics::Metrics;

#[derive(Clone, Copy, Debug)]
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
                cursor: self.head(user).await?,
                timed_out: false,
            });
        };
        let batch = self.read_after(user, cursor, req.limit).await?;
        let shutdown = &self.inner.shutdown;
        if !batch.events.is_empty() {
            return Ok(self.answer(batch, false));
        }
        if req.timeout.is_zero() || shutdown.is_cancelled() {
            return Ok(PollAnswer {
                events: Vec::new(),
                cursor,
                timed_out: true,
            });
        }

        let registration = self.inner.mailbox_waiters.register(user).map_err(|r| {
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
        })?;
        let parked = Parked::new(&self.inner.metrics);
        let deadline = tokio::time::Instant::now() + req.timeout;
        loop {
            let mut woken = pin!(registration.notified());
            woken.as_mut().enable();
            let batch = self.read_after(user, cursor, req.limit).await?;
            if !batch.events.is_empty() {
                parked.answer();
                return Ok(self.answer(batch, true));
            }
            tokio::select! {
                _ = woken => {}
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
        Ok(PollAnswer {
            events: Vec::new(),
            cursor,
            timed_out: true,
        })
    }

    fn answer(&self, batch: super::mailbox::Batch, was_parked: bool) -> PollAnswer {
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
