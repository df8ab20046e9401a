//! Account notifications: what happened to an association or binding (`bound`,
//! `attempt_failed`, `failed`, `expired`, `cancelled`, `unbound`) is POSTed to the tenant's
//! notification URL as JSON, signed like the IVR webhook: `X-Cstagate-Timestamp` and
//! `X-Cstagate-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`, so that
//! the receiver can refuse old and replayed notifications the way the gateway refuses webhook
//! requests. Each attempt is signed anew.
//!
//! Delivery is best effort and never blocks the engine: a bounded queue (full: the notification
//! is dropped and logged), three attempts with growing delays, then a logged give-up. The audit
//! log holds every event regardless.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tracing::warn;

use crate::http_client::Http;

/// Where and how to notify one tenant.
#[derive(Clone)]
pub struct Target {
    /// Base URL and path, e.g. `http://app.internal:9000/cstagate/events`.
    pub url: String,
    pub secret: String,
}

/// Without the secret: a `Target` printed in a log or an error must not carry the HMAC key.
impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("url", &self.url).field("secret", &"<redacted>").finish()
    }
}

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub tenant: String,
    pub account: String,
    pub event: String,
    pub association: String,
    pub at: u64,
}

/// Queue capacity before notifications are dropped.
pub const QUEUE: usize = 10_000;
const DELAYS: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(2)];

/// Handle to the delivery task.
#[derive(Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Notification>,
}

impl Notifier {
    /// Start delivering to `targets` (tenant → target); tenants without one are skipped.
    pub fn start(targets: HashMap<String, Target>) -> Notifier {
        let (tx, mut rx) = mpsc::channel::<Notification>(QUEUE);
        tokio::spawn(async move {
            while let Some(n) = rx.recv().await {
                let Some(t) = targets.get(&n.tenant).cloned() else { continue };
                tokio::spawn(deliver(t, n));
            }
        });
        Notifier { tx }
    }

    /// Queue a notification; never waits.
    pub fn send(&self, n: Notification) {
        if let Err(e) = self.tx.try_send(n) {
            warn!(error = %e, "notification queue full or closed: notification dropped");
        }
    }
}

/// Split `http://host:port/path` into base and path for the client.
fn split(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map_or((rest, String::from("/")), |(h, p)| (h, format!("/{p}")));
    Some((format!("http://{host}"), path))
}

async fn deliver(t: Target, n: Notification) {
    let Some((base, path)) = split(&t.url) else {
        warn!(url = %t.url, "notification URL must be http://host[:port]/path");
        return;
    };
    let body = json!({ "event": n.event, "account": n.account, "association": n.association, "at": n.at }).to_string().into_bytes();
    let http = Http::new(&base);
    for attempt in 0..=DELAYS.len() {
        let [(tk, tv), (sk, sv)] = crate::api::webhook_headers(&t.secret, &body);
        match http.send("POST", &path, &[(tk, &tv), (sk, &sv)], Some(body.clone())).await {
            Ok((s, _)) if (200..300).contains(&s) => return,
            Ok((s, _)) => warn!(status = s, tenant = %n.tenant, "notification refused"),
            Err(e) => warn!(error = %e, tenant = %n.tenant, "notification not delivered"),
        }
        if let Some(d) = DELAYS.get(attempt) {
            tokio::time::sleep(*d).await;
        }
    }
    warn!(tenant = %n.tenant, event = %n.event, "notification given up after 3 attempts");
}
