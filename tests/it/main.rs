#![allow(unreachable_pub)]

//! Integration tests: real nodes on ephemeral loopback ports, driven over
//! HTTP like a client would.

mod harness;

mod api;
mod crash;
mod errors;
mod fuzz;
mod groups;
mod guarantees;
mod outage;
