//! The simulator's call model as the gateway sees it through a real link: the proof call to
//! the IVR with the context id as a dial suffix or as DTMF, IVR hang-up, the lock feature and
//! the local PIN, busy, out-of-service and never-answering phones, in both BER dialects (the proof
//! call over CSTA XML too).

use std::time::Duration;

use cstagate::codec::apdu::ErrorCategory;
use cstagate::codec::body::{FieldName as F, Value};
use cstagate::codec::{Body, DeviceId, EventKind, Operation};
use cstagate::config::{LinkProfile, XmlProfile};
use cstagate::link::{Link, LinkState, Monitor, MonitorEvent, RequestError};
use cstagate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);
const IVR: &str = "0800100200";

async fn setup(mut cfg: SimConfig) -> (SimPbx, Link, UnboundedReceiver<IvrSignal>) {
    for e in &mut cfg.extensions {
        e.behaviour = match &e.behaviour {
            Behaviour::Answer { .. } => Behaviour::Answer { after: Duration::from_millis(20) },
            other => other.clone(),
        };
    }
    let mut sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.unwrap();
    let ivr = sim.take_ivr().unwrap();
    let addr = sim.addr().to_string();
    // The gateway's side speaks the PBX's wire: BER, or XML with a session if it wants one.
    let base = if cfg.framing.is_xml() {
        LinkProfile { xml: Some(XmlProfile { session: cfg.xml.session, ..XmlProfile::new() }), ..LinkProfile::xml("sim", &addr, cfg.framing) }
    } else {
        LinkProfile::new("sim", &addr, cfg.framing, cfg.dialect)
    };
    let link = Link::spawn(LinkProfile {
        preamble: cfg.preamble,
        max_requests_per_second: 1000.0,
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(50),
        // The gateway's side speaks the form its PBX does.
        phase2_results: cfg.phase2_results,
        ..base
    });
    timeout(LIMIT, link.wait_for(|s| *s == LinkState::Up)).await.unwrap();
    (sim, link, ivr)
}

fn make_call(from: &str, to: &str) -> Body {
    Body::new().with(F::CallingDevice, Value::DeviceId(DeviceId::dialing(from).unwrap())).with(F::CalledDirectoryNumber, Value::DeviceId(DeviceId::dialing(to).unwrap()))
}

async fn kinds(m: &mut Monitor, n: usize) -> Vec<(EventKind, Body)> {
    let mut v = Vec::new();
    while v.len() < n {
        match timeout(LIMIT, m.next()).await.expect("event in time").expect("open") {
            MonitorEvent::Event(e) => {
                let kind = e.event.kind().expect("call event");
                v.push((kind, e.event.body().cloned().unwrap_or_default()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    v
}

async fn ivr_next(rx: &mut UnboundedReceiver<IvrSignal>) -> IvrSignal {
    timeout(LIMIT, rx.recv()).await.expect("IVR signal").expect("open")
}

async fn proof_call_flow(cfg: SimConfig) {
    let (cfg_dialect, wrapping) = (cfg.dialect, cfg.phase2_results);
    let (sim, link, mut ivr) = setup(cfg).await;
    let mut m = link.monitor("2005").await.unwrap();
    let r = link.request(Operation::MakeCall, make_call("2005", &format!("{IVR}*4711#"))).await.unwrap();
    if cfg_dialect == cstagate::codec::Dialect::Phase2 {
        assert_eq!(r.wrapping, Some(wrapping), "the result came in the PBX's form");
    }
    let conn = r.connection(F::CallingDevice).cloned().expect("connection in the result");
    let got = kinds(&mut m, 5).await;
    let order: Vec<EventKind> = got.iter().map(|(k, _)| *k).collect();
    assert_eq!(order, [EventKind::ServiceInitiated, EventKind::Originated, EventKind::NetworkReached, EventKind::Delivered, EventKind::Established]);
    assert_eq!(got[4].1.digits(F::AnsweringDevice).as_deref(), Some(IVR));
    let IvrSignal::Connected { call, calling, called } = ivr_next(&mut ivr).await else { panic!("connected first") };
    assert_eq!((calling.as_str(), called.as_str()), ("+33144002005", IVR));
    assert_eq!(ivr_next(&mut ivr).await, IvrSignal::Digits { call: call.clone(), digits: "*4711#".into() });

    // DTMF once established: GenerateDigits (Phase III) / SendDTMFTones (Phase II).
    let digits = Body::new().with(F::ConnectionToSendDigits, Value::Connection(conn.clone())).with(F::CharactersToSend, Value::Text("*4711#".try_into().unwrap()));
    link.request(Operation::GenerateDigits, digits).await.unwrap();
    assert_eq!(ivr_next(&mut ivr).await, IvrSignal::Digits { call: call.clone(), digits: "*4711#".into() });

    // The IVR hangs up: the far end clears, then the phone.
    sim.ivr_hangup(&call);
    let got = kinds(&mut m, 2).await;
    assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [EventKind::ConnectionCleared, EventKind::ConnectionCleared]);
    assert_eq!(got[1].1.digits(F::ReleasingDevice).as_deref(), Some("2005"));
}

#[tokio::test]
async fn proof_call_to_the_ivr_phase3() {
    proof_call_flow(SimConfig::phase3(&["2005"])).await;
}

#[tokio::test]
async fn proof_call_to_the_ivr_oxe_phase2() {
    proof_call_flow(SimConfig::oxe(&["2005"])).await;
}

/// The same proof call with the gateway's link over CSTA XML: the 8-byte header and a session,
/// then NUL framing without one.
#[tokio::test]
async fn proof_call_to_the_ivr_csta_xml() {
    proof_call_flow(SimConfig::xml(&["2005"], cstagate::codec::Framing::XmlHeader)).await;
    let mut nul = SimConfig::xml(&["2005"], cstagate::codec::Framing::XmlNul);
    nul.xml.session = false;
    proof_call_flow(nul).await;
}

/// A Phase II PBX that wraps its results in `SEQUENCE { value, extensions }` (asn1/README.md
/// P8), with a gateway configured to wrap what it sends too.
#[tokio::test]
async fn proof_call_to_the_ivr_phase2_wrapped_results() {
    let mut cfg = SimConfig::oxe(&["2005"]);
    cfg.phase2_results = cstagate::codec::Wrapping::Wrapped;
    proof_call_flow(cfg).await;
}

#[tokio::test]
async fn clearing_the_call_tells_the_ivr() {
    let (sim, link, mut ivr) = setup(SimConfig::phase3(&["2005"])).await;
    let mut m = link.monitor("2005").await.unwrap();
    let r = link.request(Operation::MakeCall, make_call("2005", IVR)).await.unwrap();
    let conn = r.connection(F::CallingDevice).cloned().unwrap();
    kinds(&mut m, 5).await;
    let IvrSignal::Connected { call, .. } = ivr_next(&mut ivr).await else { panic!() };
    link.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(conn.clone()))).await.unwrap();
    assert_eq!(kinds(&mut m, 1).await[0].0, EventKind::ConnectionCleared);
    assert_eq!(ivr_next(&mut ivr).await, IvrSignal::Cleared { call: call.clone() });
    assert_eq!(sim.calls().await.ended.get(&call), Some(&cstagate::sim::CallEnd::ClearConnection), "the simulator records how the call ended");
    // Clearing it again: the PBX no longer knows the connection.
    let e = link.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(conn))).await.unwrap_err();
    assert!(matches!(e, RequestError::Failure(u) if u.category == ErrorCategory::Operation && u.value == Some(13)), "{e:?}");
}

#[tokio::test]
async fn the_lock_prefix_locks_and_the_local_pin_unlocks() {
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.extensions[0].pin = Some("1234".into());
    cfg.extensions[0].user_pin = Some("9999".into());
    let (sim, link, _ivr) = setup(cfg).await;
    let mut m = link.monitor("2005").await.unwrap();
    link.request(Operation::MakeCall, make_call("2005", "*66")).await.unwrap();
    let got = kinds(&mut m, 3).await;
    assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [EventKind::ServiceInitiated, EventKind::Originated, EventKind::ConnectionCleared]);
    assert!(sim.is_locked("2005"));

    // Wrong PIN keyed: the outgoing call fails.
    link.request(Operation::MakeCall, make_call("2005", IVR)).await.unwrap();
    let got = kinds(&mut m, 3).await;
    assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [EventKind::ServiceInitiated, EventKind::Failed, EventKind::ConnectionCleared]);
    assert_eq!(got[1].1.int(F::Cause), Some(35), "blocked");
    assert!(sim.is_locked("2005"));

    // The right PIN: unlocked, and the call goes through.
    sim.config().extensions[0].user_pin = Some("1234".into());
    link.request(Operation::MakeCall, make_call("2005", IVR)).await.unwrap();
    let got = kinds(&mut m, 5).await;
    assert_eq!(got[4].0, EventKind::Established);
    assert!(!sim.is_locked("2005"));
}

#[tokio::test]
async fn a_locked_phone_calls_out_once_its_user_has_keyed_the_pin() {
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.extensions[0].pin = Some("1234".into());
    cfg.extensions[0].user_pin = Some("1234".into());
    cfg.extensions[0].pin_delay = Duration::from_millis(200);
    let (sim, link, mut ivr) = setup(cfg).await;
    let mut m = link.monitor("2005").await.unwrap();
    link.request(Operation::MakeCall, make_call("2005", "*66")).await.unwrap();
    kinds(&mut m, 3).await;
    assert!(sim.is_locked("2005"));
    // The phone rings, its user picks up and keys the PIN: the call goes out, unlocked.
    link.request(Operation::MakeCall, make_call("2005", IVR)).await.unwrap();
    let got = kinds(&mut m, 5).await;
    assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [EventKind::ServiceInitiated, EventKind::Originated, EventKind::NetworkReached, EventKind::Delivered, EventKind::Established]);
    assert!(!sim.is_locked("2005"));
    assert!(matches!(ivr_next(&mut ivr).await, IvrSignal::Connected { .. }));
}

#[tokio::test]
async fn busy_out_of_service_unknown_and_never_answering_phones() {
    let mut cfg = SimConfig::phase3(&["2005", "2006", "2007", "2008"]);
    cfg.extensions[1].behaviour = Behaviour::Busy;
    cfg.extensions[2].behaviour = Behaviour::OutOfService;
    cfg.extensions[3].behaviour = Behaviour::NeverAnswer;
    let (_sim, link, _ivr) = setup(cfg).await;
    let failure = |r: Result<Body, RequestError>| match r {
        Err(RequestError::Failure(u)) => (u.category, u.value),
        other => panic!("{other:?}"),
    };
    assert_eq!(failure(link.request(Operation::MakeCall, make_call("2006", IVR)).await), (ErrorCategory::StateIncompatibility, Some(19)));
    assert_eq!(failure(link.request(Operation::MakeCall, make_call("2007", IVR)).await), (ErrorCategory::SystemResourceAvailability, Some(18)));
    assert_eq!(failure(link.request(Operation::MakeCall, make_call("9999", IVR)).await), (ErrorCategory::Operation, Some(5)));
    assert!(matches!(link.monitor("9999").await, Err(RequestError::Failure(_))));

    // Calling a busy extension fails with cause busy.
    let mut m5 = link.monitor("2005").await.unwrap();
    link.request(Operation::MakeCall, make_call("2005", "2006")).await.unwrap();
    let got = kinds(&mut m5, 4).await;
    assert_eq!(got[3].0, EventKind::Failed);
    assert_eq!(got[3].1.int(F::Cause), Some(3));

    // A phone whose user never picks up rings until the call is cleared.
    let mut m8 = link.monitor("2008").await.unwrap();
    let r = link.request(Operation::MakeCall, make_call("2008", IVR)).await.unwrap();
    assert_eq!(kinds(&mut m8, 1).await[0].0, EventKind::ServiceInitiated);
    let conn = r.connection(F::CallingDevice).cloned().unwrap();
    link.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(conn))).await.unwrap();
    assert_eq!(kinds(&mut m8, 1).await[0].0, EventKind::ConnectionCleared);
}

#[tokio::test]
async fn proof_call_to_the_ivr_hipath_framing() {
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.framing = cstagate::codec::Framing::Siemens;
    proof_call_flow(cfg).await;
}

/// `Gateway::stop` (the server's shutdown) clears the proof call of an association in flight on
/// the PBX before it ends the association as a restart would: the simulated PBX has no call
/// left, and the store holds the association failed with `gateway_restarted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_call_up_at_stop_is_cleared_on_the_pbx() {
    use cstagate::testkit::{local_secrets, LocalGateway, LocalOptions};
    use cstagate::store::{SqliteStore, Store};
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.ivr_number = Some(IVR.into());
    cfg.extensions[0].behaviour = Behaviour::Answer { after: Duration::from_millis(5) };
    let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut ivr = sim.take_ivr().unwrap();
    let gw = LocalGateway::start(&sim, LocalOptions { pbx: "extensions = [\"2005\"]\n".into(), ..Default::default() }, local_secrets()).await.unwrap();
    let (s, v) = gw.http.json("POST", "/v1/associations", &gw.tokens.tenant, Some(serde_json::json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    // The proof call is answered at the IVR: it is up on the PBX, and the gateway follows it.
    loop {
        if let IvrSignal::Connected { .. } = ivr_next(&mut ivr).await {
            break;
        }
    }
    timeout(LIMIT, async {
        while gw.http.json("GET", &format!("/v1/associations/{id}"), &gw.tokens.tenant, None).await.unwrap().1["state"] != "in_ivr" {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the association follows the call into the IVR");
    assert_eq!(sim.stats().live_calls, 1);
    let db = gw.db.clone();
    timeout(LIMIT, gw.running.shutdown()).await.expect("the gateway stops in time");
    timeout(LIMIT, sim.wait_stats(|s| s.live_calls == 0)).await.unwrap_or_else(|_| panic!("a call is left up: {:?}", sim.stats()));
    let store = SqliteStore::open(&db).unwrap();
    let v = store.association(&id).unwrap().expect("stored");
    assert_eq!((v.state, v.reason, v.retryable, v.call), (cstagate::association::State::Failed, Some(cstagate::association::Reason::GatewayRestarted), false, None));
    assert!(store.snapshot(0).unwrap().in_flight.is_empty(), "nothing left for the next start to end");
}

/// A bare CTI client of the simulator (no [`Link`]): it sees the PBX's cross-reference ids and
/// the connection's end.
struct RawCti {
    s: tokio::net::TcpStream,
    framer: cstagate::codec::framing::Framer,
    buf: bytes::BytesMut,
    next_invoke: i64,
}

impl RawCti {
    async fn connect(sim: &SimPbx) -> RawCti {
        use tokio::io::AsyncWriteExt;
        let s = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
        let mut c = RawCti { s, framer: cstagate::codec::framing::Framer::new(cstagate::codec::Framing::TwoByteLength), buf: bytes::BytesMut::new(), next_invoke: 1 };
        let aarq = cstagate::codec::Apdu::Aarq(cstagate::codec::acse::aarq(&cstagate::codec::acse::AarqParams { context: "1.3.12.0.218".into(), credentials: None, user_information: None }).unwrap());
        c.s.write_all(&cstagate::codec::Framing::TwoByteLength.frame(&aarq.to_vec(cstagate::codec::Dialect::Phase3).unwrap()).unwrap()).await.unwrap();
        assert!(matches!(c.next().await, Some(cstagate::codec::Apdu::Aare(_))), "associated");
        c
    }

    /// The next APDU, or `None` once the PBX closed the connection.
    async fn next(&mut self) -> Option<cstagate::codec::Apdu> {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(frame) = self.framer.decode(&mut self.buf).unwrap() {
                return Some(cstagate::codec::Apdu::decode(&frame, cstagate::codec::Dialect::Phase3).unwrap());
            }
            if timeout(LIMIT, self.s.read_buf(&mut self.buf)).await.expect("the PBX sends or closes").unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// Invoke and return the result's body (events before it are skipped).
    async fn invoke(&mut self, op: Operation, arg: Body) -> Body {
        use tokio::io::AsyncWriteExt;
        let id = self.next_invoke;
        self.next_invoke += 1;
        let apdu = cstagate::codec::Apdu::invoke(id, op, arg);
        self.s.write_all(&cstagate::codec::Framing::TwoByteLength.frame(&apdu.to_vec(cstagate::codec::Dialect::Phase3).unwrap()).unwrap()).await.unwrap();
        loop {
            match self.next().await.expect("the PBX answers") {
                cstagate::codec::Apdu::Result(r) if r.invoke_id == Some(id) => {
                    return match r.result {
                        Some((_, cstagate::codec::Argument::Body(b))) => b,
                        _ => Body::null(),
                    };
                }
                cstagate::codec::Apdu::Invoke(_) => {}
                other => panic!("{other:?}"),
            }
        }
    }

    /// MonitorStart: the cross-reference id the PBX gave.
    async fn monitor(&mut self, device: &str) -> Vec<u8> {
        let r = self.invoke(Operation::MonitorStart, Body::new().with(F::MonitorObject, Value::DeviceId(DeviceId::dialing(device).unwrap()))).await;
        r.octets(F::CrossRefIdentifier).expect("a cross-reference id").to_vec()
    }

    /// Wait until the PBX closes the connection.
    async fn closed(mut self) {
        while self.next().await.is_some() {}
    }
}

/// The three ways the CTI side goes away differ in what survives: a link drop and a CTI restart
/// leave the calls up on the phones (after a link drop the PBX's cross-reference numbering carries
/// on, after a CTI restart it starts again), while a full reset ends the calls too.
#[tokio::test]
async fn a_link_drop_and_a_cti_restart_keep_the_calls_and_a_reset_ends_them() {
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.extensions[0].behaviour = Behaviour::NeverAnswer;
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut c = RawCti::connect(&sim).await;
    let first = c.monitor("2005").await;
    c.invoke(Operation::MakeCall, make_call("2005", IVR)).await;
    let calls = sim.calls().await.live;
    assert_eq!(calls.len(), 1, "the phone rings");

    sim.drop_links();
    c.closed().await;
    assert_eq!(sim.calls().await.live, calls, "a link drop leaves the call up");
    let mut c = RawCti::connect(&sim).await;
    let after_drop = c.monitor("2005").await;
    assert_ne!(after_drop, first, "after a link drop the CTI's numbering carries on");

    sim.restart_cti();
    c.closed().await;
    assert_eq!(sim.calls().await.live, calls, "a CTI restart leaves the call up");
    let mut c = RawCti::connect(&sim).await;
    assert_eq!(c.monitor("2005").await, first, "after a CTI restart the numbering starts again");
    // The call is still the PBX's to clear, by its id.
    assert_eq!(sim.stats().live_calls, 1);

    sim.restart();
    c.closed().await;
    let after = sim.calls().await;
    assert!(after.live.is_empty(), "a reset ends the calls: {after:?}");
    assert_eq!(after.ended.get(&calls[0]), Some(&cstagate::sim::CallEnd::Reset));
}

/// Withheld results: the PBX carries the request out (the call is placed) but its answer, and
/// the events behind it on the connection, come only on release, in wire order; keep-alive
/// answers pass meanwhile. Answers withheld on a connection that drops are lost with it.
#[tokio::test]
async fn withheld_results_come_on_release_in_wire_order_and_die_with_their_connection() {
    let mut cfg = SimConfig::phase3(&["2005", "2006"]);
    for e in &mut cfg.extensions {
        e.behaviour = Behaviour::NeverAnswer;
    }
    let (sim, link, _ivr) = setup(cfg).await;
    let mut m = link.monitor("2005").await.unwrap();
    sim.faults().withhold_results.push(Operation::MakeCall);
    let call = tokio::spawn({
        let link = link.clone();
        async move { link.request(Operation::MakeCall, make_call("2005", IVR)).await }
    });
    timeout(LIMIT, sim.wait_stats(|s| s.live_calls == 1 && s.results_withheld == 1)).await.expect("the call is placed, its result withheld");
    // Other answers pass; the call's event waits behind its result.
    link.request(Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))).await.unwrap();
    assert!(timeout(Duration::ZERO, m.next()).await.is_err(), "no event before the withheld result");
    assert!(!call.is_finished());
    sim.release_results();
    let r = timeout(LIMIT, call).await.unwrap().unwrap().expect("the result, on release");
    let placed = r.connection(F::CallingDevice).and_then(|c| c.call.clone()).expect("the call in the result");
    assert_eq!(sim.calls().await.live, vec![hex::encode(&placed)]);
    let got = kinds(&mut m, 1).await;
    assert_eq!(got[0].0, EventKind::ServiceInitiated, "then the event that waited behind it");
    assert_eq!(sim.stats().results_withheld, 0);

    // Withheld again, then the link drops: the answer is lost with its connection.
    let lost = tokio::spawn({
        let link = link.clone();
        async move { link.request(Operation::MakeCall, make_call("2006", IVR)).await }
    });
    timeout(LIMIT, sim.wait_stats(|s| s.live_calls == 2 && s.results_withheld == 1)).await.expect("the second call is placed, its result withheld");
    sim.drop_links();
    assert_eq!(timeout(LIMIT, lost).await.unwrap().unwrap(), Err(RequestError::LinkDown));
    timeout(LIMIT, sim.wait_stats(|s| s.results_withheld == 0)).await.expect("the withheld answer died with its connection");
    timeout(LIMIT, link.wait_for(|s| *s == LinkState::Up)).await.unwrap();
    assert_eq!(sim.stats().live_calls, 2, "both calls are still up on the phones");
}
