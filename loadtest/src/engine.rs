//! The running load: devices parked on long polls, an open-loop stream of
//! sends, and the books (oracle + issue times) both sides write into.
//! Scenarios drive it in phases (one for `chat`, one per step for `ramp`).
//! With several target nodes, each user's devices and sends start on node
//! `user mod nodes` and fail over along the list (see [`crate::failover`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::client::{ClientError, Conn, Pool, Reply, Sources};
use crate::failover::{self, Backoff, OutageBook};
use crate::oracle::{Counts, Oracle};
use crate::plan::Plan;
use crate::schedule::open_loop;
use crate::stats::{Counters, Recorder, Sample};
use crate::target::Target;

/// Knobs of a run that the engine needs (from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Seconds a poll asks the server to park it.
    pub poll_timeout: u64,
    /// Fraction of polls cut (connection dropped) at a random moment.
    pub cut_polls: f64,
    /// Fraction of acked sends sent again with the same message_id.
    pub retry_sends: f64,
    /// Fraction of received messages a recipient marks read.
    pub read_receipts: f64,
    /// Bytes of padding in each message body.
    pub body_bytes: usize,
    /// Connections for sends, at most.
    pub send_conns: usize,
    /// A send or setup request without an answer by then is an error.
    pub request_timeout: Duration,
    /// Connections opened at once while devices start.
    pub connect_concurrency: usize,
    /// The ring of the target cluster, `(seed, addr)` per configured peer
    /// (`--home-by-ring`): each user starts on the node owning it.
    pub ring: Option<Vec<(u64, SocketAddr)>>,
}

/// The node each user's devices and sends start on: the owner of the user in
/// `ring` (all peers live) when it is one of `nodes`, else `user mod count`.
pub fn homes(
    users: &[Uuid],
    nodes: &[SocketAddr],
    ring: Option<&[(u64, SocketAddr)]>,
) -> Vec<usize> {
    let n = nodes.len().max(1);
    let seeds: Vec<u64> = ring
        .unwrap_or_default()
        .iter()
        .map(|(seed, _)| *seed)
        .collect();
    let live = vec![true; seeds.len()];
    users
        .iter()
        .enumerate()
        .map(|(u, id)| {
            ring.and_then(|ring| {
                let owner = carrier::cluster::ring::owner(&seeds, &live, id.as_bytes())?;
                nodes.iter().position(|a| *a == ring[owner].1)
            })
            .unwrap_or(u % n)
        })
        .collect()
}

/// What the oracle needs beside itself: when each send was due and who
/// sent it (to time deliveries to the other members' devices).
#[derive(Debug)]
pub struct Meta {
    pub due: Instant,
    pub sender: usize,
}

#[derive(Debug)]
pub struct Books {
    pub oracle: Oracle,
    pub meta: HashMap<Uuid, Meta>,
}

/// One run's shared state; tasks hold it through an `Arc`.
pub struct Engine {
    pub target: Target,
    /// The target nodes (one, or a cluster's).
    pub nodes: Vec<SocketAddr>,
    /// Per user: the node its sends, receipts and setup requests go to now.
    pub sender_at: Vec<AtomicUsize>,
    /// Per user: the node its devices start on (see [`homes`]).
    homes: Vec<usize>,
    /// Per user: the longest send outage (see [`OutageBook`]).
    pub outages: Mutex<OutageBook>,
    /// Failed sends are retried until then (µs since `started`): the end
    /// of the current phase's sending plus its drain.
    pub retry_until_us: AtomicU64,
    pub sources: Sources,
    pub pool: Pool,
    pub plan: Plan,
    pub settings: Settings,
    pub books: Mutex<Books>,
    pub rec: Recorder,
    pub counters: Counters,
    /// Sends spawned and not yet finished.
    pub inflight: AtomicU64,
    /// When the latest ack arrived (µs since `started`): a phase's achieved
    /// rate counts until then, not only until its last send was issued.
    pub last_ack_us: AtomicU64,
    /// Stops every device loop.
    pub stop: CancellationToken,
    pub started: Instant,
    pub samples: Mutex<Vec<Sample>>,
    /// Padding of message bodies.
    pub pad: String,
}

/// The figures of one phase.
#[derive(Debug)]
pub struct PhaseOutcome {
    pub rate: f64,
    pub seconds: f64,
    pub issued: u64,
    pub acked: u64,
    pub errors: u64,
    pub ack: Histogram<u64>,
    pub delivery: Histogram<u64>,
    pub lost: u64,
}

impl Engine {
    pub fn new(
        target: Target,
        nodes: &[SocketAddr],
        sources: Sources,
        plan: Plan,
        settings: Settings,
    ) -> Arc<Engine> {
        let devices = plan.devices.len();
        let users = plan.users.len();
        let ids: Vec<Uuid> = plan.users.iter().map(|u| u.user).collect();
        let homes = homes(&ids, nodes, settings.ring.as_deref());
        Arc::new(Engine {
            pool: Pool::new(nodes, settings.send_conns),
            nodes: nodes.to_vec(),
            sender_at: homes.iter().map(|h| AtomicUsize::new(*h)).collect(),
            homes,
            // An attempt takes at most the request timeout (a send on Nchan
            // is two requests).
            outages: Mutex::new(OutageBook::new(
                users,
                settings.request_timeout * 2 + Duration::from_secs(1),
            )),
            retry_until_us: AtomicU64::new(0),
            target,
            sources,
            plan,
            pad: "x".repeat(settings.body_bytes),
            settings,
            books: Mutex::new(Books {
                oracle: Oracle::new(devices),
                meta: HashMap::new(),
            }),
            rec: Recorder::default(),
            counters: Counters::default(),
            inflight: AtomicU64::new(0),
            last_ack_us: AtomicU64::new(0),
            stop: CancellationToken::new(),
            started: Instant::now(),
            samples: Mutex::new(Vec::new()),
        })
    }

    pub fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn outage_book(&self) -> MutexGuard<'_, OutageBook> {
        self.outages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node a user's devices start on.
    pub fn home(&self, user: usize) -> usize {
        self.homes.get(user).copied().unwrap_or(0)
    }

    /// Time since the run started (the clock of the outage book).
    pub fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.started)
    }

    /// The node `user`'s requests go to now.
    pub fn sender_node(&self, user: usize) -> usize {
        self.sender_at
            .get(user)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// A request of `user` to `from` failed: its next ones go to the node
    /// after it (once, however many of its requests failed there at once).
    pub fn sender_failed_over(&self, user: usize, from: usize) {
        let Some(at) = self.sender_at.get(user) else {
            return;
        };
        let to = failover::next(from, self.nodes.len());
        if to != from
            && at
                .compare_exchange(from, to, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Counters::bump(&self.counters.failovers);
        }
    }

    /// A short idempotent request of `user` (receipt, group set-up, history
    /// page): on its current node, failing over to the next one on no
    /// answer or "unavailable", up to `attempts` tries in all.
    pub async fn call_as(
        &self,
        user: usize,
        attempts: usize,
        request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    ) -> Result<Reply, ClientError> {
        let mut backoff = Backoff::default();
        let mut tries = 0;
        loop {
            tries += 1;
            let node = self.sender_node(user);
            let result = self
                .pool
                .call(
                    node,
                    &self.sources,
                    request.clone(),
                    self.settings.request_timeout,
                )
                .await;
            let failed = match &result {
                Ok(reply) => failover::unavailable(reply.status),
                Err(_) => true,
            };
            if !failed || tries >= attempts.max(1) || self.stop.is_cancelled() {
                return result;
            }
            self.sender_failed_over(user, node);
            self.pause(backoff.failed()).await;
        }
    }

    /// Opens every device's connection, takes its head cursor, and starts
    /// its poll loop. Returns once all are polling (or failed to start).
    pub async fn start_devices(self: &Arc<Self>, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
        let gate = Arc::new(Semaphore::new(self.settings.connect_concurrency.max(1)));
        let mut starting = JoinSet::new();
        for d in 0..self.plan.devices.len() {
            let engine = self.clone();
            let gate = gate.clone();
            starting.spawn(async move {
                let _permit = gate.acquire_owned().await.ok();
                engine
                    .start_device(d)
                    .await
                    .map(|(node, conn, cursor)| (d, node, conn, cursor))
            });
        }
        let mut failed = 0u64;
        let mut first_error = None;
        while let Some(done) = starting.join_next().await {
            match done {
                Ok(Ok((d, node, conn, cursor))) => {
                    let engine = self.clone();
                    tasks.spawn(async move { engine.device_loop(d, node, conn, cursor).await });
                }
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(anyhow::anyhow!("device task: {e}"));
                }
            }
        }
        match first_error {
            Some(e) => Err(e.context(format!("{failed} devices could not start"))),
            None => Ok(()),
        }
    }

    /// Starts device `d` on its user's home node, or the next one that
    /// answers: (node, connection, head cursor).
    async fn start_device(&self, d: usize) -> anyhow::Result<(usize, Conn, String)> {
        let mut node = self.home(self.plan.devices[d].user);
        let mut last = None;
        let attempts = 5 + 2 * self.nodes.len() as u64;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * attempt.min(5))).await;
            }
            match self.try_start_device(d, node).await {
                Ok((conn, cursor)) => return Ok((node, conn, cursor)),
                Err(e) => last = Some(e),
            }
            if self.nodes.len() > 1 {
                node = failover::next(node, self.nodes.len());
                Counters::bump(&self.counters.failovers);
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("device {d} did not start")))
    }

    async fn try_start_device(&self, d: usize, node: usize) -> anyhow::Result<(Conn, String)> {
        let addr = self
            .nodes
            .get(node)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no target node {node}"))?;
        let mut conn = Conn::open(addr, &self.sources).await?;
        let who = &self.plan.users[self.plan.devices[d].user];
        let Some(head) = self.target.head(who) else {
            return Ok((conn, String::new()));
        };
        let reply = tokio::time::timeout(self.settings.request_timeout, conn.call(head?))
            .await
            .map_err(|_| anyhow::anyhow!("head poll timed out"))??;
        let (_, cursor) = self.target.parse_poll(&reply, "")?;
        Ok((conn, cursor))
    }

    /// Sends at `rate` for `seconds`, tagging the sends `tag`, then waits
    /// (up to `drain`) until every acked message has reached every device.
    pub async fn phase(
        self: &Arc<Self>,
        rate: f64,
        seconds: f64,
        tag: u32,
        drain: Duration,
    ) -> PhaseOutcome {
        let before = (
            0,
            Counters::get(&self.counters.acked),
            Counters::get(&self.counters.send_errors) + Counters::get(&self.counters.poll_errors),
        );
        let stop = self.stop.clone();
        let started = Instant::now();
        // Failed sends retry until the drain would end had sending ended
        // on time; pushed later below if it did not.
        let retry_until = |end: Instant| {
            let at = (end + drain).saturating_duration_since(self.started);
            self.retry_until_us
                .fetch_max(at.as_micros() as u64, Ordering::Relaxed);
        };
        retry_until(started + Duration::from_secs_f64(seconds));
        let issued = open_loop(rate, Duration::from_secs_f64(seconds), &stop, |i, due| {
            self.issue(i, due, tag);
        })
        .await;
        retry_until(Instant::now());
        let sending = started.elapsed().as_secs_f64().max(seconds);
        self.settle(self.settings.request_timeout + drain).await;
        // Acked sends over the time from the first send to the last ack: a
        // server that acks late does not get credit for the offered rate.
        let last_ack = Duration::from_micros(self.last_ack_us.load(Ordering::Relaxed));
        let acking = (self.started + last_ack)
            .saturating_duration_since(started)
            .as_secs_f64();
        let window = sending.max(acking);
        let (ack, delivery) = self.rec.phase_copy(tag);
        let acked = Counters::get(&self.counters.acked) - before.1;
        PhaseOutcome {
            rate,
            seconds: window,
            issued,
            acked,
            errors: Counters::get(&self.counters.send_errors)
                + Counters::get(&self.counters.poll_errors)
                - before.2,
            ack,
            delivery,
            lost: self.books().oracle.lost_with_tag(tag),
        }
    }

    /// Waits (up to `bound`) until no send is in flight and every owed
    /// delivery has arrived.
    pub async fn settle(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            let settled = self.inflight.load(Ordering::Relaxed) == 0;
            if settled && self.books().oracle.outstanding() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Samples the counters once a second until stopped.
    pub async fn sampler(self: Arc<Self>, every: Duration, on_sample: impl Fn(&Engine, &Sample)) {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let mut last = (0u64, 0u64, 0u64, Instant::now());
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            let now = Instant::now();
            let dt = (now - last.3).as_secs_f64().max(1e-3);
            let c = &self.counters;
            let (issued, acked, delivered) = (
                Counters::get(&c.issued),
                Counters::get(&c.acked),
                Counters::get(&c.delivered),
            );
            let (p50, p99, p999) = self.rec.take_interval();
            let sample = Sample {
                t: (now - self.started).as_secs_f64(),
                issued_per_s: (issued - last.0) as f64 / dt,
                acked_per_s: (acked - last.1) as f64 / dt,
                delivered_per_s: (delivered - last.2) as f64 / dt,
                errors: Counters::get(&c.send_errors) + Counters::get(&c.poll_errors),
                parked: Counters::get(&c.parked),
                p50_ms: p50,
                p99_ms: p99,
                p999_ms: p999,
            };
            on_sample(&self, &sample);
            self.samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(sample);
            last = (issued, acked, delivered, now);
        }
    }

    /// Final verdict counts (after the history check).
    pub fn verdict(&self) -> Counts {
        self.books().oracle.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_start_on_their_owner_in_the_ring() {
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let ids = ["n1", "n2", "n3"];
        let ring: Vec<(u64, SocketAddr)> = ids
            .iter()
            .zip(8081..)
            .map(|(id, port)| (carrier::cluster::ring::seed(id), addr(port)))
            .collect();
        let seeds: Vec<u64> = ring.iter().map(|r| r.0).collect();
        let users: Vec<Uuid> = (0..300).map(|_| Uuid::new_v4()).collect();
        // Targets in another order than the peers: placement goes by address.
        let nodes = [addr(8083), addr(8081), addr(8082)];
        let placed = homes(&users, &nodes, Some(&ring));
        let mut per_node = [0; 3];
        for (user, home) in users.iter().zip(&placed) {
            let owner = carrier::cluster::ring::owner(&seeds, &[true; 3], user.as_bytes()).unwrap();
            assert_eq!(nodes[*home], ring[owner].1);
            per_node[*home] += 1;
        }
        assert!(per_node.iter().all(|n| *n > 50), "{per_node:?}");
        // A peer that is not a target: its users fall back to index mod count.
        let two = [addr(8081), addr(8082)];
        let placed = homes(&users, &two, Some(&ring));
        for (u, (user, home)) in users.iter().zip(&placed).enumerate() {
            let owner = carrier::cluster::ring::owner(&seeds, &[true; 3], user.as_bytes()).unwrap();
            let want = if owner == 2 { u % 2 } else { owner };
            assert_eq!(*home, want);
        }
        // Without a ring: index mod count.
        assert_eq!(homes(&users[..4], &nodes, None), vec![0, 1, 2, 0]);
    }
}
