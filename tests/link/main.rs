//! The PBX link: the sans-IO session, the link against the simulated PBX and replayed captures, the simulator's call model, the simulator over CSTA XML, Phase II forms.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

#[allow(dead_code)]
#[path = "../csta_tls_pki/mod.rs"]
mod csta_tls_pki;

mod link_replay;
mod link_sim;
mod link_session;
mod link_session_xml;
mod sim_calls;
mod sim_xml;
mod phase2_forms;
mod link_tls;
