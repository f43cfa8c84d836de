//! Per-key async locks that exist only while someone holds or waits for
//! them. The sequencer is one (`ConversationId` -> the conversation's head);
//! send claims are another (`(sender, message_id)` -> nothing).

use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{Mutex, OwnedMutexGuard};

pub struct KeyedLocks<K: Eq + Hash + Clone, S> {
    /// Entries live while a guard or a waiter holds a clone of the `Arc`.
    locks: DashMap<K, Arc<Mutex<S>>>,
}

impl<K: Eq + Hash + Clone, S: Default> KeyedLocks<K, S> {
    pub fn new() -> Arc<Self> {
        Arc::new(KeyedLocks {
            locks: DashMap::new(),
        })
    }

    /// Waits for the lock of `key`. The state starts as `S::default()` each
    /// time the key comes back after a quiet spell, so it must be a cache of
    /// what the store holds, never the only copy.
    pub async fn lock(self: &Arc<Self>, key: K) -> KeyGuard<K, S> {
        let mutex = self.locks.entry(key.clone()).or_default().clone();
        let guard = mutex.lock_owned().await;
        KeyGuard {
            locks: self.clone(),
            key,
            guard: Some(guard),
        }
    }

    /// Keys currently held or awaited.
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }
}

pub struct KeyGuard<K: Eq + Hash + Clone, S> {
    locks: Arc<KeyedLocks<K, S>>,
    key: K,
    guard: Option<OwnedMutexGuard<S>>,
}

impl<K: Eq + Hash + Clone, S> std::ops::Deref for KeyGuard<K, S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.guard.as_ref().expect("present until drop")
    }
}

impl<K: Eq + Hash + Clone, S> std::ops::DerefMut for KeyGuard<K, S> {
    fn deref_mut(&mut self) -> &mut S {
        self.guard.as_mut().expect("present until drop")
    }
}

impl<K: Eq + Hash + Clone, S> Drop for KeyGuard<K, S> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Both `entry` (in `lock`) and this check run under the shard lock,
        // so nobody can clone the Arc between the count and the removal.
        self.locks
            .locks
            .remove_if(&self.key, |_, m| Arc::strong_count(m) == 1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_entries_are_removed() {
        let locks: Arc<KeyedLocks<u8, u64>> = KeyedLocks::new();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let locks = locks.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..200 {
                    let mut g = locks.lock(1).await;
                    let seen = *g;
                    tokio::task::yield_now().await;
                    *g = seen + 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(locks.is_empty(), "an idle key keeps no entry");
        // The state was dropped with the entry: it is a cache, not a record.
        assert_eq!(*locks.lock(1).await, 0);
    }

    #[tokio::test]
    async fn state_survives_while_someone_waits() {
        let locks: Arc<KeyedLocks<u8, u64>> = KeyedLocks::new();
        let mut g = locks.lock(1).await;
        *g = 41;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { *locks.lock(1).await + 1 })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(g);
        assert_eq!(waiter.await.unwrap(), 42);
    }
}
