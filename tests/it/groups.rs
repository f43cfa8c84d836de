//! Groups, receipts and the recent-conversations list, end to end.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Node, User};

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| &e[kind])
        .collect()
}

/// Drains until `pred` holds over everything seen (bounded), for events
/// that come through the outbox.
async fn drain_until(
    node: &Node,
    user: &User,
    cursor: &str,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (events, _) = node.drain(user, cursor).await;
        if pred(&events) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never arrived: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn creating_a_group_is_idempotent_and_tells_every_member() {
    let node = Node::start().await;
    let (owner, a, b, stranger) = (node.user(), node.user(), node.user(), node.user());
    let cursor_a = node.head(&a).await;
    let g = Uuid::new_v4();
    let body = json!({"group_id": g, "name": "team", "members": [a.id, b.id, a.id]});
    let first = node.post("/v1/groups", &owner.token, body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
    let group = &first.body["group"];
    assert_eq!(group["group_id"], json!(g));
    assert_eq!(group["owner_id"], json!(owner.id));
    assert_eq!(
        group["member_count"], 3,
        "duplicates count once, the owner is a member"
    );
    let again = node.post("/v1/groups", &owner.token, body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body["group"], *group);
    let stolen = node.post("/v1/groups", &stranger.token, body).await;
    assert_eq!(stolen.status, StatusCode::CONFLICT);
    assert_eq!(stolen.code(), "idempotency_conflict");

    let (events, _) = node.drain(&a, &cursor_a).await;
    let created = of_type(&events, "group");
    assert_eq!(
        created.len(),
        1,
        "one event, even after the repeated create"
    );
    assert_eq!(created[0]["change"], "created");
    let mut ids: Vec<String> = created[0]["user_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut want = vec![owner.id.to_string(), a.id.to_string(), b.id.to_string()];
    want.sort();
    assert_eq!(ids, want);
    let r = node.get(&format!("/v1/groups/{g}"), Some(&b.token)).await;
    assert_eq!(r.body["group"], *group);
}

#[tokio::test]
async fn members_page_in_user_id_order() {
    let node = Node::start().await;
    let owner = node.user();
    let members: Vec<Uuid> = (0..24).map(|_| Uuid::new_v4()).collect();
    let r = node
        .post(
            "/v1/groups",
            &owner.token,
            json!({"name": "big", "members": members}),
        )
        .await;
    let g = r.body["group"]["group_id"].as_str().unwrap().to_owned();
    let mut all = members.iter().map(Uuid::to_string).collect::<Vec<_>>();
    all.push(owner.id.to_string());
    all.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10 {
        let path = match &after {
            Some(a) => format!("/v1/groups/{g}/members?limit=10&after={a}"),
            None => format!("/v1/groups/{g}/members?limit=10"),
        };
        let r = node.get(&path, Some(&owner.token)).await;
        assert_eq!(r.status, StatusCode::OK);
        for m in r.body["members"].as_array().unwrap() {
            seen.push(m["user_id"].as_str().unwrap().to_owned());
            assert!(m["joined_at"].as_i64().unwrap() > 0);
        }
        match r.body["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, all, "25 members in three pages, in order, once each");
}

#[tokio::test]
async fn membership_changes_reach_everyone_concerned() {
    let node = Node::start().await;
    let (owner, a, b, c) = (node.user(), node.user(), node.user(), node.user());
    let r = node
        .post(
            "/v1/groups",
            &owner.token,
            json!({"name": "g", "members": [a.id, b.id]}),
        )
        .await;
    let g = r.body["group"]["group_id"].as_str().unwrap().to_owned();
    let cursors: Vec<String> =
        futures::future::join_all([&owner, &a, &b, &c].map(|u| node.head(u))).await;

    let r = node
        .post(
            &format!("/v1/groups/{g}/members"),
            &a.token,
            json!({"add": [c.id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "only the owner adds");
    let r = node
        .post(
            &format!("/v1/groups/{g}/members"),
            &owner.token,
            json!({"add": [c.id], "remove": [b.id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["group"]["member_count"], 3);
    let r = node
        .post(
            &format!("/v1/groups/{g}/members"),
            &a.token,
            json!({"remove": [a.id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "a member may leave");
    assert_eq!(r.body["group"]["member_count"], 2);

    let changes = |events: &[Value]| -> Vec<(String, Vec<String>)> {
        of_type(events, "group")
            .iter()
            .map(|e| {
                let ids = e["user_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_owned())
                    .collect();
                (e["change"].as_str().unwrap().to_owned(), ids)
            })
            .collect()
    };
    let s = |u: &User| u.id.to_string();
    let (owner_events, _) = node.drain(&owner, &cursors[0]).await;
    assert_eq!(
        changes(&owner_events),
        vec![
            ("left".into(), vec![s(&b)]),
            ("joined".into(), vec![s(&c)]),
            ("left".into(), vec![s(&a)])
        ]
    );
    let (b_events, _) = node.drain(&b, &cursors[2]).await;
    assert_eq!(
        changes(&b_events),
        vec![("left".into(), vec![s(&b)])],
        "the removed hear of it, then nothing"
    );
    let (c_events, _) = node.drain(&c, &cursors[3]).await;
    assert_eq!(
        changes(&c_events),
        vec![("joined".into(), vec![s(&c)]), ("left".into(), vec![s(&a)])]
    );
}

#[tokio::test]
async fn a_removed_member_reads_up_to_its_removal_and_receives_nothing_after() {
    let node = Node::start().await;
    let (owner, a, b) = (node.user(), node.user(), node.user());
    let r = node
        .post(
            "/v1/groups",
            &owner.token,
            json!({"name": "g", "members": [a.id, b.id]}),
        )
        .await;
    let g = r.body["group"]["group_id"].as_str().unwrap().to_owned();
    async fn send(node: &Node, from: &User, g: &str, text: &str) -> crate::harness::Reply {
        node.post(
            "/v1/messages",
            &from.token,
            json!({"message_id": Uuid::new_v4(), "group_id": g, "body": text}),
        )
        .await
    }
    assert_eq!(
        send(&node, &owner, &g, "one").await.status,
        StatusCode::CREATED
    );
    assert_eq!(send(&node, &a, &g, "two").await.status, StatusCode::CREATED);
    node.post(
        &format!("/v1/groups/{g}/members"),
        &owner.token,
        json!({"remove": [b.id]}),
    )
    .await;
    let b_cursor = node.head(&b).await;
    assert_eq!(
        send(&node, &owner, &g, "three").await.status,
        StatusCode::CREATED
    );

    let (events, _) = node.drain(&b, &b_cursor).await;
    assert!(
        of_type(&events, "message").is_empty(),
        "nothing after removal: {events:?}"
    );
    let r = node
        .get(&format!("/v1/conversations/{g}/messages"), Some(&b.token))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "history up to the removal stays readable"
    );
    let seqs: Vec<u64> = r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 1]);
    let r = node
        .get(
            &format!("/v1/conversations/{g}/messages?before_seq=9"),
            Some(&b.token),
        )
        .await;
    assert_eq!(
        r.body["messages"].as_array().unwrap().len(),
        2,
        "and not beyond"
    );
    let r = send(&node, &b, &g, "let me back").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // A member sees all three.
    let r = node
        .get(&format!("/v1/conversations/{g}/messages"), Some(&a.token))
        .await;
    assert_eq!(r.body["messages"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_group_message_reaches_every_member_once() {
    let node = Node::start().await;
    let owner = node.user();
    let members: Vec<User> = (0..6).map(|_| node.user()).collect();
    let r = node
        .post(
            "/v1/groups",
            &owner.token,
            json!({"name": "g", "members": members.iter().map(|m| m.id).collect::<Vec<_>>()}),
        )
        .await;
    let g = r.body["group"]["group_id"].as_str().unwrap().to_owned();
    let mut cursors = Vec::new();
    for m in members.iter().chain([&owner]) {
        cursors.push(node.head(m).await);
    }
    let sent = node
        .post(
            "/v1/messages",
            &owner.token,
            json!({"message_id": Uuid::new_v4(), "group_id": g, "body": "all"}),
        )
        .await;
    for (m, c) in members.iter().chain([&owner]).zip(&cursors) {
        let events = drain_until(&node, m, c, |e| !of_type(e, "message").is_empty()).await;
        let msgs = of_type(&events, "message");
        assert_eq!(msgs.len(), 1);
        assert_eq!(*msgs[0], sent.body["message"]);
    }
}

#[tokio::test]
async fn receipts_reach_the_sender_after_its_own_copy_and_never_move_back() {
    let node = Node::start().await;
    let (a, b) = (node.user(), node.user());
    let a_cursor = node.head(&a).await;
    for i in 1..=3 {
        node.send(&a, &b, json!(i)).await;
    }
    let conv = node.get("/v1/conversations", Some(&b.token)).await.body["conversations"][0].clone();
    assert_eq!(conv["unread"], 3);
    assert_eq!(conv["kind"], "direct");
    assert_eq!(conv["peer_id"], json!(a.id));
    let id = conv["conversation_id"].as_str().unwrap().to_owned();
    let receipt = |kind: &str, n: u64| {
        node.post(
            "/v1/receipts",
            &b.token,
            json!({"conversation_id": id, "up_to_seq": n, "kind": kind}),
        )
    };
    assert_eq!(receipt("read", 2).await.status, StatusCode::NO_CONTENT);
    let unread =
        node.get("/v1/conversations", Some(&b.token)).await.body["conversations"][0]["unread"]
            .clone();
    assert_eq!(unread, 1);
    assert_eq!(
        receipt("delivered", 1).await.status,
        StatusCode::NO_CONTENT,
        "a step back is accepted and ignored"
    );
    assert_eq!(
        receipt("read", 9).await.status,
        StatusCode::BAD_REQUEST,
        "beyond the newest seq"
    );

    let events = drain_until(&node, &a, &a_cursor, |e| {
        of_type(e, "message").len() == 3 && !of_type(e, "receipt").is_empty()
    })
    .await;
    let receipts = of_type(&events, "receipt");
    assert_eq!(
        receipts.len(),
        1,
        "the backward receipt sent nothing: {events:?}"
    );
    assert_eq!(receipts[0]["kind"], "read");
    assert_eq!(receipts[0]["up_to_seq"], 2);
    assert_eq!(receipts[0]["user_id"], json!(b.id));
    let position = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
    let receipt_at = position(&|e| e["type"] == "receipt");
    let copy_of_2 = position(&|e| e["type"] == "message" && e["message"]["seq"] == 2);
    assert!(
        copy_of_2 < receipt_at,
        "the receipt never overtakes the message it covers"
    );

    assert_eq!(receipt("read", 3).await.status, StatusCode::NO_CONTENT);
    let unread =
        node.get("/v1/conversations", Some(&b.token)).await.body["conversations"][0]["unread"]
            .clone();
    assert_eq!(unread, 0);
}

#[tokio::test]
async fn recent_conversations_come_most_recent_first() {
    let node = Node::start().await;
    let (me, x, y, z) = (node.user(), node.user(), node.user(), node.user());
    for peer in [&x, &y, &z] {
        node.send(peer, &me, json!("hello")).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.send(&me, &x, json!("back to x")).await;
    let list = node.get("/v1/conversations", Some(&me.token)).await;
    let peers: Vec<Value> = list.body["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["peer_id"].clone())
        .collect();
    assert_eq!(peers, vec![json!(x.id), json!(z.id), json!(y.id)]);
    let first = &list.body["conversations"][0];
    assert_eq!(first["last_message"]["body"], "back to x");
    assert_eq!(
        first["unread"], 1,
        "x's hello is unread; my own message is not"
    );
    let page = node
        .get("/v1/conversations?limit=1&offset=1", Some(&me.token))
        .await;
    assert_eq!(page.body["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(page.body["conversations"][0]["peer_id"], json!(z.id));
}
