//! The association engine in virtual time, the stores (SQLite, PostgreSQL: one contract), and the secrets the gateway draws.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

#[allow(dead_code)]
#[path = "../csta_tls_pki/mod.rs"]
mod csta_tls_pki;

mod association_engine;
mod cluster_rules;
mod secret_draws;
mod store_backend;
mod store_contract;
mod store_files;
mod store_postgres;
mod store_postgres_tls;
mod store_sqlite;
