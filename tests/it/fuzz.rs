//! Fuzzing the request parsing through the real server: no input gets a 5xx,
//! every refusal has the error shape, and the node stays healthy.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

use crate::harness::{Node, Reply};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn check(r: &Reply, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(r.status.as_u16() < 500, "{what} answered {r:?}");
    if r.status.is_client_error() {
        prop_assert!(
            r.body["error"]["code"].is_string() && r.body["error"]["message"].is_string(),
            "{what}: a 4xx without the error shape: {r:?}"
        );
    }
    Ok(())
}

/// JSON values of every kind, nested a little.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
        Just(json!("8c1f6b8e-6a0b-4c64-9d0a-2f5c1b7e9a10")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("message_id".to_owned()),
                    Just("to".to_owned()),
                    Just("group_id".to_owned()),
                    Just("body".to_owned()),
                    Just("members".to_owned()),
                    Just("name".to_owned()),
                    Just("add".to_owned()),
                    Just("remove".to_owned()),
                    Just("up_to_seq".to_owned()),
                    Just("kind".to_owned()),
                    Just("conversation_id".to_owned()),
                    Just("prev_message_id".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn no_body_gets_a_5xx() {
    let rt = runtime();
    let node = rt.block_on(Node::start());
    let user = node.user();
    let group = rt.block_on(node.post("/v1/groups", &user.token, json!({"name": "g"})));
    let g = group.body["group"]["group_id"].as_str().unwrap().to_owned();
    let paths = [
        "/v1/messages".to_owned(),
        "/v1/groups".to_owned(),
        format!("/v1/groups/{g}/members"),
        "/v1/receipts".to_owned(),
    ];
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from),
        any_json().prop_map(|v| Bytes::from(v.to_string())),
    ];
    let mut runner = TestRunner::new(Config::with_cases(300));
    runner
        .run(&(0..paths.len(), bodies), |(p, body)| {
            let r = rt.block_on(node.raw(
                Method::POST,
                &paths[p],
                Some(&user.token),
                body.clone(),
                &[],
            ));
            check(&r, &format!("POST {} {:?}", paths[p], body))
        })
        .unwrap();
    assert_eq!(
        rt.block_on(node.get("/healthz", None)).status,
        StatusCode::OK
    );
}

#[test]
fn no_query_or_path_gets_a_5xx() {
    let rt = runtime();
    let node = rt.block_on(Node::start());
    let user = node.user();
    let sent = rt.block_on(node.send(&user, &user, json!("x")));
    let conv = sent.body["message"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let bases = [
        "/v1/poll".to_owned(),
        "/v1/conversations".to_owned(),
        format!("/v1/conversations/{conv}/messages"),
    ];
    let value = prop_oneof![
        "[0-9a-f]{16}",
        "-?[0-9]{1,25}",
        "[ -~]{0,12}",
        Just("0000000000000000".to_owned()),
    ];
    let key = prop_oneof![
        Just("cursor"),
        Just("timeout"),
        Just("limit"),
        Just("offset"),
        Just("before_seq"),
        Just("after"),
        Just("x"),
    ];
    let query = prop::collection::vec((key, value), 0..4);
    let mut runner = TestRunner::new(Config::with_cases(300));
    runner
        .run(&(0..bases.len(), query), |(b, pairs)| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &pairs {
                // timeout=0 so a valid poll answers at once.
                q.append_pair(k, if *k == "timeout" { "0" } else { v });
            }
            let path = format!("{}?{}", bases[b], q.finish());
            let r = rt.block_on(node.get(&path, Some(&user.token)));
            check(&r, &path)
        })
        .unwrap();
    let segments = "[a-zA-Z0-9._~%-]{0,40}";
    let mut runner = TestRunner::new(Config::with_cases(200));
    runner
        .run(&(segments, segments), |(a, b)| {
            for path in [
                format!("/v1/conversations/{a}/messages"),
                format!("/v1/groups/{a}"),
                format!("/v1/groups/{a}/{b}"),
                format!("/v1/{a}/{b}"),
            ] {
                let r = rt.block_on(node.get(&path, Some(&user.token)));
                check(&r, &path)?;
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        rt.block_on(node.get("/healthz", None)).status,
        StatusCode::OK
    );
}

#[test]
fn any_json_body_round_trips_exactly() {
    let rt = runtime();
    let node = rt.block_on(Node::start());
    let (alice, bob) = (node.user(), node.user());
    let mut runner = TestRunner::new(Config::with_cases(100));
    runner
        .run(&any_json(), |body| {
            let cursor = rt.block_on(node.head(&bob));
            let sent = rt.block_on(node.send(&alice, &bob, body.clone()));
            prop_assert_eq!(sent.status, StatusCode::CREATED);
            prop_assert_eq!(&sent.body["message"]["body"], &body);
            let polled = rt.block_on(node.poll(&bob, Some(&cursor), 5));
            prop_assert_eq!(&polled.body["events"][0]["message"]["body"], &body);
            let conv = sent.body["message"]["conversation_id"].as_str().unwrap();
            let history = rt.block_on(node.get(
                &format!("/v1/conversations/{conv}/messages?limit=1"),
                Some(&bob.token),
            ));
            prop_assert_eq!(&history.body["messages"][0]["body"], &body);
            Ok(())
        })
        .unwrap();
}
