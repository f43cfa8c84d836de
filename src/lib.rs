//! Carrier: a long-polling HTTP messaging gateway.
//!
//! # Layout
//!
//! Requests flow one way: `http` -> `service` -> `store`. `domain`,
//! `config`, `auth` and `metrics` are leaves every layer may use.
//!
//! - [`app`]: wiring (store -> service -> server) and graceful shutdown.
//! - [`http`]: the HTTP/1.1 server, routing, one module per resource, and the
//!   single place where errors become statuses.
//! - [`service`]: sending, polling, history, groups, receipts; the sequencer,
//!   the committer (group commit), the waiters and the outbox. No hyper here.
//! - [`store`]: the HBase-shaped [`store::Store`] trait, the embedded engine
//!   and the caches' row-key layout.
//! - [`domain`]: ids, cursors, messages, events.
//! - [`auth`]: HS256 bearer tokens.
//! - [`config`]: the TOML configuration.
//! - [`metrics`]: the Prometheus collectors.

pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod service;
pub mod store;
