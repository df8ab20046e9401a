//! The whole gateway on loopback: API, IVR adapters, notifications, proof of presence, storage failures, redaction, the directory, PostgreSQL.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

#[allow(dead_code)]
#[path = "../notify_common/mod.rs"]
mod notify_common;

#[allow(dead_code)]
#[path = "../csta_tls_pki/mod.rs"]
mod csta_tls_pki;

#[allow(dead_code)]
#[path = "../tls_common/mod.rs"]
mod tls_common;

mod gateway_e2e;
mod postgres_e2e;
mod proof_of_presence;
mod notify;
mod notify_tls;
mod fastagi;
mod ivr_guesses;
mod storage_failure;
mod redaction;
mod csta_tls;
mod tls_api;
mod directory_csv;
mod directory_ldap;
mod twiml;
mod ivr_pool;
mod ops_api;
mod languages;
mod sim_env;
