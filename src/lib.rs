//! cstagate: a CTI gateway that speaks CSTA to PBXs and lets end users bind their own desk-phone
//! extension to their cloud account, with proof that they stand at that phone.
//!
//! The crate is layered as the design describes: a sans-IO [`codec`], the capture readers used by
//! `cstagate decode` ([`capture`]), and (in later issues) the link manager, the association
//! engine and the HTTP API.

pub mod api;
pub mod api_tls;
pub mod association;
pub mod capture;
pub mod clock;
pub mod cluster;
pub mod codec;
pub mod csta;
/// The JSON view of APDUs moved to [`csta::view`]; this name stays for `cstagate decode` and the tests.
pub use csta::view as decode;
pub mod demo;
pub mod directory;
pub mod exit;
pub mod gateway;
pub mod http_client;
pub mod ids;
pub mod ivr;
pub mod config;
pub mod link;
pub mod log_gate;
pub mod metrics;
pub mod notify;
pub mod probe;
pub mod random;
pub mod server;
pub mod shutdown;
pub mod sim;
pub mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tls;
pub(crate) mod text;
pub mod webhook;
