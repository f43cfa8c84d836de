//! Hold times: a device whose polls are cut before their hold ends, again
//! and again, gets holds below the cut-off; the cuts are counted.

use std::time::Duration;

use hyper::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{Node, User};

/// Opens a poll on a raw connection and closes it after `after`, like a
/// proxy with an idle cut-off would.
async fn cut_poll(node: &Node, user: &User, cursor: &str, device: &str, after: Duration) {
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "GET /v1/poll?cursor={cursor}&timeout=30&device={device} HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {}\r\n\r\n",
        user.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    drop(stream);
}

async fn wait_metric(node: &Node, series: &str, value: f64) {
    for _ in 0..250 {
        if node.metric(series).await == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{series} never reached {value}: {:?}",
        node.metric(series).await
    );
}

#[tokio::test]
async fn repeated_cuts_shorten_that_devices_holds_below_the_cut_off() {
    let node = Node::start_with(|c| c.poll.jitter_percent = 0).await;
    let bob = node.user();
    let cursor = node.head(&bob).await;
    let cut_off = Duration::from_millis(1500);
    for n in 1..=2 {
        cut_poll(&node, &bob, &cursor, "phone", cut_off).await;
        wait_metric(&node, "carrier_poll_cuts_total", f64::from(n)).await;
    }
    // The next 30 s poll from that device is held below the cut-off (1.2 s)
    // and answers, instead of being cut again.
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        node.get(
            &format!("/v1/poll?cursor={cursor}&timeout=30&device=phone"),
            Some(&bob.token),
        ),
    )
    .await
    .expect("the learned hold is shorter than the 30 s asked for");
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert_eq!(r.body["timed_out"], true);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        node.metric("carrier_poll_holds_shortened_total").await,
        Some(1.0)
    );
    // A too-long device name is a bad query parameter.
    let long = "d".repeat(65);
    let r = node
        .get(
            &format!("/v1/poll?cursor={cursor}&timeout=1&device={long}"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.code(), "invalid_field");
}

#[tokio::test]
async fn polls_closed_at_once_are_not_cuts() {
    let node = Node::start().await;
    let bob = node.user();
    let cursor = node.head(&bob).await;
    cut_poll(&node, &bob, &cursor, "", Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.metric("carrier_poll_cuts_total").await, Some(0.0));
    assert_eq!(
        node.metric("carrier_polls_abandoned_total").await,
        Some(1.0)
    );
}
