//! The wall clock, read in one place: the engine sees time only as the `now` of its inputs.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::association::Millis;

/// Wall-clock milliseconds: the only clock the engine sees, read here.
pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}
