//! Carrier: a long-polling HTTP messaging gateway.
//!
//! # Layout
//!
//! Requests flow one way: `http` -> `service` -> `store`. `cluster` (the
//! ring and the protocol between nodes), `domain`, `config`, `auth` and
//! `metrics` are below them, for every layer to use.
//!
//! - [`app`]: wiring (store -> service -> server) and graceful shutdown.
//! - [`http`]: the HTTP/1.1 server, routing, one module per resource, and the
//!   single place where errors become statuses.
//! - [`service`]: the request paths (send, poll, history, groups, receipts,
//!   conversations) and what orders and stores them: the sequencer,
//!   `commit/` (group commit, the clock), `outbox/`, `fanout/` (large
//!   groups read from their stream), the waiters. No hyper here.
//! - [`cluster`]: the ring (who owns which user and conversation), the
//!   leases, and the one typed module for calls between nodes
//!   (`peer_api`, signed by `signing`).
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
