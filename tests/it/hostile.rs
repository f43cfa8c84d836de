//! Hostile input: slow heads and bodies, oversized heads and queries,
//! senders over their rate. Each is refused with the contract's error (or
//! a closed connection, when no request ever arrived) and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::harness::{Api, Node, User};

/// Connections that send their request head one byte a second.
const SLOW_CLIENTS: usize = 1000;

/// Drips a request head one byte a second until the server closes the
/// connection (true) or `bytes` were sent (false).
async fn drip(addr: std::net::SocketAddr, bytes: usize) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return false;
    };
    let head = b"GET /v1/poll?cursor=0000000000000000&timeout=5 HTTP/1.1\r\nHost: x\r\n";
    let mut buf = [0u8; 256];
    for byte in head.iter().cycle().take(bytes) {
        if stream.write_all(&[*byte]).await.is_err() {
            return true;
        }
        tokio::select! {
            n = stream.read(&mut buf) => return matches!(n, Ok(0) | Err(_)),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    false
}

#[tokio::test]
async fn a_thousand_slow_heads_do_not_stop_a_normal_client_and_are_cut() {
    let node = Node::start_with(|c| c.limits.header_timeout = Duration::from_secs(3)).await;
    let addr = node.addr;
    // 12 bytes take 12 s to send: only the header timeout can end them sooner.
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| tokio::spawn(drip(addr, 12)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Meanwhile a normal client sends and long-polls.
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let node = Arc::new(node);
    let poll = {
        let node = node.clone();
        let token = bob.token.clone();
        tokio::spawn(async move {
            node.get(
                &format!("/v1/poll?cursor={cursor}&timeout=20"),
                Some(&token),
            )
            .await
        })
    };
    let sent = node.send(&alice, &bob, json!("through the crowd")).await;
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
    let got = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll answered")
        .unwrap();
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(
        got.body["events"][0]["message"]["body"],
        "through the crowd"
    );

    let mut cut = 0;
    for task in slow {
        cut += usize::from(task.await.unwrap());
    }
    assert_eq!(
        cut, SLOW_CLIENTS,
        "every slow head was cut by the header timeout"
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_400_and_changes_nothing() {
    let node = Node::start_with(|c| c.limits.body_timeout = Duration::from_secs(1)).await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let body = json!({"message_id": Uuid::new_v4(), "to": bob.id, "body": "slow"}).to_string();
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        alice.token,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Half the body, then nothing.
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the node answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"invalid_json""#), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
    let (events, _) = node.drain(&bob, &cursor).await;
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn an_oversized_head_is_431_and_a_long_query_is_400() {
    let node = Node::start_with(|c| {
        c.limits.max_header_bytes = 4096;
        c.limits.max_query_bytes = 512;
    })
    .await;
    let bob = node.user();
    let big = "x".repeat(5000);
    let r = node
        .raw(
            Method::GET,
            "/v1/poll",
            Some(&bob.token),
            Bytes::new(),
            &[("x-padding", &big)],
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{r:?}"
    );
    // In the contract's error shape, not hyper's bare answer.
    assert_eq!(r.code(), "request_header_fields_too_large", "{r:?}");
    // Just under both limits is fine.
    let pad = "p".repeat(400);
    let r = node
        .get(&format!("/v1/poll?_={pad}"), Some(&bob.token))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    let pad = "p".repeat(600);
    let r = node
        .get(&format!("/v1/poll?_={pad}"), Some(&bob.token))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "invalid_field");
    assert!(r.body["error"]["message"].as_str().unwrap().contains("512"));
}

async fn send_to(node: &Node, from: &User, to: &User) -> crate::harness::Reply {
    node.send(from, to, json!({"n": Uuid::new_v4()})).await
}

#[tokio::test]
async fn sends_over_a_users_rate_are_429_with_retry_after_and_change_nothing() {
    let node = Node::start_with(|c| {
        c.limits.send_rate = 1;
        c.limits.send_burst = 3;
    })
    .await;
    let (alice, bob, carol) = (node.user(), node.user(), node.user());
    let cursor = node.head(&bob).await;
    for _ in 0..3 {
        assert_eq!(
            send_to(&node, &alice, &bob).await.status,
            StatusCode::CREATED
        );
    }
    let r = send_to(&node, &alice, &bob).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.code(), "too_many_requests");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // Another user has a bucket of its own.
    assert_eq!(
        send_to(&node, &carol, &bob).await.status,
        StatusCode::CREATED
    );
    let (events, _) = node.drain(&bob, &cursor).await;
    assert_eq!(events.len(), 4, "the refused send stored nothing");
    assert_eq!(
        node.metric("carrier_sends_rate_limited_total").await,
        Some(1.0)
    );
    // After the wait, alice may send again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(
        send_to(&node, &alice, &bob).await.status,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn without_a_configured_rate_sends_are_not_limited() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    for _ in 0..60 {
        assert_eq!(
            send_to(&node, &alice, &bob).await.status,
            StatusCode::CREATED
        );
    }
}

/// Past `limits.max_sends_in_flight` sends in progress on the node, a send
/// is refused at once with 429 and Retry-After, and stores nothing; once a
/// place is free, sends go through again.
#[tokio::test]
async fn sends_past_the_node_s_limit_in_progress_are_429_at_once() {
    let node = Node::start_with(|c| {
        c.limits.max_sends_in_flight = 1;
        c.send.prev_wait = Duration::from_secs(2);
    })
    .await;
    let (alice, bob, carol) = (node.user(), node.user(), node.user());
    let cursor = node.head(&bob).await;
    // This send holds the node's only place while it waits (up to
    // prev_wait) for a previous message that never comes.
    let waiting = {
        let api = Api::new(node.addr);
        let token = alice.token.clone();
        let to = bob.id;
        tokio::spawn(async move {
            let body = json!({
                "message_id": Uuid::new_v4(), "to": to, "body": "after a ghost",
                "prev_message_id": Uuid::new_v4(),
            });
            api.post("/v1/messages", &token, body).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = send_to(&node, &carol, &bob).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{r:?}");
    assert_eq!(r.code(), "too_many_requests");
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(node.metric("carrier_sends_shed_total").await, Some(1.0));
    let first = waiting.await.unwrap();
    assert_eq!(first.status, StatusCode::CONFLICT, "{first:?}");
    let (events, _) = node.drain(&bob, &cursor).await;
    assert!(events.is_empty(), "the refused send stored nothing");
    assert_eq!(
        send_to(&node, &carol, &bob).await.status,
        StatusCode::CREATED
    );
}
