//! Hold times that fit the client's network.
//!
//! Two things shorten a poll's hold below what the client asked for:
//! jitter (a random share, so a crowd woken together does not re-poll in
//! lockstep), and what was learned about this user's device: when its polls
//! are cut before their hold ends again and again (a proxy or NAT with an
//! idle cut-off in between), later holds stay below the shortest cut seen.

use std::time::Duration;

use quick_cache::sync::Cache;
use tokio::time::Instant;

use crate::domain::UserId;

/// Cuts in a row that make a device's cut-off believed.
pub const CUTS_TO_LEARN: u8 = 2;
/// A learned cap sits this far below the shortest cut seen.
const CAP_SHARE: f64 = 0.8;
/// A cap is never shorter than this (a cut this early is the client leaving).
const MIN_CAP: Duration = Duration::from_secs(1);
/// Drops earlier than this are not cuts by a proxy: the client went away.
const MIN_CUT: Duration = Duration::from_secs(1);
/// What was learned is forgotten after this, so a device that moved to a
/// better network gets full holds again.
pub const LEARNED_FOR: Duration = Duration::from_secs(600);
/// Devices remembered at most (least recently used go first).
const DEVICES: usize = 100_000;

/// A device: a user, and the `device` a client names (empty when it names none).
type DeviceKey = (UserId, String);

#[derive(Clone, Copy, Debug)]
struct Learned {
    /// Cuts in a row, none answered at its full hold in between.
    cuts: u8,
    /// The shortest of those cuts.
    shortest: Duration,
    /// The hold ceiling, once cuts were believed.
    cap: Option<Duration>,
    at: Instant,
}

/// The hold a poll gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hold {
    pub duration: Duration,
    /// Whether a learned cut-off shortened it.
    pub capped: bool,
}

pub struct HoldTimes {
    jitter_percent: u8,
    learn: bool,
    devices: Cache<DeviceKey, Learned>,
}

impl HoldTimes {
    pub fn new(jitter_percent: u8, learn: bool) -> HoldTimes {
        HoldTimes {
            jitter_percent: jitter_percent.min(100),
            learn,
            devices: Cache::new(DEVICES),
        }
    }

    /// The hold for a poll that asked for `requested`; `unit` in [0, 1)
    /// picks the jitter (random in production, fixed in tests).
    pub fn hold(&self, user: UserId, device: &str, requested: Duration, unit: f64) -> Hold {
        let cap = self.learned(user, device).and_then(|l| l.cap);
        let (base, capped) = match cap {
            Some(cap) if cap < requested => (cap, true),
            _ => (requested, false),
        };
        let share = f64::from(self.jitter_percent) / 100.0 * unit.clamp(0.0, 1.0);
        Hold {
            duration: base.mul_f64(1.0 - share),
            capped,
        }
    }

    /// A poll of this device was dropped unanswered after `held` of its
    /// `hold`. Returns whether it counts as a cut.
    pub fn cut(&self, user: UserId, device: &str, held: Duration, hold: Duration) -> bool {
        if held < MIN_CUT || held >= hold {
            return false;
        }
        if !self.learn {
            return true;
        }
        let now = Instant::now();
        let mut learned = self.learned(user, device).unwrap_or(Learned {
            cuts: 0,
            shortest: held,
            cap: None,
            at: now,
        });
        learned.cuts = learned.cuts.saturating_add(1);
        learned.shortest = learned.shortest.min(held);
        learned.at = now;
        if learned.cuts >= CUTS_TO_LEARN {
            let cap = learned.shortest.mul_f64(CAP_SHARE).max(MIN_CAP);
            learned.cap = Some(learned.cap.map_or(cap, |c| c.min(cap)));
        }
        self.devices.insert((user, device.to_owned()), learned);
        true
    }

    /// A poll of this device was held for its whole `hold` and answered:
    /// the path carries holds that long, so the run of cuts is broken.
    pub fn held_fully(&self, user: UserId, device: &str) {
        if let Some(mut learned) = self.learned(user, device)
            && learned.cuts > 0
        {
            learned.cuts = 0;
            self.devices.insert((user, device.to_owned()), learned);
        }
    }

    fn learned(&self, user: UserId, device: &str) -> Option<Learned> {
        let key = (user, device.to_owned());
        let learned = self.devices.get(&key)?;
        if learned.at.elapsed() >= LEARNED_FOR {
            self.devices.remove(&key);
            return None;
        }
        Some(learned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ASK: Duration = Duration::from_secs(25);

    fn user() -> UserId {
        UserId(uuid::Uuid::new_v4())
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_shortens_by_at_most_its_share() {
        let holds = HoldTimes::new(10, true);
        let u = user();
        assert_eq!(holds.hold(u, "", ASK, 0.0).duration, ASK);
        let most = holds.hold(u, "", ASK, 0.999_999).duration;
        assert!(
            most > Duration::from_millis(22_499) && most <= ASK,
            "{most:?}"
        );
        assert_eq!(
            holds.hold(u, "", ASK, 0.5).duration,
            Duration::from_millis(23_750)
        );
        let none = HoldTimes::new(0, true);
        assert_eq!(none.hold(u, "", ASK, 0.9).duration, ASK);
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_cuts_cap_the_hold_below_the_cut_off() {
        // Jitter `unit` 0.0 below: no jitter, except where it is tested.
        let holds = HoldTimes::new(10, true);
        let (u, phone) = (user(), "phone");
        let cut_off = Duration::from_secs(10);
        // One cut may be the client leaving: nothing learned yet.
        assert!(holds.cut(u, phone, cut_off, ASK));
        assert_eq!(holds.hold(u, phone, ASK, 0.0).duration, ASK);
        tokio::time::advance(ASK).await;
        assert!(holds.cut(u, phone, cut_off + Duration::from_millis(300), ASK));
        let hold = holds.hold(u, phone, ASK, 0.0);
        assert!(hold.capped);
        assert_eq!(hold.duration, Duration::from_secs(8));
        // Only this device, and a shorter ask is left alone.
        assert_eq!(holds.hold(u, "laptop", ASK, 0.0).duration, ASK);
        assert_eq!(holds.hold(user(), phone, ASK, 0.0).duration, ASK);
        assert!(!holds.hold(u, phone, Duration::from_secs(5), 0.0).capped);
        // Jitter applies below the cap.
        assert!(holds.hold(u, phone, ASK, 0.5).duration < Duration::from_secs(8));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_hold_between_cuts_breaks_the_run() {
        let holds = HoldTimes::new(0, true);
        let u = user();
        holds.cut(u, "", Duration::from_secs(10), ASK);
        holds.held_fully(u, "");
        holds.cut(u, "", Duration::from_secs(10), ASK);
        assert!(!holds.hold(u, "", ASK, 0.0).capped);
    }

    #[tokio::test(start_paused = true)]
    async fn early_drops_and_full_holds_are_not_cuts() {
        let holds = HoldTimes::new(0, true);
        let u = user();
        for _ in 0..5 {
            assert!(!holds.cut(u, "", Duration::from_millis(200), ASK));
            assert!(!holds.cut(u, "", ASK, ASK));
        }
        assert!(!holds.hold(u, "", ASK, 0.0).capped);
    }

    #[tokio::test(start_paused = true)]
    async fn what_was_learned_is_forgotten_in_time() {
        let holds = HoldTimes::new(0, true);
        let u = user();
        for _ in 0..CUTS_TO_LEARN {
            holds.cut(u, "", Duration::from_secs(10), ASK);
        }
        assert!(holds.hold(u, "", ASK, 0.0).capped);
        tokio::time::advance(LEARNED_FOR - Duration::from_secs(1)).await;
        assert!(holds.hold(u, "", ASK, 0.0).capped);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(holds.hold(u, "", ASK, 0.0).duration, ASK);
    }

    #[tokio::test(start_paused = true)]
    async fn learning_can_be_switched_off() {
        let holds = HoldTimes::new(0, false);
        let u = user();
        for _ in 0..5 {
            assert!(holds.cut(u, "", Duration::from_secs(10), ASK));
        }
        assert!(!holds.hold(u, "", ASK, 0.0).capped);
    }
}
