//! Every row of the contract's error table: the status, the error shape,
//! the headers, and that a refused request changed nothing.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Node, Reply, SECRET, User};

fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.code(), code, "{r:?}");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
}

/// Asserts that `bob`'s mailbox got nothing after `cursor`.
async fn assert_nothing_arrived(node: &Node, bob: &User, cursor: &str) {
    let (events, _) = node.drain(bob, cursor).await;
    assert_eq!(
        events,
        Vec::<Value>::new(),
        "a refused request changed nothing"
    );
}

#[tokio::test]
async fn malformed_sends_are_400_and_change_nothing() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let id = Uuid::new_v4();
    let raw = |body: &'static str| {
        node.raw(
            Method::POST,
            "/v1/messages",
            Some(&alice.token),
            Bytes::from(body),
            &[],
        )
    };
    assert_error(
        &raw("{not json").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    assert_error(
        &raw("[1, 2]").await,
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    assert_error(&raw("").await, StatusCode::BAD_REQUEST, "invalid_json");
    let cases = [
        json!({"to": bob.id, "body": 1}),
        json!({"message_id": "not-a-uuid", "to": bob.id, "body": 1}),
        json!({"message_id": id, "to": "bob", "body": 1}),
        json!({"message_id": id, "to": 7, "body": 1}),
        json!({"message_id": id, "to": bob.id, "group_id": Uuid::new_v4(), "body": 1}),
        json!({"message_id": id, "body": 1}),
        json!({"message_id": id, "to": bob.id}),
        json!({"message_id": id, "to": bob.id, "body": 1, "prev_message_id": "x"}),
    ];
    for body in cases {
        let r = node.post("/v1/messages", &alice.token, body.clone()).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");
    }
    assert_nothing_arrived(&node, &bob, &cursor).await;
    // The same message_id, now well-formed, is a first send.
    let ok = node
        .post(
            "/v1/messages",
            &alice.token,
            json!({"message_id": id, "to": bob.id, "body": 1}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(ok.body["message"]["seq"], 1);
    assert!(!ok.headers.contains_key("idempotent-replayed"));
}

#[tokio::test]
async fn bad_poll_and_history_parameters_are_400() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let sent = node.send(&alice, &bob, json!("x")).await;
    let conv = sent.body["message"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let get = |path: String| {
        let token = bob.token.clone();
        let node = &node;
        async move { node.get(&path, Some(&token)).await }
    };
    for c in ["zz", "00000000000000000", "000660DEFA51DE15", "", "-1"] {
        assert_error(
            &get(format!("/v1/poll?cursor={c}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        );
    }
    assert_error(
        &get("/v1/poll?cursor=ffffffffffffff00&timeout=0".into()).await,
        StatusCode::BAD_REQUEST,
        "invalid_cursor",
    );
    for q in [
        "timeout=-1",
        "timeout=abc",
        "timeout=1.5",
        "limit=0",
        "limit=-3",
        "limit=many",
    ] {
        assert_error(
            &get(format!("/v1/poll?cursor={cursor}&{q}")).await,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        );
    }
    for q in [
        "before_seq=2&offset=1",
        "before_seq=0",
        "limit=0",
        "offset=-1",
    ] {
        let r = get(format!("/v1/conversations/{conv}/messages?{q}")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");
    }
    let r = get("/v1/conversations/not-a-uuid/messages".into()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");
    let r = get("/v1/groups/not-a-uuid".into()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");
    let r = get("/v1/conversations?limit=0".into()).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "invalid_field");
    // The message is still there once, and the mailbox still answers.
    let (events, _) = node.drain(&bob, &cursor).await;
    assert_eq!(events.len(), 1);
}

fn token(secret: &str, claims: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{header}.{claims}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{claims}.{signature}")
}

#[tokio::test]
async fn bad_tokens_are_401_and_change_nothing() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let send = json!({"message_id": Uuid::new_v4(), "to": bob.id, "body": "x"});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good_claims = json!({"sub": alice.id, "exp": now + 3600});
    assert!(!token(SECRET, good_claims.clone()).is_empty());
    let headers: Vec<Option<String>> = vec![
        None,
        Some(format!("Basic {}", URL_SAFE_NO_PAD.encode("alice:pw"))),
        Some("Bearer".into()),
        Some("Bearer not.a.token".into()),
        Some(format!(
            "Bearer {}",
            token(SECRET, json!({"sub": alice.id, "exp": now - 10}))
        )),
        Some(format!(
            "Bearer {}",
            token("another-secret-of-at-least-32-bytes!", good_claims.clone())
        )),
        Some(format!(
            "Bearer {}",
            token(SECRET, json!({"sub": "alice", "exp": now + 3600}))
        )),
    ];
    for header in headers {
        let extra: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("authorization", h.as_str()))
            .collect();
        for (method, path, body) in [
            (Method::POST, "/v1/messages", send.to_string()),
            (Method::GET, "/v1/poll", String::new()),
            (Method::GET, "/v1/conversations", String::new()),
        ] {
            let r = node
                .raw(method, path, None, Bytes::from(body), &extra)
                .await;
            assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        }
    }
    // A token made the same way with the right secret works: the refusals
    // above were about the token, not the request.
    let ok = node
        .raw(
            Method::POST,
            "/v1/messages",
            Some(&token(SECRET, good_claims)),
            Bytes::from(send.to_string()),
            &[],
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{ok:?}");
    let (events, _) = node.drain(&bob, &cursor).await;
    assert_eq!(events.len(), 1, "only the good send arrived");
}

#[tokio::test]
async fn other_peoples_conversations_and_groups_are_403_unknown_ones_404() {
    let node = Node::start().await;
    let (alice, bob, eve) = (node.user(), node.user(), node.user());
    let sent = node.send(&alice, &bob, json!("hi")).await;
    let conv = sent.body["message"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let group = node
        .post(
            "/v1/groups",
            &alice.token,
            json!({"name": "g", "members": [bob.id]}),
        )
        .await;
    let g = group.body["group"]["group_id"].as_str().unwrap().to_owned();
    let eve_cursor = node.head(&eve).await;
    let bob_cursor = node.head(&bob).await;

    let r = node
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&eve.token),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = node
        .post(
            "/v1/messages",
            &eve.token,
            json!({"message_id": Uuid::new_v4(), "group_id": g, "body": 1}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = node
        .post(
            "/v1/receipts",
            &eve.token,
            json!({"conversation_id": conv, "up_to_seq": 1, "kind": "read"}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    for path in [format!("/v1/groups/{g}"), format!("/v1/groups/{g}/members")] {
        assert_error(
            &node.get(&path, Some(&eve.token)).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    let r = node
        .post(
            &format!("/v1/groups/{g}/members"),
            &eve.token,
            json!({"add": [eve.id]}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");
    let r = node
        .post(
            &format!("/v1/groups/{g}/members"),
            &bob.token,
            json!({"add": [eve.id]}),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "forbidden");

    let unknown = Uuid::new_v4();
    for path in [
        format!("/v1/conversations/{unknown}/messages"),
        format!("/v1/groups/{unknown}"),
        format!("/v1/groups/{unknown}/members"),
        "/v1/nothing".to_owned(),
        "/v2/messages".to_owned(),
    ] {
        assert_error(
            &node.get(&path, Some(&alice.token)).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    let r = node
        .post(
            "/v1/messages",
            &alice.token,
            json!({"message_id": Uuid::new_v4(), "group_id": unknown, "body": 1}),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");

    assert_nothing_arrived(&node, &eve, &eve_cursor).await;
    assert_nothing_arrived(&node, &bob, &bob_cursor).await;
    let r = node.get(&format!("/v1/groups/{g}"), Some(&bob.token)).await;
    assert_eq!(r.body["group"]["member_count"], 2, "nobody joined");
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let node = Node::start().await;
    let alice = node.user();
    for (method, path, allow) in [
        (Method::DELETE, "/v1/messages", "POST"),
        (Method::GET, "/v1/messages", "POST"),
        (Method::POST, "/v1/poll", "GET"),
        (Method::PUT, "/v1/receipts", "POST"),
        (
            Method::DELETE,
            "/v1/groups/8c1f6b8e-6a0b-4c64-9d0a-2f5c1b7e9a10/members",
            "GET, POST",
        ),
        (Method::POST, "/metrics", "GET"),
    ] {
        let r = node
            .request(method.clone(), path, Some(&alice.token), None)
            .await;
        assert_error(&r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
    }
}

#[tokio::test]
async fn reused_message_ids_and_missing_predecessors_are_409() {
    let node = Node::start_with(|c| c.send.prev_wait = Duration::from_millis(200)).await;
    let (alice, bob, carol) = (node.user(), node.user(), node.user());
    let id = Uuid::new_v4();
    let first = node
        .post(
            "/v1/messages",
            &alice.token,
            json!({"message_id": id, "to": bob.id, "body": "original"}),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    let bob_cursor = node.head(&bob).await;
    let carol_cursor = node.head(&carol).await;
    let other_body = node
        .post(
            "/v1/messages",
            &alice.token,
            json!({"message_id": id, "to": bob.id, "body": "edited"}),
        )
        .await;
    assert_error(&other_body, StatusCode::CONFLICT, "idempotency_conflict");
    let other_to = node
        .post(
            "/v1/messages",
            &alice.token,
            json!({"message_id": id, "to": carol.id, "body": "original"}),
        )
        .await;
    assert_error(&other_to, StatusCode::CONFLICT, "idempotency_conflict");
    let missing = node
        .post(
            "/v1/messages",
            &alice.token,
            json!({"message_id": Uuid::new_v4(), "to": bob.id, "body": "x", "prev_message_id": Uuid::new_v4()}),
        )
        .await;
    assert_error(&missing, StatusCode::CONFLICT, "prev_missing");
    // A predecessor that exists, but in another conversation, never arrives here.
    let elsewhere = node
        .post(
            "/v1/messages",
            &alice.token,
            json!({"message_id": Uuid::new_v4(), "to": carol.id, "body": "x", "prev_message_id": id}),
        )
        .await;
    assert_error(&elsewhere, StatusCode::CONFLICT, "prev_missing");

    assert_nothing_arrived(&node, &bob, &bob_cursor).await;
    assert_nothing_arrived(&node, &carol, &carol_cursor).await;
    let conv = first.body["message"]["conversation_id"].as_str().unwrap();
    let history = node
        .get(
            &format!("/v1/conversations/{conv}/messages"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(history.body["messages"], json!([first.body["message"]]));
}

#[tokio::test]
async fn oversized_bodies_are_413_and_change_nothing() {
    let node = Node::start_with(|c| c.limits.max_body_bytes = 1024).await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let big = json!({"message_id": Uuid::new_v4(), "to": bob.id, "body": "x".repeat(2000)});
    let r = node.post("/v1/messages", &alice.token, big).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let r = node
        .post(
            "/v1/groups",
            &alice.token,
            json!({"name": "x".repeat(2000), "members": []}),
        )
        .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_nothing_arrived(&node, &bob, &cursor).await;
    let small = node.send(&alice, &bob, json!("fits")).await;
    assert_eq!(small.body["message"]["seq"], 1);
}

async fn parked(node: &Node) -> i64 {
    let text = node
        .get("/metrics", None)
        .await
        .body
        .as_str()
        .unwrap_or("")
        .to_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("carrier_parked_polls "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

async fn wait_parked(node: &Node, n: i64) {
    for _ in 0..250 {
        if parked(node).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("parked polls never reached {n} (at {})", parked(node).await);
}

#[tokio::test]
async fn too_many_parked_polls_are_429_and_a_closed_poll_frees_its_place() {
    let node = std::sync::Arc::new(
        Node::start_with(|c| {
            c.limits.max_polls_per_user = 2;
            c.limits.max_polls_per_node = 3;
        })
        .await,
    );
    let (bob, carol, dave) = (node.user(), node.user(), node.user());
    let park = |user: &User, cursor: String| {
        let node = node.clone();
        let token = user.token.clone();
        tokio::spawn(async move {
            node.get(
                &format!("/v1/poll?cursor={cursor}&timeout=50"),
                Some(&token),
            )
            .await
        })
    };
    let b = node.head(&bob).await;
    let held = vec![park(&bob, b.clone()), park(&bob, b.clone())];
    wait_parked(&node, 2).await;
    let r = node.poll(&bob, Some(&b), 50).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests");
    assert!(r.headers.contains_key("retry-after"));

    // The node's limit: one more user fits, the next does not.
    let c = node.head(&carol).await;
    let carol_poll = park(&carol, c);
    wait_parked(&node, 3).await;
    let d = node.head(&dave).await;
    let r = node.poll(&dave, Some(&d), 50).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "too_many_requests");

    // Closing a parked poll's connection frees its place at once.
    for h in held {
        h.abort();
    }
    carol_poll.abort();
    wait_parked(&node, 0).await;
    let again = park(&bob, b);
    wait_parked(&node, 1).await;
    again.abort();
    let text = node
        .get("/metrics", None)
        .await
        .body
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains("carrier_polls_abandoned_total 3"), "{text}");
}
