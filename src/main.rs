//! The `carrier` command: `serve` runs a node, `token` prints a bearer token.
//!
//! Configuration is loaded and validated (secret included) before any port is
//! bound. Exit status: 0 after a clean run or shutdown, 2 for a usage or
//! configuration error (bad flag, unknown key, unreadable file, bad UUID,
//! address in use), 1 when the node fails while running.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use carrier::auth::Auth;
use carrier::config::{Built, Config};
use carrier::domain::UserId;
use clap::{Args, Parser, Subcommand};

/// jemalloc: the send path allocates a lot of small, short-lived buffers, and
/// glibc's malloc took a fifth of the CPU there (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

/// Carrier: a long-polling HTTP messaging gateway.
#[derive(Parser)]
#[command(name = "carrier", version, propagate_version = true)]
#[command(
    after_help = "Run `carrier <COMMAND> --help` for a command's options. \
    Every configuration key is documented in config/carrier.toml."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGTERM or SIGINT.
    ///
    /// Without --config it serves the built-in defaults: embedded store in
    /// ./data, listening on 127.0.0.1:8080, one node. Once bound it prints
    /// `carrier listening on ADDR` on stdout. Logs go to stderr, filtered by
    /// RUST_LOG (default `info`). SIGTERM/SIGINT stop it gracefully: stop
    /// accepting, answer every parked poll, flush, exit 0.
    Serve(ServeArgs),
    /// Print a bearer token for a user on stdout.
    ///
    /// The token is signed with the secret of the configuration, so use the
    /// same --config as `carrier serve`. With no secret configured, it uses
    /// (or creates) the generated secret in the storage folder, as `serve`
    /// does.
    Token(TokenArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (TOML); see config/carrier.toml for every key.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct TokenArgs {
    /// The user the token speaks for: a UUID in canonical hyphenated form.
    #[arg(long, value_name = "UUID", value_parser = parse_user)]
    user: UserId,
    /// How long the token stays valid, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..))]
    ttl: u64,
    /// Configuration file (TOML) holding the secret; the same as `serve`'s.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn parse_user(text: &str) -> Result<UserId, String> {
    text.parse()
        .map_err(|_| "expected a UUID like 8c1f6b8e-6a0b-4c64-9d0a-2f5c1b7e9a10".to_owned())
}

/// Exit status for usage and configuration errors (as clap uses).
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    // Bad flags print clap's usage message and exit 2; --help exits 0.
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args.config.as_deref()),
        Command::Token(args) => token(&args),
    }
}

/// Reports a configuration error the way every command does.
fn load_config(path: Option<&Path>) -> Result<Built, ExitCode> {
    let fail = |err: carrier::config::ConfigError| {
        eprintln!("carrier: {err}");
        ExitCode::from(USAGE_ERROR)
    };
    Config::load(path).and_then(Config::build).map_err(fail)
}

fn token(args: &TokenArgs) -> ExitCode {
    let built = match load_config(args.config.as_deref()) {
        Ok(built) => built,
        Err(code) => return code,
    };
    let token = Auth::new(&built.secret).mint(args.user, Duration::from_secs(args.ttl));
    println!("{token}");
    ExitCode::SUCCESS
}

fn serve(path: Option<&Path>) -> ExitCode {
    // The secret is checked (or generated) now, once, so a bad one is a
    // usage error before any port is bound.
    let built = match load_config(path) {
        Ok(built) => built,
        Err(code) => return code,
    };
    init_logging();
    match raise_open_files_limit() {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(err) => tracing::warn!(%err, "could not raise the open files limit"),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "cannot start the tokio runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(built))
}

async fn run(built: Built) -> ExitCode {
    // Register the handlers before binding, so a signal never finds the
    // default action (immediate death) once the node is reachable.
    let shutdown = match shutdown_signal() {
        Ok(shutdown) => shutdown,
        Err(err) => {
            tracing::error!("{err:#}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match bind(built.config.server.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("carrier: {err:#}");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    match carrier::app::serve_built(built, listener, shutdown).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(%err, "node failed");
            ExitCode::FAILURE
        }
    }
}

/// Binds `addr` and announces the real address (port 0 picks one): a log
/// line `listening` with field `addr`, and `carrier listening on ADDR` on
/// stdout for scripts.
async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (server.listen)"))?;
    let local_addr = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {addr}"))?;
    tracing::info!(addr = %local_addr, "listening");
    println!("carrier listening on {local_addr}");
    Ok(listener)
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutting down");
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); colours only on
/// a terminal, so redirected logs stay plain text.
fn init_logging() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Raises the soft limit on open files to the hard limit (each client
/// connection, parked polls included, is one file) and returns the result.
#[allow(unsafe_code)]
fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` only writes a `rlimit` into the valid, exclusively
    // borrowed struct above; `setrlimit` only reads it. Neither keeps the
    // pointer after returning.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}
