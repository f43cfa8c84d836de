//! From parsed options to a result: checks, tokens, one process or
//! several, and the output files.

use std::time::Duration;

use anyhow::Context as _;
use carrier::auth::Auth;
use uuid::Uuid;

use crate::cli::{Args, Scenario};
use crate::plan::Tokens;
use crate::report::RunResult;
use crate::target::Peer;
use crate::{html, idle, limits, scenario, worker_protocol, workers};

/// Combinations that cannot give honest figures.
pub fn check(args: &Args) -> Result<(), String> {
    if args.peer == Peer::Nchan {
        if args.retry_sends > 0.0 {
            return Err("--retry-sends needs idempotent sends; Nchan has none".into());
        }
        if matches!(args.scenario, Scenario::Groups(_)) {
            return Err("groups: Nchan has no per-member mailboxes (use fanout)".into());
        }
        if args.target.len() > 1 {
            return Err("--peer nchan takes one --target (its channels live in one nginx)".into());
        }
    }
    if args.target.is_empty() {
        return Err("--target needs at least one address".into());
    }
    if args.peer == Peer::Carrier
        && args.config.is_none()
        && args.secret.is_none()
        && args.tokens.is_none()
    {
        return Err("give --config FILE, --secret TEXT or --tokens FILE to make tokens".into());
    }
    if matches!(args.scenario, Scenario::Idle(_)) && args.server_pids.is_empty() {
        return Err("idle needs --server-pid PID (the server whose memory it samples)".into());
    }
    scenario::ring(args)?;
    if args.seconds <= 0.0 || args.max_seconds == 0 {
        return Err("--seconds and --max-seconds must be positive".into());
    }
    Ok(())
}

pub fn tokens(args: &Args) -> anyhow::Result<Tokens> {
    if args.peer == Peer::Nchan {
        return Ok(Tokens::None);
    }
    if let Some(path) = &args.config {
        let config = carrier::config::Config::load(Some(path))?;
        return Ok(Tokens::Mint(Auth::new(&config.secret()?)));
    }
    if let Some(secret) = &args.secret {
        return Ok(Tokens::Mint(Auth::new(secret.as_bytes())));
    }
    if let Some(path) = &args.tokens {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
        let list = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let (user, token) = l
                    .trim()
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| anyhow::anyhow!("token line without a user id: {l}"))?;
                Ok((Uuid::parse_str(user)?, token.trim().to_owned()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!list.is_empty(), "{} holds no tokens", path.display());
        return Ok(Tokens::List(list));
    }
    anyhow::bail!("no way to make tokens")
}

/// Runs the scenario; `None` for a worker (it printed its result).
pub async fn run(args: &Args) -> anyhow::Result<Option<RunResult>> {
    let limit = limits::raise_nofile().context("raising the open-files limit")?;
    let tokens = tokens(args)?;
    if let Some(spec) = &args.worker {
        let (index, count) = workers::parse(spec)?;
        let result = run_here(args, &tokens, index, count).await?;
        worker_protocol::emit_result(result);
        return Ok(None);
    }
    let n = workers::needed(args, limits::sockets_per_process(limit));
    let bound = Duration::from_secs(args.max_seconds);
    let result = if n > 1 {
        workers::run(args, n).await?
    } else {
        match tokio::time::timeout(bound, run_here(args, &tokens, 0, 1)).await {
            Ok(result) => result?,
            Err(_) => RunResult {
                scenario: args.scenario.name().into(),
                aborted: Some(format!(
                    "the run took longer than --max-seconds {}",
                    args.max_seconds
                )),
                ..RunResult::default()
            },
        }
    };
    Ok(Some(result))
}

/// One process's share (`index` of `count`) of the run.
pub async fn run_here(
    args: &Args,
    tokens: &Tokens,
    index: usize,
    count: usize,
) -> anyhow::Result<RunResult> {
    match &args.scenario {
        Scenario::Idle(a) => {
            let polls = a.polls / count + usize::from(index < a.polls % count);
            idle::run(args, a, tokens, polls, count == 1).await
        }
        _ => scenario::run(args, tokens, 1.0 / count as f64).await,
    }
}

pub fn write_outputs(args: &Args, result: &RunResult) -> anyhow::Result<()> {
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.report {
        std::fs::write(path, html::render(result)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn refuses_combinations_without_honest_figures() {
        let ok = args(&["t", "--secret", "s", "chat"]);
        assert!(check(&ok).is_ok());
        assert!(
            check(&args(&["t", "chat"])).is_err(),
            "no way to mint tokens"
        );
        assert!(
            check(&args(&[
                "t",
                "--peer",
                "nchan",
                "--retry-sends",
                "0.1",
                "chat"
            ]))
            .is_err()
        );
        assert!(check(&args(&["t", "--peer", "nchan", "groups"])).is_err());
        assert!(
            check(&args(&["t", "--secret", "s", "idle"])).is_err(),
            "idle without a pid"
        );
        let idle = args(&[
            "t",
            "--secret",
            "s",
            "idle",
            "--server-pid",
            "1",
            "--server-pid",
            "2",
        ]);
        assert_eq!(idle.server_pids, vec![1, 2]);
        assert!(check(&idle).is_ok());
        assert!(Args::try_parse_from(["t", "--cut-polls", "1.5", "chat"]).is_err());
    }

    #[test]
    fn takes_one_target_or_a_list() {
        let one = args(&["t", "--secret", "s", "--target", "127.0.0.1:9000", "chat"]);
        assert_eq!(one.target, vec!["127.0.0.1:9000".parse().unwrap()]);
        let default = args(&["t", "--secret", "s", "chat"]);
        assert_eq!(default.target, vec!["127.0.0.1:8080".parse().unwrap()]);
        let three = args(&[
            "t",
            "--secret",
            "s",
            "--target",
            "127.0.0.1:8081,127.0.0.1:8082,127.0.0.1:8083",
            "chat",
        ]);
        let ports: Vec<u16> = three.target.iter().map(|a| a.port()).collect();
        assert_eq!(ports, vec![8081, 8082, 8083]);
        assert!(check(&three).is_ok());
        // After the scenario, too (the option is global).
        let after = args(&[
            "t",
            "--secret",
            "s",
            "chat",
            "--target",
            "127.0.0.1:1,127.0.0.1:2",
        ]);
        assert_eq!(after.target.len(), 2);
        assert!(Args::try_parse_from(["t", "--target", "127.0.0.1:1,nope", "chat"]).is_err());
        // Nchan's channels live in one nginx.
        let nchan = args(&[
            "t",
            "--peer",
            "nchan",
            "--target",
            "127.0.0.1:1,127.0.0.1:2",
            "chat",
        ]);
        assert!(check(&nchan).is_err());
        assert!(
            check(&args(&[
                "t",
                "--peer",
                "nchan",
                "--target",
                "127.0.0.1:1",
                "chat"
            ]))
            .is_ok()
        );
    }

    #[test]
    fn reads_a_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        std::fs::write(&path, format!("{a} tok-a\n\n{b}   tok-b\n")).unwrap();
        let t = tokens(&args(&["t", "--tokens", path.to_str().unwrap(), "chat"])).unwrap();
        let Tokens::List(list) = t else {
            panic!("a list of tokens")
        };
        assert_eq!(list, vec![(a, "tok-a".to_owned()), (b, "tok-b".to_owned())]);
        std::fs::write(&path, "not-a-uuid tok\n").unwrap();
        assert!(tokens(&args(&["t", "--tokens", path.to_str().unwrap(), "chat"])).is_err());
    }
}
