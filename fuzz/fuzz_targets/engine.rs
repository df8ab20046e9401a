//! The association engine driven by arbitrary sequences of API, CSTA, IVR and timer inputs and
//! gateway restarts, against a model of the store and the PBX (input layout and invariants:
//! `src/engine.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cstagate_fuzz::engine(data);
});
