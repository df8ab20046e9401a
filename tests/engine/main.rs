//! The association engine in virtual time, and the SQLite store.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

mod association_engine;
mod store_sqlite;
