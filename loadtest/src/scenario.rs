//! The scenarios that send: `chat`, `groups`, `fanout` (one phase each) and
//! `ramp` (one phase per step). Each builds a plan, sets up groups, parks
//! every device, sends, drains, checks history and returns the figures.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;

use crate::cli::{Args, Scenario};
use crate::client::Sources;
use crate::cpu::Mark;
use crate::engine::{Engine, Settings};
use crate::plan::{Plan, Tokens};
use crate::progress::Progress;
use crate::report::{RunResult, Step};
use crate::stats::{Counters, Percentiles, Recorded};
use crate::target::{Target, history_page};

/// Members per group-creation or member-adding request.
const MEMBERS_PER_REQUEST: usize = 1000;

pub fn settings(args: &Args) -> Settings {
    Settings {
        poll_timeout: args.poll_timeout,
        cut_polls: args.cut_polls,
        retry_sends: args.retry_sends,
        read_receipts: args.read_receipts,
        body_bytes: args.body_bytes,
        send_conns: args.send_conns,
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        connect_concurrency: args.connect_concurrency,
        // `run::check` has already refused a ring that does not load.
        ring: ring(args).ok().flatten(),
    }
}

/// The ring of `--config`'s cluster, for `--home-by-ring`: `(seed, addr)`
/// per configured peer.
pub fn ring(args: &Args) -> Result<Option<Vec<(u64, std::net::SocketAddr)>>, String> {
    if !args.home_by_ring {
        return Ok(None);
    }
    let refused = || "--home-by-ring needs --config of a cluster node (with [cluster] peers)";
    let path = args.config.as_deref().ok_or_else(refused)?;
    let config = carrier::config::Config::load(Some(path)).map_err(|e| e.to_string())?;
    if config.cluster.peers.len() < 2 {
        return Err(refused().into());
    }
    Ok(Some(
        config
            .cluster
            .peers
            .iter()
            .map(|p| (carrier::cluster::ring::seed(&p.id), p.addr))
            .collect(),
    ))
}

/// Runs a sending scenario of `args` with `share` of its users and rate
/// (1.0 in one process; 1/n in each of n workers).
pub async fn run(args: &Args, tokens: &Tokens, share: f64) -> anyhow::Result<RunResult> {
    let mut target = Target::new(args.peer);
    target.sender_copy = args.nchan_sender_copy;
    let scale = |n: usize| ((n as f64 * share).round() as usize).max(2);
    let (plan, rate) = match &args.scenario {
        Scenario::Chat(a) => (
            Plan::chat(tokens, scale(a.users), a.devices),
            a.rate * share,
        ),
        Scenario::Ramp(a) => (
            Plan::chat(tokens, scale(a.users), a.devices),
            a.start_rate * share,
        ),
        Scenario::Groups(a) => (
            Plan::groups(tokens, scale(a.groups * a.size), a.size, a.devices),
            a.rate * share,
        ),
        Scenario::Fanout(a) => (
            Plan::fanout(tokens, a.members, a.devices, a.polling.unwrap_or(a.members)),
            a.rate,
        ),
        Scenario::Idle(_) => anyhow::bail!("idle is not a sending scenario"),
    };
    let engine = Engine::new(
        target,
        &args.target,
        Sources::new(&args.target, args.sources),
        plan,
        settings(args),
    );
    let mut result = RunResult {
        scenario: args.scenario.name().into(),
        peer: format!("{:?}", args.peer).to_lowercase(),
        target: targets_text(&args.target),
        users: engine.plan.users.len() as u64,
        devices: engine.plan.devices.len() as u64,
        conversations: engine.plan.convs.len() as u64,
        workers: 1,
        rate,
        allow_copy_reorder: args.allow_copy_reorder,
        ..RunResult::default()
    };

    let progress = Progress::new(args.quiet || args.worker.is_some());
    progress.say(&format!(
        "setting up {} users, {} devices, {} conversations",
        result.users, result.devices, result.conversations
    ));
    create_groups(&engine).await?;
    let mut devices = JoinSet::new();
    engine.start_devices(&mut devices).await?;
    let sampler = progress.follow(&engine, args.worker.is_some());

    let drain = Duration::from_secs(args.drain);
    match &args.scenario {
        Scenario::Ramp(a) => {
            let mut acked_so_far = 0;
            let mut rate = a.start_rate;
            let mut tag = 0;
            while rate <= a.max_rate + 1e-9 && !engine.stop.is_cancelled() {
                progress.say(&format!("ramp step {rate:.0} sends/s"));
                let mark = Mark::now(&args.server_pids);
                let p = engine.phase(rate * share, a.step_seconds, tag, drain).await;
                let cpu = mark.spent(&args.server_pids, p.acked);
                result.cpu = result.cpu.add(&cpu, acked_so_far, p.acked);
                acked_so_far += p.acked;
                let delivery = Percentiles::of(&p.delivery);
                let achieved = p.acked as f64 / p.seconds;
                let held = p.errors == 0
                    && p.lost == 0
                    && delivery.p99_ms <= a.slo_p99_ms
                    && achieved >= 0.95 * p.rate;
                result.steps.push(Step {
                    rate,
                    achieved_rate: achieved / share,
                    errors: p.errors,
                    lost: p.lost,
                    delivery,
                    ack: Percentiles::of(&p.ack),
                    held,
                    cpu,
                });
                result.send_seconds += p.seconds;
                if !held {
                    break;
                }
                result.highest_held_rate = Some(rate);
                rate += a.step_rate;
                tag += 1;
            }
        }
        _ => {
            progress.say("sending");
            let mark = Mark::now(&args.server_pids);
            let p = engine.phase(rate, args.seconds, 0, drain).await;
            result.cpu = mark.spent(&args.server_pids, p.acked);
            result.send_seconds = p.seconds;
        }
    }

    progress.say("checking history");
    result.history_checked = check_history(&engine, args.history_check).await;
    // History may have shown sends of unknown outcome to have been stored:
    // they are owed to every device now, so give them a drain of their own.
    engine.settle(drain).await;
    engine.stop.cancel();
    let _ = sampler.await;
    devices.shutdown().await;
    engine.pool.close();
    progress.finish();
    fill(&mut result, &engine);
    Ok(result)
}

/// The targets as the summary names them: `a:1,b:2`.
pub fn targets_text(targets: &[std::net::SocketAddr]) -> String {
    targets
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Copies the engine's counters, histograms and verdict into `result`.
pub fn fill(result: &mut RunResult, engine: &Arc<Engine>) {
    let c = &engine.counters;
    result.issued = Counters::get(&c.issued);
    result.acked = Counters::get(&c.acked);
    result.delivered = Counters::get(&c.delivered);
    result.send_errors = Counters::get(&c.send_errors);
    result.poll_errors = Counters::get(&c.poll_errors);
    result.polls = Counters::get(&c.polls);
    result.cut_polls = Counters::get(&c.cut_polls);
    result.replays = Counters::get(&c.replays);
    result.receipts = Counters::get(&c.receipts);
    result.failovers = Counters::get(&c.failovers);
    result.send_retries = Counters::get(&c.send_retries);
    result.send_outage = engine.outage_book().finish(engine.now());
    let secs = result.send_seconds.max(1e-9);
    if !result.steps.is_empty() {
        // A ramp's offered rate is the mean over its steps.
        result.rate = result.issued as f64 / secs;
    }
    result.achieved_rate = result.acked as f64 / secs;
    result.delivered_rate = result.delivered as f64 / secs;
    let (ack, delivery) = engine.rec.totals();
    result.ack = Percentiles::of(&ack);
    result.delivery = Percentiles::of(&delivery);
    result.ack_histogram = Recorded::of(&ack);
    result.delivery_histogram = Recorded::of(&delivery);
    result.samples = engine
        .samples
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    result.verdict = engine.verdict();
    result.judge();
}

/// Creates every group of the plan (Carrier only: an Nchan channel exists
/// once someone subscribes or publishes).
async fn create_groups(engine: &Arc<Engine>) -> anyhow::Result<()> {
    if !engine.target.ordered() {
        return Ok(());
    }
    let attempts = 5 + 2 * engine.nodes.len();
    for conv in engine.plan.convs.iter().filter(|c| c.group) {
        let owner = &engine.plan.users[conv.members[0]];
        let ids: Vec<uuid::Uuid> = conv
            .members
            .iter()
            .map(|&m| engine.plan.users[m].user)
            .collect();
        for (i, chunk) in ids.chunks(MEMBERS_PER_REQUEST).enumerate() {
            let request = if i == 0 {
                engine.target.create_group(owner, conv.id, chunk)?
            } else {
                engine.target.add_members(owner, conv.id, chunk)?
            };
            let reply = engine.call_as(conv.members[0], attempts, request).await?;
            anyhow::ensure!(
                reply.status.is_success(),
                "creating group {}: status {} {}",
                conv.id,
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
    }
    Ok(())
}

/// Reads back the whole history of up to `limit` conversations and has the
/// oracle compare it with what was delivered live. Returns how many were
/// checked.
async fn check_history(engine: &Arc<Engine>, limit: usize) -> u64 {
    if !engine.target.ordered() {
        return 0;
    }
    let mut checked = 0;
    for conv in engine.plan.convs.iter().take(limit) {
        let who = &engine.plan.users[conv.members[0]];
        let mut all = Vec::new();
        let mut before = None;
        let complete = loop {
            let Ok(request) = engine.target.history(who, conv.id, before) else {
                break false;
            };
            let page = match engine
                .call_as(conv.members[0], 2 * engine.nodes.len() + 1, request)
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| history_page(&r).context("history page"))
            {
                Ok(page) => page,
                Err(_) => break false,
            };
            let oldest = page.iter().filter_map(|m| m.seq).min();
            let done = page.is_empty() || oldest.is_none_or(|s| s <= 1);
            all.extend(page);
            if done {
                break true;
            }
            before = oldest;
        };
        if !complete {
            Counters::bump(&engine.counters.send_errors);
            engine.books().oracle.history_unread();
            continue;
        }
        engine.books().oracle.check_history(conv.id, &all);
        checked += 1;
    }
    checked
}
