//! carrier-loadtest: drives a Carrier node (or an Nchan peer) like real chat
//! clients, measures latency without coordinated omission, and gives a
//! correctness verdict.
//!
//! # Layout
//!
//! - [`run`]: from parsed options to a result. [`cli`]: the options. [`plan`]: users, devices, conversations.
//! - [`target`]: the one place that speaks Carrier's or Nchan's protocol.
//!   [`wire`]: the JSON it reads, and the events and errors made of it.
//! - [`client`]: raw hyper HTTP/1.1 connections and the send pool.
//! - [`failover`]: several target nodes: when to move to the next, backoff,
//!   and the per-user send-outage figure.
//! - [`schedule`]: the open-loop, wall-clock scheduler.
//! - [`engine`] (+ [`device`], [`send`]): the running load and its books.
//! - [`oracle`]: lost / duplicated / reordered / corrupted, receipts, history.
//! - [`stats`]: histograms and time series. [`cpu`]: server and tool CPU
//!   per message, and the server's memory. [`report`], [`html`]: output.
//! - [`scenario`], [`idle`]: what each scenario does. [`progress`]: the live
//!   line. [`workers`]: runs past one process's open-files limit, and
//!   [`worker_protocol`]: what a worker and its parent say to each other.
//!   [`limits`]: RLIMIT_NOFILE.

pub mod cli;
pub mod client;
pub mod cpu;
pub mod device;
pub mod engine;
pub mod failover;
pub mod html;
pub mod idle;
pub mod limits;
pub mod oracle;
pub mod plan;
pub mod progress;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod send;
pub mod stats;
pub mod target;
pub mod wire;
pub mod worker_protocol;
pub mod workers;

#[cfg(test)]
mod e2e_tests;
