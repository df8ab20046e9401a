//! Account notifications reach the tenant's URL, signed over a fresh timestamp and the body like
//! the IVR webhook; the receiver here is a real HTTP server. Endpoints that never answer, or
//! never accept, cost each attempt its timeouts (5 s to connect, 10 s in all: on the paused
//! clock), three attempts each, each signed anew (`tests/gateway/notify_dead_endpoints.rs`: 2,000 of
//! them hold no more than the tenant's workers' connections, while another tenant's are
//! delivered).

use crate::notify_common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use cstagate::webhook::{sign_webhook, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use cstagate::clock::now_ms;
use cstagate::testkit::{local_secrets, Http, LocalGateway, LocalOptions};
use cstagate::http_client::{CONNECT_TIMEOUT, REQUEST_TIMEOUT};
use cstagate::notify::{Notifier, TenantStats};
use notify_common::{full_backlog, note, stats_of, target, Silent};
use cstagate::sim::{SimConfig, SimPbx};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_posted_signed_to_the_tenant() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Value)>();
    let app = axum::Router::new().route(
        "/hooks/cstagate",
        post(move |h: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let ts: u64 = header(TIMESTAMP_HEADER).parse().unwrap_or(0);
                let fresh = now_ms() / 1000 - ts <= 5;
                let ok = fresh && header(SIGNATURE_HEADER) == sign_webhook("notify-key", ts, &body);
                let _ = tx.send((if ok { "signed".into() } else { "BAD".into() }, serde_json::from_slice(&body).unwrap_or(Value::Null)));
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.ok() });

    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let url = format!("http://{hook}/hooks/cstagate");
    let options = LocalOptions {
        tenant: format!("notify_url = \"{url}\"\nnotify_secret_env = \"UNUSED\"\nallow_plain_http = true\n"),
        pbx: "extensions = [\"2005\"]\nrequire_completion = true\n".into(),
        ..Default::default()
    };
    let mut secrets = local_secrets();
    secrets.notify.insert("acme".into(), cstagate::notify::Target { url, secret: "notify-key".into(), ca: Vec::new() });
    let LocalGateway { running, http, tokens, .. } = LocalGateway::start(&sim, options, secrets).await.unwrap();
    let (s, v) = http.json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201);
    let id = v["id"].as_str().unwrap();
    assert_eq!(http.json("DELETE", &format!("/v1/associations/{id}"), &tokens.tenant, None).await.unwrap().0, 200);
    let (sig, n) = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("notified").unwrap();
    assert_eq!(sig, "signed");
    assert_eq!((n["event"].as_str(), n["account"].as_str(), n["association"].as_str()), (Some("cancelled"), Some("alice"), Some(id)));
    running.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_attempt_has_5_s_to_connect_and_10_s_in_all_and_a_notification_3_attempts() {
    // Never set up: the connect timeout.
    let (stuck, _l, _fill) = full_backlog().await;
    let notify_client = |addr| Http::with_timeouts(&format!("http://{addr}"), CONNECT_TIMEOUT, REQUEST_TIMEOUT);
    let http = notify_client(stuck);
    let t = tokio::time::Instant::now();
    let e = http.raw("POST", "/hook", &[], Some(b"{}".to_vec())).await.unwrap_err();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(5) && waited < Duration::from_secs(6), "{waited:?}: {e}");
    assert!(e.contains("connect"), "{e}");

    // Set up, never answered: the request timeout, and the connection is closed.
    let (silent, s) = Silent::start().await;
    let http = notify_client(silent);
    let t = tokio::time::Instant::now();
    let e = http.raw("POST", "/hook", &[], Some(b"{}".to_vec())).await.unwrap_err();
    let waited = t.elapsed();
    assert!(waited >= Duration::from_secs(10) && waited < Duration::from_secs(11), "{waited:?}: {e}");
    while s.open.load(Ordering::SeqCst) != 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // A notification: three attempts, each signed, 10 s each and 0.2 s and 2 s between them,
    // then given up; nothing stays open.
    let (silent, s) = Silent::start().await;
    let n = Notifier::start(HashMap::from([("acme".to_owned(), target(silent))]));
    let t = tokio::time::Instant::now();
    n.send(note("acme", 0));
    while stats_of(&n, "acme").given_up == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(32_200) && waited < Duration::from_secs(34), "{waited:?}");
    while s.open.load(Ordering::SeqCst) != 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!((s.accepted.load(Ordering::SeqCst), s.signed.load(Ordering::SeqCst)), (3, 3));
    assert_eq!(stats_of(&n, "acme"), TenantStats { tenant: "acme".into(), queued: 0, delivered: 0, given_up: 1, dropped: 0 });
}
