//! Hostile peers: the API, the CSTA link, the CSTA XML codec and the IVR webhook under attack; stored fuzz inputs replayed.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

mod hostile_api;
mod hostile_csta;
mod hostile_xml_link;
mod hostile_ivr;
mod hostile_xml;
mod fuzz_regressions;
