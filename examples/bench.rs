//! A small load generator for the figures in docs/benchmarks.md, until the
//! full load tester (`loadtest/`) exists.
//!
//! ```text
//! cargo run --release --example bench -- sends   --addr 127.0.0.1:8080 --secret S --clients 256 --seconds 10
//! cargo run --release --example bench -- latency --addr 127.0.0.1:8080 --secret S --pairs 200 --rate 2000 --seconds 10
//! cargo run --release --example bench -- idle    --addr 127.0.0.1:8080 --secret S --polls 10000 --pid PID
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use carrier::auth::Auth;
use carrier::domain::UserId;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use uuid::Uuid;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The node's `auth.secret`.
    #[arg(long)]
    secret: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Closed-loop durable sends: each client sends, waits for the 201, repeats.
    Sends {
        #[arg(long, default_value_t = 256)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Open-loop sends at a fixed rate to users whose devices long-poll;
    /// measures send-to-delivery latency.
    Latency {
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Parks N polls (one connection each) and reports the server's
    /// resident memory per parked poll.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        polls: usize,
        /// The server's process id, for /proc/PID/status.
        #[arg(long)]
        pid: u32,
        /// Seconds to wait before sampling, so the allocator has returned
        /// the garbage of opening the polls.
        #[arg(long, default_value_t = 15)]
        settle: u64,
    },
}

type Conn = SendRequest<Full<Bytes>>;

/// One HTTP/1.1 connection from `127.0.0.N` (spreading source ports).
async fn connect(addr: SocketAddr, n: usize) -> anyhow::Result<Conn> {
    let socket = TcpSocket::new_v4()?;
    let source: SocketAddr = format!("127.0.0.{}:0", 2 + n % 200).parse()?;
    socket.bind(source)?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn call(
    conn: &mut Conn,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<(StatusCode, Value)> {
    conn.ready().await?;
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let response = conn.send_request(req).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)?
    };
    Ok((status, value))
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut micros: Vec<u64>) {
    micros.sort_unstable();
    println!(
        "{name}: n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        micros.len(),
        percentile(&micros, 0.50) as f64 / 1000.0,
        percentile(&micros, 0.90) as f64 / 1000.0,
        percentile(&micros, 0.99) as f64 / 1000.0,
        percentile(&micros, 0.999) as f64 / 1000.0,
        micros.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let auth = Arc::new(Auth::new(args.secret.as_bytes()));
    match args.scenario {
        Scenario::Sends { clients, seconds } => sends(args.addr, auth, clients, seconds).await,
        Scenario::Latency {
            pairs,
            rate,
            seconds,
        } => latency(args.addr, auth, pairs, rate, seconds).await,
        Scenario::Idle { polls, pid, settle } => idle(args.addr, auth, polls, pid, settle).await,
    }
}

async fn sends(
    addr: SocketAddr,
    auth: Arc<Auth>,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in 0..clients {
        let auth = auth.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let me = UserId(Uuid::new_v4());
            let token = auth.mint(me, Duration::from_secs(3600));
            let peer = UserId(Uuid::new_v4());
            let mut conn = connect(addr, n).await?;
            let mut acks = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let body = json!({"message_id": Uuid::new_v4(), "to": peer, "body": {"text": "load test message of about sixty bytes......"}});
                match call(&mut conn, addr, "POST", "/v1/messages", &token, Some(body)).await {
                    Ok((StatusCode::CREATED, _)) => acks.push(started.elapsed().as_micros() as u64),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(acks)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    println!(
        "sends: {} acked in {seconds} s = {:.0}/s with {clients} clients, {} errors",
        all.len(),
        all.len() as f64 / seconds as f64,
        errors.load(Ordering::Relaxed)
    );
    report("send ack latency", all);
    Ok(())
}

async fn latency(
    addr: SocketAddr,
    auth: Arc<Auth>,
    pairs: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let deadline = epoch + Duration::from_secs(seconds);
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut receivers = Vec::new();
    let mut users = Vec::new();
    for n in 0..pairs {
        let user = UserId(Uuid::new_v4());
        let token = auth.mint(user, Duration::from_secs(3600));
        users.push(user);
        let delivered = delivered.clone();
        let mut conn = connect(addr, n).await?;
        receivers.push(tokio::spawn(async move {
            let (_, head) = call(&mut conn, addr, "GET", "/v1/poll", &token, None).await?;
            let mut cursor = head["cursor"].as_str().unwrap_or_default().to_owned();
            let mut mine = Vec::new();
            while Instant::now() < deadline + Duration::from_secs(2) {
                let path = format!("/v1/poll?cursor={cursor}&timeout=2");
                let (status, body) = call(&mut conn, addr, "GET", &path, &token, None).await?;
                anyhow::ensure!(status == StatusCode::OK, "poll answered {status}");
                let now = epoch.elapsed().as_micros() as u64;
                for e in body["events"].as_array().into_iter().flatten() {
                    if let Some(t) = e["message"]["body"]["t"].as_u64() {
                        mine.push(now - t);
                    }
                }
                cursor = body["cursor"].as_str().unwrap_or_default().to_owned();
            }
            delivered.lock().unwrap().extend(mine);
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Open loop: send i is due at epoch + i / rate, whatever earlier ones do.
    let sender = UserId(Uuid::new_v4());
    let token = Arc::new(auth.mint(sender, Duration::from_secs(3600)));
    let senders = 64;
    let (tx, rx) = async_channel(senders * 4);
    let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for n in 0..senders {
        let rx = rx.clone();
        let token = token.clone();
        let acks = acks.clone();
        let errors = errors.clone();
        let mut conn = connect(addr, 100 + n).await?;
        workers.push(tokio::spawn(async move {
            while let Ok((to, due)) = rx.recv().await {
                let t = epoch.elapsed().as_micros() as u64;
                let body = json!({"message_id": Uuid::new_v4(), "to": to, "body": {"t": t}});
                match call(&mut conn, addr, "POST", "/v1/messages", &token, Some(body)).await {
                    Ok((StatusCode::CREATED, _)) => acks
                        .lock()
                        .unwrap()
                        .push((epoch.elapsed().as_micros() as u64).saturating_sub(due)),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let start = Instant::now();
    let total = rate * seconds;
    for i in 0..total {
        let due = start + Duration::from_micros(i * 1_000_000 / rate);
        tokio::time::sleep_until(due.into()).await;
        let due_us = (due - epoch).as_micros() as u64;
        if tx
            .send((users[i as usize % users.len()], due_us))
            .await
            .is_err()
        {
            break;
        }
    }
    drop(tx);
    for w in workers {
        w.await?;
    }
    for r in receivers {
        r.await??;
    }
    let delivered = std::mem::take(&mut *delivered.lock().unwrap());
    println!(
        "latency: offered {rate}/s for {seconds} s to {pairs} parked users: {} acked, {} delivered, {} errors",
        acks.lock().unwrap().len(),
        delivered.len(),
        errors.load(Ordering::Relaxed)
    );
    report(
        "send ack latency (from due time)",
        std::mem::take(&mut *acks.lock().unwrap()),
    );
    report("send-to-delivery latency", delivered);
    Ok(())
}

/// A bounded multi-consumer channel from tokio primitives.
fn async_channel<T: Send + 'static>(cap: usize) -> (tokio::sync::mpsc::Sender<T>, SharedRx<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap);
    (tx, SharedRx(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct SharedRx<T>(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>);

impl<T> Clone for SharedRx<T> {
    fn clone(&self) -> Self {
        SharedRx(self.0.clone())
    }
}

impl<T> SharedRx<T> {
    async fn recv(&self) -> Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

async fn idle(
    addr: SocketAddr,
    auth: Arc<Auth>,
    polls: usize,
    pid: u32,
    settle: u64,
) -> anyhow::Result<()> {
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(polls);
    let started = Instant::now();
    for n in 0..polls {
        let user = UserId(Uuid::new_v4());
        let token = auth.mint(user, Duration::from_secs(3600));
        let mut conn = connect(addr, n).await?;
        let (_, head) = call(&mut conn, addr, "GET", "/v1/poll", &token, None).await?;
        let cursor = head["cursor"].as_str().unwrap_or_default().to_owned();
        conn.ready().await?;
        let req = Request::builder()
            .uri(format!("/v1/poll?cursor={cursor}&timeout=55"))
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))?;
        held.push(tokio::spawn(conn.send_request(req)));
        if n % 1000 == 999 {
            // Let the accept queue drain (somaxconn is 4096 here).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let after = rss_kib(pid)?;
    println!(
        "idle: {polls} parked polls opened in {:.1} s; server RSS {before} KiB -> {after} KiB: {:.2} KiB per parked poll",
        started.elapsed().as_secs_f64(),
        (after.saturating_sub(before)) as f64 / polls as f64
    );
    for h in held {
        h.abort();
    }
    Ok(())
}
