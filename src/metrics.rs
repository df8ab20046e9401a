//! `/metrics`: the gateway's Prometheus metrics, encoded by `prometheus-client` (the official
//! Rust client) in the OpenMetrics text format.
//!
//! Most values live where they are counted (the links' [`crate::link::Stats`], the engine's
//! sizes, the IVR guards, the notifier), so each scrape copies them into a fresh [`Registry`]:
//! nothing is counted twice and no value goes stale; the associations ended by final state and
//! reason too ([`crate::gateway::Ended`], counted by the gateway's actor once their end is
//! committed). This module only reads: it depends on the gateway, the gateway not on it. Counters
//! carry the `_total` suffix (the encoder adds it to the registered name); gauges do not.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::association::Sizes;
use crate::gateway::Gateway;
use crate::webhook::REPLAY_CACHE_CAPACITY;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a scrape reads.
pub struct Sources<'a> {
    pub gw: &'a Gateway,
    /// With `[cluster]`: this instance's view of the leases (its lease statements).
    pub cluster: Option<&'a crate::cluster::ClusterView>,
    /// The engine's sizes; `None` when the gateway did not answer (the gauges are left out).
    pub sizes: Option<Sizes>,
    pub replay_entries: usize,
    pub ivr: &'a crate::ivr::IvrGuards,
    /// Configuration reloads (SIGHUP) applied and refused.
    pub reloads: &'a Reloads,
}

/// Configuration reloads so far (counted by `cstagate run`'s SIGHUP handler).
#[derive(Debug, Default)]
pub struct Reloads {
    pub applied: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
}

type Labels = Vec<(String, String)>;

fn label(name: &str, v: &str) -> Labels {
    vec![(name.to_owned(), v.to_owned())]
}

/// A counter family with one sample per label set.
fn counters(reg: &mut Registry, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, u64)>) {
    let f = Family::<Labels, Counter>::default();
    for (l, v) in samples {
        f.get_or_create(&l).inc_by(v);
    }
    reg.register(name, help, f);
}

/// A gauge family with one sample per label set.
fn gauges(reg: &mut Registry, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, u64)>) {
    let f = Family::<Labels, Gauge>::default();
    for (l, v) in samples {
        f.get_or_create(&l).set(i64::try_from(v).unwrap_or(i64::MAX));
    }
    reg.register(name, help, f);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    reg.register(name, help, g);
}

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    reg.register(name, help, c);
}

/// The link counters (by `pbx`), named as [`crate::link::StatsSnapshot`]'s fields.
const LINK_COUNTERS: [(&str, &str); 15] = [
    ("frames_in", "Frames received from the PBX"),
    ("frames_out", "Frames sent to the PBX"),
    ("decode_errors", "APDUs from the PBX that did not decode"),
    ("reconnects", "Reconnections of the link"),
    ("rejects_sent", "ROSE rejects sent"),
    ("rejects_received", "ROSE rejects received"),
    ("events_in", "Event reports received"),
    ("events_unrouted", "Event reports for no monitor of ours"),
    ("events_dropped", "Events dropped for slow subscribers"),
    ("unexpected_responses", "Results and errors for no outstanding invoke of ours"),
    ("late_answers", "Results and errors for requests of ours that had timed out (results delivered late)"),
    ("undecodable_responses", "Results and errors for an outstanding invoke of ours that did not decode"),
    ("requests_ok", "Requests answered with a result"),
    ("requests_failed", "Requests answered with an error or lost with the link"),
    ("tls_failures", "Connections to the PBX lost to TLS (handshake refused either way, or a TLS alert)"),
];

/// Every metric, as OpenMetrics text.
pub fn render(src: &Sources<'_>) -> String {
    let mut reg = Registry::default();
    let all = src.gw.links();
    let mut links: Vec<(&String, &crate::link::Link)> = all.iter().collect();
    links.sort_by_key(|(id, _)| *id);
    gauges(&mut reg, "cstagate_link_up", "Whether the PBX link is up", links.iter().map(|(id, l)| (label("pbx", id), u64::from(l.state() == crate::link::LinkState::Up))));
    let stats: Vec<(&String, serde_json::Value)> = links.iter().map(|(id, l)| (*id, serde_json::to_value(l.stats()).unwrap_or_default())).collect();
    let stat = |name: &str| -> Vec<(Labels, u64)> { stats.iter().map(|(id, s)| (label("pbx", id), s[name].as_u64().unwrap_or(0))).collect() };
    for (name, help) in LINK_COUNTERS.into_iter().chain([("requests_timed_out", "Requests without an answer in time")]) {
        counters(&mut reg, &format!("cstagate_link_{name}"), help, stat(name));
    }
    gauges(&mut reg, "cstagate_link_monitors", "Monitors running on the PBX", stat("monitors"));
    if let Some(z) = &src.sizes {
        gauge(&mut reg, "cstagate_associations_in_memory", "Associations held in memory: live ones and those ended in the last 10 minutes", z.associations as u64);
        gauge(&mut reg, "cstagate_associations_live", "Associations not yet ended", z.live as u64);
        gauge(&mut reg, "cstagate_ivr_calls", "IVR calls the engine follows", z.ivr_calls as u64);
        gauge(&mut reg, "cstagate_bindings", "Extensions bound to an account", z.bindings as u64);
    }
    reg.register("cstagate_associations_ended", "Associations that reached a final state, by state and reason", src.gw.ended().metric());
    reg.register("cstagate_association_code_to_bound_seconds", "Time from a code's issue to the binding, for associations that ended bound", src.gw.ended().code_to_bound());
    gauge(&mut reg, "cstagate_webhook_replay_cache_entries", &format!("Webhook signatures remembered to refuse replays (at most {REPLAY_CACHE_CAPACITY})"), src.replay_entries as u64);
    let adapters = |webhook: u64, twiml: u64, fastagi: u64| [(label("adapter", "webhook"), webhook), (label("adapter", "twiml"), twiml), (label("adapter", "fastagi"), fastagi)];
    let ivr = src.ivr;
    counters(&mut reg, "cstagate_ivr_unknown_context", "Context ids entered that matched no association, by IVR adapter", adapters(ivr.webhook.unknown_total(), ivr.twiml.unknown_total(), ivr.fastagi.unknown_total()));
    counters(&mut reg, "cstagate_ivr_guesses_refused", "Context id entries refused without asking the engine: too many unknown ids in the last minute", adapters(ivr.webhook.refused_total(), ivr.twiml.refused_total(), ivr.fastagi.refused_total()));
    counter(&mut reg, "cstagate_fastagi_refused", "FastAGI connections from peers outside fastagi_allow, closed unread", ivr.fastagi_refused.load(std::sync::atomic::Ordering::Relaxed));
    let notified = src.gw.notifier().map(crate::notify::Notifier::stats).unwrap_or_default();
    let tenants = |f: fn(&crate::notify::TenantStats) -> u64| -> Vec<(Labels, u64)> { notified.iter().map(|t| (label("tenant", &t.tenant), f(t))).collect() };
    gauges(&mut reg, "cstagate_notifications_queued", "Account notifications waiting in the tenant's queue", tenants(|t| t.queued as u64));
    counters(&mut reg, "cstagate_notifications_delivered", "Account notifications accepted by the tenant's endpoint", tenants(|t| t.delivered));
    counters(&mut reg, "cstagate_notifications_failed", "Account notifications given up after every attempt failed", tenants(|t| t.given_up));
    counters(&mut reg, "cstagate_notifications_dropped", "Account notifications dropped: the tenant's queue was full", tenants(|t| t.dropped));
    let failures = src.gw.notifier().map(crate::notify::Notifier::failures).unwrap_or_default();
    counters(
        &mut reg,
        "cstagate_notification_attempts_failed",
        "Failed notification attempts, by tenant and cause (unknown_ca, name_mismatch, expired, not_yet_valid, revoked, bad_certificate, tls, connect, timeout, refused, other)",
        failures.into_iter().map(|(tenant, cause, n)| (vec![("tenant".to_owned(), tenant), ("cause".to_owned(), cause.to_owned())], n)),
    );
    if let Some(c) = src.cluster {
        counters(&mut reg, "cstagate_lease_statements", "With [cluster]: lease statements sent to PostgreSQL, by kind (heartbeat, acquire, renew, release, leave, read)", c.statements().map(|(k, n)| (label("kind", k), n)));
    }
    let reloads = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    counter(&mut reg, "cstagate_config_reloads", "Configuration reloads (SIGHUP) applied", reloads(&src.reloads.applied));
    counter(&mut reg, "cstagate_config_reload_failures", "Configuration reloads (SIGHUP) refused: the new file did not validate, the old configuration runs on", reloads(&src.reloads.failed));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}
