//! Account notifications to endpoints that never answer (they accept and read) or never accept
//! (the accept queue full), 2,000 for each: the process's descriptors stay within what the
//! tenants' workers (eight each) can hold, the queues within 1,000 (the rest dropped and counted),
//! and another tenant's notifications are delivered meanwhile. Alone in its test binary: it
//! counts the process's open descriptors.

use crate::notify_common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use cstagate::notify::{Notifier, NotifySettings};
use notify_common::{full_backlog, note, open_descriptors, stats_of, targets, Silent};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoints_leave_descriptors_and_queues_bounded_over_2000_events_and_others_are_served() {
    let (stuck, _l, _fill) = full_backlog().await;
    let (silent, s) = Silent::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.ok() });

    // Short timeouts so that the dead endpoints go through many attempts during the test; the
    // queues and workers are the gateway's.
    let settings = NotifySettings { connect_timeout: Duration::from_millis(300), request_timeout: Duration::from_millis(500), delays: vec![Duration::from_millis(10), Duration::from_millis(20)], ..Default::default() };
    assert_eq!(settings.queue, 1000);
    let w = settings.workers_per_tenant;
    let baseline = open_descriptors();
    let n = Notifier::start_with(targets(&[("silent", silent), ("stuck", stuck), ("live", live)]), &settings);
    for i in 0..2000 {
        n.send(note("silent", i));
        n.send(note("stuck", i));
    }
    for i in 0..20 {
        n.send(note("live", i));
    }
    // Meanwhile: the live tenant gets all of its notifications, and the dead ones go through
    // several rounds of attempts; the descriptors are sampled all along.
    let mut most = 0;
    let mut live_got: Vec<(String, String)> = Vec::new();
    let run = async {
        loop {
            most = most.max(open_descriptors());
            while let Ok(got) = rx.try_recv() {
                assert_eq!((got["event"].as_str(), got["at"].as_u64()), (Some("cancelled"), Some(0)), "{got}");
                live_got.push((got["association"].as_str().expect("an association").to_owned(), got["account"].as_str().expect("an account").to_owned()));
            }
            if live_got.len() >= 20 && s.accepted.load(Ordering::SeqCst) >= 4 * w && stats_of(&n, "stuck").given_up >= w as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run).await.expect("live delivered and dead endpoints tried");
    assert_eq!(stats_of(&n, "live").delivered, 20);
    live_got.sort();
    assert_eq!(live_got, (0..20).map(|i| (format!("{i:032x}"), format!("a{i}"))).collect::<Vec<_>>(), "each of the live tenant's notifications, once, as sent");
    // A connection per worker of each tenant, whatever the number of notifications: the stuck
    // tenant's w being set up; the silent tenant's w and the silent server's side of them, each
    // possibly with the one before not yet seen closed; the live tenant's w and its server's w.
    // (A task per notification held thousands.)
    assert!(most <= baseline + 8 * w, "descriptors: {most} at most, {baseline} before, {w} workers per tenant");
    assert!(s.most_open.load(Ordering::SeqCst) <= 2 * w, "open at once: {}", s.most_open.load(Ordering::SeqCst));
    for tenant in ["silent", "stuck"] {
        let st = stats_of(&n, tenant);
        assert!(st.queued <= 1000 && st.queued > 0, "{st:?}");
        assert_eq!(st.delivered, 0);
        let accounted = st.queued as u64 + st.given_up + st.dropped;
        // Every notification is queued, given up, dropped, or in the hands of a worker.
        assert!((2000 - w as u64..=2000).contains(&accounted), "{st:?}");
        assert!(st.dropped >= 1000 - w as u64, "{st:?}");
    }
    // Once the notifier is gone, its workers stop and their connections close.
    drop(n);
    let settle = async {
        while open_descriptors() > baseline + 2 || s.open.load(Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), settle).await.unwrap_or_else(|_| panic!("descriptors: {} now, {baseline} before", open_descriptors()));
}
