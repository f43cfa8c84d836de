//! A node on a ring of two, on a real embedded store, whose peer is played
//! by the test: it renews (or stops renewing) the peer's lease by hand.

use std::net::SocketAddr;
use std::time::Duration;

use uuid::Uuid;

use super::poll::PollRequest;
use crate::app::Node;
use crate::config::{Config, PeerConfig};
use crate::domain::{Cursor, UserId};
use crate::store::Table;
use crate::store::embedded::EmbeddedStore;

fn two_nodes(dir: &std::path::Path) -> Config {
    let mut config = Config::default();
    config.auth.secret = Some("a secret both nodes share".into());
    config.storage.path = dir.to_path_buf();
    config.cluster.node_id = "n1".into();
    config.cluster.peers = ["n1", "n2"]
        .iter()
        .map(|id| PeerConfig {
            id: (*id).into(),
            // Nothing listens there: n2 exists only as its lease.
            addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        })
        .collect();
    config.cluster.heartbeat_interval = Duration::from_millis(50);
    config.cluster.heartbeat_timeout = Duration::from_millis(100);
    config.cluster.lease = Duration::from_millis(400);
    config
}

/// Waits (bounded) until `done` holds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_leaves_and_a_parked_poll_ends_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let node = Node::start(&two_nodes(dir.path()), store.clone())
        .await
        .unwrap();
    let service = node.service.clone();
    let cluster = service.cluster().clone();
    // A user n2 owns while it is up.
    let user = (0..1000)
        .map(|_| UserId(Uuid::new_v4()))
        .find(|u| !cluster.serves(u.0.as_bytes()))
        .expect("some user of n2");

    // n2 never renews: once its lease lapses, n1 serves everyone.
    until("n1 serves n2's users", || {
        cluster.available() && cluster.serves(user.0.as_bytes())
    })
    .await;
    assert!(!cluster.newest().live[1]);

    let poll = tokio::spawn({
        let service = service.clone();
        async move {
            let request = PollRequest {
                cursor: Some(Cursor::default()),
                timeout: Duration::from_secs(50),
                limit: 10,
            };
            service.poll(user, request).await
        }
    });
    until("the poll is parked", || {
        service.metrics().parked_polls.get() == 1
    })
    .await;

    // n2 renews again: it is back, owns the user, and the parked poll ends
    // at once instead of at the end of its 50 s hold.
    let renewing = tokio::spawn({
        let store = store.clone();
        async move {
            loop {
                let _ =
                    crate::store::Store::increment(&*store, Table::Counters, b"lease:n2", 1).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(20), poll)
        .await
        .expect("the poll ended before its hold")
        .unwrap()
        .unwrap();
    assert!(answer.events.is_empty() && answer.timed_out);
    assert!(cluster.newest().live[1]);
    assert!(
        !cluster.serves(user.0.as_bytes()),
        "n2 serves its user again"
    );
    renewing.abort();
    node.shutdown().await;
}

/// A send takes the hand-off gate, and a ring change waits for the sends
/// that checked their ownership under the old view before this node says
/// it has settled: only then may a returning peer sequence their
/// conversations (there is no seq counter in the store to fence them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_waits_for_sends_that_checked_ownership_before_it() {
    use super::send::{Destination, SendRequest};
    use crate::domain::{ConversationId, MessageId};

    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let node = Node::start(&two_nodes(dir.path()), store.clone())
        .await
        .unwrap();
    let service = node.service.clone();
    let cluster = service.cluster().clone();
    // A pair whose conversation n2 owns while it is up.
    let (alice, bob) = std::iter::repeat_with(|| (UserId(Uuid::new_v4()), UserId(Uuid::new_v4())))
        .take(1000)
        .find(|(a, b)| !cluster.serves(ConversationId::direct(*a, *b).0.as_bytes()))
        .expect("some conversation of n2");
    let conv = ConversationId::direct(alice, bob);
    until("n1 serves n2's keys and has settled", || {
        cluster.available() && cluster.serves(conv.0.as_bytes()) && cluster.settled()
    })
    .await;
    let send = |n: u8| {
        let service = service.clone();
        async move {
            let req = SendRequest {
                message_id: MessageId(Uuid::new_v4()),
                to: Destination::User(bob),
                body: serde_json::json!({ "n": n }),
                prev_message_id: None,
            };
            service.send(alice, req).await
        }
    };

    // While a ring change drains the gate, sends wait at it.
    let gate = service.inner.handoff.write().await;
    let waiting = tokio::spawn(send(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a send went past the hand-off gate");
    drop(gate);
    let sent = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the send finished once the gate opened")
        .unwrap();
    assert!(sent.is_ok(), "{sent:?}");

    // A send in flight (it holds the gate) when n2 returns.
    let in_flight = service.handoff_guard().await;
    let renewing = tokio::spawn({
        let store = store.clone();
        async move {
            loop {
                let _ =
                    crate::store::Store::increment(&*store, Table::Counters, b"lease:n2", 1).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    until("n1 routes the conversation to n2", || {
        !cluster.serves(conv.0.as_bytes())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !cluster.settled(),
        "n1 said it settled while a send of the old view was in flight"
    );
    drop(in_flight);
    until("n1 settles once the send is done", || cluster.settled()).await;
    // Later sends check ownership by the new view.
    let moved = send(2).await;
    assert!(matches!(moved, Err(super::Error::Moved)), "{moved:?}");
    renewing.abort();
    node.shutdown().await;
}
