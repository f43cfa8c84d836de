//! The node's hybrid logical clock: mailbox positions and outbox ids.
//!
//! `tick()` is `max(now in µs, last + 1)`, so positions are strictly
//! increasing and close to wall time. The clock leases time ahead in the
//! store (`lease_until`): a restarted node starts above every position it
//! may have issued, even if the wall clock stepped back meanwhile.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::store::{Mutation, Store, StoreError, Table};

/// How far ahead a lease reaches; one store write per this much time.
const LEASE_US: u64 = 60_000_000;

pub struct Clock {
    last: u64,
    lease_until: u64,
}

impl Clock {
    /// A clock that continues from a lease stored by an earlier run.
    pub fn resume(stored_lease: u64) -> Clock {
        Clock {
            last: stored_lease,
            lease_until: stored_lease,
        }
    }

    /// The newest position handed out (the lease it resumed from, at first).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Makes every later position greater than `position` (a position
    /// another node issued in a mailbox this node now owns).
    pub fn raise_above(&mut self, position: u64) {
        self.last = self.last.max(position);
    }

    /// The next position.
    pub fn tick(&mut self) -> u64 {
        self.last = now_us().max(self.last + 1);
        self.last
    }

    /// A new lease to store with the batch that issued positions up to
    /// `self.last`, when the current one is close to running out.
    pub fn renew(&mut self) -> Option<u64> {
        if self.last + LEASE_US / 2 < self.lease_until {
            return None;
        }
        self.lease_until = self.last + LEASE_US;
        Some(self.lease_until)
    }
}

/// The node-state row holding the clock's lease: `node key(8) || "clock"`.
fn clock_row(node_key: [u8; 8]) -> Vec<u8> {
    let mut row = node_key.to_vec();
    row.extend_from_slice(b"clock");
    row
}

/// The write that stores `lease` (8 bytes, big-endian).
pub fn lease_put(node_key: [u8; 8], lease: u64) -> Mutation {
    Mutation::Put {
        table: Table::NodeState,
        row: clock_row(node_key),
        value: Bytes::copy_from_slice(&lease.to_be_bytes()),
    }
}

/// The lease an earlier run of this node stored (0 if none).
pub async fn stored_lease(store: &dyn Store, node_key: [u8; 8]) -> Result<u64, StoreError> {
    match store.get(Table::NodeState, &clock_row(node_key)).await? {
        Some(b) => lease_value(&b),
        None => Ok(0),
    }
}

fn lease_value(b: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = b
        .try_into()
        .map_err(|_| StoreError::Corrupt("clock lease".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_even_within_one_microsecond() {
        let mut c = Clock::resume(0);
        let mut prev = 0;
        for _ in 0..100_000 {
            let p = c.tick();
            assert!(p > prev);
            prev = p;
        }
    }

    #[test]
    fn resumes_above_a_lease_from_the_future() {
        let far = now_us() + 3_600_000_000;
        let mut c = Clock::resume(far);
        assert!(c.tick() > far);
    }

    #[test]
    fn a_stored_lease_reads_back() {
        let Mutation::Put { value, .. } = lease_put([1; 8], 42) else {
            panic!("a lease is a put");
        };
        assert_eq!(lease_value(&value).ok(), Some(42));
        assert!(lease_value(b"short").is_err());
    }

    #[test]
    fn renews_once_per_half_lease() {
        let mut c = Clock::resume(0);
        c.tick();
        let lease = c.renew().expect("a fresh clock has no lease");
        assert!(lease > c.last);
        c.tick();
        assert_eq!(c.renew(), None);
    }
}
