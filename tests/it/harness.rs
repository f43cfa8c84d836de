//! Starting nodes and talking to them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use carrier::auth::Auth;
use carrier::config::Config;
use carrier::domain::UserId;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use uuid::Uuid;

pub const SECRET: &str = "integration-test-secret-of-at-least-32-bytes";

/// A client of one node's API, wherever the node runs.
pub struct Api {
    pub addr: SocketAddr,
    pub auth: Auth,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub fn new(addr: SocketAddr) -> Api {
        Api {
            addr,
            auth: Auth::new(SECRET.as_bytes()),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) =
                tokio::time::timeout(Duration::from_secs(1), self.get("/readyz", None)).await
                && r.status == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("node at {} never became ready", self.addr);
    }

    pub fn token(&self, user: UserId) -> String {
        self.auth.mint(user, Duration::from_secs(3600))
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.raw(method, path, token, Bytes::from(body), &[]).await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Bytes,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let response = self
            .client
            .request(req.body(Full::new(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.request(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }
}

impl std::ops::Deref for Node {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A node running in this process on `127.0.0.1:0`, with its own data folder.
pub struct Node {
    pub api: Api,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), carrier::app::AppError>>>,
    pub dir: TempDir,
}

/// A response, its body parsed as JSON when it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The error code of an error reply.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

pub fn test_config(data: &Path) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.shutdown_grace = Duration::from_secs(5);
    config.auth.secret = Some(SECRET.to_owned());
    config.storage.path = data.to_path_buf();
    if let Some(thrift) = hbase() {
        config.storage.backend = carrier::config::Backend::Hbase;
        config.storage.hbase.thrift = thrift;
        config.storage.hbase.table_prefix = HBASE_PREFIX.to_owned();
        config.cluster.node_id = node_id(data);
    }
    config
}

/// Tables the suite shares when it runs on HBase; tests keep apart by
/// their random user, group and node ids.
const HBASE_PREFIX: &str = "carrier_it_";

/// The HBase Thrift server to run the suite on, if `CARRIER_TEST_HBASE`
/// names one (`tests/hbase/run-tests.sh` sets it); else the embedded store.
pub fn hbase() -> Option<String> {
    std::env::var("CARRIER_TEST_HBASE")
        .ok()
        .filter(|v| !v.is_empty())
}

/// A node's identity follows its data folder, so a node restarted on the
/// same folder finds its clock and outbox again in HBase.
fn node_id(data: &Path) -> String {
    format!("it-{}", data.display())
}

/// The `[storage]` and `[cluster]` sections of a config file for `data`.
pub fn storage_toml(data: &Path) -> String {
    let mut toml = format!("[storage]\npath = \"{}\"\n", data.display());
    if let Some(thrift) = hbase() {
        toml.push_str(&format!(
            "backend = \"hbase\"\n[storage.hbase]\nthrift = \"{thrift}\"\ntable_prefix = \"{HBASE_PREFIX}\"\n[cluster]\nnode_id = \"{}\"\n",
            node_id(data)
        ));
    }
    toml
}

impl Node {
    pub async fn start() -> Node {
        Node::start_with(|_| {}).await
    }

    /// Starts a node with a test configuration adjusted by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        tweak(&mut config);
        Node::start_in(dir, config).await
    }

    pub async fn start_in(dir: TempDir, config: Config) -> Node {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(carrier::app::serve(config, listener, async move {
            let _ = stopped.await;
        }));
        let node = Node {
            api: Api::new(addr),
            stop: Some(stop),
            task: Some(task),
            dir,
        };
        node.wait_ready().await;
        node
    }

    /// Stops the node gracefully and returns its data folder.
    pub async fn stop(mut self) -> TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("the node stops within 30 s")
                .unwrap()
                .expect("the node stops cleanly");
        }
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }
}

/// A user with its token.
pub struct User {
    pub id: UserId,
    pub token: String,
}

impl Api {
    pub fn user(&self) -> User {
        let id = UserId(Uuid::new_v4());
        User {
            id,
            token: self.token(id),
        }
    }

    /// Sends `body` from `from` to `to` with a fresh message id.
    pub async fn send(&self, from: &User, to: &User, body: Value) -> Reply {
        self.post(
            "/v1/messages",
            &from.token,
            serde_json::json!({"message_id": Uuid::new_v4(), "to": to.id, "body": body}),
        )
        .await
    }

    /// Polls with `cursor` (none: the head) and `timeout` seconds.
    pub async fn poll(&self, user: &User, cursor: Option<&str>, timeout: u64) -> Reply {
        let path = match cursor {
            Some(c) => format!("/v1/poll?cursor={c}&timeout={timeout}"),
            None => "/v1/poll".to_owned(),
        };
        self.get(&path, Some(&user.token)).await
    }

    /// The user's mailbox head cursor.
    pub async fn head(&self, user: &User) -> String {
        let r = self.poll(user, None, 0).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        r.body["cursor"].as_str().unwrap().to_owned()
    }

    /// Every event after `cursor` (polling with timeout 0 until none are left).
    pub async fn drain(&self, user: &User, cursor: &str) -> (Vec<Value>, String) {
        let mut cursor = cursor.to_owned();
        let mut events = Vec::new();
        loop {
            let r = self.poll(user, Some(&cursor), 0).await;
            assert_eq!(r.status, StatusCode::OK, "{r:?}");
            let batch = r.body["events"].as_array().unwrap().clone();
            cursor = r.body["cursor"].as_str().unwrap().to_owned();
            if batch.is_empty() {
                return (events, cursor);
            }
            events.extend(batch);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Api {
    /// A sample's value on `/metrics` (the line starting with `series `), if exported.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let r = self.get("/metrics", None).await;
        let text = r.body.as_str().unwrap_or("").to_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }
}
