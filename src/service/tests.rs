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

/// The message ids in `events` that a user receives directly (not its own
/// copies of what it sent, which come later through the outbox).
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
                let answer = read(users[user], d.cursor, limit).await.unwrap();
                assert!(answer.events.len() <= limit);
                assert!(answer.cursor >= d.cursor, "cursors never move back");
                d.history.push((d.cursor, d.seen.len()));
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
                let Some(&(cursor, seen_then)) = d.history.iter().rev().nth(back) else {
                    continue;
                };
                let mut again = Vec::new();
                let mut c = cursor;
                loop {
                    let answer = read(users[user], c, 1000).await.unwrap();
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
            let answer = read(users[user], d.cursor, 1000).await.unwrap();
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
