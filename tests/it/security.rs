//! The security review's findings (issue 14), each as the attack it
//! describes: against the real binary where the issue asks for it, else an
//! in-process node.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

use carrier::domain::{ConversationId, UserId};

use crate::crash::Process;
use crate::harness::Node;

/// The signature the old code accepted on a single node: HMAC-SHA256 of
/// the body under an empty key.
fn empty_key_signature(body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit as _, Mac as _};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"").unwrap();
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A push body (`outbox::encode`) appending `event` to `user`'s mailbox.
fn push_body(user: UserId, event: &[u8]) -> Bytes {
    let cell: Vec<u8> = user.0.as_bytes().iter().chain(event).copied().collect();
    carrier::service::outbox::encode(std::iter::once(([9u8; 8], 1u64, cell.as_slice())))
}

#[tokio::test]
async fn a_single_node_has_no_internal_routes_and_takes_no_forged_push() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(&dir.path().join("data")).await;
    let api = &node.api;
    let (alice, victim) = (api.user(), api.user());
    let cursor = api.head(&victim).await;

    let forged = json!({"type": "message", "message": {"sender_id": alice.id, "body": "forged"}});
    let body = push_body(victim.id, forged.to_string().as_bytes());
    for path in [
        "/internal/v1/appends",
        "/internal/v1/watch",
        "/internal/v1/wake",
    ] {
        let signature = empty_key_signature(&body);
        for headers in [vec![], vec![("x-carrier-signature", signature.as_str())]] {
            let r = api
                .raw(Method::POST, path, None, body.clone(), &headers)
                .await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {r:?}");
            assert_eq!(r.code(), "not_found");
        }
    }
    let (events, _) = api.drain(&victim, &cursor).await;
    assert!(
        events.is_empty(),
        "a forged event reached the mailbox: {events:?}"
    );
}

#[tokio::test]
async fn a_forged_hop_does_not_skip_the_send_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start_with(
        &dir.path().join("data"),
        "[limits]\nsend_rate = 1\nsend_burst = 2\n",
    )
    .await;
    let api = &node.api;
    let (alice, bob) = (api.user(), api.user());
    let mut statuses = Vec::new();
    for i in 0..6 {
        // The old hop: `<node> <HMAC under the empty key of "node method path">`.
        let hop = format!("n1 {}", empty_key_signature(b"n1 POST /v1/messages"));
        let body = json!({"message_id": Uuid::new_v4(), "to": bob.id, "body": {"i": i}});
        let r = api
            .raw(
                Method::POST,
                "/v1/messages",
                Some(&alice.token),
                Bytes::from(body.to_string()),
                &[("x-carrier-hop", hop.as_str())],
            )
            .await;
        statuses.push(r.status);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "every send with a forged hop was taken: {statuses:?}"
    );
}

#[tokio::test]
async fn a_group_cannot_take_over_a_direct_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(&dir.path().join("data")).await;
    let api = &node.api;
    let (alice, bob, mallory) = (api.user(), api.user(), api.user());
    let direct = ConversationId::direct(alice.id, bob.id);

    // Before the pair talks, and after: refused either way.
    let take_over = json!({"group_id": direct.0, "name": "mine now", "members": [mallory.id]});
    let r = api
        .post("/v1/groups", &mallory.token, take_over.clone())
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "invalid_field");
    assert_eq!(
        api.send(&alice, &bob, json!("private")).await.status,
        StatusCode::CREATED
    );
    let r = api.post("/v1/groups", &mallory.token, take_over).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");

    // Mallory can neither read nor write the pair's conversation.
    let history = format!("/v1/conversations/{}/messages", direct.0);
    let r = api.get(&history, Some(&mallory.token)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    let r = api
        .post(
            "/v1/messages",
            &mallory.token,
            json!({"message_id": Uuid::new_v4(), "group_id": direct.0, "body": "in"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{r:?}");

    // The pair still own it: both read it, and it is in their lists.
    for user in [&alice, &bob] {
        let r = api.get(&history, Some(&user.token)).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(r.body["messages"].as_array().unwrap().len(), 1, "{r:?}");
        let r = api.get("/v1/conversations", Some(&user.token)).await;
        let listed = r.body["conversations"].as_array().unwrap();
        assert!(
            listed
                .iter()
                .any(|c| c["conversation_id"] == json!(direct.0)),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn a_bad_signature_is_refused_before_the_body_is_read() {
    // A ring of two over the embedded store (the peer never starts): the
    // internal routes exist, and the signature is all that guards them.
    let node = Node::start_with(|c| {
        // Its own store even when the suite runs on HBase: the ring's rows
        // (leases, clocks) would be shared with other tests' nodes there.
        c.storage.backend = carrier::config::Backend::Embedded;
        c.cluster.node_id = "n1".into();
        c.cluster.peers = vec![
            carrier::config::PeerConfig {
                id: "n1".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
            },
            carrier::config::PeerConfig {
                id: "n2".into(),
                addr: "127.0.0.1:2".parse().unwrap(),
            },
        ];
        c.limits.body_timeout = std::time::Duration::from_secs(120);
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    // A 60 MB body is announced and never sent: only a node that waits for
    // it before checking the signature would not answer now.
    let head = "POST /internal/v1/appends HTTP/1.1\r\nhost: x\r\n\
                x-carrier-signature: v1 n2 1 00 00\r\ncontent-length: 60000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[tokio::test]
async fn the_ring_view_is_for_operators_and_peers_only() {
    let node = Node::start_with(|c| c.auth.metrics_token = Some("operator-token".into())).await;
    let r = node.get("/v1/cluster", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    let user = node.user();
    let r = node.get("/v1/cluster", Some(&user.token)).await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a user's token is not enough: {r:?}"
    );
    let r = node.get("/v1/cluster", Some("operator-token")).await;
    assert_eq!(r.status, StatusCode::OK, "{r:?}");
    assert!(r.body["peers"].is_array(), "{r:?}");

    // Without a metrics token, the ring view stays closed to strangers.
    let open = Node::start().await;
    let r = open.get("/v1/cluster", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
}

#[tokio::test]
async fn the_metrics_token_takes_the_bearer_scheme_in_any_case() {
    let node = Node::start_with(|c| c.auth.metrics_token = Some("operator-token".into())).await;
    let r = node.get("/metrics", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} operator-token");
        let r = node
            .raw(
                Method::GET,
                "/metrics",
                None,
                Bytes::new(),
                &[("authorization", &auth)],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{scheme}: {r:?}");
    }
    let r = node
        .raw(
            Method::GET,
            "/metrics",
            None,
            Bytes::new(),
            &[("authorization", "Bearer operator-tokeN")],
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_401_names_the_bearer_scheme() {
    let node = Node::start().await;
    let r = node.get("/v1/poll", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers["www-authenticate"], r#"Bearer realm="carrier""#,
        "{r:?}"
    );
    let r = node.get("/v1/poll", Some("not.a.token")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#));
}

#[tokio::test]
async fn integers_beyond_64_bits_are_refused_not_rounded() {
    let node = Node::start().await;
    let (alice, bob) = (node.user(), node.user());
    let cursor = node.head(&bob).await;
    let body = format!(
        r#"{{"message_id":"{}","to":"{}","body":{{"n":18446744073709551616}}}}"#,
        Uuid::new_v4(),
        bob.id
    );
    let r = node
        .raw(
            Method::POST,
            "/v1/messages",
            Some(&alice.token),
            Bytes::from(body),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{r:?}");
    assert_eq!(r.code(), "invalid_field");
    let (events, _) = node.drain(&bob, &cursor).await;
    assert!(events.is_empty(), "{events:?}");

    // The largest u64 and the smallest i64 are kept exactly.
    let body = format!(
        r#"{{"message_id":"{}","to":"{}","body":{{"u":18446744073709551615,"i":-9223372036854775808}}}}"#,
        Uuid::new_v4(),
        bob.id
    );
    let r = node
        .raw(
            Method::POST,
            "/v1/messages",
            Some(&alice.token),
            Bytes::from(body),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let (events, _) = node.drain(&bob, &cursor).await;
    let stored = &events[0]["message"]["body"];
    assert_eq!(stored["u"].as_u64(), Some(u64::MAX));
    assert_eq!(stored["i"].as_i64(), Some(i64::MIN));
}

#[tokio::test]
async fn group_changes_have_a_per_user_budget() {
    let node = Node::start_with(|c| {
        c.limits.group_change_rate = 1;
        c.limits.group_change_burst = 3;
    })
    .await;
    let (spammer, victim) = (node.user(), node.user());
    let mut statuses = Vec::new();
    // Far more than a burst of 3 and one a second could let through.
    for i in 0..30 {
        let r = node
            .post(
                "/v1/groups",
                &spammer.token,
                json!({"name": format!("spam {i}"), "members": [victim.id]}),
            )
            .await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers.contains_key("retry-after"), "{r:?}");
        }
        statuses.push(r.status);
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert!((3..20).contains(&created), "{statuses:?}");
    // Another user's budget is untouched.
    let r = node
        .post(
            "/v1/groups",
            &victim.token,
            json!({"name": "mine", "members": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}

/// The positive path over real HTTP: a peer's signed calls are taken.
#[tokio::test]
async fn a_peers_signed_calls_are_taken() {
    use carrier::cluster::Cluster;
    use carrier::config::{ClusterConfig, PeerConfig};
    let node = Node::start_with(|c| {
        // Its own store, as above.
        c.storage.backend = carrier::config::Backend::Embedded;
        c.cluster.node_id = "n2".into();
        c.cluster.peers = vec![
            PeerConfig {
                id: "n1".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
            },
            PeerConfig {
                id: "n2".into(),
                addr: "127.0.0.1:2".parse().unwrap(),
            },
        ];
    })
    .await;
    let peers = vec![
        PeerConfig {
            id: "n1".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
        },
        PeerConfig {
            id: "n2".into(),
            addr: node.addr,
        },
    ];
    let n1 = Cluster::new(
        &ClusterConfig {
            node_id: "n1".into(),
            peers,
            ..ClusterConfig::default()
        },
        "127.0.0.1:1".parse().unwrap(),
        crate::harness::SECRET.as_bytes(),
    );
    let n2 = &n1.peers()[1];
    let view = n1
        .view_of(n2, std::time::Duration::from_secs(5))
        .await
        .expect("the ring view, asked by a peer");
    assert_eq!(view.node_id, "n2");
    // A user whose mailbox n2 owns.
    let user = (0..)
        .map(|_| UserId(Uuid::new_v4()))
        .find(|u| n1.owner_in(&n1.newest(), u.0.as_bytes()) == 1)
        .unwrap();
    let body = push_body(user, br#"{"type":"message","message":{}}"#);
    let pushed = n1
        .push_appends(n2, body, std::time::Duration::from_secs(5))
        .await;
    assert!(pushed.is_ok(), "{pushed:?}");
}
