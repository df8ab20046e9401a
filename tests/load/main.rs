//! Load with faults: 1,000 associations at once while the simulated PBX misbehaves. A binary of
//! its own so that nothing else runs beside it (cargo runs test binaries one after another): it
//! loads both cores by itself.

mod load_faults;
