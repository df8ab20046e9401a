//! Account notifications: what happened to an association or binding (`bound`,
//! `attempt_failed`, `failed`, `expired`, `cancelled`, `unbound`) is POSTed to the tenant's
//! notification URL as JSON, signed like the IVR webhook: `X-Cstagate-Timestamp` and
//! `X-Cstagate-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`, so that
//! the receiver can refuse old and replayed notifications the way the gateway refuses webhook
//! requests. Each attempt is signed anew.
//!
//! Delivery is best effort and never blocks the engine, and what it holds is bounded whatever
//! the tenants' endpoints do. Each tenant has its own queue of at most
//! [`NotifySettings::queue`] notifications (full: the notification is dropped, counted and
//! logged at most every 10 s) served by its own [`NotifySettings::workers_per_tenant`] workers,
//! started once: no task per notification, at most that many connections per tenant, and a
//! tenant whose endpoint never answers slows only its own notifications. Each attempt has
//! [`crate::http_client::CONNECT_TIMEOUT`] to connect and [`crate::http_client::REQUEST_TIMEOUT`]
//! in all; three attempts with growing delays, then a counted, logged give-up. The audit log
//! holds every event regardless.
//!
//! The URL may be `https://` (plain `http://` only where the tenant's configuration allows it):
//! the endpoint's certificate is verified against the public roots and the tenant's
//! `notify_ca`, if any. Every failed attempt is counted by its [`crate::http_client::Cause`] (`unknown_ca`,
//! `name_mismatch`, `expired`, ..., `refused` for a non-2xx answer), so that an operator sees in
//! `/metrics` why a tenant's notifications do not arrive, not only that they do not.
//!
//! `code_issued` carries the one-time code itself (`code_delivery = "notify"`: the code goes out
//! of band, patent step S2): its body holds the code, and nothing logs it: the log lines of a
//! delivery name the tenant, the event and the cause only, and [`IssuedCode`]'s `Debug` hides
//! the code. When such a notification is given up, its [`IssuedCode::undelivered`] is called so
//! that the association fails at once (`code_not_delivered`) instead of waiting for a code its
//! user never got.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::http_client::Http;
use rustls::pki_types::CertificateDer;
use crate::log_gate::LogGate;

/// Where and how to notify one tenant.
#[derive(Clone)]
pub struct Target {
    /// Base URL and path, e.g. `https://app.example.com/cstagate/events`.
    pub url: String,
    pub secret: String,
    /// CA certificates trusted besides the public roots for an `https://` URL (the tenant's
    /// `notify_ca`).
    pub ca: Vec<CertificateDer<'static>>,
}

/// Without the secret: a `Target` printed in a log or an error must not carry the HMAC key.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.url).field("secret", &"<redacted>").field("ca", &self.ca.len()).finish()
    }
}

/// One notification.
#[derive(Debug, Clone)]
pub struct Notification {
    pub tenant: String,
    pub account: String,
    pub event: String,
    pub association: String,
    pub at: u64,
    /// The code and its details, for `code_issued` only.
    pub code: Option<IssuedCode>,
}

/// What `code_issued` tells besides the common members: the one-time code (a secret: shown
/// only in the signed body sent to the tenant), where it is valid and until when.
#[derive(Clone)]
pub struct IssuedCode {
    pub code: String,
    pub pbx: String,
    pub extension: String,
    /// Milliseconds since the epoch, as the API's `expires_at`.
    pub expires_at: u64,
    /// Called once when the notification is given up (every attempt failed, or dropped with
    /// the queue full): the gateway fails the association, whose user never got the code.
    pub undelivered: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Without the code: a notification printed in a log must not show it.
impl std::fmt::Debug for IssuedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCode").field("code", &"<redacted>").field("pbx", &self.pbx).field("extension", &self.extension).field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

impl IssuedCode {
    fn undelivered(&self) {
        if let Some(f) = &self.undelivered {
            f();
        }
    }
}

/// Notifications queued per tenant before more are dropped.
pub const QUEUE: usize = 1_000;
/// Workers (so connections at once) per tenant.
pub const WORKERS_PER_TENANT: usize = 8;
/// The failure label of an answer other than 2xx.
pub const REFUSED: &str = "refused";
/// Largest answer body read from a tenant's endpoint (only its status matters).
const MAX_ANSWER: usize = 64 * 1024;

/// How notifications are delivered; [`Default`] is what the gateway uses.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub connect_timeout: Duration,
    /// For a whole attempt: connecting, sending, and the answer.
    pub request_timeout: Duration,
    /// Waits between attempts: one attempt more than delays.
    pub delays: Vec<Duration>,
    /// Notifications queued per tenant at most.
    pub queue: usize,
    pub workers_per_tenant: usize,
}

impl Default for NotifySettings {
    fn default() -> Self {
        NotifySettings {
            connect_timeout: crate::http_client::CONNECT_TIMEOUT,
            request_timeout: crate::http_client::REQUEST_TIMEOUT,
            delays: vec![Duration::from_millis(200), Duration::from_secs(2)],
            queue: QUEUE,
            workers_per_tenant: WORKERS_PER_TENANT,
        }
    }
}

/// Counters of one tenant's notifications.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    given_up: AtomicU64,
    dropped: AtomicU64,
    /// Failed attempts by cause label: a fixed, small set of keys.
    failures: Mutex<BTreeMap<&'static str, u64>>,
}

/// What one tenant's notifications came to (for `/metrics` and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStats {
    pub tenant: String,
    /// Waiting in the queue now (not counting those being delivered).
    pub queued: usize,
    /// Accepted by the endpoint (2xx).
    pub delivered: u64,
    /// Given up after every attempt failed.
    pub given_up: u64,
    /// Dropped because the queue was full.
    pub dropped: u64,
}

struct TenantQueue {
    tx: mpsc::Sender<Notification>,
    capacity: usize,
    counters: Arc<Counters>,
    drop_log: Mutex<LogGate>,
}

/// Handle to the delivery workers; cheap to clone. When the last handle is dropped, the workers
/// stop at once, their attempts in hand and the queued notifications abandoned.
#[derive(Clone)]
pub struct Notifier {
    tenants: Arc<HashMap<String, TenantQueue>>,
    _stop: Arc<tokio_util::sync::DropGuard>,
}

impl Notifier {
    /// Start delivering to `targets` (tenant → target) with the default settings; tenants
    /// without one are skipped.
    pub fn start(targets: HashMap<String, Target>) -> Notifier {
        Notifier::start_with(targets, &NotifySettings::default())
    }

    /// Start each tenant's workers. A target whose URL is not `http://host[:port]/path` is
    /// logged and skipped.
    pub fn start_with(targets: HashMap<String, Target>, settings: &NotifySettings) -> Notifier {
        let workers = settings.workers_per_tenant.max(1);
        let capacity = settings.queue.max(1);
        let stop = tokio_util::sync::CancellationToken::new();
        let mut tenants = HashMap::new();
        for (tenant, t) in targets {
            let Some((base, path)) = split(&t.url) else {
                warn!(%tenant, url = %t.url, "notification URL must be http(s)://host[:port]/path: this tenant's notifications are not sent");
                continue;
            };
            // `Config::parse` read the CA file already: a failure here is a bug, not a config.
            let tls = match crate::http_client::client_config(&t.ca) {
                Ok(c) => c,
                Err(e) => {
                    warn!(%tenant, error = %e, "notify_ca unusable: this tenant's notifications are not sent");
                    continue;
                }
            };
            let http = Http::with_tls(&base, settings.connect_timeout, settings.request_timeout, Some(tls)).max_body(MAX_ANSWER);
            let (tx, rx) = mpsc::channel(capacity);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let counters = Arc::new(Counters::default());
            let job = Arc::new(Job { tenant: tenant.clone(), http, path, secret: t.secret, delays: settings.delays.clone(), counters: counters.clone(), give_up_log: Mutex::new(LogGate::new(Duration::from_secs(10))) });
            for _ in 0..workers {
                let (rx, job, stop) = (rx.clone(), job.clone(), stop.clone());
                tokio::spawn(async move { stop.run_until_cancelled(worker(rx, job)).await });
            }
            tenants.insert(tenant, TenantQueue { tx, capacity, counters, drop_log: Mutex::new(LogGate::new(Duration::from_secs(10))) });
        }
        Notifier { tenants: Arc::new(tenants), _stop: Arc::new(stop.drop_guard()) }
    }

    /// Queue a notification; never waits. A full queue drops it (counted, logged at most every
    /// 10 s per tenant).
    pub fn send(&self, n: Notification) {
        let Some(q) = self.tenants.get(&n.tenant) else { return };
        if let Err(e) = q.tx.try_send(n) {
            let n = e.into_inner();
            if let Some(c) = &n.code {
                c.undelivered();
            }
            let dropped = q.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let gate = q.drop_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pass();
            if let Some(held) = gate {
                warn!(tenant = %n.tenant, event = %n.event, dropped_total = dropped, not_logged = held, queue = q.capacity, "notification queue full: notification dropped");
            }
        }
    }

    /// Failed attempts by tenant and cause ([`crate::http_client::Cause::label`], or `refused`: the endpoint
    /// answered with a status other than 2xx), sorted.
    pub fn failures(&self) -> Vec<(String, &'static str, u64)> {
        let mut v: Vec<(String, &'static str, u64)> = Vec::new();
        for (tenant, q) in self.tenants.iter() {
            let f = q.counters.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            v.extend(f.iter().map(|(cause, n)| (tenant.clone(), *cause, *n)));
        }
        v.sort();
        v
    }

    /// Each tenant's counters, by tenant id.
    pub fn stats(&self) -> Vec<TenantStats> {
        let mut v: Vec<TenantStats> = self
            .tenants
            .iter()
            .map(|(tenant, q)| TenantStats {
                tenant: tenant.clone(),
                queued: q.capacity - q.tx.capacity(),
                delivered: q.counters.delivered.load(Ordering::Relaxed),
                given_up: q.counters.given_up.load(Ordering::Relaxed),
                dropped: q.counters.dropped.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        v
    }
}

/// What a tenant's workers share.
struct Job {
    tenant: String,
    http: Http,
    path: String,
    secret: String,
    delays: Vec<Duration>,
    counters: Arc<Counters>,
    give_up_log: Mutex<LogGate>,
}

async fn worker(rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Notification>>>, job: Arc<Job>) {
    loop {
        // One worker waits on the queue at a time; the others wait for it to take one.
        let next = rx.lock().await.recv().await;
        let Some(n) = next else { return };
        deliver(&job, &n).await;
    }
}

/// Split `http(s)://host:port/path` into base and path for the client.
fn split(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, path) = rest.split_once('/').map_or((rest, String::from("/")), |(h, p)| (h, format!("/{p}")));
    (!host.is_empty()).then(|| (format!("{scheme}://{host}"), path))
}

/// The signed body: the common members, and for `code_issued` the code and where it is valid.
fn body_of(n: &Notification) -> Vec<u8> {
    let mut body = json!({ "event": n.event, "account": n.account, "association": n.association, "at": n.at });
    if let Some(c) = &n.code {
        body["code"] = json!(c.code);
        body["pbx"] = json!(c.pbx);
        body["extension"] = json!(c.extension);
        body["expires_at"] = json!(c.expires_at);
    }
    body.to_string().into_bytes()
}

async fn deliver(job: &Job, n: &Notification) {
    let body = body_of(n);
    let mut last = "";
    for attempt in 0..=job.delays.len() {
        let [(tk, tv), (sk, sv)] = crate::webhook::webhook_headers(&job.secret, &body);
        // The log lines name the tenant, the event and why; never the body (a code).
        match job.http.request("POST", &job.path, &[(tk, &tv), (sk, &sv)], Some(body.clone())).await {
            Ok((s, _)) if (200..300).contains(&s) => {
                job.counters.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok((s, _)) => {
                last = REFUSED;
                debug!(status = s, tenant = %job.tenant, event = %n.event, attempt, "notification refused");
            }
            Err(e) => {
                last = e.cause.label();
                debug!(cause = last, error = %e, tenant = %job.tenant, event = %n.event, attempt, "notification not delivered");
            }
        }
        *job.counters.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(last).or_default() += 1;
        if let Some(d) = job.delays.get(attempt) {
            tokio::time::sleep(*d).await;
        }
    }
    let total = job.counters.given_up.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(c) = &n.code {
        c.undelivered();
    }
    let gate = job.give_up_log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pass();
    if let Some(held) = gate {
        warn!(tenant = %job.tenant, event = %n.event, cause = last, given_up_total = total, not_logged = held, "notification given up after {} attempts", job.delays.len() + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_base_and_path() {
        assert_eq!(split("http://app:9000/hooks/x"), Some(("http://app:9000".into(), "/hooks/x".into())));
        assert_eq!(split("http://app:9000"), Some(("http://app:9000".into(), "/".into())));
        assert_eq!(split("https://app/x"), Some(("https://app".into(), "/x".into())));
        assert_eq!(split("ftp://app/x"), None);
        assert_eq!(split("http:///x"), None);
    }
}
