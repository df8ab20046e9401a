//! The link manager against the PBX simulator over real TCP on 127.0.0.1: keep-alives, PBX
//! restart with re-monitoring, half-open peers, AARE rejection, timeouts, rate limiting, no
//! double answers, fail-fast while down, one PBX monitor per device, graceful release.
//! Tests wait on observable state (link state, simulator counters, events), never on sleeps.

use std::time::Duration;

use cstagate::codec::acse::AarqParams;
use cstagate::codec::body::{FieldName as F, Value};
use cstagate::codec::values::Secret;
use cstagate::codec::{Body, DeviceId, Dialect, EventKind, Framing, Operation};
use cstagate::config::LinkProfile;
use cstagate::link::{Link, LinkState, MonitorEvent, RequestError};
use cstagate::sim::{SimConfig, SimPbx};
use tokio::time::{timeout, Instant};

/// Generous bound so a broken feature fails instead of hanging; never reached when it works.
const LIMIT: Duration = Duration::from_secs(20);

fn profile(sim: &SimPbx, cfg: &SimConfig) -> LinkProfile {
    LinkProfile {
        preamble: cfg.preamble,
        max_requests_per_second: 1000.0,
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(50),
        ..LinkProfile::new("test", &sim.addr().to_string(), cfg.framing, cfg.dialect)
    }
}

async fn up(link: &Link) {
    timeout(LIMIT, link.wait_for(|s| *s == LinkState::Up)).await.expect("link comes up");
}

fn make_call(from: &str, to: &str) -> Body {
    Body::new().with(F::CallingDevice, Value::DeviceId(DeviceId::dialing(from).unwrap())).with(F::CalledDirectoryNumber, Value::DeviceId(DeviceId::dialing(to).unwrap()))
}

/// The next call event of a subscription, skipping nothing: link notices fail the test.
async fn next_event(m: &mut cstagate::link::Monitor) -> EventKind {
    match timeout(LIMIT, m.next()).await.expect("event in time").expect("link alive") {
        MonitorEvent::Event(ev) => ev.event.kind().expect("a call event"),
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn oxe_keepalives_are_answered_and_the_link_stays_up() {
    let mut cfg = SimConfig::oxe(&["2005"]);
    cfg.keepalive = Some(Duration::from_millis(50));
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    let s = timeout(LIMIT, sim.wait_stats(|s| s.keepalives_answered >= 4)).await.expect("keep-alives answered");
    assert_eq!(s.connections, 1, "the PBX never had to drop the link");
    assert_eq!(link.state(), LinkState::Up);
    assert!(link.stats().keepalives_answered >= 4);
}

#[tokio::test]
async fn an_unanswering_gateway_is_dropped_by_the_pbx() {
    // The converse: a client that does not answer SystemStatus is disconnected after two.
    let mut cfg = SimConfig::oxe(&["2005"]);
    cfg.keepalive = Some(Duration::from_millis(30));
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut s = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"B").await.unwrap();
    let aarq = cstagate::codec::Apdu::Aarq(cstagate::codec::acse::aarq(&AarqParams { context: "1.3.12.0.180".into(), credentials: None, user_information: None }).unwrap());
    s.write_all(&Framing::TwoByteLength.frame(&aarq.to_vec(Dialect::Phase2).unwrap()).unwrap()).await.unwrap();
    let mut sink = Vec::new();
    let n = timeout(LIMIT, s.read_to_end(&mut sink)).await.expect("the PBX closes").unwrap();
    assert!(n > 0 && sink[0] == b'P');
    assert!(sim.stats().keepalives_sent >= 2);
}

#[tokio::test]
async fn pbx_restart_mid_call_reconnects_and_restores_monitors_invisibly() {
    let cfg = SimConfig::phase3(&["2005", "2006"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    let mut m = link.monitor("2005").await.unwrap();
    link.request(Operation::MakeCall, make_call("2005", "2006")).await.unwrap();
    assert_eq!(next_event(&mut m).await, EventKind::ServiceInitiated);

    sim.restart();
    assert_eq!(timeout(LIMIT, m.next()).await.unwrap(), Some(MonitorEvent::LinkLost));
    assert_eq!(timeout(LIMIT, m.next()).await.unwrap(), Some(MonitorEvent::LinkRestored));
    assert_eq!(link.stats().monitors, 1);
    assert!(link.stats().reconnects >= 1);
    assert_eq!(sim.stats().requests.get("MonitorStart"), Some(&2), "re-monitored once after the restart");

    // The subscriber keeps receiving, on the new cross-reference id.
    link.request(Operation::MakeCall, make_call("2005", "0800100200")).await.unwrap();
    assert_eq!(next_event(&mut m).await, EventKind::ServiceInitiated);
    assert_eq!(next_event(&mut m).await, EventKind::Originated);
}

#[tokio::test]
async fn a_half_open_peer_is_detected_by_our_keepalive() {
    let cfg = SimConfig::phase3(&["2005"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let mut p = profile(&sim, &cfg);
    p.keepalive = Duration::from_millis(100);
    let link = Link::spawn(p);
    up(&link).await;
    sim.faults().stall = true;
    let down = timeout(LIMIT, link.wait_for(|s| matches!(s, LinkState::Down { .. }))).await.expect("dead peer detected");
    let LinkState::Down { reason } = down else { unreachable!() };
    assert!(reason.contains("keep-alive"), "{reason}");
    sim.faults().stall = false;
    up(&link).await;
}

#[tokio::test]
async fn an_aare_rejection_is_reported_with_its_reason_and_retried_with_backoff() {
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.credentials = Some(("AMHOST".into(), "77777".into()));
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let mut p = profile(&sim, &cfg);
    p.acse = Some(AarqParams { context: "1.3.12.0.218".into(), credentials: Some(("AMHOST".into(), Secret::new("wrong".into()))), user_information: None });
    p.reconnect_min = Duration::from_millis(20);
    p.reconnect_max = Duration::from_millis(80);
    let link = Link::spawn(p.clone());
    let down = timeout(LIMIT, link.wait_for(|s| matches!(s, LinkState::Down { .. }))).await.unwrap();
    let LinkState::Down { reason } = down else { unreachable!() };
    assert!(reason.contains("authentication-failure"), "{reason}");
    // Retried, not in a tight loop: a few attempts spread over the backoff.
    let t0 = Instant::now();
    timeout(LIMIT, sim.wait_stats(|s| s.connections >= 4)).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(40), "reconnects must back off");
    link.shutdown().await;
    // With the right password the same PBX accepts.
    p.acse = Some(AarqParams { context: "1.3.12.0.218".into(), credentials: Some(("AMHOST".into(), Secret::new("77777".into()))), user_information: None });
    let good = Link::spawn(p);
    up(&good).await;
}

#[tokio::test]
async fn requests_time_out_and_late_answers_are_not_delivered_twice() {
    let cfg = SimConfig::phase3(&["2005"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let mut p = profile(&sim, &cfg);
    p.request_timeout = Duration::from_millis(100);
    let link = Link::spawn(p);
    up(&link).await;
    sim.faults().result_delay = Some(Duration::from_millis(400));
    let snap = Body::new().with(F::SnapshotObject, Value::DeviceId(DeviceId::dialing("2005").unwrap()));
    assert_eq!(link.request(Operation::SnapshotDevice, snap.clone()).await, Err(RequestError::Timeout));
    sim.faults().result_delay = None;
    // The late result arrives and is counted as late (its caller stopped waiting: not delivered,
    // not unexpected); the next request works.
    let r = link.request(Operation::SnapshotDevice, snap).await;
    assert_eq!(r.as_ref().map(|b| b.get(F::SnapshotData)), Ok(Some(&Value::Raw(bytes::Bytes::from_static(&[0x30, 0x00])))), "the PBX's empty snapshot: {r:?}");
    let s = link.stats();
    assert_eq!(s.requests_timed_out, 1);
    timeout(LIMIT, async {
        while link.stats().late_answers < 1 {
            // Each received frame is followed by a counter update; poll on traffic, not time.
            link.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))).await.unwrap();
        }
    })
    .await
    .expect("the late result is counted as late");
    assert_eq!(link.stats().unexpected_responses, 0);
}

#[tokio::test]
async fn duplicate_results_are_absorbed() {
    let cfg = SimConfig::phase3(&["2005"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    sim.faults().duplicate_results = true;
    for _ in 0..5 {
        link.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))).await.unwrap();
    }
    sim.faults().duplicate_results = false;
    // One more round trip guarantees the fifth duplicate has been read.
    link.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))).await.unwrap();
    let s = link.stats();
    assert_eq!(s.requests_ok, 6);
    assert_eq!(s.unexpected_responses, 5);
}

#[tokio::test]
async fn the_rate_limit_is_respected() {
    let cfg = SimConfig::phase3(&["2005"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let mut p = profile(&sim, &cfg);
    p.max_requests_per_second = 20.0;
    let link = Link::spawn(p);
    up(&link).await;
    let t0 = Instant::now();
    let reqs = (0..40).map(|_| {
        let l = link.clone();
        tokio::spawn(async move { l.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))).await })
    });
    for r in futures_join(reqs.collect()).await {
        assert_eq!(r, Ok(Body::null()), "every request is answered by the PBX, none refused by the limiter");
    }
    // A burst of 20, then 20 more at 20/s: at least ~1 s; without the limiter, milliseconds.
    assert!(t0.elapsed() >= Duration::from_millis(950), "40 requests at 20/s took {:?}", t0.elapsed());
}

async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn while_down_requests_fail_fast_with_link_down() {
    let cfg = SimConfig::phase3(&["2005"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    sim.stop();
    timeout(LIMIT, link.wait_for(|s| matches!(s, LinkState::Down { .. }))).await.unwrap();
    let r = timeout(LIMIT, link.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2)))).await.expect("no hang");
    assert_eq!(r, Err(RequestError::LinkDown));
    assert!(matches!(link.monitor("2005").await, Err(RequestError::LinkDown)));
}

#[tokio::test]
async fn one_pbx_monitor_per_device_stopped_when_the_last_subscriber_leaves() {
    let cfg = SimConfig::phase3(&["2005", "2006"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    let mut a = link.monitor("2005").await.unwrap();
    let mut b = link.monitor("2005").await.unwrap();
    assert_eq!(sim.stats().requests.get("MonitorStart"), Some(&1));
    link.request(Operation::MakeCall, make_call("2005", "2006")).await.unwrap();
    assert_eq!(next_event(&mut a).await, EventKind::ServiceInitiated);
    assert_eq!(next_event(&mut b).await, EventKind::ServiceInitiated);
    drop(a);
    link.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))).await.unwrap();
    assert_eq!(sim.stats().requests.get("MonitorStop"), None, "b still listens");
    drop(b);
    timeout(LIMIT, sim.wait_stats(|s| s.requests.get("MonitorStop") == Some(&1))).await.expect("monitor stopped");
    // A refused monitor is reported to the subscriber.
    sim.faults().monitor_error = Some(62);
    match link.monitor("2006").await {
        Err(RequestError::Failure(u)) => assert_eq!(u.value, Some(62)),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("monitor should have been refused"),
    }
}

#[tokio::test]
async fn undecodable_apdus_are_rejected_and_the_link_survives_them_and_split_frames() {
    let cfg = SimConfig::phase3(&["2005", "2006"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    let mut m = link.monitor("2005").await.unwrap();
    sim.faults().malformed_every = Some(2);
    sim.faults().split_frames = true;
    link.request(Operation::MakeCall, make_call("2005", "2006")).await.unwrap();
    assert_eq!(next_event(&mut m).await, EventKind::ServiceInitiated);
    let s = link.stats();
    assert!(s.decode_errors >= 1 && s.rejects_sent >= 1, "{s:?}");
    assert_eq!(link.state(), LinkState::Up);
    timeout(LIMIT, sim.wait_stats(|s| s.unexpected_responses >= 1)).await.expect("our Reject reached the PBX");
}

#[tokio::test]
async fn events_before_the_makecall_result_and_coalesced_frames_are_all_delivered() {
    let cfg = SimConfig::phase3(&["2005", "2006"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    let mut m = link.monitor("2005").await.unwrap();
    sim.faults().events_before_result = true;
    sim.faults().coalesce = true;
    let r = link.request(Operation::MakeCall, make_call("2005", "2006")).await.unwrap();
    assert!(r.connection(F::CallingDevice).is_some());
    for want in [EventKind::ServiceInitiated, EventKind::Originated, EventKind::Delivered, EventKind::Established] {
        assert_eq!(next_event(&mut m).await, want);
    }
}

#[tokio::test]
async fn shutdown_releases_the_association() {
    let cfg = SimConfig::oxe(&["2005"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    timeout(LIMIT, link.shutdown()).await.expect("release completes");
    timeout(LIMIT, sim.wait_stats(|s| s.releases == 1)).await.expect("the PBX saw the RLRQ");
    assert_eq!(link.state(), LinkState::Closed);
    assert_eq!(link.request(Operation::SystemStatus, Body::new()).await, Err(RequestError::Closed));
}

#[tokio::test]
async fn a_connection_dropped_at_a_request_fails_it_with_link_down_and_reconnects() {
    let cfg = SimConfig::phase3(&["2005", "2006"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(&sim, &cfg));
    up(&link).await;
    sim.faults().drop_on = Some(Operation::MakeCall);
    let r = timeout(LIMIT, link.request(Operation::MakeCall, make_call("2005", "2006"))).await.expect("no hang");
    assert_eq!(r, Err(RequestError::LinkDown));
    sim.faults().drop_on = None;
    up(&link).await;
    let r = link.request(Operation::MakeCall, make_call("2005", "2006")).await;
    assert!(r.as_ref().is_ok_and(|b| cstagate::csta::made_call(b).is_some()), "a MakeCall result naming the call: {r:?}");

    // Dropped after N frames: the same, mid-stream.
    sim.faults().drop_after_frames = Some(1);
    let r = timeout(LIMIT, link.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2)))).await.expect("no hang");
    assert_eq!(r, Err(RequestError::LinkDown));
    sim.faults().drop_after_frames = None;
    up(&link).await;
    assert!(link.stats().reconnects >= 2);
}

/// Phase II values whose shape is unverified (asn1/README.md P8) travel in either form in both
/// directions: a PBX that wraps its results (and its own SystemStatus argument) is served like
/// OXE, and a link told to wrap what it originates is understood by the PBX.
#[tokio::test]
async fn phase2_results_bare_or_wrapped_from_either_side() {
    use cstagate::codec::Wrapping;
    for (pbx_form, link_form) in [(Wrapping::Bare, Wrapping::Bare), (Wrapping::Wrapped, Wrapping::Bare), (Wrapping::Bare, Wrapping::Wrapped), (Wrapping::Wrapped, Wrapping::Wrapped)] {
        let mut cfg = SimConfig::oxe(&["2005", "2006"]);
        cfg.phase2_results = pbx_form;
        cfg.keepalive = Some(Duration::from_millis(50));
        let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
        let link = Link::spawn(LinkProfile { phase2_results: link_form, ..profile(&sim, &cfg) });
        up(&link).await;
        let what = format!("PBX {pbx_form:?}, link {link_form:?}");
        // The PBX's keep-alives (wrapped or not) are answered, so it keeps the link.
        timeout(LIMIT, sim.wait_stats(|s| s.keepalives_answered >= 2)).await.expect("keep-alives answered");
        let mut m = link.monitor("2005").await.unwrap();
        let r = link.request(Operation::MakeCall, make_call("2005", "2006")).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r.wrapping, Some(pbx_form), "{what}");
        let conn = r.connection(F::CallingDevice).cloned().unwrap_or_else(|| panic!("{what}: no connection in {r:?}"));
        assert!(conn.call.is_some(), "{what}");
        assert_eq!(next_event(&mut m).await, EventKind::ServiceInitiated, "{what}");
        let snap = link.request(Operation::SnapshotDevice, Body::new().with(F::SnapshotObject, Value::DeviceId(DeviceId::dialing("2005").unwrap()))).await;
        assert_eq!(snap.map(|b| b.wrapping), Ok(Some(pbx_form)), "{what}");
        // Our ClearConnection (wrapped or not) names the call the PBX knows: it is cleared.
        link.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(conn))).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(sim.stats().requests.get("ClearConnection") == Some(&1), "{what}");
        let s = link.stats();
        assert_eq!((s.connects, s.reconnects, s.decode_errors, s.rejects_received), (1, 0, 0, 0), "{what}: {s:?}");
        assert_eq!(sim.stats().connections, 1, "{what}");
    }
}
