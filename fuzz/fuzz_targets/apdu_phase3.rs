//! APDU decode in the Phase3 dialect with the round-trip oracle (see `src/lib.rs`).
#![no_main]

use cstagate::codec::Dialect;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cstagate_fuzz::apdu(data, Dialect::Phase3);
});
