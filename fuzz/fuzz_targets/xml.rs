//! CSTA XML (ECMA-323): a byte stream through the framer (`xml-header` or `xml-nul`), every
//! frame decoded, and whatever decodes encoded and decoded again to the same message (input
//! layout and checks: `src/lib.rs`, `xml`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cstagate_fuzz::xml(data);
});
