#![allow(unreachable_pub)]

//! Integration tests: real nodes on ephemeral loopback ports, driven over
//! HTTP like a client would.

mod harness;

mod api;
mod authz;
mod cors;
mod crash;
mod errors;
mod fuzz;
mod groups;
mod guarantees;
mod holds;
mod hostile;
mod openapi;
mod outage;
mod security;
