//! ACSE APDUs (AARQ, AARE, RLRQ, RLRE, ABRT): the first byte is forced to a tag in 0x60..=0x64,
//! then the round-trip oracle runs in both dialects (see `src/lib.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cstagate_fuzz::acse(data);
});
