//! Durability and shutdown, with the real `carrier` binary where a process
//! boundary matters (kill -9, SIGTERM).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::harness::{Api, Node, SECRET, User, storage_toml, test_config};

/// A `carrier serve` process on `127.0.0.1:0` over `data`.
pub struct Process {
    child: Child,
    pub api: Api,
}

impl Process {
    pub async fn start(data: &Path) -> Process {
        Process::start_with(data, "").await
    }

    /// With `extra` TOML appended to the configuration (`[limits]`, ...).
    pub async fn start_with(data: &Path, extra: &str) -> Process {
        let config = data.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nsecret = \"{SECRET}\"\n{}\n{extra}",
                storage_toml(data)
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_carrier"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            lines
                .find_map(|l| {
                    l.ok()?
                        .strip_prefix("carrier listening on ")
                        .map(str::to_owned)
                })
                .expect("the node prints its address")
        })
        .await
        .unwrap();
        let api = Api::new(line.parse().unwrap());
        api.wait_ready().await;
        Process { child, api }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ids_of(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "message")
        .map(|e| e["message"]["message_id"].clone())
        .collect()
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let node = Process::start(&data).await;
    let bob = node.api.user();
    let senders: Vec<User> = (0..8).map(|_| node.api.user()).collect();

    // 8 clients send concurrently; the process dies right after the last ack.
    let acked: Vec<(usize, Value)> = futures::future::join_all((0..200).map(|i| {
        let api = &node.api;
        let from = &senders[i % senders.len()];
        let bob = &bob;
        async move {
            let r = api.send(from, bob, json!({"n": i})).await;
            assert_eq!(r.status, StatusCode::CREATED);
            (i % 8, r.body["message"].clone())
        }
    }))
    .await;
    let mut node = node;
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    drop(node);

    let node = Process::start(&data).await;
    let (events, _) = node.api.drain(&bob, "0000000000000000").await;
    let mut delivered = ids_of(&events);
    delivered.sort_by_key(|v| v.to_string());
    let mut expected: Vec<Value> = acked.iter().map(|(_, m)| m["message_id"].clone()).collect();
    expected.sort_by_key(|v| v.to_string());
    assert_eq!(
        delivered, expected,
        "every acked message is in the recipient's mailbox, once"
    );
    for (_, m) in &acked {
        let conv = m["conversation_id"].as_str().unwrap();
        let seq = m["seq"].as_u64().unwrap();
        let r = node
            .api
            .get(
                &format!(
                    "/v1/conversations/{conv}/messages?before_seq={}&limit=1",
                    seq + 1
                ),
                Some(&bob.token),
            )
            .await;
        assert_eq!(r.body["messages"][0], *m, "history holds the acked object");
    }
    // The senders' own copies come through the outbox, re-applied at start.
    for (k, sender) in senders.iter().enumerate() {
        let want = acked.iter().filter(|(s, _)| *s == k).count();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (events, _) = node.api.drain(sender, "0000000000000000").await;
            if ids_of(&events).len() == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sender copies missing"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn sigterm_answers_parked_polls_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(&dir.path().join("data")).await;
    let users: Vec<User> = (0..20).map(|_| node.api.user()).collect();
    let mut cursors = Vec::new();
    for u in &users {
        cursors.push(node.api.head(u).await);
    }
    let polls = futures::future::join_all(
        users
            .iter()
            .zip(&cursors)
            .map(|(u, c)| node.api.poll(u, Some(c), 50)),
    );
    let term = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let status = Command::new("kill")
            .args(["-TERM", &node.pid()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let (replies, ()) =
        tokio::time::timeout(Duration::from_secs(15), async { tokio::join!(polls, term) })
            .await
            .expect("parked polls answer at shutdown, long before their timeout");
    for r in replies {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body["events"], json!([]));
        assert_eq!(r.body["timed_out"], true);
    }
    let mut node = node;
    let status = tokio::task::spawn_blocking(move || node.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn graceful_stop_answers_parked_polls() {
    let node = Node::start().await;
    let client = Api::new(node.addr);
    let users: Vec<User> = (0..50).map(|_| client.user()).collect();
    let mut cursors = Vec::new();
    for u in &users {
        cursors.push(client.head(u).await);
    }
    let polls = futures::future::join_all(
        users
            .iter()
            .zip(&cursors)
            .map(|(u, c)| client.poll(u, Some(c), 50)),
    );
    let api = Api::new(node.addr);
    let stop = async move {
        // Wait until all 50 are parked, then stop.
        for _ in 0..200 {
            let m = api.get("/metrics", None).await;
            if m.body
                .as_str()
                .unwrap_or("")
                .contains("carrier_parked_polls 50")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        node.stop().await
    };
    let (replies, _) =
        tokio::time::timeout(Duration::from_secs(15), async { tokio::join!(polls, stop) })
            .await
            .expect("stop answers parked polls at once");
    assert!(
        replies
            .iter()
            .all(|r| r.status == StatusCode::OK && r.body["timed_out"] == true)
    );
}

#[tokio::test]
async fn cursors_and_messages_outlive_a_restart() {
    let node = Node::start().await;
    let (a, b) = (node.user(), node.user());
    let before = node.head(&b).await;
    for i in 0..5 {
        node.send(&a, &b, json!(i)).await;
    }
    let first = node
        .get(
            &format!("/v1/poll?cursor={before}&timeout=0&limit=3"),
            Some(&b.token),
        )
        .await;
    let first_three = first.body["events"].clone();
    let after_three = first.body["cursor"].as_str().unwrap().to_owned();
    let head_before = node.head(&b).await;

    let dir = node.stop().await;
    let config = test_config(dir.path());
    let node = Node::start_in(dir, config).await;
    let (rest, _) = node.drain(&b, &after_three).await;
    assert_eq!(
        ids_of(&rest).len(),
        2,
        "a pre-restart cursor returns exactly what came after it"
    );
    let (all, _) = node.drain(&b, &before).await;
    assert_eq!(ids_of(&all).len(), 5);
    assert_eq!(all[..3], first_three.as_array().unwrap()[..]);
    node.send(&a, &b, json!("after")).await;
    let head_after = node.head(&b).await;
    assert!(
        head_after > head_before,
        "positions keep increasing across restarts"
    );
    let sent_after = node
        .post(
            "/v1/messages",
            &a.token,
            json!({"message_id": Uuid::new_v4(), "to": b.id, "body": 6}),
        )
        .await;
    assert_eq!(
        sent_after.body["message"]["seq"], 7,
        "seq continues after the restart"
    );
}
