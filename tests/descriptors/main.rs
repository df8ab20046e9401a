//! Tests that count the whole process's open file descriptors: alone in their test binary, since
//! any other test running beside them (cargo runs a binary's tests in parallel) opens sockets of
//! its own and would be counted against them.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once).

#[allow(dead_code)]
#[path = "../notify_common/mod.rs"]
mod notify_common;

mod notify_dead_endpoints;
