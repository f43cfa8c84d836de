//! Per-user send rate limits: a token bucket per user. And the node's
//! bound on sends in progress ([`InFlight`]).
//!
//! Each user's bucket holds up to `burst` sends and refills at `rate` per
//! second; a send finding it empty is refused with the time until the next
//! token. Full buckets are forgotten, so memory follows active senders.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::domain::UserId;

/// Buckets kept before full ones are swept out.
const SWEEP_ABOVE: usize = 100_000;

pub struct SendRate {
    /// Tokens per second; `None`: no limit.
    rate: Option<f64>,
    burst: f64,
    buckets: DashMap<UserId, Bucket>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl SendRate {
    /// `rate` sends per second per user (0: unlimited), `burst` at once.
    pub fn new(rate: u32, burst: u32) -> SendRate {
        SendRate {
            rate: (rate > 0).then_some(f64::from(rate)),
            burst: f64::from(burst.max(1)),
            buckets: DashMap::new(),
        }
    }

    /// Takes a token for one send by `user`, or says how long to wait.
    pub fn take(&self, user: UserId) -> Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let now = Instant::now();
        if self.buckets.len() > SWEEP_ABOVE {
            self.sweep(rate, now);
        }
        let mut bucket = self.buckets.entry(user).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refilled = bucket.tokens + rate * now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = refilled.min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Drops the buckets that have refilled: they hold nothing to remember.
    fn sweep(&self, rate: f64, now: Instant) {
        self.buckets
            .retain(|_, b| b.tokens + rate * now.duration_since(b.at).as_secs_f64() < self.burst);
    }

    /// Users with a bucket (for tests).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Sends in progress on this node, its clients' and those forwarded to it,
/// and how long they have been taking. Past `max` in progress, or when
/// sends lately took longer than `target` on average (with more than a few
/// in progress), a send is refused at once (`429` with `Retry-After`)
/// instead of joining a queue that only grows: an overloaded ring queued
/// sends into tens of seconds of latency, clients timed out and retried,
/// and the retries were more work for a store already behind.
pub struct InFlight {
    count: Arc<AtomicUsize>,
    /// Moving average of recent sends' time in progress, in microseconds.
    average_us: Arc<AtomicU64>,
    max: usize,
    target: Duration,
}

/// Sends in progress below which the average is not looked at: a few slow
/// sends (waiting for a `prev_message_id`, say) are not overload, and
/// admitting them is what brings the average down again after a refusal.
const FLOOR: usize = 16;

/// One send's place; given back, and its time counted, when dropped.
pub struct Slot {
    count: Arc<AtomicUsize>,
    average_us: Arc<AtomicU64>,
    started: Instant,
}

impl InFlight {
    pub fn new(max: usize, target: Duration) -> InFlight {
        InFlight {
            count: Arc::default(),
            average_us: Arc::default(),
            max,
            target,
        }
    }

    /// A place for one more send, or why not.
    pub fn enter(&self) -> Result<Slot, Shed> {
        let before = self.count.fetch_add(1, Ordering::AcqRel);
        let slow = before >= FLOOR
            && self.average_us.load(Ordering::Relaxed) > self.target.as_micros() as u64;
        if before >= self.max || slow {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(if slow {
                Shed::Slow(Duration::from_micros(
                    self.average_us.load(Ordering::Relaxed),
                ))
            } else {
                Shed::Full(self.max)
            });
        }
        Ok(Slot {
            count: self.count.clone(),
            average_us: self.average_us.clone(),
            started: Instant::now(),
        })
    }
}

/// Why a send was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Shed {
    /// This many sends were in progress: the limit.
    Full(usize),
    /// Sends lately took this long on average, over the target.
    Slow(Duration),
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        let took = self.started.elapsed().as_micros() as u64;
        // An average over the last ~16 sends.
        let _ = self
            .average_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(avg - avg / 16 + took / 16)
            });
    }
}

#[cfg(test)]
mod in_flight_tests {
    use std::time::Duration;

    use super::{FLOOR, InFlight, Shed};

    #[test]
    fn sends_past_the_bound_are_refused_until_one_ends() {
        let gate = InFlight::new(2, Duration::from_secs(1));
        let a = gate.enter().expect("first");
        let _b = gate.enter().expect("second");
        assert_eq!(gate.enter().err(), Some(Shed::Full(2)));
        drop(a);
        assert!(gate.enter().is_ok(), "a place again once one ended");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_sends_shed_new_ones_until_they_speed_up() {
        let gate = InFlight::new(1000, Duration::from_millis(100));
        // Sends that take 1 s each raise the average over the target.
        let slow: Vec<_> = (0..40).map(|_| gate.enter().expect("admitted")).collect();
        tokio::time::advance(Duration::from_secs(1)).await;
        let held: Vec<_> = (0..FLOOR)
            .map(|_| gate.enter().expect("below the floor"))
            .collect();
        drop(slow);
        assert!(
            matches!(gate.enter(), Err(Shed::Slow(_))),
            "slow sends shed new ones"
        );
        // Below the floor sends are admitted, and fast ones bring the
        // average down.
        drop(held);
        for _ in 0..200 {
            drop(gate.enter().expect("below the floor"));
        }
        let again: Vec<_> = (0..FLOOR)
            .map(|_| gate.enter().expect("admitted"))
            .collect();
        assert!(gate.enter().is_ok(), "fast again: admitted above the floor");
        drop(again);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId(uuid::Uuid::new_v4())
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let limit = SendRate::new(2, 3);
        let u = user();
        for _ in 0..3 {
            assert!(limit.take(u).is_ok());
        }
        let wait = limit.take(u).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        // Another user has its own bucket.
        assert!(limit.take(user()).is_ok());
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limit.take(u).is_ok());
        assert!(limit.take(u).is_err());
        // Refills up to the burst, no further.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert!(limit.take(u).is_ok());
        }
        assert!(limit.take(u).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_no_limit() {
        let limit = SendRate::new(0, 1);
        let u = user();
        for _ in 0..10_000 {
            assert!(limit.take(u).is_ok());
        }
        assert_eq!(limit.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_swept() {
        let limit = SendRate::new(1000, 1);
        for _ in 0..=SWEEP_ABOVE {
            limit.take(user()).unwrap();
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        limit.take(user()).unwrap();
        assert!(limit.tracked() < 10, "{}", limit.tracked());
    }
}
