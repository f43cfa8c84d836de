//! Per-user send rate limits: a token bucket per user.
//!
//! Each user's bucket holds up to `burst` sends and refills at `rate` per
//! second; a send finding it empty is refused with the time until the next
//! token. Full buckets are forgotten, so memory follows active senders.

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
