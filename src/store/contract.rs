//! What every [`Store`] engine promises, written once so each engine runs
//! the same properties: `store_contract_tests!(make)` in an engine's tests
//! expands to one test per property, named for it.
//!
//! `make` yields `(store, guard)` for an empty store (it may `.await`); the
//! guard keeps what backs the store (a temp folder) alive until the test
//! ends. Attributes after it (`#[ignore = "..."]`) go on every test.

use std::ops::Bound::{self, Excluded, Included, Unbounded};
use std::sync::Arc;

use bytes::Bytes;

use super::{Mutation, Scan, Store, StoreError, Table, keys};

macro_rules! store_contract_tests {
    ($make:expr $(, #[$attr:meta])*) => {
        $crate::store::contract::store_contract_tests!(@each $make; [$(#[$attr])*];
            absent_row_reads_none,
            put_then_get,
            overwrite_replaces_cell,
            delete_removes_row,
            batch_reaches_every_table,
            tables_are_separate,
            prefix_scan_forward_and_reverse_with_limit,
            range_bounds_forward,
            range_bounds_reverse,
            prefix_ending_in_ff,
            check_and_put_expecting_absent_puts_on_absent_row,
            check_and_put_expecting_absent_refuses_present_row,
            check_and_put_matching_value_puts,
            check_and_put_stale_value_refuses,
            increment_from_absent_starts_at_zero,
            increment_by_negative_delta,
            increment_of_non_counter_is_corrupt,
            concurrent_increments_sum_exactly,
            concurrent_check_and_put_has_one_winner,
            check_and_put_treats_an_empty_cell_as_absent,
            put_right_after_delete_lands,
            a_refused_fenced_write_never_lands,
        );
    };
    (@each $make:expr; $attrs:tt; $($property:ident),* $(,)?) => {
        mod contract {
            use super::*;
            $(
                $crate::store::contract::store_contract_tests!(@one $make; $attrs; $property);
            )*
        }
    };
    (@one $make:expr; [$(#[$attr:meta])*]; $property:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn $property() {
            let (store, _guard) = $make;
            $crate::store::contract::$property(store).await;
        }
    };
}
pub(crate) use store_contract_tests;

fn put(table: Table, row: &[u8], value: &[u8]) -> Mutation {
    Mutation::Put {
        table,
        row: row.to_vec(),
        value: Bytes::copy_from_slice(value),
    }
}

fn cell(value: &[u8]) -> Option<Bytes> {
    Some(Bytes::copy_from_slice(value))
}

async fn get<S: Store>(store: &S, table: Table, row: &[u8]) -> Option<Bytes> {
    store.get(table, row).await.expect("get")
}

async fn write<S: Store>(store: &S, batch: Vec<Mutation>) {
    store.write(batch).await.expect("write");
}

/// The keys a scan returns, in its order.
async fn scan_keys<S: Store>(store: &S, scan: Scan) -> Vec<Vec<u8>> {
    let rows = store.scan(scan).await.expect("scan");
    rows.into_iter().map(|(key, _)| key).collect()
}

async fn check_and_put<S: Store>(
    store: &S,
    row: &[u8],
    expected: Option<&[u8]>,
    value: &'static [u8],
) -> bool {
    let value = Bytes::from_static(value);
    let put = store.check_and_put(Table::Groups, row, expected, value);
    put.await.expect("check_and_put")
}

pub(crate) async fn absent_row_reads_none<S: Store>(store: S) {
    assert_eq!(get(&store, Table::Messages, b"nobody").await, None);
}

pub(crate) async fn put_then_get<S: Store>(store: S) {
    write(&store, vec![put(Table::Messages, b"row", b"value")]).await;
    assert_eq!(get(&store, Table::Messages, b"row").await, cell(b"value"));
}

pub(crate) async fn overwrite_replaces_cell<S: Store>(store: S) {
    write(&store, vec![put(Table::Messages, b"row", b"first")]).await;
    write(&store, vec![put(Table::Messages, b"row", b"second")]).await;
    assert_eq!(get(&store, Table::Messages, b"row").await, cell(b"second"));
    let rows = store.scan(Scan::prefix(Table::Messages, b"row", 10)).await;
    assert_eq!(
        rows.expect("scan"),
        vec![(b"row".to_vec(), Bytes::from_static(b"second"))]
    );
}

pub(crate) async fn a_refused_fenced_write_never_lands<S: Store>(store: S) {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fence: super::Fence = {
        let open = open.clone();
        Arc::new(move || open.load(std::sync::atomic::Ordering::SeqCst))
    };
    let refused = store
        .write_fenced(vec![put(Table::Messages, b"late", b"x")], fence.clone())
        .await;
    assert!(matches!(refused, Err(StoreError::Unavailable(_))));
    // Later calls, fenced or not, do not bring it back.
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    store
        .write_fenced(vec![put(Table::Messages, b"next", b"y")], fence)
        .await
        .expect("an open fence writes");
    write(&store, vec![put(Table::Receipts, b"other", b"z")]).await;
    assert_eq!(get(&store, Table::Messages, b"late").await, None);
    assert_eq!(get(&store, Table::Messages, b"next").await, cell(b"y"));
}

pub(crate) async fn delete_removes_row<S: Store>(store: S) {
    let delete = || Mutation::Delete {
        table: Table::Messages,
        row: b"row".to_vec(),
    };
    write(&store, vec![put(Table::Messages, b"row", b"value")]).await;
    write(&store, vec![delete()]).await;
    assert_eq!(get(&store, Table::Messages, b"row").await, None);
    write(&store, vec![delete()]).await;
}

pub(crate) async fn batch_reaches_every_table<S: Store>(store: S) {
    write(&store, vec![put(Table::Receipts, b"gone", b"x")]).await;
    write(
        &store,
        vec![
            put(Table::Messages, b"m", b"message"),
            put(Table::Mailboxes, b"u", b"event"),
            put(Table::Idempotency, b"s", b"landed"),
            Mutation::Delete {
                table: Table::Receipts,
                row: b"gone".to_vec(),
            },
        ],
    )
    .await;
    assert_eq!(get(&store, Table::Messages, b"m").await, cell(b"message"));
    assert_eq!(get(&store, Table::Mailboxes, b"u").await, cell(b"event"));
    assert_eq!(get(&store, Table::Idempotency, b"s").await, cell(b"landed"));
    assert_eq!(get(&store, Table::Receipts, b"gone").await, None);
}

pub(crate) async fn tables_are_separate<S: Store>(store: S) {
    write(
        &store,
        vec![
            put(Table::Members, b"g1", b"member"),
            put(Table::Groups, b"g1", b"group"),
            put(Table::Groups, b"g2", b"group"),
        ],
    )
    .await;
    assert_eq!(get(&store, Table::Members, b"g1").await, cell(b"member"));
    assert_eq!(get(&store, Table::Members, b"g2").await, None);
    let members = scan_keys(&store, Scan::prefix(Table::Members, b"g", 10)).await;
    assert_eq!(members, vec![b"g1".to_vec()]);
    let delete = Mutation::Delete {
        table: Table::Members,
        row: b"g1".to_vec(),
    };
    write(&store, vec![delete]).await;
    assert_eq!(get(&store, Table::Groups, b"g1").await, cell(b"group"));
}

pub(crate) async fn prefix_scan_forward_and_reverse_with_limit<S: Store>(store: S) {
    let prefix = [1u8, 2];
    let row = |n: u8| vec![1, 2, n];
    let mut batch: Vec<_> = (0..5)
        .map(|n| put(Table::Mailboxes, &row(n), &[n]))
        .collect();
    batch.push(put(Table::Mailboxes, &[1, 1, 0xff], b"before"));
    batch.push(put(Table::Mailboxes, &[1, 3], b"after"));
    write(&store, batch).await;

    let forward = |limit| Scan::prefix(Table::Mailboxes, &prefix, limit);
    assert_eq!(
        scan_keys(&store, forward(3)).await,
        vec![row(0), row(1), row(2)]
    );
    assert_eq!(
        scan_keys(&store, forward(2).rev()).await,
        vec![row(4), row(3)]
    );
    assert_eq!(
        scan_keys(&store, forward(100)).await,
        (0..5).map(row).collect::<Vec<_>>()
    );
    assert_eq!(scan_keys(&store, forward(0)).await, Vec::<Vec<u8>>::new());
    let rows = store.scan(forward(1).rev()).await.expect("scan");
    assert_eq!(rows, vec![(row(4), Bytes::from_static(&[4]))]);
}

/// Rows 1..=5 scanned over every kind of bound, in order `reverse`.
async fn range_bounds<S: Store>(store: S, reverse: bool) {
    let batch = (1..=5u8).map(|n| put(Table::Outbox, &[n], b"x")).collect();
    write(&store, batch).await;
    let cases: [(Bound<u8>, Bound<u8>, &[u8]); 7] = [
        (Included(2), Included(4), &[2, 3, 4]),
        (Included(2), Excluded(4), &[2, 3]),
        (Excluded(2), Included(4), &[3, 4]),
        (Excluded(2), Excluded(4), &[3]),
        (Unbounded, Excluded(3), &[1, 2]),
        (Excluded(3), Unbounded, &[4, 5]),
        (Unbounded, Unbounded, &[1, 2, 3, 4, 5]),
    ];
    for (start, end, expected) in cases {
        let scan = Scan {
            table: Table::Outbox,
            start: start.map(|n| vec![n]),
            end: end.map(|n| vec![n]),
            reverse,
            limit: 100,
        };
        let mut expected: Vec<_> = expected.iter().map(|&n| vec![n]).collect();
        if reverse {
            expected.reverse();
        }
        assert_eq!(
            scan_keys(&store, scan).await,
            expected,
            "{start:?}..{end:?}"
        );
    }
}

pub(crate) async fn range_bounds_forward<S: Store>(store: S) {
    range_bounds(store, false).await;
}

pub(crate) async fn range_bounds_reverse<S: Store>(store: S) {
    range_bounds(store, true).await;
}

pub(crate) async fn prefix_ending_in_ff<S: Store>(store: S) {
    assert_eq!(keys::prefix_end(&[1, 0xff]), Some(vec![2]));
    assert_eq!(keys::prefix_end(&[0xff, 0xff]), None);
    let rows: [&[u8]; 7] = [
        &[1, 0xfe, 0xff],
        &[1, 0xff],
        &[1, 0xff, 0xff, 0xff],
        &[2],
        &[0xff, 0xfe],
        &[0xff, 0xff],
        &[0xff, 0xff, 0xff, 1],
    ];
    write(
        &store,
        rows.iter()
            .map(|row| put(Table::NodeState, row, b"x"))
            .collect(),
    )
    .await;

    let scan = |prefix: &[u8]| Scan::prefix(Table::NodeState, prefix, 100);
    let inside = vec![vec![1, 0xff], vec![1, 0xff, 0xff, 0xff]];
    assert_eq!(scan_keys(&store, scan(&[1, 0xff])).await, inside);
    let reversed: Vec<_> = inside.into_iter().rev().collect();
    assert_eq!(scan_keys(&store, scan(&[1, 0xff]).rev()).await, reversed);
    let top = vec![vec![0xff, 0xff], vec![0xff, 0xff, 0xff, 1]];
    assert_eq!(scan_keys(&store, scan(&[0xff, 0xff])).await, top);
    let reversed: Vec<_> = top.into_iter().rev().collect();
    assert_eq!(scan_keys(&store, scan(&[0xff, 0xff]).rev()).await, reversed);
}

pub(crate) async fn check_and_put_expecting_absent_puts_on_absent_row<S: Store>(store: S) {
    assert!(check_and_put(&store, b"g", None, b"new").await);
    assert_eq!(get(&store, Table::Groups, b"g").await, cell(b"new"));
}

pub(crate) async fn check_and_put_expecting_absent_refuses_present_row<S: Store>(store: S) {
    write(&store, vec![put(Table::Groups, b"g", b"old")]).await;
    assert!(!check_and_put(&store, b"g", None, b"new").await);
    assert_eq!(get(&store, Table::Groups, b"g").await, cell(b"old"));
}

pub(crate) async fn check_and_put_matching_value_puts<S: Store>(store: S) {
    write(&store, vec![put(Table::Groups, b"g", b"old")]).await;
    assert!(check_and_put(&store, b"g", Some(b"old"), b"new").await);
    assert_eq!(get(&store, Table::Groups, b"g").await, cell(b"new"));
}

pub(crate) async fn check_and_put_stale_value_refuses<S: Store>(store: S) {
    assert!(!check_and_put(&store, b"g", Some(b"old"), b"new").await);
    assert_eq!(get(&store, Table::Groups, b"g").await, None);
    write(&store, vec![put(Table::Groups, b"g", b"current")]).await;
    assert!(!check_and_put(&store, b"g", Some(b"old"), b"new").await);
    assert_eq!(get(&store, Table::Groups, b"g").await, cell(b"current"));
}

pub(crate) async fn increment_from_absent_starts_at_zero<S: Store>(store: S) {
    assert_eq!(
        store
            .increment(Table::Counters, b"c", 5)
            .await
            .expect("increment"),
        5
    );
    let stored = get(&store, Table::Counters, b"c").await;
    assert_eq!(
        stored,
        cell(&5i64.to_be_bytes()),
        "an 8-byte big-endian i64, as HBase keeps it"
    );
}

pub(crate) async fn increment_by_negative_delta<S: Store>(store: S) {
    assert_eq!(
        store
            .increment(Table::Counters, b"c", 10)
            .await
            .expect("increment"),
        10
    );
    assert_eq!(
        store
            .increment(Table::Counters, b"c", -15)
            .await
            .expect("increment"),
        -5
    );
    assert_eq!(
        get(&store, Table::Counters, b"c").await,
        cell(&(-5i64).to_be_bytes())
    );
}

pub(crate) async fn increment_of_non_counter_is_corrupt<S: Store>(store: S) {
    write(&store, vec![put(Table::Counters, b"c", b"abc")]).await;
    let result = store.increment(Table::Counters, b"c", 1).await;
    assert!(matches!(result, Err(StoreError::Corrupt(_))), "{result:?}");
    assert_eq!(get(&store, Table::Counters, b"c").await, cell(b"abc"));
}

pub(crate) async fn concurrent_increments_sum_exactly<S: Store>(store: S) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (1..=64i64)
        .map(|delta| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.increment(Table::Counters, b"c", delta).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("increment");
    }
    let total = (1..=64i64).sum::<i64>();
    assert_eq!(
        get(&*store, Table::Counters, b"c").await,
        cell(&total.to_be_bytes())
    );
}

pub(crate) async fn concurrent_check_and_put_has_one_winner<S: Store>(store: S) {
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..32u8)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let value = Bytes::copy_from_slice(&[n]);
                let won = store.check_and_put(Table::Groups, b"g", None, value).await;
                (n, won.expect("check_and_put"))
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (n, won) = task.await.expect("task");
        if won {
            winners.push(n);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(get(&*store, Table::Groups, b"g").await, cell(&winners));
}

/// HBase matches an empty expected value against an absent cell *and* an
/// empty one; every engine does the same, so the service cannot tell them
/// apart by accident.
pub(crate) async fn check_and_put_treats_an_empty_cell_as_absent<S: Store>(store: S) {
    write(&store, vec![put(Table::Groups, b"g", b"")]).await;
    assert!(check_and_put(&store, b"g", None, b"owner").await);
    assert_eq!(get(&store, Table::Groups, b"g").await, cell(b"owner"));
    assert!(!check_and_put(&store, b"g", None, b"thief").await);
}

/// A row deleted and written again at once holds the new cell (HBase hides
/// puts stamped in the same millisecond as a delete).
pub(crate) async fn put_right_after_delete_lands<S: Store>(store: S) {
    for round in 0..20u8 {
        write(&store, vec![put(Table::Members, b"m", &[round])]).await;
        assert_eq!(
            get(&store, Table::Members, b"m").await,
            cell(&[round]),
            "round {round}"
        );
        write(
            &store,
            vec![Mutation::Delete {
                table: Table::Members,
                row: b"m".to_vec(),
            }],
        )
        .await;
        assert_eq!(
            get(&store, Table::Members, b"m").await,
            None,
            "round {round}"
        );
    }
    write(&store, vec![put(Table::Members, b"m", b"back")]).await;
    assert_eq!(get(&store, Table::Members, b"m").await, cell(b"back"));
}
