//! The counters of one link ([`Stats`], atomics shared by the handle, the driver and the session)
//! and their point-in-time copy ([`StatsSnapshot`]) for the API, the metrics and `probe`.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[cfg(doc)]
use super::RequestError;

/// Counters of one link, shared with the task.
#[derive(Debug, Default)]
pub struct Stats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub decode_errors: AtomicU64,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub rejects_sent: AtomicU64,
    pub rejects_received: AtomicU64,
    pub keepalives_answered: AtomicU64,
    pub events_in: AtomicU64,
    pub events_unrouted: AtomicU64,
    pub events_dropped: AtomicU64,
    pub unexpected_responses: AtomicU64,
    pub late_answers: AtomicU64,
    pub undecodable_responses: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_timed_out: AtomicU64,
    pub latency_count: AtomicU64,
    pub latency_sum_us: AtomicU64,
    pub latency_max_us: AtomicU64,
    pub monitors: AtomicU64,
    pub tls_failures: AtomicU64,
}

/// A point-in-time copy of [`Stats`], for the API and `probe`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub frames_in: u64,
    pub frames_out: u64,
    pub decode_errors: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub rejects_sent: u64,
    pub rejects_received: u64,
    pub keepalives_answered: u64,
    pub events_in: u64,
    pub events_unrouted: u64,
    pub events_dropped: u64,
    /// Results and errors for no invoke of ours outstanding or remembered as given up on.
    pub unexpected_responses: u64,
    /// Results and errors that answer a request of ours after it timed out (the session
    /// remembered it: a result is delivered as a late result, an error dropped).
    pub late_answers: u64,
    /// Results and errors for an outstanding invoke of ours whose body did not decode (each also
    /// in `decode_errors`; the request failed with [`RequestError::Decode`]).
    pub undecodable_responses: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub requests_timed_out: u64,
    pub latency_avg_us: u64,
    pub latency_max_us: u64,
    pub monitors: u64,
    /// Connections lost to TLS (a failed handshake: wrong name, unknown CA, expired, client
    /// certificate refused; or a TLS alert later), each also a link loss `TLS: …`.
    pub tls_failures: u64,
}

impl Stats {
    pub(super) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let n = g(&self.latency_count);
        StatsSnapshot {
            frames_in: g(&self.frames_in),
            frames_out: g(&self.frames_out),
            decode_errors: g(&self.decode_errors),
            connects: g(&self.connects),
            reconnects: g(&self.reconnects),
            rejects_sent: g(&self.rejects_sent),
            rejects_received: g(&self.rejects_received),
            keepalives_answered: g(&self.keepalives_answered),
            events_in: g(&self.events_in),
            events_unrouted: g(&self.events_unrouted),
            events_dropped: g(&self.events_dropped),
            unexpected_responses: g(&self.unexpected_responses),
            late_answers: g(&self.late_answers),
            undecodable_responses: g(&self.undecodable_responses),
            requests_ok: g(&self.requests_ok),
            requests_failed: g(&self.requests_failed),
            requests_timed_out: g(&self.requests_timed_out),
            latency_avg_us: if n == 0 { 0 } else { g(&self.latency_sum_us) / n },
            latency_max_us: g(&self.latency_max_us),
            monitors: g(&self.monitors),
            tls_failures: g(&self.tls_failures),
        }
    }
}
