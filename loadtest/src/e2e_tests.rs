//! End to end: short runs against a real Carrier node in this process on
//! 127.0.0.1:0 (embedded store in a temp folder), verdict must be clean.

use std::time::Duration;

use clap::Parser;
use tokio::sync::oneshot;

use crate::cli::Args;
use crate::plan::Tokens;
use crate::report::RunResult;

const SECRET: &str = "loadtest-e2e-secret-of-at-least-32-bytes";

struct Node {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), carrier::app::AppError>>,
    _dir: tempfile::TempDir,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut config = carrier::config::Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.shutdown_grace = Duration::from_secs(2);
    config.auth.secret = Some(SECRET.to_owned());
    config.storage.path = dir.path().to_path_buf();
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(carrier::app::serve(config, listener, async move {
        let _ = stopped.await;
    }));
    wait_ready(addr).await;
    Node {
        addr,
        stop: Some(stop),
        task,
        _dir: dir,
    }
}

async fn wait_ready(addr: std::net::SocketAddr) {
    let sources = crate::client::Sources::new(addr, 1);
    for _ in 0..400 {
        if let Ok(mut conn) = crate::client::Conn::open(addr, &sources).await {
            let req = hyper::Request::get("/readyz")
                .header("host", addr.to_string())
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            if let Ok(r) = conn.call(req).await
                && r.status == hyper::StatusCode::OK
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("node at {addr} never became ready");
}

impl Node {
    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

async fn run(node: &Node, extra: &[&str]) -> RunResult {
    let addr = node.addr.to_string();
    let mut argv = vec![
        "carrier-loadtest",
        "--target",
        &addr,
        "--secret",
        SECRET,
        "--quiet",
        "--poll-timeout",
        "5",
        "--drain",
        "5",
        "--sources",
        "2",
    ];
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).unwrap();
    let tokens = Tokens::Mint(carrier::auth::Auth::new(SECRET.as_bytes()));
    crate::scenario::run(&args, &tokens, 1.0).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_chat_against_a_real_node_is_clean() {
    let node = node().await;
    let r = run(
        &node,
        &[
            "--seconds",
            "2",
            "--read-receipts",
            "0.3",
            "chat",
            "--users",
            "40",
            "--devices",
            "2",
            "--rate",
            "300",
        ],
    )
    .await;
    node.shutdown().await;
    assert!(r.clean, "{}", r.table());
    // Every device, the senders' own included, sees strict seq order.
    assert_eq!(r.verdict.reordered, 0, "{}", r.table());
    assert_eq!(r.issued, 600);
    assert_eq!(r.acked, r.issued, "{}", r.table());
    // Each message reaches the recipient's 2 devices (timed) and the
    // sender's 2 devices (copies, checked by the oracle).
    assert_eq!(r.delivered, 2 * r.acked, "{}", r.table());
    assert_eq!(r.delivery.count, r.delivered);
    assert!(r.receipts > 0, "{}", r.table());
    assert_eq!(r.history_checked, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_polls_and_retried_sends_keep_the_verdict_clean() {
    let node = node().await;
    let r = run(
        &node,
        &[
            "--seconds",
            "2",
            "--cut-polls",
            "0.3",
            "--retry-sends",
            "0.3",
            "chat",
            "--users",
            "20",
            "--rate",
            "200",
        ],
    )
    .await;
    node.shutdown().await;
    assert!(r.clean, "{}", r.table());
    assert!(r.cut_polls > 0, "{}", r.table());
    assert!(r.replays > 0, "{}", r.table());
    assert_eq!(r.acked, r.issued, "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_groups_run_is_clean() {
    let node = node().await;
    let r = run(
        &node,
        &[
            "--seconds",
            "1",
            "groups",
            "--groups",
            "4",
            "--size",
            "5",
            "--rate",
            "100",
        ],
    )
    .await;
    node.shutdown().await;
    assert!(r.clean, "{}", r.table());
    assert_eq!(r.acked, 100);
    // Four other members' devices per message.
    assert_eq!(r.delivered, 4 * r.acked, "{}", r.table());
}
