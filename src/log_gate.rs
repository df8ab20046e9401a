//! Rate-limited logging of lines an attacker or a dead peer can repeat at will.

use std::time::{Duration, Instant};

/// Lets a repeated log line through at most once per `every`, telling how many were held back.
#[derive(Debug)]
pub struct LogGate {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogGate {
    pub fn new(every: Duration) -> LogGate {
        LogGate { every, last: None, held: 0 }
    }

    /// `Some(lines held back since the last one let through)` if this line may be logged.
    pub fn pass(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|l| now.duration_since(l) < self.every) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}
