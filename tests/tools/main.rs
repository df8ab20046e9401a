//! The tools in `contrib/`: the Wireshark dissector (its name tables against the codec's, and
//! tshark's view of every capture against `cstagate decode --json`) and the Grafana dashboard
//! (every metric it uses is one `/metrics` serves).
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

mod grafana_dashboard;
mod wireshark_tables;
mod wireshark_tshark;
