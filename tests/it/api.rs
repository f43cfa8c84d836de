//! The happy paths of the contract, end to end.

use hyper::StatusCode;
use serde_json::json;

use crate::harness::Node;

#[tokio::test]
async fn a_message_reaches_a_parked_poll() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let poll = node.poll(&bob, Some(&cursor), 10);
    let send = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        node.send(&alice, &bob, json!({"text": "hi"})).await
    };
    let (polled, sent) = tokio::join!(poll, send);
    assert_eq!(sent.status, StatusCode::CREATED, "{sent:?}");
    assert_eq!(polled.status, StatusCode::OK);
    let events = polled.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "message");
    assert_eq!(events[0]["message"], sent.body["message"]);
    assert_eq!(events[0]["message"]["seq"], 1);
    assert_eq!(polled.body["timed_out"], false);
    node.stop().await;
}

#[tokio::test]
async fn poll_responses_survive_proxies() {
    let node = Node::start().await;
    let bob = node.user();
    let cursor = node.head(&bob).await;
    let r = node.poll(&bob, Some(&cursor), 1).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["events"], json!([]));
    assert_eq!(r.body["cursor"], cursor.as_str());
    assert_eq!(r.body["timed_out"], true);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["x-accel-buffering"], "no");
    assert!(r.headers.contains_key("content-length"));
    assert!(!r.headers.contains_key("transfer-encoding"));
    assert_eq!(r.headers["content-type"], "application/json; charset=utf-8");
}

#[tokio::test]
async fn history_pages_newest_first() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let mut conv = String::new();
    for i in 1..=7 {
        let r = node.send(&alice, &bob, json!({"n": i})).await;
        assert_eq!(r.status, StatusCode::CREATED);
        conv = r.body["message"]["conversation_id"]
            .as_str()
            .unwrap()
            .to_owned();
    }
    let seqs = |r: &crate::harness::Reply| -> Vec<u64> {
        r.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    let page = |q: &str| format!("/v1/conversations/{conv}/messages?{q}");
    let r = node.get(&page("limit=3"), Some(&bob.token)).await;
    assert_eq!(seqs(&r), vec![7, 6, 5]);
    let r = node
        .get(&page("limit=3&before_seq=5"), Some(&alice.token))
        .await;
    assert_eq!(seqs(&r), vec![4, 3, 2]);
    let r = node
        .get(&page("limit=3&offset=5"), Some(&alice.token))
        .await;
    assert_eq!(seqs(&r), vec![2, 1]);
    let r = node.get(&page(""), Some(&alice.token)).await;
    assert_eq!(seqs(&r), vec![7, 6, 5, 4, 3, 2, 1]);
    // prev_message_id chains the conversation.
    let all = r.body["messages"].as_array().unwrap();
    for pair in all.windows(2) {
        assert_eq!(pair[0]["prev_message_id"], pair[1]["message_id"]);
    }
    assert_eq!(all[6]["prev_message_id"], json!(null));
}

#[tokio::test]
async fn every_device_follows_the_mailbox_with_its_own_cursor() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let phone = node.head(&bob).await;
    node.send(&alice, &bob, json!("one")).await;
    let laptop = node.head(&bob).await;
    node.send(&alice, &bob, json!("two")).await;
    let (from_phone, _) = node.drain(&bob, &phone).await;
    let (from_laptop, _) = node.drain(&bob, &laptop).await;
    let bodies = |events: &[serde_json::Value]| -> Vec<serde_json::Value> {
        events
            .iter()
            .map(|e| e["message"]["body"].clone())
            .collect()
    };
    assert_eq!(bodies(&from_phone), vec![json!("one"), json!("two")]);
    assert_eq!(bodies(&from_laptop), vec![json!("two")]);
    // An older cursor replays (at-least-once).
    let (again, _) = node.drain(&bob, &phone).await;
    assert_eq!(bodies(&again), bodies(&from_phone));
}

#[tokio::test]
async fn the_senders_other_devices_get_its_copy() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&alice).await;
    let sent = node.send(&alice, &bob, json!("copy me")).await;
    let r = node.poll(&alice, Some(&cursor), 10).await;
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{r:?}");
    assert_eq!(events[0]["message"], sent.body["message"]);
}

#[tokio::test]
async fn a_note_to_self_arrives_once() {
    let node = Node::start().await;
    let alice = node.user();
    let cursor = node.head(&alice).await;
    let sent = node.send(&alice, &alice, json!("note")).await;
    assert_eq!(sent.status, StatusCode::CREATED);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (events, _) = node.drain(&alice, &cursor).await;
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test]
async fn the_documented_routes_are_the_routes_served() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md")).unwrap();
    let mut routes: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 && (cells[1] == "GET" || cells[1] == "POST") && cells[2].starts_with('/')
        {
            routes
                .entry(cells[2].to_owned())
                .or_default()
                .push(cells[1].to_owned());
        }
    }
    assert!(
        routes.len() >= 11,
        "the route table was not found: {routes:?}"
    );
    let node = Node::start().await;
    let id = uuid::Uuid::new_v4().to_string();
    for (path, methods) in &routes {
        let path = path
            .replace("{conversation_id}", &id)
            .replace("{group_id}", &id);
        for method in methods {
            let r = node
                .request(method.parse().unwrap(), &path, None, None)
                .await;
            assert!(
                r.status != StatusCode::NOT_FOUND && r.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is documented but answered {}",
                r.status
            );
        }
        let r = node.request(hyper::Method::PUT, &path, None, None).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "PUT {path}");
        assert_eq!(
            r.headers["allow"],
            methods.join(", ").as_str(),
            "Allow of {path}"
        );
    }
    let r = node.get("/v1/nothing-here", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn metrics_are_open_by_default_and_guarded_by_a_token_when_configured() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    node.send(&alice, &bob, json!("counted")).await;
    let r = node.get("/metrics", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body.as_str().unwrap();
    assert!(text.contains("carrier_messages_accepted_total 1"), "{text}");
    assert!(text.contains("carrier_http_requests_total{route=\"send\",status=\"201\"} 1"));
    node.stop().await;

    let node = Node::start_with(|c| c.auth.metrics_token = Some("scrape-me".into())).await;
    assert_eq!(
        node.get("/metrics", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        node.get("/metrics", Some("wrong")).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        node.get("/metrics", Some("scrape-me")).await.status,
        StatusCode::OK
    );
}
