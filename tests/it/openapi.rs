//! docs/openapi.json describes exactly the routes the server serves, and
//! the same ones as docs/api.md's route table.

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use serde_json::Value;

use crate::harness::Node;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Path -> methods (upper case, in `GET, POST` order) of the OpenAPI document.
fn openapi_routes() -> BTreeMap<String, Vec<String>> {
    let doc: Value = serde_json::from_str(&read("docs/openapi.json")).unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let mut routes = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let mut methods: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| {
                ["get", "post", "put", "delete", "patch", "options", "head"].contains(&k.as_str())
            })
            .map(|k| k.to_uppercase())
            .collect();
        methods.sort();
        routes.insert(path.clone(), methods);
    }
    routes
}

fn api_md_routes() -> BTreeMap<String, Vec<String>> {
    let mut routes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in read("docs/api.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 && (cells[1] == "GET" || cells[1] == "POST") && cells[2].starts_with('/')
        {
            routes
                .entry(cells[2].to_owned())
                .or_default()
                .push(cells[1].to_owned());
        }
    }
    for methods in routes.values_mut() {
        methods.sort();
    }
    routes
}

#[tokio::test]
async fn the_openapi_document_matches_the_server_and_the_route_table() {
    let routes = openapi_routes();
    assert_eq!(
        routes,
        api_md_routes(),
        "docs/openapi.json and docs/api.md disagree"
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
                "{method} {path} is in openapi.json but answered {}",
                r.status
            );
        }
        for other in [Method::PUT, Method::DELETE, Method::PATCH] {
            let r = node.request(other.clone(), &path, None, None).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{other} {path}");
            assert_eq!(
                r.headers["allow"],
                methods.join(", ").as_str(),
                "Allow of {path}"
            );
        }
    }
}
