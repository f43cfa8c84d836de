//! Past one process's open-files limit, the run is split over worker
//! processes (this same binary with `--worker I/N`), each driving its share
//! of users at its share of the rate in a closed world of its own (so each
//! worker's oracle sees every message it sent). Workers print JSON lines on
//! stdout (see [`crate::worker_protocol`]): a progress sample each second
//! and their result at the end; the parent merges them. For `idle` the
//! parent samples the server's memory once all workers' polls are parked,
//! then closes the workers' stdin to let them go.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::cli::{Args, Scenario};
use crate::cpu::{per_poll, rss_kib};
use crate::progress::Progress;
use crate::report::RunResult;
use crate::stats::Sample;
use crate::worker_protocol::Line;

/// Parses `--worker I/N`.
pub fn parse(spec: &str) -> anyhow::Result<(usize, usize)> {
    let (i, n) = spec
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--worker takes INDEX/COUNT"))?;
    let (i, n): (usize, usize) = (i.parse()?, n.parse()?);
    anyhow::ensure!(n > 0 && i < n, "--worker {spec}: index out of range");
    Ok((i, n))
}

/// How many processes `args` needs with `per_process` sockets each.
pub fn needed(args: &Args, per_process: usize) -> usize {
    if args.workers > 0 {
        return args.workers;
    }
    args.scenario
        .sockets(args.send_conns)
        .div_ceil(per_process.max(1))
        .max(1)
}

/// Starts `n` workers, merges their figures.
pub async fn run(args: &Args, n: usize) -> anyhow::Result<RunResult> {
    let exe = std::env::current_exe()?;
    let own: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Line)>();
    let mut children: Vec<Child> = Vec::new();
    for i in 0..n {
        let mut child = Command::new(&exe)
            .args(&own)
            .arg("--worker")
            .arg(format!("{i}/{n}"))
            .arg("--quiet")
            .arg("--workers")
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("worker {i} has no stdout"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(parsed) = serde_json::from_str::<Line>(&line) {
                    let _ = tx.send((i, parsed));
                }
            }
        });
        children.push(child);
    }
    drop(tx);

    let progress = Progress::new(args.quiet);
    let mut latest: Vec<Option<Sample>> = vec![None; n];
    let mut results: Vec<Option<RunResult>> = vec![None; n];
    let idle = match &args.scenario {
        Scenario::Idle(a) => Some(a.clone()),
        _ => None,
    };
    let mut before = 0;
    if idle.is_some() {
        before = rss_kib(&args.server_pids)?;
    }
    let mut sampled: Option<(u64, u64)> = None;
    let mut parked_since: Option<tokio::time::Instant> = None;
    let mut most_parked = (0, tokio::time::Instant::now());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_seconds);
    loop {
        let next = tokio::time::timeout_at(deadline, rx.recv()).await;
        let Ok(Some((i, line))) = next else { break };
        match line {
            Line::Progress(s) => latest[i] = Some(s),
            Line::Result(r) => results[i] = Some(*r),
        }
        let merged = merge_samples(&latest);
        progress.set(&crate::progress::line(merged.p99_ms, &merged));
        // All parked, or no more parking for a request timeout (then the
        // figure counts what did park, and the run is marked short below).
        if merged.parked > most_parked.0 {
            most_parked = (merged.parked, tokio::time::Instant::now());
        }
        let stalled = merged.parked > 0
            && most_parked.1.elapsed() >= Duration::from_secs(args.request_timeout.max(1));
        if let (Some(a), None) = (&idle, sampled)
            && (merged.parked as usize >= a.polls || stalled)
        {
            let since = *parked_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= Duration::from_secs(a.settle) {
                sampled = Some((rss_kib(&args.server_pids)?, merged.parked));
                tokio::time::sleep(Duration::from_secs(a.hold)).await;
                // Closing stdin tells every worker to stop holding.
                for c in &mut children {
                    drop(c.stdin.take());
                }
            }
        }
    }
    for c in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }
    progress.finish();
    let got: Vec<RunResult> = results.iter().flatten().cloned().collect();
    let mut merged = RunResult::merge(&got);
    if got.len() < n {
        merged.aborted = Some(format!("{} of {n} workers gave no result", n - got.len()));
        merged.clean = false;
    }
    let wanted = idle.as_ref().map_or(0, |a| a.polls) as u64;
    if let (Some(idle), Some((after, parked))) = (merged.idle.as_mut(), sampled) {
        idle.rss_before_kib = before;
        idle.rss_after_kib = after;
        idle.polls = parked;
        idle.kib_per_poll = per_poll(before, after, parked);
        if parked < wanted {
            merged.aborted = Some(format!("only {parked} of {wanted} polls parked"));
            merged.clean = false;
        }
    } else if idle.is_some() {
        merged.aborted = Some("the polls never all parked".into());
        merged.clean = false;
    }
    Ok(merged)
}

fn merge_samples(latest: &[Option<Sample>]) -> Sample {
    let mut m = Sample::default();
    for s in latest.iter().flatten() {
        m.t = m.t.max(s.t);
        m.issued_per_s += s.issued_per_s;
        m.acked_per_s += s.acked_per_s;
        m.delivered_per_s += s.delivered_per_s;
        m.errors += s.errors;
        m.parked += s.parked;
        m.p99_ms = m.p99_ms.max(s.p99_ms);
    }
    m
}
