//! A storage outage on HBase: the Thrift server is stopped mid-run and
//! started again. Needs `tests/hbase/run-tests.sh`, which runs it with the
//! address of the Thrift server (`CARRIER_TEST_HBASE`) and the pid of the
//! `start.sh` that controls it (`CARRIER_TEST_HBASE_PID`: SIGUSR1 stops the
//! Thrift server, SIGUSR2 starts it again on the same port).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Node, Reply, User};

/// No request may take longer than this (a hang, not a speed limit).
const HANG: Duration = Duration::from_secs(60);

fn control_pid() -> String {
    std::env::var("CARRIER_TEST_HBASE_PID")
        .expect("CARRIER_TEST_HBASE_PID names the start.sh that runs HBase (run-tests.sh sets it)")
}

fn thrift_addr() -> String {
    crate::harness::hbase().expect("CARRIER_TEST_HBASE names the Thrift server")
}

fn signal(name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &control_pid()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

/// Waits until connecting to the Thrift port succeeds (`open`) or fails.
async fn thrift_port(open: bool) {
    let addr = thrift_addr();
    for _ in 0..600 {
        let up = tokio::net::TcpStream::connect(&addr).await.is_ok();
        if up == open {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "the Thrift port never became {}",
        if open { "open" } else { "closed" }
    );
}

async fn send(node: &Node, from: &User, to: &User, id: Uuid, n: usize) -> (Reply, Duration) {
    let started = Instant::now();
    let reply = tokio::time::timeout(
        HANG,
        node.post(
            "/v1/messages",
            &from.token,
            json!({"message_id": id, "to": to.id, "body": {"n": n}}),
        ),
    )
    .await
    .expect("a send answers during the outage instead of hanging");
    (reply, started.elapsed())
}

fn message_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["message"]["message_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real HBase it may stop: tests/hbase/run-tests.sh"]
async fn a_storage_outage_answers_503_and_recovers_without_a_restart() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let origin = node.head(&bob).await;
    let mut acked: Vec<Uuid> = Vec::new();

    for n in 0..20 {
        let id = Uuid::new_v4();
        let (r, _) = send(&node, &alice, &bob, id, n).await;
        assert_eq!(r.status, StatusCode::CREATED, "before the outage: {r:?}");
        acked.push(id);
    }

    // Bob's device is caught up and parks a long poll.
    let (_, caught_up) = node.drain(&bob, &origin).await;
    let parked = {
        let api = crate::harness::Api::new(node.addr);
        let token = bob.token.clone();
        let cursor = caught_up.clone();
        tokio::spawn(async move {
            api.get(
                &format!("/v1/poll?cursor={cursor}&timeout=50"),
                Some(&token),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    signal("USR1");
    thrift_port(false).await;

    let mut refused = Vec::new();
    let mut slowest = Duration::ZERO;
    for n in 20..30 {
        let id = Uuid::new_v4();
        let (r, took) = send(&node, &alice, &bob, id, n).await;
        slowest = slowest.max(took);
        match r.status {
            StatusCode::CREATED => acked.push(id),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.code(), "unavailable", "{r:?}");
                assert!(r.headers.contains_key("retry-after"), "{r:?}");
                refused.push((id, n));
            }
            other => panic!("during the outage a send is 201 or 503, not {other}: {r:?}"),
        }
    }
    assert!(
        !refused.is_empty(),
        "sends need HBase, so the outage refuses some"
    );
    let refused_read = history(&node, &alice, &bob).await;
    assert_eq!(
        refused_read.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{refused_read:?}"
    );
    let ready = node.get("/readyz", None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{ready:?}");
    assert!(!parked.is_finished(), "the parked poll stays parked");
    println!("outage: slowest refused send answered in {slowest:?}");

    signal("USR2");
    thrift_port(true).await;
    let back = Instant::now();
    loop {
        if node.get("/readyz", None).await.status == StatusCode::OK {
            break;
        }
        assert!(back.elapsed() < Duration::from_secs(120), "ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "outage: ready {:?} after the Thrift port reopened",
        back.elapsed()
    );

    // The refused sends are retried with the same ids, as a client would.
    for (id, n) in &refused {
        let (r, _) = send(&node, &alice, &bob, *id, *n).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "a retry after the outage: {r:?}"
        );
        acked.push(*id);
    }
    for n in 30..40 {
        let id = Uuid::new_v4();
        let (r, _) = send(&node, &alice, &bob, id, n).await;
        assert_eq!(r.status, StatusCode::CREATED, "after the outage: {r:?}");
        acked.push(id);
    }

    let woken = tokio::time::timeout(HANG, parked)
        .await
        .expect("the parked poll answers")
        .expect("poll task");
    assert_eq!(woken.status, StatusCode::OK, "{woken:?}");
    let first = message_ids(woken.body["events"].as_array().expect("events"));
    assert!(
        !first.is_empty(),
        "the parked poll was woken by a message: {woken:?}"
    );

    // Every acknowledged message, once each, in the mailbox and in history,
    // and the conversation's seqs have no gap.
    let (events, _) = node.drain(&bob, &origin).await;
    let delivered = message_ids(&events);
    let unique: BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(unique.len(), delivered.len(), "no message delivered twice");
    let mailbox_seqs: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["message"]["seq"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        mailbox_seqs.windows(2).all(|w| w[0] < w[1]),
        "bob's mailbox holds the conversation in seq order: {mailbox_seqs:?}"
    );
    let want: BTreeSet<String> = acked.iter().map(Uuid::to_string).collect();
    let got: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(got, want, "exactly the acknowledged messages reach bob");

    let history = history(&node, &bob, &alice).await;
    let messages = history.body["messages"].as_array().expect("history");
    let seqs: Vec<u64> = messages
        .iter()
        .rev()
        .map(|m| m["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        seqs,
        (1..=acked.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    let in_history: BTreeSet<String> = messages
        .iter()
        .map(|m| m["message_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        in_history, want,
        "history holds exactly the acknowledged messages"
    );
}

/// The whole direct conversation of `reader` and `peer`, as `reader` reads it.
async fn history(node: &Node, reader: &User, peer: &User) -> Reply {
    let conv = carrier::domain::ConversationId::direct(reader.id, peer.id);
    node.get(
        &format!("/v1/conversations/{conv}/messages?limit=500"),
        Some(&reader.token),
    )
    .await
}
