//! Large groups, fanned out on read: on a real embedded store, through the
//! service, with a store wrapper that counts the rows each call writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::app::Node;
use crate::config::Config;
use crate::domain::{ConversationId, Cursor, GroupId, MessageId, StreamPos, UserId};
use crate::service::Error;
use crate::service::groups::{ChangeMembers, CreateGroup};
use crate::service::poll::PollRequest;
use crate::service::send::{Destination, SendRequest};
use crate::store::embedded::EmbeddedStore;
use crate::store::{Mutation, Row, Scan, Store, StoreError, Table};

/// The embedded store, counting the rows written to each table.
struct Counting {
    inner: EmbeddedStore,
    rows: AtomicUsize,
    mailbox_rows: AtomicUsize,
}

#[async_trait]
impl Store for Counting {
    async fn get(&self, table: Table, row: &[u8]) -> Result<Option<bytes::Bytes>, StoreError> {
        self.inner.get(table, row).await
    }
    async fn scan(&self, scan: Scan) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(scan).await
    }
    async fn write(&self, batch: Vec<Mutation>) -> Result<(), StoreError> {
        for m in &batch {
            // The clock's lease row comes now and then, whatever the call.
            if let Mutation::Put { table, .. } = m
                && *table != Table::NodeState
            {
                self.rows.fetch_add(1, Ordering::SeqCst);
                if *table == Table::Mailboxes {
                    self.mailbox_rows.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        self.inner.write(batch).await
    }
    async fn check_and_put(
        &self,
        table: Table,
        row: &[u8],
        expected: Option<&[u8]>,
        value: bytes::Bytes,
    ) -> Result<bool, StoreError> {
        self.inner.check_and_put(table, row, expected, value).await
    }
    async fn increment(&self, table: Table, row: &[u8], delta: i64) -> Result<i64, StoreError> {
        self.inner.increment(table, row, delta).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

struct World {
    node: Node,
    store: Arc<Counting>,
    _dir: tempfile::TempDir,
}

async fn world(threshold: usize) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Counting {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        rows: AtomicUsize::new(0),
        mailbox_rows: AtomicUsize::new(0),
    });
    let mut config = Config::default();
    config.send.large_group_threshold = threshold;
    let node = Node::start(&config, store.clone()).await.unwrap();
    World {
        node,
        store,
        _dir: dir,
    }
}

fn users(n: usize) -> Vec<UserId> {
    let mut users: Vec<UserId> = (0..n).map(|_| UserId(Uuid::new_v4())).collect();
    users.sort();
    users
}

impl World {
    async fn group(&self, owner: UserId, members: &[UserId]) -> GroupId {
        let g = GroupId(Uuid::new_v4());
        let req = CreateGroup {
            group_id: Some(g),
            name: "g".into(),
            members: members.to_vec(),
        };
        self.node.service.create_group(owner, req).await.unwrap();
        g
    }

    async fn send(&self, from: UserId, to: Destination) -> MessageId {
        let id = MessageId(Uuid::new_v4());
        let req = SendRequest {
            message_id: id,
            to,
            body: json!({"n": id.0.to_string()}),
            prev_message_id: None,
        };
        self.node.service.send(from, req).await.unwrap();
        id
    }

    /// Rows a call wrote (and of them, mailbox rows).
    async fn rows_of<F: std::future::Future>(&self, call: F) -> (usize, usize) {
        let (rows, mail) = (
            self.store.rows.load(Ordering::SeqCst),
            self.store.mailbox_rows.load(Ordering::SeqCst),
        );
        call.await;
        (
            self.store.rows.load(Ordering::SeqCst) - rows,
            self.store.mailbox_rows.load(Ordering::SeqCst) - mail,
        )
    }

    async fn head(&self, user: UserId) -> Cursor {
        let req = PollRequest {
            cursor: None,
            timeout: Duration::ZERO,
            limit: 100,
        };
        self.node.service.poll(user, req).await.unwrap().cursor
    }

    /// One poll after `cursor` that never parks.
    async fn poll_now(
        &self,
        user: UserId,
        cursor: &Cursor,
        limit: usize,
    ) -> crate::service::Result<crate::service::poll::PollAnswer> {
        let req = PollRequest {
            cursor: Some(cursor.clone()),
            timeout: Duration::ZERO,
            limit,
        };
        self.node.service.poll(user, req).await
    }

    /// Every event after `cursor`, in small pages, and the cursor after them.
    async fn drain(&self, user: UserId, mut cursor: Cursor) -> (Vec<Value>, Cursor) {
        let mut all = Vec::new();
        loop {
            let answer = self.poll_now(user, &cursor, 2).await.unwrap();
            if answer.events.is_empty() {
                return (all, answer.cursor);
            }
            for e in &answer.events {
                all.push(serde_json::from_slice(e).unwrap());
            }
            cursor = answer.cursor;
        }
    }
}

/// What a user got, in order: `m<seq>` per message, `+`/`-` per change.
fn story(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "message" => format!("m{}", e["message"]["seq"]),
            "group" => match e["group"]["change"].as_str().unwrap() {
                "joined" => "+".to_owned(),
                "left" => "-".to_owned(),
                other => other.to_owned(),
            },
            other => other.to_owned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_large_group_writes_what_a_direct_send_writes_whatever_its_size() {
    let w = world(3).await;
    let u = users(41);
    let small = w.group(u[0], &u[1..4]).await;
    let big = w.group(u[0], &u[1..41]).await;
    // The first message of a conversation also writes its metadata.
    w.send(u[0], Destination::User(u[1])).await;
    let (direct, _) = w.rows_of(w.send(u[0], Destination::User(u[1]))).await;
    let (to_small, mail_small) = w.rows_of(w.send(u[0], Destination::Group(small))).await;
    let (to_big, mail_big) = w.rows_of(w.send(u[0], Destination::Group(big))).await;
    assert_eq!((mail_small, mail_big), (0, 0), "no mailbox copies");
    assert_eq!(to_small, to_big, "the same rows for 4 and for 41 members");
    assert!(to_big <= direct, "{to_big} rows, a direct send {direct}");
    w.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_reads_a_large_groups_messages_in_seq_order() {
    let w = world(3).await;
    let u = users(4);
    let g = w.group(u[0], &u[1..]).await;
    let mut cursors = Vec::new();
    for user in &u {
        cursors.push(w.head(*user).await);
    }
    for from in [0, 1, 2, 0, 3] {
        w.send(u[from], Destination::Group(g)).await;
    }
    for (user, cursor) in u.iter().zip(cursors) {
        let (events, after) = w.drain(*user, cursor.clone()).await;
        assert_eq!(
            story(&events),
            ["m1", "m2", "m3", "m4", "m5"],
            "senders too"
        );
        assert!(after.group(ConversationId::from(g)).is_some());
        // The same cursor again replays the same (at least once).
        let (again, _) = w.drain(*user, cursor).await;
        assert_eq!(story(&again), story(&events));
    }
    w.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_who_join_or_leave_read_exactly_their_share() {
    let w = world(3).await;
    let u = users(5);
    let (owner, stays, leaves, joins) = (u[0], u[1], u[2], u[4]);
    let g = w.group(owner, &[u[1], u[2], u[3]]).await;
    let start: Vec<Cursor> = {
        let mut c = Vec::new();
        for user in &u {
            c.push(w.head(*user).await);
        }
        c
    };
    w.send(owner, Destination::Group(g)).await;
    let change = |add: Vec<UserId>, remove: Vec<UserId>| {
        w.node
            .service
            .change_members(owner, g, ChangeMembers { add, remove })
    };
    let (rows, mail) = w.rows_of(change(vec![], vec![leaves])).await;
    assert_eq!(mail, 0, "the removed read it from the stream too");
    assert!(rows < 10, "{rows} rows for one removal from a large group");
    w.send(owner, Destination::Group(g)).await;
    change(vec![joins], vec![]).await.unwrap();
    w.send(stays, Destination::Group(g)).await;

    let (left, _) = w.drain(leaves, start[2].clone()).await;
    assert_eq!(story(&left), ["m1", "-"], "nothing after its removal");
    let (joined, _) = w.drain(joins, start[4].clone()).await;
    assert_eq!(story(&joined), ["+", "m3"], "nothing before it joined");
    let (all, _) = w.drain(stays, start[1].clone()).await;
    assert_eq!(story(&all), ["m1", "-", "m2", "+", "m3"]);
    // The one who left can still page the history up to its removal.
    let history = w
        .node
        .service
        .history(
            leaves,
            ConversationId::from(g),
            10,
            crate::service::history::Window::Newest { offset: 0 },
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
    w.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_grows_large_keeps_one_gap_free_order() {
    let w = world(4).await;
    let u = users(4);
    let g = w.group(u[0], &[u[1]]).await;
    let start = w.head(u[1]).await;
    w.send(u[0], Destination::Group(g)).await;
    let (_, mail) = w
        .rows_of(w.node.service.change_members(
            u[0],
            g,
            ChangeMembers {
                add: vec![u[2], u[3]],
                remove: vec![],
            },
        ))
        .await;
    assert_eq!(
        mail, 4,
        "the change that makes it large still reaches everyone"
    );
    w.send(u[1], Destination::Group(g)).await;
    w.send(u[2], Destination::Group(g)).await;
    let (events, _) = w.drain(u[1], start).await;
    assert_eq!(story(&events), ["m1", "+", "m2", "m3"]);
    w.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_poll_wakes_for_a_large_group_message() {
    let w = world(3).await;
    let u = users(3);
    let g = w.group(u[0], &u[1..]).await;
    let cursor = w.head(u[2]).await;
    let service = w.node.service.clone();
    let user = u[2];
    let parked = tokio::spawn(async move {
        let req = PollRequest {
            cursor: Some(cursor),
            timeout: Duration::from_secs(50),
            limit: 10,
        };
        service.poll(user, req).await
    });
    for _ in 0..400 {
        if w.node.service.metrics().parked_polls.get() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.node.service.metrics().parked_polls.get(), 1);
    w.send(u[0], Destination::Group(g)).await;
    let answer = tokio::time::timeout(Duration::from_secs(20), parked)
        .await
        .expect("woken before its hold ended")
        .unwrap()
        .unwrap();
    assert_eq!(answer.events.len(), 1);
    assert!(!answer.timed_out);
    w.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_ahead_of_a_groups_stream_is_refused() {
    let w = world(3).await;
    let u = users(3);
    let g = w.group(u[0], &u[1..]).await;
    w.send(u[0], Destination::Group(g)).await;
    let mut cursor = w.head(u[1]).await;
    cursor.set_group(ConversationId::from(g), StreamPos { seq: 99, sub: 0 });
    let answer = w.poll_now(u[1], &cursor, 10).await;
    assert!(matches!(answer, Err(Error::InvalidCursor)), "{answer:?}");
    w.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_never_comes_before_the_large_group_message_it_covers() {
    let w = world(3).await;
    let u = users(3);
    let g = w.group(u[0], &u[1..]).await;
    let sender_start = w.head(u[0]).await;
    w.send(u[0], Destination::Group(g)).await;
    w.send(u[0], Destination::Group(g)).await;
    w.node
        .service
        .receipt(
            u[1],
            ConversationId::from(g),
            2,
            crate::domain::ReceiptKind::Read,
        )
        .await
        .unwrap();
    // One event per answer: the receipt waits in the mailbox until the
    // stream has given this device both messages. (Receipts reach the
    // mailbox through the outbox, a moment later.)
    let mut cursor = sender_start;
    let mut got = Vec::new();
    for _ in 0..500 {
        if got.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let answer = w.poll_now(u[0], &cursor, 1).await.unwrap();
        for e in &answer.events {
            got.push(serde_json::from_slice::<Value>(e).unwrap());
        }
        cursor = answer.cursor;
    }
    assert_eq!(story(&got), ["m1", "m2", "receipt"]);
    w.node.shutdown().await;
}
