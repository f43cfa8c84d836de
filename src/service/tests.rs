//! Property tests of the mailbox and conversation ordering, on a real
//! embedded store, through the service (no HTTP).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::{Value, json};
use uuid::Uuid;

use super::history::Window;
use super::poll::PollRequest;
use super::send::{Destination, SendRequest};
use crate::app::Node;
use crate::config::Config;
use crate::domain::{ConversationId, Cursor, MessageId, UserId};
use crate::store::embedded::EmbeddedStore;

#[derive(Clone, Debug)]
enum Op {
    Send {
        from: usize,
        to: usize,
    },
    /// One device of `user` reads up to `limit` events.
    Read {
        user: usize,
        limit: usize,
    },
    /// A second device of `user` starts again from an earlier cursor.
    Replay {
        user: usize,
        back: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize, 0..3usize).prop_map(|(from, to)| Op::Send { from, to }),
        2 => (0..3usize, 1..4usize).prop_map(|(user, limit)| Op::Read { user, limit }),
        1 => (0..3usize, 0..8usize).prop_map(|(user, back)| Op::Replay { user, back }),
    ]
}

/// A device: its cursor, the cursors it held before, and what it saw.
#[derive(Default)]
struct Device {
    cursor: Cursor,
    history: Vec<(Cursor, usize)>,
    seen: Vec<MessageId>,
}

/// The message ids in `events` that a user receives from others (and notes
/// to self), leaving out its own copies of what it sent to others.
fn received(
    events: &[bytes::Bytes],
    me: UserId,
    notes_to_self: &HashSet<MessageId>,
) -> Vec<MessageId> {
    events
        .iter()
        .filter_map(|e| {
            let e: Value = serde_json::from_slice(e).ok()?;
            let m = &e["message"];
            let id: MessageId = m["message_id"].as_str()?.parse().ok()?;
            let sender: UserId = m["sender_id"].as_str()?.parse().ok()?;
            (sender != me || notes_to_self.contains(&id)).then_some(id)
        })
        .collect()
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    // Small enough that tails are evicted and reads alternate between the
    // cache and the store.
    config.cache.mailbox_bytes = 700;
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let node = Node::start(&config, store).await.unwrap();
    let svc = &node.service;
    let users: Vec<UserId> = (0..3).map(|_| UserId(Uuid::new_v4())).collect();
    let mut expected: Vec<Vec<MessageId>> = vec![Vec::new(); 3];
    let mut devices: Vec<Device> = (0..3).map(|_| Device::default()).collect();
    let mut notes_to_self = HashSet::new();
    let mut seqs: std::collections::HashMap<ConversationId, u64> = Default::default();

    let read = |user: UserId, cursor: Cursor, limit: usize| {
        svc.poll(
            user,
            PollRequest {
                cursor: Some(cursor),
                timeout: Duration::ZERO,
                limit,
            },
        )
    };

    for op in ops {
        match op {
            Op::Send { from, to } => {
                let id = MessageId(Uuid::new_v4());
                if from == to {
                    notes_to_self.insert(id);
                }
                let sent = svc
                    .send(
                        users[from],
                        SendRequest {
                            message_id: id,
                            to: Destination::User(users[to]),
                            body: json!({"from": from}),
                            prev_message_id: None,
                        },
                    )
                    .await
                    .unwrap();
                let m: Value = serde_json::from_slice(&sent.message).unwrap();
                let conv = ConversationId::direct(users[from], users[to]);
                let next = seqs.entry(conv).or_default();
                *next += 1;
                assert_eq!(m["seq"], json!(*next), "seq is gap-free per conversation");
                expected[to].push(id);
            }
            Op::Read { user, limit } => {
                let d = &mut devices[user];
                let answer = read(users[user], d.cursor.clone(), limit).await.unwrap();
                assert!(answer.events.len() <= limit);
                assert!(
                    answer.cursor.mailbox >= d.cursor.mailbox,
                    "cursors never move back"
                );
                d.history.push((d.cursor.clone(), d.seen.len()));
                d.seen
                    .extend(received(&answer.events, users[user], &notes_to_self));
                d.cursor = answer.cursor;
                assert!(
                    expected[user].starts_with(&d.seen),
                    "a device sees its mailbox in order, without gaps or repeats"
                );
            }
            Op::Replay { user, back } => {
                let d = &devices[user];
                let Some((cursor, seen_then)) = d.history.iter().rev().nth(back).cloned() else {
                    continue;
                };
                let mut again = Vec::new();
                let mut c = cursor;
                loop {
                    let answer = read(users[user], c.clone(), 1000).await.unwrap();
                    if answer.events.is_empty() {
                        break;
                    }
                    again.extend(received(&answer.events, users[user], &notes_to_self));
                    c = answer.cursor;
                }
                assert_eq!(
                    again,
                    expected[user][seen_then..],
                    "an older cursor replays exactly what came after it"
                );
            }
        }
    }

    for (user, d) in devices.iter_mut().enumerate() {
        loop {
            let answer = read(users[user], d.cursor.clone(), 1000).await.unwrap();
            if answer.events.is_empty() {
                break;
            }
            d.seen
                .extend(received(&answer.events, users[user], &notes_to_self));
            d.cursor = answer.cursor;
        }
        assert_eq!(d.seen, expected[user], "every event, once, in order");
    }
    for (conv, n) in seqs {
        let member = users.iter().find(|u| {
            users
                .iter()
                .any(|v| ConversationId::direct(**u, *v) == conv)
        });
        let history = svc
            .history(*member.unwrap(), conv, 500, Window::Newest { offset: 0 })
            .await
            .unwrap();
        let got: Vec<u64> = history
            .iter()
            .map(|m| {
                serde_json::from_slice::<Value>(m).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(got, (1..=n).rev().collect::<Vec<_>>());
    }
    node.shutdown().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mailboxes_are_read_in_order_without_gaps_or_repeats(ops in proptest::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}

/// An embedded store whose writes wait at a gate while it is closed, and
/// fail (writing nothing) while `fail` is set.
struct GatedWrites {
    inner: EmbeddedStore,
    open: tokio::sync::watch::Sender<bool>,
    waiting: std::sync::atomic::AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
    /// Writes refused because `fail` was set.
    failed: std::sync::atomic::AtomicUsize,
}

impl GatedWrites {
    fn open(dir: &std::path::Path) -> GatedWrites {
        GatedWrites {
            inner: EmbeddedStore::open(dir).unwrap(),
            open: tokio::sync::watch::channel(true).0,
            waiting: Default::default(),
            fail: Default::default(),
            failed: Default::default(),
        }
    }

    /// Waits (bounded) until a write waits at the closed gate.
    async fn until_waiting(&self) {
        use std::sync::atomic::Ordering;
        for _ in 0..500 {
            if self.waiting.load(Ordering::SeqCst) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no write reached the store");
    }
}

#[async_trait::async_trait]
impl crate::store::Store for GatedWrites {
    async fn get(
        &self,
        table: crate::store::Table,
        row: &[u8],
    ) -> Result<Option<bytes::Bytes>, crate::store::StoreError> {
        self.inner.get(table, row).await
    }
    async fn scan(
        &self,
        scan: crate::store::Scan,
    ) -> Result<Vec<crate::store::Row>, crate::store::StoreError> {
        self.inner.scan(scan).await
    }
    async fn write(
        &self,
        batch: Vec<crate::store::Mutation>,
    ) -> Result<(), crate::store::StoreError> {
        use std::sync::atomic::Ordering;
        let mut open = self.open.subscribe();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _ = open.wait_for(|open| *open).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(crate::store::StoreError::Unavailable("injected".into()));
        }
        self.inner.write(batch).await
    }
    async fn check_and_put(
        &self,
        table: crate::store::Table,
        row: &[u8],
        expected: Option<&[u8]>,
        value: bytes::Bytes,
    ) -> Result<bool, crate::store::StoreError> {
        self.inner.check_and_put(table, row, expected, value).await
    }
    async fn increment(
        &self,
        table: crate::store::Table,
        row: &[u8],
        delta: i64,
    ) -> Result<i64, crate::store::StoreError> {
        self.inner.increment(table, row, delta).await
    }
    async fn ping(&self) -> Result<(), crate::store::StoreError> {
        self.inner.ping().await
    }
}

/// Regression (found by the load tester): a client that gave up on a send
/// while its commit was in flight left the sequencer's head behind the
/// store, and the next send took the same seq and overwrote the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_abandoned_mid_commit_does_not_give_its_seq_away() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GatedWrites::open(dir.path()));
    let node = Node::start(&Config::default(), store.clone())
        .await
        .unwrap();
    let (alice, bob) = (UserId(Uuid::new_v4()), UserId(Uuid::new_v4()));
    let send = |id: MessageId| {
        let svc = node.service.clone();
        async move {
            let req = SendRequest {
                message_id: id,
                to: Destination::User(bob),
                body: json!("hi"),
                prev_message_id: None,
            };
            svc.send(alice, req).await
        }
    };
    let ids: Vec<MessageId> = (0..3).map(|_| MessageId(Uuid::new_v4())).collect();
    send(ids[0]).await.unwrap();

    store.open.send_replace(false);
    let abandoned = tokio::spawn(send(ids[1]));
    for _ in 0..500 {
        if store.waiting.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        store.waiting.load(Ordering::SeqCst) > 0,
        "the send reached the store"
    );
    // What hyper does when the client disconnects: drop the request's future.
    abandoned.abort();
    let _ = abandoned.await;
    store.open.send_replace(true);

    let third: Value = serde_json::from_slice(&send(ids[2]).await.unwrap().message).unwrap();
    let conv = ConversationId::direct(alice, bob);
    let page = node
        .service
        .history(bob, conv, 10, Window::Newest { offset: 0 })
        .await
        .unwrap();
    let stored: Vec<(u64, String)> = page
        .iter()
        .rev()
        .map(|m| {
            let m: Value = serde_json::from_slice(m).unwrap();
            (
                m["seq"].as_u64().unwrap(),
                m["message_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (i as u64 + 1, id.0.to_string()))
        .collect();
    assert_eq!(
        stored, want,
        "the abandoned send kept seq 2; the next got 3"
    );
    assert_eq!(third["seq"], 3);
    node.shutdown().await;
}

/// Two entries a peer's outbox pushes for `user`'s mailbox, in id order.
fn pushed(user: UserId) -> Vec<super::outbox::Pushed> {
    (1..=2u64)
        .map(|id| super::outbox::Pushed {
            entry: ([7; 8], id),
            user,
            event: bytes::Bytes::from(format!(r#"{{"entry":{id}}}"#)),
        })
        .collect()
}

/// What `user`'s mailbox holds, straight from the store.
async fn stored_events(store: &GatedWrites, user: UserId) -> Vec<bytes::Bytes> {
    let scan = crate::store::Scan::prefix(crate::store::Table::Mailboxes, user.0.as_bytes(), 100);
    let rows = crate::store::Store::scan(&store.inner, scan).await.unwrap();
    rows.into_iter().map(|(_, cell)| cell).collect()
}

/// Pushes `user`'s entries as the outbox worker does: again after every
/// refusal, until one is answered Ok (bounded).
async fn push_until_taken(svc: &super::Service, user: UserId) {
    for _ in 0..200 {
        if svc.take_appends(pushed(user)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the push was never taken");
}

/// Regression (ring-loss.md): a pusher whose push timed out drops the
/// connection, and hyper drops `take_appends` mid-commit. When that commit
/// then failed, the entries stayed marked as taken, the retry was answered
/// Ok as all repeats, the pusher deleted its outbox rows, and the copies
/// were never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_abandoned_mid_commit_is_taken_again_when_that_commit_fails() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GatedWrites::open(dir.path()));
    let node = Node::start(&Config::default(), store.clone())
        .await
        .unwrap();
    let svc = node.service.clone();
    let user = UserId(Uuid::new_v4());

    store.open.send_replace(false);
    let abandoned = tokio::spawn({
        let svc = svc.clone();
        async move { svc.take_appends(pushed(user)).await }
    });
    store.until_waiting().await;
    // The pusher gave up: hyper drops the handler's future.
    abandoned.abort();
    let _ = abandoned.await;
    store.fail.store(true, Ordering::SeqCst);
    store.open.send_replace(true);
    for _ in 0..500 {
        if store.failed.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.failed.load(Ordering::SeqCst), 1, "the commit failed");
    store.fail.store(false, Ordering::SeqCst);

    push_until_taken(&svc, user).await;
    let events = stored_events(&store, user).await;
    assert_eq!(
        events,
        pushed(user)
            .into_iter()
            .map(|p| p.event)
            .collect::<Vec<_>>(),
        "the retry stored both entries, in order"
    );
    assert_eq!(
        svc.metrics().pushed_repeats.get(),
        0,
        "no entry was a repeat"
    );
    // A real repeat now is dropped, and counted.
    svc.take_appends(pushed(user)).await.unwrap();
    assert_eq!(stored_events(&store, user).await.len(), 2);
    assert_eq!(svc.metrics().pushed_repeats.get(), 2);
    node.shutdown().await;
}

/// Regression (ring-loss.md): a repeat arriving while the first push's
/// commit was in flight was answered Ok at once; when that commit failed,
/// the pusher had already deleted its rows and the copies were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_during_a_commit_that_fails_is_not_answered_as_taken() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(GatedWrites::open(dir.path()));
    let node = Node::start(&Config::default(), store.clone())
        .await
        .unwrap();
    let svc = node.service.clone();
    let user = UserId(Uuid::new_v4());

    store.open.send_replace(false);
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { svc.take_appends(pushed(user)).await }
    });
    store.until_waiting().await;
    // The repeat must not be answered Ok while the commit may still fail.
    let repeat = tokio::spawn({
        let svc = svc.clone();
        async move { svc.take_appends(pushed(user)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.fail.store(true, Ordering::SeqCst);
    store.open.send_replace(true);
    assert!(first.await.unwrap().is_err(), "the first commit failed");
    store.fail.store(false, Ordering::SeqCst);
    let repeat = repeat.await.unwrap();
    if repeat.is_err() {
        // Refused: the pusher keeps its rows and pushes again.
        push_until_taken(&svc, user).await;
    }
    assert_eq!(
        stored_events(&store, user).await,
        pushed(user)
            .into_iter()
            .map(|p| p.event)
            .collect::<Vec<_>>(),
        "every entry answered as taken is stored, once, in order"
    );
    assert_eq!(
        svc.metrics().pushed_repeats.get(),
        0,
        "no entry was a repeat"
    );
    node.shutdown().await;
}
