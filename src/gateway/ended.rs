//! The associations ended, by final state and reason: counted by the actor after each commit
//! (where the ends are known to be durable), read by [`crate::metrics`] for `/metrics`. It lives
//! in the gateway, where it is counted, so that the metrics read the gateway and not the other
//! way round.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Metric;

use crate::association::{State, StoreWrite};

/// The labels of an ended association: its final `state` and `reason` (`none` without one), as
/// the API spells them.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndedLabels {
    state: String,
    reason: String,
}

/// Buckets of `cstagate_association_code_to_bound_seconds`: from 10 ms (an automated caller, the
/// tests) to 10 minutes (a person walking to the desk phone and keying the code).
const CODE_TO_BOUND_BUCKETS: [f64; 14] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 600.0];

/// `cstagate_associations_ended_total{state,reason}`: associations that reached a final state;
/// `cstagate_association_code_to_bound_seconds`: for those that ended bound, the time from the
/// code's issue to the binding (what the Grafana dashboard's latency panel shows). Shared by
/// clones (one per gateway).
#[derive(Debug, Clone)]
pub struct Ended {
    ended: Family<EndedLabels, Counter>,
    code_to_bound: Histogram,
}

impl Default for Ended {
    fn default() -> Self {
        Ended { ended: Family::default(), code_to_bound: Histogram::new(CODE_TO_BOUND_BUCKETS.into_iter()) }
    }
}

impl Ended {
    /// Count the associations that `writes` (just committed) bring to a final state. A final
    /// association may be written again (a history step after its end, such as a DTMF failure
    /// reported late): only the write whose newest step is the end itself counts, so each end
    /// counts once without remembering ids.
    pub fn count(&self, writes: &[StoreWrite]) {
        for w in writes {
            if let StoreWrite::Association(v) = w {
                let end_step = match v.state {
                    State::Bound => "bound",
                    State::Expired => "expired",
                    State::Cancelled => "cancelled",
                    _ => "failed",
                };
                if v.state.is_final(v.retryable) && v.history.last().is_some_and(|s| s.step == end_step) {
                    let name = |v: serde_json::Value| v.as_str().unwrap_or("none").to_owned();
                    let state = name(serde_json::to_value(v.state).unwrap_or_default());
                    let reason = name(serde_json::to_value(v.reason).unwrap_or_default());
                    self.ended.get_or_create(&EndedLabels { state, reason }).inc();
                    // The first step is the code's issue (kept when a long history is truncated).
                    if let (State::Bound, Some(first), Some(last)) = (v.state, v.history.first(), v.history.last()) {
                        if first.step == "code_issued" {
                            self.code_to_bound.observe(last.at.saturating_sub(first.at) as f64 / 1000.0);
                        }
                    }
                }
            }
        }
    }

    /// The counters as a metric to register (a clone sharing them: the scrape sees every count).
    pub fn metric(&self) -> impl Metric {
        self.ended.clone()
    }

    /// The code-to-binding latency histogram, to register (a clone sharing it).
    pub fn code_to_bound(&self) -> impl Metric {
        self.code_to_bound.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::association::{AssociationView, Reason, Step};
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    fn view(state: State, reason: Option<Reason>, retryable: bool, steps: &[&str]) -> StoreWrite {
        let history = steps.iter().map(|s| Step { at: 1, step: (*s).into(), detail: String::new() }).collect();
        StoreWrite::Association(AssociationView { id: "a".into(), tenant: "t".into(), account: "x".into(), pbx: "p".into(), extension: "1".into(), state, reason, retryable, expires_at: 1, call: None, history })
    }

    #[test]
    fn each_end_counts_once_by_state_and_reason() {
        let ended = Ended::default();
        ended.count(&[view(State::Ringing, None, true, &["created", "ringing"]), view(State::Failed, Some(Reason::NoAnswer), true, &["created", "failed"])]);
        ended.count(&[view(State::Bound, None, false, &["created", "bound"])]);
        // Written again after its end, with a later step: not a second end.
        ended.count(&[view(State::Bound, None, false, &["created", "bound", "dtmf_failed"])]);
        ended.count(&[view(State::Failed, Some(Reason::IvrTimeout), false, &["created", "failed"])]);
        let mut reg = Registry::default();
        reg.register("cstagate_associations_ended", "Ended", ended.ended.clone());
        let mut text = String::new();
        encode(&mut text, &reg).unwrap();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(samples.len(), 2, "{text}");
        assert!(samples.contains(&"cstagate_associations_ended_total{state=\"bound\",reason=\"none\"} 1"), "{text}");
        assert!(samples.contains(&"cstagate_associations_ended_total{state=\"failed\",reason=\"ivr_timeout\"} 1"), "{text}");
    }
}
