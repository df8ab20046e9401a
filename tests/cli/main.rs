//! The command line: decode, probe, configuration checks, the README's examples, and how `cstagate run` stops.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

#[allow(dead_code)]
#[path = "../csta_tls_pki/mod.rs"]
mod csta_tls_pki;

#[allow(dead_code)]
#[path = "../tls_common/mod.rs"]
mod tls_common;

mod decode_cli;
mod decode_xml;
mod probe_cli;
mod readme_config;
mod readme_walkthrough;
mod config_checks;
mod shutdown;
mod tls_api;
mod reload;
mod operations;
mod package;
