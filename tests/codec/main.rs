//! The codec: worked byte vectors, real captures, malformed input, and the differential check against asn1tools.
//!
//! One test binary per subject (cargo builds and links each `tests/*/main.rs` once); each
//! file below is one group of tests.

#[allow(dead_code)]
#[path = "../common/mod.rs"]
mod common;

mod asn1_differential;
mod codec_captures;
mod codec_malformed;
mod codec_member_tables;
mod codec_unknown_members;
mod codec_vectors;
mod codec_xml;
