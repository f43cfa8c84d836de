//! `idle`: park N polls (one user, one connection each), hold them, and
//! report the server's resident memory per parked poll from
//! /proc/PID/status (Carrier's /metrics has no process collector, so a pid
//! is required; for nginx, give every worker's pid).

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::cli::{Args, IdleArgs};
use crate::client::Sources;
use crate::cpu::{per_poll, rss_kib};
use crate::engine::Engine;
use crate::plan::{Plan, Tokens};
use crate::progress::Progress;
use crate::report::{Idle, RunResult};
use crate::scenario::{fill, settings};
use crate::stats::Counters;
use crate::target::Target;

/// Parks `polls` polls; samples memory only when `sample` (a worker leaves
/// that to its parent, which sees every worker's polls).
pub async fn run(
    args: &Args,
    a: &IdleArgs,
    tokens: &Tokens,
    polls: usize,
    sample: bool,
) -> anyhow::Result<RunResult> {
    let mut target = Target::new(args.peer);
    target.sender_copy = args.nchan_sender_copy;
    // `chat` pairs users, so ask for one more than an odd count.
    let mut plan = Plan::chat(tokens, polls + 1, 1);
    plan.convs.clear();
    plan.devices.truncate(polls);
    let engine = Engine::new(
        target,
        &args.target,
        Sources::new(&args.target, args.sources),
        plan,
        settings(args),
    );
    let progress = Progress::new(args.quiet || args.worker.is_some());
    let before = if sample {
        rss_kib(&args.server_pids)?
    } else {
        0
    };
    progress.say(&format!("parking {polls} polls"));
    let mut devices = JoinSet::new();
    let sampler = progress.follow(&engine, args.worker.is_some());
    engine.start_devices(&mut devices).await?;
    wait_parked(
        &engine,
        polls as u64,
        Duration::from_secs(args.request_timeout),
    )
    .await;
    let (parked, after) = if sample {
        progress.say(&format!("{polls} parked; settling {} s", a.settle));
        tokio::time::sleep(Duration::from_secs(a.settle)).await;
        let parked = Counters::get(&engine.counters.parked);
        let after = rss_kib(&args.server_pids)?;
        if a.hold > 0 {
            progress.say(&format!("holding {} s", a.hold));
            tokio::time::sleep(Duration::from_secs(a.hold)).await;
        }
        (parked, after)
    } else {
        // A worker: the parent samples memory, then closes our stdin.
        crate::worker_protocol::wait_for_parent(Duration::from_secs(args.max_seconds)).await;
        (Counters::get(&engine.counters.parked), 0)
    };
    engine.stop.cancel();
    let _ = sampler.await;
    devices.shutdown().await;
    progress.finish();
    let mut result = RunResult {
        scenario: "idle".into(),
        peer: format!("{:?}", args.peer).to_lowercase(),
        target: crate::scenario::targets_text(&args.target),
        users: engine.plan.devices.len() as u64,
        devices: engine.plan.devices.len() as u64,
        workers: 1,
        allow_copy_reorder: args.allow_copy_reorder,
        idle: Some(Idle {
            polls: parked,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_poll: per_poll(before, after, parked),
        }),
        ..RunResult::default()
    };
    fill(&mut result, &engine);
    if parked < polls as u64 {
        result.aborted = Some(format!("only {parked} of {polls} polls parked"));
        result.clean = false;
    }
    Ok(result)
}

/// Waits until `n` polls are on the wire (or `timeout`).
pub async fn wait_parked(engine: &Arc<Engine>, n: u64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while Counters::get(&engine.counters.parked) < n && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
