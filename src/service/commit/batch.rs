//! Laying a batch out: positions and outbox ids from the clock, in commit
//! order, and the rows that carry them.

use super::clock::{Clock, lease_put};
use super::committer::Commit;
use crate::service::outbox::row::{outbox_cell, outbox_row};
use crate::store::{Mutation, Table, keys};

/// A batch laid out for the store, positions assigned: decided without
/// I/O, so the order of positions can be checked in a unit test.
#[derive(Debug)]
pub(super) struct Batch {
    pub(super) writes: Vec<Mutation>,
    /// Per commit, the positions of its appends, in order.
    pub(super) positions: Vec<Vec<u64>>,
    /// Per commit, the outbox id of the copy its caller waits for.
    pub(super) awaited: Vec<Option<u64>>,
    pub(super) outbox_rows: i64,
    /// The newest position the batch covers: the watermark once it landed.
    pub(super) newest: u64,
}

impl Batch {
    pub(super) fn plan<'a>(
        commits: impl Iterator<Item = &'a mut Commit>,
        clock: &mut Clock,
        node_key: [u8; 8],
    ) -> Batch {
        let mut batch = Batch {
            writes: Vec::new(),
            positions: Vec::new(),
            awaited: Vec::new(),
            outbox_rows: 0,
            newest: 0,
        };
        for c in commits {
            batch.writes.append(&mut c.writes);
            let mut mine = Vec::with_capacity(c.appends.len());
            for (user, event) in &c.appends {
                let position = clock.tick();
                tracing::trace!(%user, position, event = %String::from_utf8_lossy(&event[..event.len().min(600)]), "append");
                batch.writes.push(Mutation::Put {
                    table: Table::Mailboxes,
                    row: keys::id_u64(user.0, position),
                    value: event.clone(),
                });
                mine.push(position);
            }
            let mut awaited = None;
            for (user, event) in &c.outbox {
                let id = clock.tick();
                if c.await_delivery == Some(*user) && awaited.is_none() {
                    awaited = Some(id);
                }
                batch.writes.push(Mutation::Put {
                    table: Table::Outbox,
                    row: outbox_row(node_key, id),
                    value: outbox_cell(*user, event),
                });
                batch.outbox_rows += 1;
            }
            batch.positions.push(mine);
            batch.awaited.push(awaited);
        }
        if let Some(lease) = clock.renew() {
            // First in the batch: on a store without atomic batches the
            // lease lands no later than the positions it covers.
            batch.writes.insert(0, lease_put(node_key, lease));
        }
        // A barrier (nothing to write) takes a fresh tick: on a node that
        // just took mailboxes over, rows their previous owner wrote up to
        // now become readable.
        batch.newest = if batch.writes.is_empty() {
            clock.tick()
        } else {
            clock.last()
        };
        batch
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::domain::UserId;

    fn user(n: u128) -> UserId {
        UserId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_batch_takes_positions_in_commit_order_and_leads_with_the_lease() {
        let event = Bytes::from_static(b"{}");
        let mut commits = [
            Commit {
                appends: vec![(user(1), event.clone()), (user(2), event.clone())],
                ..Commit::default()
            },
            Commit {
                outbox: vec![(user(3), event.clone()), (user(4), event.clone())],
                await_delivery: Some(user(4)),
                ..Commit::default()
            },
        ];
        let mut clock = Clock::resume(0);
        let batch = Batch::plan(commits.iter_mut(), &mut clock, [0; 8]);
        let [first, second] = &batch.positions[..] else {
            panic!("one entry per commit");
        };
        assert!(first[0] < first[1] && second.is_empty());
        let awaited = batch.awaited[1].expect("the second waits for user 4's copy");
        assert!(awaited > first[1], "outbox ids come from the same clock");
        assert_eq!(batch.awaited[0], None);
        assert_eq!(batch.outbox_rows, 2);
        assert_eq!(batch.newest, clock.last());
        assert!(
            matches!(
                &batch.writes[0],
                Mutation::Put {
                    table: Table::NodeState,
                    ..
                }
            ),
            "a fresh clock's lease goes first"
        );
        assert_eq!(batch.writes.len(), 5);
    }

    #[test]
    fn a_barrier_takes_a_fresh_tick() {
        let mut clock = Clock::resume(0);
        Batch::plan(std::iter::empty(), &mut clock, [0; 8]);
        let before = clock.last();
        let barrier = Batch::plan(std::iter::empty(), &mut clock, [0; 8]);
        assert!(barrier.writes.is_empty());
        assert!(barrier.newest > before);
    }
}
