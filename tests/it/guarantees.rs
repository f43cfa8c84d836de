//! The properties of design.md, proven on one node.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Node, User};

fn messages(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| &e["message"])
        .collect()
}

#[tokio::test]
async fn concurrent_duplicate_retries_store_one_message() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let id = Uuid::new_v4();
    let body = json!({"message_id": id, "to": bob.id, "body": {"text": "once"}});
    let replies = futures_join(20, |_| {
        node.post("/v1/messages", &alice.token, body.clone())
    })
    .await;
    let first = &replies[0].body["message"];
    let mut originals = 0;
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
        assert_eq!(
            &r.body["message"], first,
            "every retry sees the identical object"
        );
        if !r.headers.contains_key("idempotent-replayed") {
            originals += 1;
        }
    }
    assert_eq!(originals, 1, "exactly one send stored it");
    let (events, _) = node.drain(&bob, &cursor).await;
    assert_eq!(messages(&events).len(), 1);
    let conv = first["conversation_id"].as_str().unwrap();
    let history = node
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(history.body["messages"].as_array().unwrap().len(), 1);

    // Much later, and after a restart, a retry still replays.
    node.send(&alice, &bob, json!("later")).await;
    let dir = node.stop().await;
    let config = crate::harness::test_config(dir.path());
    let node = Node::start_in(dir, config).await;
    let again = node.post("/v1/messages", &alice.token, body).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(&again.body["message"], first);
    assert_eq!(again.headers["idempotent-replayed"], "true");
}

/// Runs `n` requests concurrently on the current task.
async fn futures_join<F, Fut>(n: usize, make: F) -> Vec<crate::harness::Reply>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = crate::harness::Reply>,
{
    futures::future::join_all((0..n).map(make)).await
}

/// Drains `user`'s mailbox until `want` messages of `conv` arrived (bounded).
async fn conversation_in_mailbox(
    node: &Node,
    user: &User,
    cursor: &str,
    conv: &str,
    want: usize,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut cursor = cursor.to_owned();
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {want} arrived",
            got.len()
        );
        let r = node.poll(user, Some(&cursor), 1).await;
        assert_eq!(r.status, StatusCode::OK);
        for m in messages(r.body["events"].as_array().unwrap()) {
            if m["conversation_id"] == conv {
                got.push(m.clone());
            }
        }
        cursor = r.body["cursor"].as_str().unwrap().to_owned();
    }
    got
}

fn assert_gap_free(seen: &[Value], n: usize, who: &str) {
    let seqs: Vec<u64> = seen.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "{who} sees 1..={n} once, in order"
    );
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1]["prev_message_id"], pair[0]["message_id"],
            "{who}: the chain holds"
        );
    }
}

#[tokio::test]
async fn concurrent_senders_get_one_gap_free_order() {
    let node = Node::start().await;
    let members: Vec<User> = (0..5).map(|_| node.user()).collect();
    let cursors: Vec<String> = {
        let mut c = Vec::new();
        for m in &members {
            c.push(node.head(m).await);
        }
        c
    };
    let created = node
        .post(
            "/v1/groups",
            &members[0].token,
            json!({"name": "race", "members": members[1..].iter().map(|m| m.id).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let group = created.body["group"]["group_id"]
        .as_str()
        .unwrap()
        .to_owned();

    const EACH: usize = 30;
    let sends = futures_join(members.len() * EACH, |i| {
        let m = &members[i % members.len()];
        node.post(
            "/v1/messages",
            &m.token,
            json!({"message_id": Uuid::new_v4(), "group_id": group, "body": i}),
        )
    })
    .await;
    assert!(sends.iter().all(|r| r.status == StatusCode::CREATED));
    let total = members.len() * EACH;

    let mut orders = Vec::new();
    for (m, c) in members.iter().zip(&cursors) {
        let seen = conversation_in_mailbox(&node, m, c, &group, total).await;
        assert_gap_free(&seen, total, "a member");
        let ids: Vec<Value> = seen.iter().map(|m| m["message_id"].clone()).collect();
        orders.push(ids);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every member sees one order"
    );
    let history = node
        .get(
            &format!("/v1/conversations/{group}/messages?limit=500"),
            Some(&members[3].token),
        )
        .await;
    let mut ids: Vec<Value> = history.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_id"].clone())
        .collect();
    ids.reverse();
    assert_eq!(ids, orders[0], "history agrees with the mailboxes");
}

#[tokio::test]
async fn both_sides_of_a_direct_conversation_see_one_order() {
    let node = Node::start().await;
    let (a, b) = (node.user(), node.user());
    let (ca, cb) = (node.head(&a).await, node.head(&b).await);
    let sends = futures_join(60, |i| {
        let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        node.send(from, to, json!(i))
    })
    .await;
    assert!(sends.iter().all(|r| r.status == StatusCode::CREATED));
    let conv = sends[0].body["message"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let seen_a = conversation_in_mailbox(&node, &a, &ca, &conv, 60).await;
    let seen_b = conversation_in_mailbox(&node, &b, &cb, &conv, 60).await;
    assert_gap_free(&seen_a, 60, "a");
    assert_gap_free(&seen_b, 60, "b");
    assert_eq!(seen_a, seen_b);
}

#[tokio::test]
async fn a_pipelined_send_waits_for_the_one_it_names() {
    let node = Node::start().await;
    let (a, b) = (node.user(), node.user());
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let later = node.post(
        "/v1/messages",
        &a.token,
        json!({"message_id": second, "to": b.id, "body": "second", "prev_message_id": first}),
    );
    let earlier = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        node.post(
            "/v1/messages",
            &a.token,
            json!({"message_id": first, "to": b.id, "body": "first"}),
        )
        .await
    };
    let (later, earlier) = tokio::join!(later, earlier);
    assert_eq!(earlier.status, StatusCode::CREATED);
    assert_eq!(later.status, StatusCode::CREATED, "{later:?}");
    assert_eq!(earlier.body["message"]["seq"], 1);
    assert_eq!(later.body["message"]["seq"], 2);
    assert_eq!(later.body["message"]["prev_message_id"], json!(first));
}

/// The register-then-read rule: a send racing a poll that is being parked
/// must wake that very poll. (Were the wake lost, the poll would sit out its
/// whole 5 s hold and answer `timed_out` although the message was there.)
#[tokio::test]
async fn no_wake_up_is_lost_when_a_send_races_a_parking_poll() {
    let node = Node::start().await;
    let (a, b) = (node.user(), node.user());
    let mut cursor = node.head(&b).await;
    for round in 0..300 {
        let poll = node.poll(&b, Some(&cursor), 5);
        let send = node.send(&a, &b, json!(round));
        let (polled, sent) = tokio::join!(poll, send);
        assert_eq!(sent.status, StatusCode::CREATED);
        assert_eq!(
            polled.body["timed_out"], false,
            "round {round}: the wake-up was lost"
        );
        let events = polled.body["events"].as_array().unwrap();
        let got: Vec<Value> = messages(events)
            .iter()
            .map(|m| m["message_id"].clone())
            .collect();
        assert_eq!(
            got,
            vec![sent.body["message"]["message_id"].clone()],
            "round {round}"
        );
        cursor = polled.body["cursor"].as_str().unwrap().to_owned();
    }
}

#[tokio::test]
async fn a_user_reads_only_what_is_theirs() {
    let node = Node::start().await;
    let (a, b, c) = (node.user(), node.user(), node.user());
    let c_cursor = node.head(&c).await;
    let a_cursor = node.head(&a).await;
    let sent = node.send(&a, &b, json!("private")).await;
    let conv = sent.body["message"]["conversation_id"].as_str().unwrap();

    let r = node
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&c.token),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = node
        .post(
            "/v1/receipts",
            &c.token,
            json!({"conversation_id": conv, "up_to_seq": 1, "kind": "read"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let (events, _) = node.drain(&c, &c_cursor).await;
    assert!(events.is_empty(), "C's mailbox holds nothing of A and B");
    // A's cursor grants nothing: it is only a position in C's own mailbox.
    let r = node.poll(&c, Some(&a_cursor), 0).await;
    if r.status == StatusCode::OK {
        assert!(r.body["events"].as_array().unwrap().is_empty());
    } else {
        assert_eq!(r.code(), "invalid_cursor");
    }
    let r = node.get("/v1/conversations", Some(&c.token)).await;
    assert_eq!(r.body["conversations"], json!([]));
    // B sees it, A's token acts only as A.
    let r = node
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&b.token),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let as_a = node.send(&a, &c, json!("from a")).await;
    assert_eq!(as_a.body["message"]["sender_id"], json!(a.id));
}
