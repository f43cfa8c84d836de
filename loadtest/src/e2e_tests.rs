//! End to end: short runs against a real Carrier node in this process on
//! 127.0.0.1:0 (embedded store in a temp folder), verdict must be clean;
//! and failover from a dead, a refusing or a silent first target to it.

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
    let sources = crate::client::Sources::new(&[addr], 1);
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
    run_against(&node.addr.to_string(), extra).await
}

/// A run against `targets` (one address or a comma-separated list).
async fn run_against(targets: &str, extra: &[&str]) -> RunResult {
    let mut argv = vec![
        "carrier-loadtest",
        "--target",
        targets,
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
    // The node runs in this process: its pid stands for the server's.
    let pid = std::process::id().to_string();
    let r = run(
        &node,
        &[
            "--server-pid",
            &pid,
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
    // CPU per acked message, the server's (from --server-pid) and the tool's.
    let per = r.cpu.server_us_per_message.expect("server CPU measured");
    assert!(per > 0.0, "{}", r.table());
    assert!(r.cpu.tool_seconds.is_some_and(|s| s > 0.0), "{}", r.table());
    assert!(r.table().contains("µs per acked message"), "{}", r.table());
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

/// A loopback port nothing listens on (bound once, then closed).
async fn closed_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A node that answers every request `503 Service Unavailable`.
async fn unavailable_node() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    hyper::Response::builder()
                        .status(503)
                        .header("retry-after", "1")
                        .body(http_body_util::Full::new(bytes::Bytes::from_static(
                            br#"{"error":{"code":"unavailable","message":"test"}}"#,
                        )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    addr
}

/// A node that accepts connections and never answers (as a SIGSTOPped
/// process's listen backlog does).
async fn silent_node() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

/// Twenty users, two per conversation: the ten of even index start on
/// `first`, the others on the real node. Every even user's devices and
/// sends must move to the real node, and every send be acked there.
async fn fails_over_from(first: std::net::SocketAddr, extra: &[&str]) -> RunResult {
    let node = node().await;
    let targets = format!("{first},{}", node.addr);
    // No receipts: a receipt's failover would move its user before the
    // user's first send, which then never fails.
    let mut argv = extra.to_vec();
    argv.extend_from_slice(&[
        "--read-receipts",
        "0",
        "--seconds",
        "1",
        "chat",
        "--users",
        "20",
        "--rate",
        "100",
    ]);
    let r = run_against(&targets, &argv).await;
    node.shutdown().await;
    assert!(r.clean, "{}", r.table());
    assert_eq!(r.issued, 100);
    assert_eq!(r.acked, r.issued, "{}", r.table());
    assert_eq!(r.verdict.unknown, 0, "{}", r.table());
    assert_eq!(r.verdict.unacked, 0, "{}", r.table());
    // Each even user's device and sender moved once.
    assert_eq!(r.failovers, 20, "{}", r.table());
    assert!(r.send_retries >= 10, "{}", r.table());
    assert_eq!(r.send_outage.users, 20, "{}", r.table());
    assert_eq!(r.send_outage.users_with_outage, 10, "{}", r.table());
    assert_eq!(r.send_outage.unrecovered, 0, "{}", r.table());
    assert!(r.send_outage.max_ms >= r.send_outage.p99_ms);
    assert!(r.target.contains(','), "{}", r.target);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_when_the_first_target_refuses_connections() {
    let dead = closed_port().await;
    fails_over_from(dead, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_when_the_first_target_answers_503() {
    let unavailable = unavailable_node().await;
    fails_over_from(unavailable, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_when_the_first_target_never_answers() {
    let silent = silent_node().await;
    // Each attempt on the silent node ends at the request timeout.
    fails_over_from(silent, &["--request-timeout", "1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_target_has_no_failovers_and_no_outage() {
    let node = node().await;
    let r = run(
        &node,
        &["--seconds", "1", "chat", "--users", "10", "--rate", "50"],
    )
    .await;
    node.shutdown().await;
    assert!(r.clean, "{}", r.table());
    assert_eq!((r.failovers, r.send_retries), (0, 0), "{}", r.table());
    assert_eq!(r.send_outage.users_with_outage, 0, "{}", r.table());
    assert_eq!(r.send_outage.max_ms, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_parks_an_odd_number_of_polls() {
    let node = node().await;
    let pid = std::process::id().to_string();
    let target = node.addr.to_string();
    let argv = [
        "carrier-loadtest",
        "--target",
        &target,
        "--secret",
        SECRET,
        "--quiet",
        "--server-pid",
        &pid,
        "idle",
        "--polls",
        "7",
        "--settle",
        "0",
    ];
    let args = Args::try_parse_from(argv).unwrap();
    let crate::cli::Scenario::Idle(a) = &args.scenario else {
        panic!("idle")
    };
    let tokens = Tokens::Mint(carrier::auth::Auth::new(SECRET.as_bytes()));
    let r = crate::idle::run(&args, a, &tokens, 7, true).await.unwrap();
    node.shutdown().await;
    // `chat` plans pair users; an odd count must not lose one.
    let idle = r.idle.as_ref().expect("idle figures");
    assert_eq!(idle.polls, 7, "{}", r.table());
    assert_eq!(r.devices, 7);
    assert!(r.aborted.is_none(), "{}", r.table());
}
