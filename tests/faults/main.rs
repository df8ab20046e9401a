//! Faults injected into running gateways: PBX faults, kills, restarts, and load with faults.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

mod faults;
mod load_faults;
