//! The simulator as a CSTA XML PBX (ECMA-323 documents, ECMA-354 session), driven over a real
//! socket by a PBX-facing client written with the codec: the session (login, versions, timer,
//! stop, lapse), CSTA refused before it, the call model's events as XML, its own SystemStatus,
//! NUL framing without a session, the faults that make sense on XML. Every byte the simulator
//! sends is checked on the way: each frame's header length is the bytes it spans on the wire,
//! and each document parses with quick-xml, independently of our codec's reader.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cstagate::codec::apdu::{ErrorCategory, ErrorParameter};
use cstagate::codec::body::FieldName as F;
use cstagate::codec::framing::Framer;
use cstagate::codec::xml::{AppSession, Login, LoginStyle, ProtocolVersion, StartSession, XmlMessage, EVENT_INVOKE_ID};
use cstagate::codec::{Apdu, Argument, Body, Event, EventKind, Framing, Op, Operation};
use cstagate::csta::{self, CallEvent, CallId};
use cstagate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);
const IVR: &str = "0800100200";

/// A PBX-facing client: sends documents, receives them, answers the PBX's SystemStatus, and
/// keeps every byte it received for [`Client::check_wire`].
struct Client {
    stream: TcpStream,
    framing: Framing,
    framer: Framer,
    buf: BytesMut,
    wire: Vec<u8>,
    next_id: i64,
    /// SystemStatus requests the PBX sent (each answered).
    keepalives: u64,
}

impl Client {
    async fn connect(sim: &SimPbx) -> Client {
        let framing = sim.config().framing;
        let stream = TcpStream::connect(sim.addr()).await.unwrap();
        Client { stream, framing, framer: Framer::new(framing), buf: BytesMut::new(), wire: Vec::new(), next_id: 0, keepalives: 0 }
    }

    async fn send(&mut self, msg: &XmlMessage) {
        let content = msg.to_vec(self.framing, ProtocolVersion::Ed4).unwrap();
        self.send_raw(&content).await;
    }

    /// One frame of `content` (the invoke-id digits included with the header framing).
    async fn send_raw(&mut self, content: &[u8]) {
        let framed = self.framing.frame(content).unwrap();
        self.stream.write_all(&framed).await.unwrap();
    }

    /// Send a CSTA request; its invoke id.
    async fn request(&mut self, op: Operation, body: Body) -> i64 {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&XmlMessage::Csta(Apdu::invoke(id, op, body))).await;
        id
    }

    /// The next frame as it came; `None` once the PBX closed the connection.
    async fn frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(f) = self.framer.decode(&mut self.buf).expect("the PBX frames correctly") {
                return Some(f);
            }
            let before = self.buf.len();
            let n = timeout(LIMIT, self.stream.read_buf(&mut self.buf)).await.expect("PBX silent").unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.wire.extend_from_slice(&self.buf[before..]);
        }
    }

    /// The next message, the PBX's SystemStatus included.
    async fn next_any(&mut self) -> Option<XmlMessage> {
        let frame = self.frame().await?;
        Some(XmlMessage::decode(&frame, self.framing).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&frame))))
    }

    /// Answer `msg` if it is the PBX's SystemStatus.
    async fn answered_keepalive(&mut self, msg: &XmlMessage) -> bool {
        let XmlMessage::Csta(Apdu::Invoke(i)) = msg else { return false };
        if i.op != Op::Known(Operation::SystemStatus) {
            return false;
        }
        self.keepalives += 1;
        let answer = Apdu::result(i.invoke_id.unwrap_or(0), Operation::SystemStatus, Body::null());
        self.send(&XmlMessage::Csta(answer)).await;
        true
    }

    /// The next message other than the PBX's SystemStatus (answered here).
    async fn next(&mut self) -> Option<XmlMessage> {
        loop {
            let msg = self.next_any().await?;
            if !self.answered_keepalive(&msg).await {
                return Some(msg);
            }
        }
    }

    /// Read and answer the PBX's SystemStatus until `n` have come.
    async fn keepalives(&mut self, n: u64) {
        while self.keepalives < n {
            let msg = self.next_any().await.expect("a SystemStatus, not a close");
            assert!(self.answered_keepalive(&msg).await, "only SystemStatus expected: {msg:?}");
        }
    }

    async fn expect(&mut self) -> XmlMessage {
        self.next().await.expect("a message, not a close")
    }

    /// The result of request `id` (a response body), failing on anything else.
    async fn result(&mut self, id: i64) -> Body {
        match self.expect().await {
            XmlMessage::Csta(Apdu::Result(r)) => {
                assert_eq!(r.invoke_id, self.header_id(id), "the response carries the request's id");
                match r.result {
                    Some((_, Argument::Body(b))) => b,
                    other => panic!("no body: {other:?}"),
                }
            }
            other => panic!("expected the response of {id}, got {other:?}"),
        }
    }

    /// The invoke id a message carries on this framing (none without the header).
    fn header_id(&self, id: i64) -> Option<i64> {
        (self.framing == Framing::XmlHeader).then_some(id)
    }

    /// The next `n` call events: (cross-reference id, kind, event), checking their invoke id.
    async fn events(&mut self, n: usize) -> Vec<(Bytes, EventKind, CallEvent)> {
        let mut v = Vec::new();
        while v.len() < n {
            match self.expect().await {
                XmlMessage::Csta(Apdu::Invoke(i)) => {
                    assert_eq!(i.invoke_id, self.header_id(EVENT_INVOKE_ID), "events carry 9999");
                    let Argument::Event(ev) = i.argument else { panic!("not an event: {:?}", i.op) };
                    let Event::Call { kind, body } = ev.event else { panic!("not a call event") };
                    let e = csta::call_event(kind, &body).unwrap_or_else(|| panic!("{kind:?} without a call"));
                    v.push((ev.xref, kind, e));
                }
                other => panic!("expected an event, got {other:?}"),
            }
        }
        v
    }

    async fn start_session(&mut self, user: &str, password: &str, versions: &[ProtocolVersion], duration: u32) -> AppSession {
        let login = Some(Login { style: LoginStyle::SessionLoginInfo, user: user.into(), password: password.into() });
        let start = StartSession { application_id: "test".into(), login, protocol_versions: versions.iter().map(|v| v.namespace().to_owned()).collect(), duration: Some(duration) };
        self.send(&XmlMessage::Session { invoke_id: Some(1), msg: AppSession::Start(start) }).await;
        match self.expect().await {
            XmlMessage::Session { invoke_id, msg } => {
                assert_eq!(invoke_id, self.header_id(1));
                msg
            }
            other => panic!("expected the session's answer, got {other:?}"),
        }
    }

    async fn session(&mut self, msg: AppSession) -> AppSession {
        self.send(&XmlMessage::Session { invoke_id: Some(2), msg }).await;
        match self.expect().await {
            XmlMessage::Session { msg, .. } => msg,
            other => panic!("expected a session message, got {other:?}"),
        }
    }

    /// Every byte received so far, frame by frame: the header's length is the bytes the frame
    /// spans (header included), the invoke id is four digits, NUL ends each document, and each
    /// document is well-formed XML to quick-xml.
    fn check_wire(&self) {
        assert!(self.buf.is_empty(), "no partial frame left");
        let mut docs = Vec::new();
        match self.framing {
            Framing::XmlHeader => {
                let mut at = 0;
                while at < self.wire.len() {
                    let w = &self.wire[at..];
                    assert!(w.len() >= 8 && w[..2] == [0, 0], "header at {at}");
                    let len = usize::from(u16::from_be_bytes([w[2], w[3]]));
                    assert!(len > 8 && len <= w.len(), "length {len} at {at} beyond the {} bytes received", w.len());
                    assert!(w[4..8].iter().all(u8::is_ascii_digit), "invoke id at {at}");
                    docs.push(&w[8..len]);
                    at += len;
                }
                assert_eq!(at, self.wire.len());
            }
            Framing::XmlNul => {
                assert_eq!(self.wire.last(), Some(&0), "the last document ends with NUL");
                docs.extend(self.wire[..self.wire.len() - 1].split(|b| *b == 0));
            }
            other => panic!("{other:?}"),
        }
        assert!(!docs.is_empty());
        for d in docs {
            well_formed(d);
        }
    }
}

/// One document, strictly: UTF-8, one root, balanced and matching tags, attributes that parse,
/// only the predefined entities, nothing but whitespace outside the root.
fn well_formed(doc: &[u8]) {
    use quick_xml::events::Event as X;
    let text = std::str::from_utf8(doc).unwrap_or_else(|e| panic!("not UTF-8 ({e}): {}", String::from_utf8_lossy(doc)));
    let mut r = quick_xml::Reader::from_str(text);
    r.config_mut().check_end_names = true;
    r.config_mut().check_comments = true;
    let (mut depth, mut roots) = (0usize, 0usize);
    loop {
        match r.read_event().unwrap_or_else(|e| panic!("{e}: {text}")) {
            X::Start(e) => {
                roots += usize::from(depth == 0);
                depth += 1;
                e.attributes().with_checks(true).for_each(|a| drop(a.unwrap_or_else(|e| panic!("{e}: {text}"))));
            }
            X::Empty(e) => {
                roots += usize::from(depth == 0);
                e.attributes().with_checks(true).for_each(|a| drop(a.unwrap_or_else(|e| panic!("{e}: {text}"))));
            }
            X::End(_) => depth -= 1,
            X::Text(t) if depth == 0 => assert!(t.trim().is_empty(), "text outside the root: {text}"),
            X::GeneralRef(g) => {
                let name: &str = &g;
                assert!(matches!(name, "lt" | "gt" | "amp" | "quot" | "apos") || name.starts_with('#'), "entity {name}: {text}");
            }
            X::DocType(_) => panic!("a DTD: {text}"),
            X::Eof => break,
            _ => {}
        }
    }
    assert_eq!((depth, roots), (0, 1), "one balanced root: {text}");
}

fn xml_sim(extensions: &[&str], framing: Framing) -> SimConfig {
    let mut cfg = SimConfig::xml(extensions, framing);
    cfg.keepalive = None;
    for e in &mut cfg.extensions {
        e.behaviour = Behaviour::Answer { after: Duration::from_millis(20) };
    }
    cfg
}

async fn monitor(c: &mut Client, device: &str) -> Bytes {
    let id = c.request(Operation::MonitorStart, csta::monitor_start(device).unwrap()).await;
    let b = c.result(id).await;
    Bytes::copy_from_slice(b.octets(F::CrossRefIdentifier).expect("monitorCrossRefID"))
}

async fn make_call(c: &mut Client, from: &str, to: &str) -> CallId {
    let id = c.request(Operation::MakeCall, csta::make_call(from, to).unwrap()).await;
    let b = c.result(id).await;
    assert_eq!(b.connection(F::CallingDevice).and_then(|c| c.device_digits()).as_deref(), Some(from), "callingDevice's deviceID");
    csta::made_call(&b).expect("callingDevice's callID")
}

fn universal_failure(m: XmlMessage) -> (Option<i64>, ErrorCategory, Option<i64>) {
    match m {
        XmlMessage::Csta(Apdu::Error(e)) => match e.parameter {
            Some(ErrorParameter::UniversalFailure(u)) => (e.invoke_id, u.category, u.value),
            other => panic!("{other:?}"),
        },
        other => panic!("expected a CSTAErrorCode, got {other:?}"),
    }
}

#[tokio::test]
async fn sim_xml_session_login_versions_and_duration() {
    let mut cfg = xml_sim(&["2005"], Framing::XmlHeader);
    cfg.credentials = Some(("cti".into(), "s3cret".into()));
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();

    // A wrong password: refused, and the connection closes.
    let mut c = Client::connect(&sim).await;
    assert_eq!(c.start_session("cti", "wrong", &[ProtocolVersion::Ed4], 60).await, AppSession::StartNeg { error: "invalidApplicationInfo".into() });
    assert!(c.next().await.is_none(), "closed after the refusal");
    c.check_wire();

    // An edition it does not speak: refused too.
    let mut c = Client::connect(&sim).await;
    assert_eq!(c.start_session("cti", "s3cret", &[ProtocolVersion::Ed6], 60).await, AppSession::StartNeg { error: "requestedProtocolVersionNotSupported".into() });
    assert!(c.next().await.is_none());

    // The right login, ed6 then ed4 preferred: ed4 granted, the duration capped at an hour.
    let mut c = Client::connect(&sim).await;
    let AppSession::StartPos { session_id, protocol_version, duration } = c.start_session("cti", "s3cret", &[ProtocolVersion::Ed6, ProtocolVersion::Ed4], 7200).await else { panic!("refused") };
    assert!(!session_id.is_empty());
    assert_eq!((protocol_version.as_deref(), duration), (Some(ProtocolVersion::Ed4.namespace()), Some(3600)));
    assert_eq!(monitor(&mut c, "2005").await.as_ref(), b"1", "CSTA served in the session");
    c.check_wire();
}

#[tokio::test]
async fn sim_xml_csta_before_the_session_is_refused() {
    let sim = SimPbx::start(xml_sim(&["2005"], Framing::XmlHeader), "127.0.0.1:0").await.unwrap();
    let mut c = Client::connect(&sim).await;
    let id = c.request(Operation::MonitorStart, csta::monitor_start("2005").unwrap()).await;
    assert_eq!(universal_failure(c.expect().await), (Some(id), ErrorCategory::Security, Some(0)));
    assert!(matches!(c.start_session("any", "any", &[ProtocolVersion::Ed4], 60).await, AppSession::StartPos { .. }), "no login required: any is taken");
    assert_eq!(monitor(&mut c, "2005").await.as_ref(), b"1");
    assert_eq!(sim.stats().requests.get("MonitorStart"), Some(&1), "the refused request never reached the switch");
    c.check_wire();
}

#[tokio::test]
async fn sim_xml_proof_call_events_in_order_then_clear() {
    let mut sim = SimPbx::start(xml_sim(&["2005"], Framing::XmlHeader), "127.0.0.1:0").await.unwrap();
    let mut ivr = sim.take_ivr().unwrap();
    let mut c = Client::connect(&sim).await;
    assert!(matches!(c.start_session("u", "p", &[ProtocolVersion::Ed4], 60).await, AppSession::StartPos { .. }));
    let xref = monitor(&mut c, "2005").await;
    let call = make_call(&mut c, "2005", &format!("{IVR}*4711#")).await;
    let text = std::str::from_utf8(call.as_bytes()).unwrap();
    assert!(text.len() == 32 && text.chars().all(|ch| ch.is_ascii_hexdigit()), "an OpenScape-like call id: {text}");

    let got = c.events(5).await;
    let kinds: Vec<EventKind> = got.iter().map(|(_, k, _)| *k).collect();
    assert_eq!(kinds, [EventKind::ServiceInitiated, EventKind::Originated, EventKind::NetworkReached, EventKind::Delivered, EventKind::Established]);
    assert!(got.iter().all(|(x, _, e)| *x == xref && e.call() == &call), "every event on the monitor and the call: {got:?}");
    let IvrSignal::Connected { call: ivr_call, .. } = timeout(LIMIT, ivr.recv()).await.unwrap().unwrap() else { panic!("connected first") };
    assert_eq!(ivr_call.as_bytes(), call.as_bytes(), "the IVR names the call by its callID");
    assert_eq!(timeout(LIMIT, ivr.recv()).await.unwrap().unwrap(), IvrSignal::Digits { call: ivr_call.clone(), digits: "*4711#".into() });

    let id = c.request(Operation::ClearConnection, csta::clear_connection(&call, "2005")).await;
    c.result(id).await;
    let got = c.events(1).await;
    assert_eq!((got[0].1, got[0].2.call()), (EventKind::ConnectionCleared, &call));
    assert_eq!(timeout(LIMIT, ivr.recv()).await.unwrap().unwrap(), IvrSignal::Cleared { call: ivr_call });

    // A second call gets another id.
    let second = make_call(&mut c, "2005", IVR).await;
    assert_ne!(second, call);
    c.events(5).await;
    c.check_wire();
}

#[tokio::test]
async fn sim_xml_call_to_a_busy_extension_fails() {
    let mut cfg = xml_sim(&["2005", "2006"], Framing::XmlHeader);
    cfg.extensions[1].behaviour = Behaviour::Busy;
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut c = Client::connect(&sim).await;
    assert!(matches!(c.start_session("u", "p", &[], 60).await, AppSession::StartPos { .. }), "no version requested: its own");
    monitor(&mut c, "2005").await;
    let call = make_call(&mut c, "2005", "2006").await;
    let got = c.events(4).await;
    assert_eq!(got.iter().map(|(_, k, _)| *k).collect::<Vec<_>>(), [EventKind::ServiceInitiated, EventKind::Originated, EventKind::Delivered, EventKind::Failed]);
    assert_eq!(got[3].2, CallEvent::Failed { call, cause: Some(3) }, "busy");

    // A busy caller is refused at once; an unknown request gets serviceNotSupported.
    let id = c.request(Operation::MakeCall, csta::make_call("2006", IVR).unwrap()).await;
    assert_eq!(universal_failure(c.expect().await), (Some(id), ErrorCategory::StateIncompatibility, Some(19)));
    let raw = Bytes::from_static(b"<SystemRegister xmlns=\"http://www.ecma-international.org/standards/ecma-323/csta/ed4\"><requestTypes><systemStatus>true</systemStatus></requestTypes></SystemRegister>");
    c.send(&XmlMessage::Unknown { invoke_id: Some(77), name: "SystemRegister".into(), raw }).await;
    assert_eq!(universal_failure(c.expect().await), (Some(77), ErrorCategory::Operation, Some(50)));
    c.check_wire();
}

#[tokio::test]
async fn sim_xml_system_status_then_reset_then_the_session_lapses() {
    let mut cfg = xml_sim(&["2005"], Framing::XmlHeader);
    cfg.keepalive = Some(Duration::from_millis(100));
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut c = Client::connect(&sim).await;
    let AppSession::StartPos { session_id, duration, .. } = c.start_session("u", "p", &[ProtocolVersion::Ed4], 1).await else { panic!() };
    assert_eq!(duration, Some(1));
    assert_eq!(c.session(AppSession::ResetTimer { session_id: "nope".into(), duration: Some(1) }).await, AppSession::ResetTimerNeg { error: "invalidSessionID".into() });
    assert_eq!(c.session(AppSession::ResetTimer { session_id: session_id.clone(), duration: Some(1) }).await, AppSession::ResetTimerPos { duration: Some(1) });
    // No more resets: the PBX ends the session and closes, its keep-alives answered meanwhile.
    assert_eq!(c.expect().await, XmlMessage::Session { invoke_id: Some(EVENT_INVOKE_ID), msg: AppSession::Terminated { session_id: Some(session_id), reason: "sessionTimerExpired".into() } });
    assert!(c.next().await.is_none(), "closed after the termination");
    assert!(c.keepalives >= 1, "the PBX's SystemStatus arrived");
    let s = timeout(LIMIT, sim.wait_stats(|s| s.keepalives_answered >= 1)).await.expect("the answer matched");
    assert_eq!(s.unexpected_responses, 0, "every SystemStatusResponse matched its request");
    c.check_wire();
}

#[tokio::test]
async fn sim_xml_stop_session_closes() {
    let sim = SimPbx::start(xml_sim(&["2005"], Framing::XmlHeader), "127.0.0.1:0").await.unwrap();
    let mut c = Client::connect(&sim).await;
    let AppSession::StartPos { session_id, .. } = c.start_session("u", "p", &[ProtocolVersion::Ed4], 60).await else { panic!() };
    assert_eq!(c.session(AppSession::Stop { session_id: "nope".into() }).await, AppSession::StopNeg { error: "invalidSessionID".into() });
    assert_eq!(c.session(AppSession::Stop { session_id }).await, AppSession::StopPos);
    assert!(c.next().await.is_none());
    assert_eq!(timeout(LIMIT, sim.wait_stats(|s| s.releases >= 1)).await.expect("a release").releases, 1);
    c.check_wire();
}

#[tokio::test]
async fn sim_xml_nul_framing_without_a_session_serves_at_once() {
    let mut cfg = xml_sim(&["2005"], Framing::XmlNul);
    cfg.xml.session = false;
    cfg.keepalive = Some(Duration::from_millis(50));
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut c = Client::connect(&sim).await;
    let xref = monitor(&mut c, "2005").await;
    let call = make_call(&mut c, "2005", IVR).await;
    let got = c.events(5).await;
    assert!(got.iter().all(|(x, _, e)| *x == xref && e.call() == &call));
    assert_eq!(got[4].1, EventKind::Established);
    // Its keep-alives, answered without invoke ids, are matched by operation.
    c.keepalives(2).await;
    let s = timeout(LIMIT, sim.wait_stats(|s| s.keepalives_answered >= 2)).await.expect("both answers matched");
    assert_eq!(s.unexpected_responses, 0);
    c.check_wire();
}

#[tokio::test]
async fn sim_xml_faults_split_malformed_and_bad_documents() {
    let sim = SimPbx::start(xml_sim(&["2005"], Framing::XmlHeader), "127.0.0.1:0").await.unwrap();
    sim.faults().split_frames = true;
    let mut c = Client::connect(&sim).await;
    assert!(matches!(c.start_session("u", "p", &[ProtocolVersion::Ed4], 60).await, AppSession::StartPos { .. }), "byte by byte");
    sim.faults().split_frames = false;
    c.check_wire();

    // A document of ours that does not parse: an error on its invoke id, the link goes on.
    c.send_raw(b"0042<MonitorStart><monitorObject>").await;
    assert_eq!(universal_failure(c.expect().await).0, Some(42));

    // Malformed frames: a truncated document before the good one.
    sim.faults().malformed_every = Some(1);
    let id = c.request(Operation::MonitorStart, csta::monitor_start("2005").unwrap()).await;
    let bad = c.frame().await.unwrap();
    assert!(XmlMessage::decode(&bad, Framing::XmlHeader).is_err(), "{}", String::from_utf8_lossy(&bad));
    let good = c.frame().await.unwrap();
    sim.faults().malformed_every = None;
    let Ok(XmlMessage::Csta(Apdu::Result(r))) = XmlMessage::decode(&good, Framing::XmlHeader) else { panic!("{}", String::from_utf8_lossy(&good)) };
    assert_eq!(r.invoke_id, Some(id));

    // The CTI process restarts: the link drops, the numbering starts again.
    sim.restart_cti();
    assert!(c.next().await.is_none());
    let mut c = Client::connect(&sim).await;
    assert!(matches!(c.start_session("u", "p", &[ProtocolVersion::Ed4], 60).await, AppSession::StartPos { .. }));
    assert_eq!(monitor(&mut c, "2005").await.as_ref(), b"1");
}
