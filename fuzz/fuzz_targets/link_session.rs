//! The sans-IO PBX link session (`cstagate::link::Session`) in virtual time, fed arbitrary
//! chunks of bytes from a fake PBX, interleaved with the gateway's requests and monitors (input
//! layout and checks: `src/link_session.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cstagate_fuzz::link_session(data);
});
