//! Parked requests, keyed by what they wait for (a user's mailbox, or a
//! message a pipelined send names as its predecessor).
//!
//! The no-lost-wake-up rule: register, then read, then await. A wake that
//! lands between the read and the await still finds the registration.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Why a registration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// This key already has its maximum number of waiters.
    PerKey,
    /// The whole map is full.
    Total,
}

pub struct Waiters<K: Eq + Hash> {
    /// One slot per key with at least one waiter; removed when the last leaves,
    /// so the map never outgrows the set of parked requests.
    slots: DashMap<K, Slot>,
    /// Waiters across all keys, for the per-node limit.
    total: AtomicUsize,
    max_per_key: usize,
    max_total: usize,
}

struct Slot {
    notify: Arc<Notify>,
    count: usize,
}

impl<K: Eq + Hash + Clone> Waiters<K> {
    pub fn new(max_per_key: usize, max_total: usize) -> Arc<Waiters<K>> {
        Arc::new(Waiters {
            slots: DashMap::new(),
            total: AtomicUsize::new(0),
            max_per_key,
            max_total,
        })
    }

    /// Joins the waiters of `key`. Dropping the registration leaves.
    pub fn register(self: &Arc<Self>, key: K) -> Result<Registration<K>, Refused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::Total);
        }
        let notify = match self.slots.entry(key.clone()) {
            Entry::Occupied(mut slot) => {
                let slot = slot.get_mut();
                if slot.count >= self.max_per_key {
                    self.total.fetch_sub(1, Ordering::AcqRel);
                    return Err(Refused::PerKey);
                }
                slot.count += 1;
                slot.notify.clone()
            }
            Entry::Vacant(vacant) => {
                let notify = Arc::new(Notify::new());
                vacant.insert(Slot {
                    notify: notify.clone(),
                    count: 1,
                });
                notify
            }
        };
        Ok(Registration {
            waiters: self.clone(),
            key,
            notify,
        })
    }

    /// Wakes every waiter of `key` that has armed its [`Registration::notified`].
    pub fn wake(&self, key: &K) {
        let notify = self.slots.get(key).map(|slot| slot.notify.clone());
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }

    /// Whether anyone waits on `key`.
    pub fn has(&self, key: &K) -> bool {
        self.slots.contains_key(key)
    }

    /// Wakes every waiter of every key (shutdown).
    pub fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self.slots.iter().map(|s| s.notify.clone()).collect();
        for notify in all {
            notify.notify_waiters();
        }
    }

    /// Keys with at least one waiter.
    pub fn keys(&self) -> usize {
        self.slots.len()
    }

    /// Waiters across all keys.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// A place among the waiters of one key.
pub struct Registration<K: Eq + Hash + Clone> {
    waiters: Arc<Waiters<K>>,
    key: K,
    notify: Arc<Notify>,
}

impl<K: Eq + Hash + Clone> Registration<K> {
    /// A future for the next wake. Arm it (`Notified::enable`) before reading
    /// state, so a wake between the read and the await is kept.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

impl<K: Eq + Hash + Clone> Drop for Registration<K> {
    fn drop(&mut self) {
        self.waiters.slots.remove_if_mut(&self.key, |_, slot| {
            slot.count -= 1;
            slot.count == 0
        });
        self.waiters.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::time::Duration;

    use super::*;

    #[test]
    fn limits_per_key_and_total() {
        let w = Waiters::new(2, 3);
        let a1 = w.register("a").unwrap();
        let _a2 = w.register("a").unwrap();
        assert_eq!(w.register("a").err(), Some(Refused::PerKey));
        let _b1 = w.register("b").unwrap();
        assert_eq!(w.register("c").err(), Some(Refused::Total));
        drop(a1);
        assert!(w.register("c").is_ok());
    }

    #[test]
    fn empty_slots_are_removed() {
        let w = Waiters::new(8, 8);
        let r1 = w.register(1).unwrap();
        let r2 = w.register(1).unwrap();
        assert_eq!(w.keys(), 1);
        drop(r1);
        assert_eq!(w.keys(), 1);
        drop(r2);
        assert_eq!((w.keys(), w.total()), (0, 0));
    }

    #[tokio::test]
    async fn an_armed_registration_keeps_a_wake_sent_before_the_await() {
        let w = Waiters::new(8, 8);
        let reg = w.register(7).unwrap();
        let mut notified = pin!(reg.notified());
        notified.as_mut().enable();
        // The wake arrives between "read state" and "await".
        w.wake(&7);
        tokio::time::timeout(Duration::from_secs(5), notified)
            .await
            .expect("the wake was kept");
    }

    #[tokio::test]
    async fn wake_reaches_only_its_key() {
        let w = Waiters::new(8, 8);
        let a = w.register('a').unwrap();
        let b = w.register('b').unwrap();
        let mut na = pin!(a.notified());
        let mut nb = pin!(b.notified());
        na.as_mut().enable();
        nb.as_mut().enable();
        w.wake(&'a');
        tokio::time::timeout(Duration::from_secs(5), na)
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), nb)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn concurrent_register_and_drop_leave_nothing_behind() {
        let w: Arc<Waiters<u32>> = Waiters::new(1_000, 100_000);
        let mut tasks = Vec::new();
        for t in 0..8u32 {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..2_000u32 {
                    let r = w.register((t + i) % 5).unwrap();
                    w.wake(&(i % 5));
                    drop(r);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!((w.keys(), w.total()), (0, 0));
    }
}
