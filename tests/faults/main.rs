//! Faults injected into running gateways: PBX faults at every step, kills, restarts.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

mod faults;
