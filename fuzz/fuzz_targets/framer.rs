//! The framer on arbitrary byte streams cut into arbitrary reads, both framings, with and without
//! the Alcatel preamble (input layout and checks: `src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cstagate_fuzz::framer(data);
});
