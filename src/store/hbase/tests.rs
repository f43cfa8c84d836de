//! The store contract against a real HBase. These tests need the Thrift
//! server that `tests/hbase/start.sh` starts; `tests/hbase/run-tests.sh`
//! runs them (one at a time: they share one set of tables, emptied before
//! each test).

use super::*;
use crate::store::contract::store_contract_tests;

/// The Thrift server to test against, from `CARRIER_TEST_HBASE`.
pub(crate) fn thrift_addr() -> String {
    std::env::var("CARRIER_TEST_HBASE")
        .expect("CARRIER_TEST_HBASE=127.0.0.1:PORT names the HBase Thrift server (tests/hbase/run-tests.sh sets it)")
}

fn config(prefix: &str) -> HbaseConfig {
    HbaseConfig {
        thrift: thrift_addr(),
        table_prefix: prefix.to_owned(),
        ..HbaseConfig::default()
    }
}

/// The contract's tables, emptied.
async fn empty_store() -> (HbaseStore, ()) {
    let store = HbaseStore::open(&config("carrier_contract_"), *b"contract")
        .await
        .expect("open HBase store");
    // Every node's log, not only this one's: tests open other node keys.
    let name = store.inner.intents.table().to_vec();
    let all = Range::prefix(&[]);
    let logs = store
        .call("scan", "", true, move |c| {
            scan_rows(c, &name, &all, usize::MAX)
        })
        .await
        .expect("scan intents");
    let intent_deletes: Vec<BatchMutation> = logs
        .into_iter()
        .map(|(row, _)| row)
        .map(|row| BatchMutation {
            row: Some(row),
            mutations: Some(vec![delete()]),
        })
        .collect();
    if !intent_deletes.is_empty() {
        let name = store.inner.intents.table().to_vec();
        store
            .call("mutateRows", "", true, move |c| {
                c.mutate_rows(name.clone(), intent_deletes.clone(), BTreeMap::new())
            })
            .await
            .expect("wipe intents");
    }
    let mut wipe = Vec::new();
    for table in Table::ALL {
        let rows = store
            .scan_now(Scan::prefix(table, &[], usize::MAX))
            .await
            .expect("scan for wipe");
        wipe.extend(
            rows.into_iter()
                .map(|(row, _)| Mutation::Delete { table, row }),
        );
    }
    store.apply(&wipe).await.expect("wipe");
    // Deletes hide puts stamped in the same millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    (store, ())
}

store_contract_tests!(
    empty_store().await,
    #[ignore = "needs a real HBase: tests/hbase/run-tests.sh"]
);

/// A batch whose rows only partly landed is finished before the store
/// serves anything else, in the same process and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a real HBase: tests/hbase/run-tests.sh"]
async fn a_half_written_batch_is_finished_on_reopen() {
    let (store, ()) = empty_store().await;
    let batch = vec![
        Mutation::Put {
            table: Table::Messages,
            row: b"m".to_vec(),
            value: Bytes::from_static(b"message"),
        },
        Mutation::Put {
            table: Table::Idempotency,
            row: b"r".to_vec(),
            value: Bytes::from_static(b"record"),
        },
    ];
    // What a crash between the intent and its rows leaves: the intent row
    // and one of the two rows.
    let intents = &store.inner.intents;
    let intent = BatchMutation {
        row: Some(intents.row(TORN)),
        mutations: Some(vec![put(&intents::encode(&batch))]),
    };
    let name = intents.table().to_vec();
    store
        .call("mutateRows", "", true, move |c| {
            c.mutate_rows(name.clone(), vec![intent.clone()], BTreeMap::new())
        })
        .await
        .expect("write intent");
    store.apply(&batch[..1]).await.expect("first row only");
    assert_eq!(
        store.get(Table::Idempotency, b"r").await.expect("get"),
        None
    );

    let reopened = HbaseStore::open(&config("carrier_contract_"), *b"contract")
        .await
        .expect("reopen");
    assert_eq!(
        reopened.get(Table::Idempotency, b"r").await.expect("get"),
        Some(Bytes::from_static(b"record")),
        "recovery applied the rest of the batch"
    );
    // Recovery emptied the log; the next write leaves its own intent only.
    assert_eq!(intent_rows(&reopened).await, Vec::<Vec<u8>>::new());
    reopened
        .write(vec![Mutation::Put {
            table: Table::Messages,
            row: b"next".to_vec(),
            value: Bytes::from_static(b"x"),
        }])
        .await
        .expect("write");
    let log = intent_rows(&reopened).await;
    assert_eq!(log.len(), 1, "only the newest intent: {log:?}");
    assert_ne!(log[0], reopened.inner.intents.row(TORN));
}

/// An id above any a test run hands out by the clock.
const TORN: u64 = u64::MAX / 2;

async fn intent_rows(store: &HbaseStore) -> Vec<Vec<u8>> {
    let rows = store
        .inner
        .intents
        .log_of(store, *b"contract")
        .await
        .expect("scan intents");
    rows.into_iter().map(|(row, _)| row).collect()
}

/// Nodes starting at once on an empty HBase both create the tables (one
/// wins each race, the other finds it) and both can serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a real HBase: tests/hbase/run-tests.sh"]
async fn nodes_opening_at_once_share_the_tables() {
    let prefix = format!("carrier_open_{}_", uuid::Uuid::new_v4().simple());
    let config = config(&prefix);
    let (a, b) = tokio::join!(
        HbaseStore::open(&config, *b"node-aaa"),
        HbaseStore::open(&config, *b"node-bbb"),
    );
    let (a, b) = (a.expect("first node opens"), b.expect("second node opens"));
    a.write(vec![Mutation::Put {
        table: Table::Groups,
        row: b"g".to_vec(),
        value: Bytes::from_static(b"from a"),
    }])
    .await
    .expect("write through a");
    assert_eq!(
        b.get(Table::Groups, b"g").await.expect("read through b"),
        Some(Bytes::from_static(b"from a"))
    );
    let names = a
        .call("getTableNames", "", true, |c| c.get_table_names())
        .await
        .expect("list tables");
    let ours = names
        .iter()
        .filter(|n| n.starts_with(prefix.as_bytes()))
        .count();
    assert_eq!(
        ours,
        Table::ALL.len() + 1,
        "every table once, the write log too"
    );
}

/// A batch that finished is never written again over what others wrote
/// since: not when another node finishes the batches of a node it saw
/// depart (`recover_other`), nor when its node restarts (`recover`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a real HBase: tests/hbase/run-tests.sh"]
async fn a_finished_batch_is_not_replayed_over_newer_writes() {
    let (a, ()) = empty_store().await;
    let b = HbaseStore::open(&config("carrier_contract_"), *b"other-nd")
        .await
        .expect("open a second node's store");

    a_writes_then_b_overwrites(&a, &b).await;
    b.finish_batches_of(*b"contract")
        .await
        .expect("b finishes a's batches");
    b_wins("b finished a's batches", &b).await;
    assert_eq!(
        intent_rows(&a).await,
        Vec::<Vec<u8>>::new(),
        "a's log is emptied"
    );

    a_writes_then_b_overwrites(&a, &b).await;
    let reopened = HbaseStore::open(&config("carrier_contract_"), *b"contract")
        .await
        .expect("reopen a");
    b_wins("a reopened", &reopened).await;
    assert_eq!(
        intent_rows(&a).await,
        Vec::<Vec<u8>>::new(),
        "a's log is emptied"
    );
    b.finish_batches_of(*b"contract")
        .await
        .expect("b finishes a's batches again");
    b_wins("b finished a's batches again", &b).await;
}

/// a sets a receipt, adds a member and removes a row; then b moves the
/// receipt on, removes the member and writes the row again.
async fn a_writes_then_b_overwrites(a: &HbaseStore, b: &HbaseStore) {
    let put = |table, row: &[u8], value: &'static [u8]| Mutation::Put {
        table,
        row: row.to_vec(),
        value: Bytes::from_static(value),
    };
    let delete = |table, row: &[u8]| Mutation::Delete {
        table,
        row: row.to_vec(),
    };
    a.write(vec![
        put(Table::Receipts, b"receipt", b"v1"),
        put(Table::Members, b"member", b"joined"),
        delete(Table::Outbox, b"entry"),
    ])
    .await
    .expect("a's batch lands");
    // b's writes get a later millisecond than a's batch, as a later
    // request's would.
    tokio::time::sleep(Duration::from_millis(5)).await;
    b.write(vec![
        put(Table::Receipts, b"receipt", b"v2"),
        delete(Table::Members, b"member"),
        put(Table::Outbox, b"entry", b"again"),
    ])
    .await
    .expect("b's batch lands");
}

async fn b_wins(when: &str, store: &HbaseStore) {
    let get = |table, row: &'static [u8]| async move { store.get(table, row).await.expect("get") };
    assert_eq!(
        get(Table::Receipts, b"receipt").await,
        Some(Bytes::from_static(b"v2")),
        "receipt after {when}"
    );
    assert_eq!(
        get(Table::Members, b"member").await,
        None,
        "member after {when}"
    );
    assert_eq!(
        get(Table::Outbox, b"entry").await,
        Some(Bytes::from_static(b"again")),
        "outbox entry after {when}"
    );
}

/// Gets asked at once share `getRowsWithColumns` calls, and each still gets
/// its own row: present, absent, empty, or asked for twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a real HBase: tests/hbase/run-tests.sh"]
async fn gets_asked_together_share_round_trips() {
    let (store, ()) = empty_store().await;
    let rows: Vec<Mutation> = (0..300u32)
        .filter(|i| i % 3 != 0)
        .map(|i| Mutation::Put {
            table: Table::Receipts,
            row: format!("row{i:03}").into_bytes(),
            value: if i == 1 {
                Bytes::new()
            } else {
                Bytes::from(format!("value{i}"))
            },
        })
        .collect();
    store.write(rows).await.expect("write");
    let calls = || {
        store
            .inner
            .pool
            .seconds()
            .with_label_values(&["getRows", Table::Receipts.name()])
            .get_sample_count()
    };
    let before = calls();
    // Every row twice, all at once.
    let asked = (0..600u32).map(|n| {
        let store = store.clone();
        let i = n % 300;
        tokio::spawn(async move {
            let row = format!("row{i:03}").into_bytes();
            (i, store.get(Table::Receipts, &row).await.expect("get"))
        })
    });
    for answer in futures::future::join_all(asked).await {
        let (i, got) = answer.expect("task");
        let want = match i {
            _ if i % 3 == 0 => None,
            1 => Some(Bytes::new()),
            _ => Some(Bytes::from(format!("value{i}"))),
        };
        assert_eq!(got, want, "row{i:03}");
    }
    let used = calls() - before;
    assert!(
        used < 600 / 4,
        "600 gets at once took {used} getRows calls; they should share them"
    );
}
