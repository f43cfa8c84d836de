//! The command line. Every option says what it does and why you would
//! change it; `carrier-loadtest --help` and `carrier-loadtest chat --help`
//! print them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand};

use crate::target::Peer;

/// Drives a Carrier node or cluster (or an Nchan peer) like real chat
/// clients do: devices long-poll with their cursors and re-poll at once,
/// senders send at an open-loop rate by the wall clock, latencies go into
/// HdrHistograms, and a correctness oracle says whether anything was lost,
/// reordered or corrupted. Against several nodes (`--target A,B,C`) devices
/// and senders fail over between them and each user's longest send outage
/// is reported. Exits 1 when the verdict is not clean, 2 on bad usage.
#[derive(Debug, Parser, Clone)]
#[command(name = "carrier-loadtest", version, max_term_width = 100)]
pub struct Args {
    /// Address of the node (or peer) under test, or a comma-separated list
    /// of a cluster's nodes (`127.0.0.1:8081,127.0.0.1:8082,...`). Only the
    /// addresses named here receive traffic. With several, each user's
    /// devices and sends start on node `user index mod count`, and move to
    /// the next node in the list (and retry, sends with the same
    /// message_id) when a request gets no answer (refused, reset, timed out)
    /// or a 502/503/504, as a multi-endpoint client would. The summary then
    /// counts failovers and prints each user's longest send outage (see
    /// `send outage` in docs/benchmarks.md). Nchan takes one address.
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub target: Vec<SocketAddr>,

    /// What the target is: a Carrier node, or Nchan (see
    /// config/peers/nchan.conf) for side-by-side figures.
    #[arg(long, global = true, value_enum, default_value = "carrier")]
    pub peer: Peer,

    /// Nchan: publish each direct message a second time, to the sender's
    /// channel, so the sender's devices get a copy as Carrier gives them
    /// (without it, one publish per message reaches the recipient only).
    #[arg(long, global = true)]
    pub nchan_sender_copy: bool,

    /// Process id(s) of the server on this machine; repeat for several
    /// (nginx: the master and every worker). `idle` samples their resident
    /// memory (VmRSS) and needs one; the sending scenarios report the CPU
    /// time they used while sending and draining, per acked message, beside
    /// this tool's own (both from /proc/PID/stat), so two servers compare
    /// whatever share of the cores the load generator took.
    #[arg(long = "server-pid", global = true)]
    pub server_pids: Vec<u32>,

    /// With --config of a cluster node: start each user's devices and
    /// sends on the node that owns the user in the ring (every configured
    /// peer counted live), as a consistent-hashing load balancer would, so
    /// polls are not forwarded between nodes. Without it, users start on
    /// node `user index mod count`.
    #[arg(long, global = true, requires = "config")]
    pub home_by_ring: bool,

    /// The target's Carrier configuration file: tokens are minted with its
    /// auth secret (as `carrier token --config FILE` does).
    #[arg(long, global = true, conflicts_with_all = ["secret", "tokens"])]
    pub config: Option<PathBuf>,

    /// The target's auth secret itself (instead of --config).
    #[arg(long, global = true, env = "CARRIER_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// A file of pre-made tokens, one "USER_UUID TOKEN" per line (instead
    /// of --config or --secret); users are taken from it in turn.
    #[arg(long, global = true)]
    pub tokens: Option<PathBuf>,

    /// Seconds of sending (each phase of a ramp has its own --step-seconds).
    #[arg(long, global = true, default_value_t = 10.0)]
    pub seconds: f64,

    /// Hard bound on the whole run, setup and drain included; the run is
    /// stopped (and reported as not clean) if it takes longer.
    #[arg(long, global = true, default_value_t = 600)]
    pub max_seconds: u64,

    /// Seconds each long poll asks the server to park it (`timeout=`).
    #[arg(long, global = true, default_value_t = 20)]
    pub poll_timeout: u64,

    /// Fault injection: the fraction (0..1) of polls whose connection is
    /// dropped at a random moment within a second, as a proxy killing idle
    /// connections would. The device reconnects and re-polls from its cursor.
    #[arg(long, global = true, default_value_t = 0.0, value_parser = fraction)]
    pub cut_polls: f64,

    /// Fault injection: the fraction (0..1) of acked sends sent again with
    /// the same message_id, as a client that lost the ack would. The replay
    /// must answer the identical message and store nothing new.
    #[arg(long, global = true, default_value_t = 0.0, value_parser = fraction)]
    pub retry_sends: f64,

    /// Fraction (0..1) of received messages the recipient marks read; the
    /// oracle checks no read receipt arrives before the message it covers.
    #[arg(long, global = true, default_value_t = 0.05, value_parser = fraction)]
    pub read_receipts: f64,

    /// Accept a sender's own copies (on its own devices) arriving after
    /// later messages of the conversation. The contract says every
    /// participant sees seq order, and Carrier keeps it for the sender's
    /// copy too: it is in the same commit as the recipients' events, and a
    /// copy owed to another node's mailbox is durable in the outbox of the
    /// node that sequenced it and pushed in id order per destination. A
    /// clean Carrier run needs no flag; without it, late own copies make a
    /// run not clean. The count is reported either way.
    #[arg(long, global = true)]
    pub allow_copy_reorder: bool,

    /// Bytes of padding text in each message body.
    #[arg(long, global = true, default_value_t = 64)]
    pub body_bytes: usize,

    /// Connections used for sends and receipts, at most (each is a socket;
    /// polls take one socket per device on top).
    #[arg(long, global = true, default_value_t = 512)]
    pub send_conns: usize,

    /// Seconds a send, receipt or setup request may take before it counts
    /// as failed (a poll: --poll-timeout plus this). A failed send is
    /// retried, on the next target if there are several, with backoff until
    /// --drain seconds after the sending ends; one that never got an ack by
    /// then is reported as unacked (every attempt refused: not stored) or
    /// unknown (it may have landed; once a device or history shows it did,
    /// it must reach every device).
    #[arg(long, global = true, default_value_t = 10)]
    pub request_timeout: u64,

    /// Seconds to wait after the last send for every acked message to
    /// reach every device; whatever has not arrived by then is lost. Failed
    /// sends are retried until then (see --request-timeout); against a node
    /// that may be stopped, give at least --poll-timeout plus
    /// --request-timeout plus the cluster's recovery time.
    #[arg(long, global = true, default_value_t = 10)]
    pub drain: u64,

    /// Loopback source addresses to spread sockets over (127.0.0.2 and up;
    /// each gives ~28,000 ephemeral ports).
    #[arg(long, global = true, default_value_t = 8)]
    pub sources: usize,

    /// Connections opened at once while devices start (the kernel's listen
    /// backlog here is 4,096: keep below it).
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Conversations whose history is read back at the end and compared
    /// with what was delivered live (0: skip).
    #[arg(long, global = true, default_value_t = 200)]
    pub history_check: usize,

    /// Worker processes to spread devices over (0: as many as the 20,000
    /// open-files limit per process needs). Each worker drives its share of
    /// users at its share of the rate; figures are merged.
    #[arg(long, global = true, default_value_t = 0)]
    pub workers: usize,

    /// Write every figure as JSON to this file. Beside the summary's figures:
    /// `failovers` (moves of a device or a user's sender to the next
    /// target), `send_retries`, `send_outage` (`max_ms`, `p99_ms`: per
    /// sending user, the longest time from making a send attempt that failed
    /// to the ack of an attempt made after it; `users`, `users_with_outage`,
    /// `unrecovered`), and `verdict.unknown` / `verdict.unknown_landed`
    /// (sends without an ack that may have landed). See docs/benchmarks.md.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,

    /// Write an HTML report with inline SVG charts to this file.
    #[arg(long, global = true)]
    pub report: Option<PathBuf>,

    /// No progress line.
    #[arg(long, global = true)]
    pub quiet: bool,

    /// Internal: run as worker INDEX/COUNT and print JSON lines for the parent.
    #[arg(long, global = true, hide = true)]
    pub worker: Option<String>,

    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand, Clone)]
pub enum Scenario {
    /// Users in direct conversations (user 2k with 2k+1), each with
    /// --devices long-polling devices, sending at an aggregate rate.
    Chat(ChatArgs),
    /// Groups of --size members, every member's devices polling, senders
    /// at an aggregate rate.
    Groups(GroupArgs),
    /// One large group; measures delivery to every member's devices.
    Fanout(FanoutArgs),
    /// Parks N polls and holds them, sampling the server's resident memory
    /// to report memory per parked poll.
    Idle(IdleArgs),
    /// Raises the rate in steps until the latency objective or the
    /// zero-error rule breaks; reports the highest rate that held.
    Ramp(RampArgs),
}

#[derive(Debug, ClapArgs, Clone)]
pub struct ChatArgs {
    /// Users (rounded down to an even number).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Long-polling devices per user.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Aggregate sends per second, open loop.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
}

#[derive(Debug, ClapArgs, Clone)]
pub struct GroupArgs {
    /// Number of groups.
    #[arg(long, default_value_t = 100)]
    pub groups: usize,
    /// Members per group.
    #[arg(long, default_value_t = 10)]
    pub size: usize,
    /// Long-polling devices per member.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Aggregate sends per second, open loop.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
}

#[derive(Debug, ClapArgs, Clone)]
pub struct FanoutArgs {
    /// Members of the group.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Long-polling devices per member.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Members that poll (the first ones; default: all). A group may have
    /// more members than one node holds connections: the others are
    /// members all the same, and the server must not copy to them.
    #[arg(long)]
    pub polling: Option<usize>,
    /// Sends per second into the group, open loop.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
}

#[derive(Debug, ClapArgs, Clone)]
pub struct IdleArgs {
    /// Parked polls to open (one user and one connection each).
    #[arg(long, default_value_t = 10_000)]
    pub polls: usize,
    /// Seconds to wait once all polls are parked before sampling, so the
    /// allocator has settled.
    #[arg(long, default_value_t = 10)]
    pub settle: u64,
    /// Seconds to hold the polls after sampling.
    #[arg(long, default_value_t = 0)]
    pub hold: u64,
}

#[derive(Debug, ClapArgs, Clone)]
pub struct RampArgs {
    /// Users in direct conversations, as for `chat`.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Long-polling devices per user.
    #[arg(long, default_value_t = 1)]
    pub devices: usize,
    /// Rate of the first step (sends per second).
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Rate added at each step.
    #[arg(long, default_value_t = 1000.0)]
    pub step_rate: f64,
    /// Last step's rate at most.
    #[arg(long, default_value_t = 40_000.0)]
    pub max_rate: f64,
    /// Seconds each step sends for.
    #[arg(long, default_value_t = 5.0)]
    pub step_seconds: f64,
    /// The latency objective: a step holds while its p99 delivery latency
    /// stays under this (and it has no errors and no lost messages, and
    /// achieves at least 95 % of its rate).
    #[arg(long, default_value_t = 100.0)]
    pub slo_p99_ms: f64,
}

fn fraction(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err("must be between 0 and 1".into())
    }
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Chat(_) => "chat",
            Scenario::Groups(_) => "groups",
            Scenario::Fanout(_) => "fanout",
            Scenario::Idle(_) => "idle",
            Scenario::Ramp(_) => "ramp",
        }
    }

    /// Sockets one process would need for this scenario (polls + sends).
    pub fn sockets(&self, send_conns: usize) -> usize {
        match self {
            Scenario::Chat(a) => a.users * a.devices + send_conns,
            Scenario::Groups(a) => a.groups * a.size * a.devices + send_conns,
            Scenario::Fanout(a) => {
                a.polling.unwrap_or(a.members).min(a.members) * a.devices + send_conns
            }
            Scenario::Idle(a) => a.polls,
            Scenario::Ramp(a) => a.users * a.devices + send_conns,
        }
    }
}
