//! Several gateways on one PostgreSQL: the `[cluster]` configuration, the lease state machine in
//! virtual time, and the leases on a real PostgreSQL server.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

mod cluster_config;
mod lease_machine;
mod leases_pg;
mod processes;
mod routing;
mod rules;
mod scale;
mod tls_forward;

#[allow(dead_code)]
#[path = "../tls_common/mod.rs"]
mod tls_common;
