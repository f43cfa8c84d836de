//! CORS for configured origins (preflight included) and the demo page.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Node, Reply};

const APP: &str = "http://app.example:8000";

async fn preflight(node: &Node, path: &str, origin: &str, method: &str) -> Reply {
    node.raw(
        Method::OPTIONS,
        path,
        None,
        Bytes::new(),
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
    )
    .await
}

#[tokio::test]
async fn allowed_origins_get_preflight_and_cors_headers_others_do_not() {
    let node = Node::start_with(|c| c.cors.allowed_origins = vec![APP.to_owned()]).await;
    let r = preflight(&node, "/v1/messages", APP, "POST").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    assert_eq!(r.headers["access-control-allow-origin"], APP);
    assert_eq!(r.headers["access-control-allow-methods"], "POST");
    let allowed = r.headers["access-control-allow-headers"].to_str().unwrap();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"));
    assert_eq!(r.headers["access-control-max-age"], "600");

    // A method the route does not take, another origin, or a plain OPTIONS:
    // no grant, the usual 405.
    for r in [
        preflight(&node, "/v1/messages", APP, "DELETE").await,
        preflight(&node, "/v1/messages", "http://evil.example", "POST").await,
        node.raw(
            Method::OPTIONS,
            "/v1/poll",
            None,
            Bytes::new(),
            &[("origin", APP)],
        )
        .await,
    ] {
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{r:?}");
        assert_eq!(r.code(), "method_not_allowed");
        assert!(!r.headers.contains_key("access-control-allow-methods"));
    }
    assert_eq!(
        preflight(&node, "/v1/nowhere", APP, "GET").await.status,
        StatusCode::NOT_FOUND
    );

    // Actual calls: readable by the allowed origin only, errors included.
    let (alice, bob) = (node.user(), node.user());
    let sent = node
        .raw(
            Method::POST,
            "/v1/messages",
            Some(&alice.token),
            Bytes::from(
                json!({"message_id": uuid::Uuid::new_v4(), "to": bob.id, "body": 1}).to_string(),
            ),
            &[("origin", APP)],
        )
        .await;
    assert_eq!(sent.status, StatusCode::CREATED);
    assert_eq!(sent.headers["access-control-allow-origin"], APP);
    assert!(
        sent.headers["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("retry-after")
    );
    let denied = node
        .raw(
            Method::GET,
            "/v1/poll",
            None,
            Bytes::new(),
            &[("origin", APP)],
        )
        .await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied.headers["access-control-allow-origin"], APP);
    let other = node
        .raw(
            Method::GET,
            "/v1/poll",
            Some(&bob.token),
            Bytes::new(),
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert!(!other.headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn without_configured_origins_there_is_no_cors() {
    let node = Node::start().await;
    let r = preflight(&node, "/v1/poll", APP, "GET").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!r.headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn the_demo_page_is_served_only_when_enabled() {
    let off = Node::start().await;
    assert_eq!(off.get("/demo", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        off.get("/demo/chat.js", None).await.status,
        StatusCode::NOT_FOUND
    );
    drop(off);

    let on = Node::start_with(|c| c.demo.enabled = true).await;
    let page = on.get("/demo", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert!(page.body.as_str().unwrap().contains("/demo/chat.js"));
    let script = on.get("/demo/chat.js", None).await;
    assert_eq!(script.status, StatusCode::OK);
    assert!(script.body.as_str().unwrap().contains("/v1/poll?cursor="));
    assert_eq!(
        on.get("/demo/secret.txt", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        on.request(Method::POST, "/demo", None, None).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}
