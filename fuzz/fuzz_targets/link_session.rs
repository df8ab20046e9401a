//! The PBX link session (`cstagate::link`) over real TCP against a fake PBX that sends arbitrary
//! chunks of bytes, interleaved with the gateway's requests and monitors (input layout and
//! checks: `src/link_session.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cstagate_fuzz::link_session(data);
});
