//! Several target nodes, used like a multi-endpoint client uses them: what
//! says "this node cannot serve you now, try the next", the backoff between
//! attempts, and the figure of how long each user could not send.
//!
//! Pure (no I/O, no clock: times are offsets from the run's start), so
//! crafted timings test it.

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};

use crate::client::ClientError;
use crate::stats::Recorded;

/// A status that means "not this node, not now": another node may answer
/// (503: storage or the node not ready; 502/504: a node that could not
/// reach the owner it forwards to).
pub fn unavailable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// Whether a request that got no answer may still have been applied by the
/// server: only a connection that never opened (refused, unreachable) or a
/// request that was never built is sure not to have landed.
pub fn may_have_landed(e: &ClientError) -> bool {
    !matches!(e, ClientError::Connect(_) | ClientError::Build(_))
}

/// The node after `at` in a list of `n`.
pub fn next(at: usize, n: usize) -> usize {
    (at + 1) % n.max(1)
}

/// Exponential backoff between attempts that failed in a row, with jitter
/// (half to all of the ceiling), so a dead node's users do not come back in
/// lockstep. The first retry goes out almost at once: it goes to another
/// node.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_millis(25);
    pub const MAX: Duration = Duration::from_millis(500);

    /// The longest wait after `failures` failures in a row (1 or more).
    pub fn ceiling(failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(16);
        Self::FIRST.saturating_mul(1 << doublings).min(Self::MAX)
    }

    /// Counts one more failure and says how long to wait before the next
    /// attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        Self::ceiling(self.failures).mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }

    /// An attempt succeeded.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// One user's send outages so far.
#[derive(Debug, Default, Clone)]
struct UserOutage {
    /// The user made at least one send attempt.
    sent: bool,
    /// Whether it ever had a failed attempt.
    failed: bool,
    /// Start times of failed attempts that no ack has ended yet, ascending.
    open: Vec<Duration>,
    /// Recent acks as (attempt start, ack time): a failure is known only
    /// when its attempt ends, maybe after a later attempt was acked.
    recent: VecDeque<(Duration, Duration)>,
    /// The longest outage that has ended.
    longest: Duration,
}

/// Per user: the longest stretch from the start of a failed send attempt
/// until the ack of an attempt that started at or after it (a retry of the
/// same send or a later send). An attempt that was already under way when
/// the failed one started does not end it: it does not show that the user
/// can send again. A timed-out attempt counts from when it was made, so a
/// stopped node's outage includes the wait for the timeout.
#[derive(Debug, Default)]
pub struct OutageBook {
    users: Vec<UserOutage>,
    /// How long an attempt may take at most: acks older than this cannot
    /// end a failure reported later, and are forgotten.
    horizon: Duration,
}

/// The figure, as the summary and `--json` show it (`send_outage`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SendOutage {
    /// Users that made at least one send attempt.
    pub users: u64,
    /// Of those, users with at least one failed attempt.
    pub users_with_outage: u64,
    /// Users whose last outage no ack ended; counted until the end of the
    /// run, so their figure is a lower bound.
    pub unrecovered: u64,
    /// The longest outage of any user (ms).
    pub max_ms: f64,
    /// The 99th percentile over sending users (users without a failure
    /// count as 0 ms), nearest rank.
    pub p99_ms: f64,
    /// Every sending user's longest outage in ms, as (value, count), so
    /// worker processes' figures merge.
    pub histogram: Recorded,
}

impl OutageBook {
    /// For `users` users whose attempts take at most `horizon`.
    pub fn new(users: usize, horizon: Duration) -> OutageBook {
        OutageBook {
            users: vec![UserOutage::default(); users],
            horizon,
        }
    }

    /// `user` starts a send attempt.
    pub fn attempted(&mut self, user: usize) {
        if let Some(u) = self.users.get_mut(user) {
            u.sent = true;
        }
    }

    /// An attempt of `user` made at `started` failed (no answer, or
    /// "unavailable"), as found out at `at`.
    pub fn failed(&mut self, user: usize, started: Duration, at: Duration) {
        let horizon = self.horizon;
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        u.sent = true;
        u.failed = true;
        u.recent.retain(|&(s, _)| s + horizon >= at);
        // A later attempt already got through: this outage is over.
        let ended = u
            .recent
            .iter()
            .filter(|&&(s, _)| s >= started)
            .map(|&(_, t)| t)
            .min();
        match ended {
            Some(t) => u.longest = u.longest.max(t.saturating_sub(started)),
            None => {
                let i = u.open.partition_point(|&o| o <= started);
                u.open.insert(i, started);
            }
        }
    }

    /// An attempt of `user` made at `started` was acked at `at`.
    pub fn acked(&mut self, user: usize, started: Duration, at: Duration) {
        let horizon = self.horizon;
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        u.sent = true;
        // Failures of attempts made at or before this one are over.
        let covered = u.open.partition_point(|&o| o <= started);
        if let Some(&first) = u.open.first()
            && covered > 0
        {
            u.longest = u.longest.max(at.saturating_sub(first));
            u.open.drain(..covered);
        }
        u.recent.retain(|&(s, _)| s + horizon >= at);
        u.recent.push_back((started, at));
    }

    /// The figure at `end` (outages still open count until then).
    pub fn finish(&self, end: Duration) -> SendOutage {
        let mut out = SendOutage::default();
        let mut longest: Vec<u64> = Vec::new();
        for u in self.users.iter().filter(|u| u.sent) {
            let mut worst = u.longest;
            if let Some(&since) = u.open.first() {
                out.unrecovered += 1;
                worst = worst.max(end.saturating_sub(since));
            }
            out.users_with_outage += u64::from(u.failed);
            longest.push(worst.as_millis() as u64);
        }
        out.users = longest.len() as u64;
        longest.sort_unstable();
        out.max_ms = longest.last().copied().unwrap_or(0) as f64;
        out.p99_ms = nearest_rank(&longest, 0.99) as f64;
        let mut h = ms_histogram();
        for &v in &longest {
            let _ = h.record(v);
        }
        out.histogram = Recorded::of(&h);
        out
    }
}

/// The `q` quantile of sorted `values` by nearest rank (0 when empty).
fn nearest_rank(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Outages in milliseconds, zero included, up to an hour.
fn ms_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3).expect("static bounds are valid")
}

impl SendOutage {
    /// Merges worker processes' figures (the p99 then comes from the
    /// merged histogram, to its 3 significant digits).
    pub fn merge(parts: &[&SendOutage]) -> SendOutage {
        let mut h = ms_histogram();
        let mut out = SendOutage::default();
        for p in parts {
            out.users += p.users;
            out.users_with_outage += p.users_with_outage;
            out.unrecovered += p.unrecovered;
            out.max_ms = out.max_ms.max(p.max_ms);
            for &(v, n) in &p.histogram.0 {
                let _ = h.record_n(v.min(3_600_000), n);
            }
        }
        if !h.is_empty() {
            out.p99_ms = h.value_at_quantile(0.99) as f64;
        }
        out.histogram = Recorded::of(&h);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn book(users: usize) -> OutageBook {
        OutageBook::new(users, ms(2000))
    }

    /// A failure found out as soon as the attempt was made (refused).
    fn refused(book: &mut OutageBook, user: usize, at: u64) {
        book.failed(user, ms(at), ms(at));
    }

    #[test]
    fn an_outage_runs_from_the_first_failure_to_the_next_ack() {
        let mut book = book(3);
        // User 0: refused at 1 s, retries refused at 1.2 and 1.5 s, the
        // retry made at 3.9 s is acked at 4 s.
        book.attempted(0);
        refused(&mut book, 0, 1000);
        refused(&mut book, 0, 1200);
        refused(&mut book, 0, 1500);
        book.acked(0, ms(3900), ms(4000));
        // User 1 never fails.
        book.attempted(1);
        book.acked(1, ms(100), ms(110));
        // User 2 never sends.
        let f = book.finish(ms(10_000));
        assert_eq!(f.users, 2);
        assert_eq!(f.users_with_outage, 1);
        assert_eq!(f.unrecovered, 0);
        assert_eq!(f.max_ms, 3000.0);
        // Nearest rank over two users: the 99th percentile is the worse one.
        assert_eq!(f.p99_ms, 3000.0);
    }

    #[test]
    fn an_ack_of_an_attempt_begun_before_the_failure_does_not_end_it() {
        let mut book = book(1);
        // A send goes out at 0.9 s (to a node that still answers), another
        // is refused at 1 s; the first one's ack at 1.1 s says nothing
        // about the second.
        refused(&mut book, 0, 1000);
        book.acked(0, ms(900), ms(1100));
        // A later send, made at 2 s, is acked at 2.5 s: that ends it.
        book.acked(0, ms(2000), ms(2500));
        let f = book.finish(ms(9000));
        assert_eq!(f.max_ms, 1500.0);
        assert_eq!(f.unrecovered, 0);
    }

    #[test]
    fn a_timed_out_attempt_counts_from_when_it_was_made() {
        let mut book = book(1);
        // A stopped node: the attempt made at 1 s times out at 3 s, its
        // retry at 3.02 s times out at 5.02 s, the next one, made at 5.05 s
        // on another node, is acked at 5.1 s.
        book.failed(0, ms(1000), ms(3000));
        book.failed(0, ms(3020), ms(5020));
        book.acked(0, ms(5050), ms(5100));
        assert_eq!(book.finish(ms(9000)).max_ms, 4100.0);
    }

    #[test]
    fn a_failure_found_out_after_a_later_attempt_got_through_is_over() {
        let mut book = book(1);
        // Made at 1 s, times out at 3 s; meanwhile a send made at 1.5 s
        // was acked at 1.6 s: the user could send after 0.6 s.
        book.acked(0, ms(1500), ms(1600));
        book.failed(0, ms(1000), ms(3000));
        let f = book.finish(ms(9000));
        assert_eq!((f.max_ms, f.unrecovered), (600.0, 0));
    }

    #[test]
    fn an_ack_ends_only_the_failures_of_attempts_made_before_it() {
        let mut book = book(1);
        // Failures of attempts made at 1 s and 2 s (found out at 3 s and
        // 4 s); an attempt made at 1.5 s is acked at 4.5 s: it ends the
        // first (3.5 s), not the second, which the ack at 6 s of an
        // attempt made at 5 s ends (4 s).
        book.failed(0, ms(1000), ms(3000));
        book.failed(0, ms(2000), ms(4000));
        book.acked(0, ms(1500), ms(4500));
        book.acked(0, ms(5000), ms(6000));
        let f = book.finish(ms(9000));
        assert_eq!((f.max_ms, f.unrecovered), (4000.0, 0));
    }

    #[test]
    fn the_longest_of_several_outages_counts() {
        let mut book = book(1);
        refused(&mut book, 0, 1000);
        book.acked(0, ms(1050), ms(1400)); // 400 ms
        refused(&mut book, 0, 5000);
        book.acked(0, ms(5000), ms(7500)); // 2,500 ms
        refused(&mut book, 0, 8000);
        book.acked(0, ms(8100), ms(8200)); // 200 ms
        let f = book.finish(ms(9000));
        assert_eq!(f.max_ms, 2500.0);
        assert_eq!(f.users_with_outage, 1);
    }

    #[test]
    fn an_outage_no_ack_ends_counts_until_the_end_and_is_flagged() {
        let mut book = book(2);
        refused(&mut book, 0, 2000);
        refused(&mut book, 0, 2500);
        book.attempted(1);
        let f = book.finish(ms(12_000));
        assert_eq!(f.unrecovered, 1);
        assert_eq!(f.max_ms, 10_000.0);
        assert_eq!(f.users, 2);
    }

    #[test]
    fn p99_is_over_every_sending_user_and_merges_across_workers() {
        // 200 users: 197 never fail, three are out 1, 2 and 5 s.
        let mut book = book(200);
        for u in 0..200 {
            book.attempted(u);
        }
        for (u, out) in [(10, 1000), (20, 2000), (30, 5000)] {
            refused(&mut book, u, 100);
            book.acked(u, ms(100 + out), ms(100 + out));
        }
        let f = book.finish(ms(6000));
        assert_eq!((f.users, f.users_with_outage), (200, 3));
        assert_eq!(f.max_ms, 5000.0);
        // Rank 198 of 200 in ascending order: the 1 s user.
        assert_eq!(f.p99_ms, 1000.0);
        let merged = SendOutage::merge(&[&f, &f]);
        assert_eq!((merged.users, merged.users_with_outage), (400, 6));
        assert_eq!(merged.max_ms, 5000.0);
        // Rank 396 of 400: the 1 s users again (to the histogram's precision).
        assert!((merged.p99_ms - 1000.0).abs() <= 1.0, "{merged:?}");
    }

    #[test]
    fn backoff_doubles_from_the_first_wait_up_to_its_cap() {
        assert_eq!(Backoff::ceiling(1), Backoff::FIRST);
        assert_eq!(Backoff::ceiling(2), Backoff::FIRST * 2);
        assert_eq!(Backoff::ceiling(3), Backoff::FIRST * 4);
        assert_eq!(Backoff::ceiling(40), Backoff::MAX);
        let mut b = Backoff::default();
        for _ in 0..50 {
            let wait = b.failed();
            assert!(wait <= Backoff::MAX);
        }
        b.reset();
        assert!(b.failed() <= Backoff::FIRST);
    }

    #[test]
    fn which_answers_send_a_client_to_the_next_node() {
        assert!(unavailable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(unavailable(StatusCode::BAD_GATEWAY));
        assert!(unavailable(StatusCode::GATEWAY_TIMEOUT));
        assert!(!unavailable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!unavailable(StatusCode::CONFLICT));
        let refused = ClientError::Connect(std::io::ErrorKind::ConnectionRefused.into());
        assert!(!may_have_landed(&refused));
        assert!(may_have_landed(&ClientError::Timeout));
        assert_eq!(next(2, 3), 0);
        assert_eq!(next(0, 1), 0);
    }
}
