//! The sans-IO link [`Session`] over CSTA XML (ECMA-323 with ECMA-354 sessions), in memory: the
//! application session opened, refused, renewed before it lapses, terminated by the PBX and
//! stopped by us; CSTA requests, answers, errors and events as XML documents with their header
//! invoke ids (or, with NUL framing, none); the PBX's keep-alive and unknown requests answered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cstagate::codec::body::FieldName as F;
use cstagate::codec::xml::{AppSession, Login, LoginStyle, XmlMessage};
use cstagate::codec::{Apdu, Argument, Framer, Framing, Op, Operation};
use cstagate::config::{LinkProfile, XmlProfile};
use cstagate::csta::{self, CallId};
use cstagate::codec::values::Secret;
use cstagate::link::{LinkLoss, RequestError, Session, SessionEvent, Stats};

const NS: &str = "http://www.ecma-international.org/standards/ecma-323/csta/ed4";
const CONNECT: Duration = Duration::from_secs(5);

fn profile(framing: Framing, session: bool) -> LinkProfile {
    let login = Some(Login { style: LoginStyle::SessionLoginInfo, user: "ctiuser".into(), password: Secret::from("s3cret-pw".to_owned()) });
    LinkProfile {
        max_requests_per_second: 1000.0,
        connect_timeout: CONNECT,
        xml: Some(XmlProfile { session_duration: Duration::from_secs(60), login, session, ..XmlProfile::new() }),
        ..LinkProfile::xml("x", "127.0.0.1:1", framing)
    }
}

struct T {
    s: Session,
    stats: Arc<Stats>,
    t0: Instant,
    framing: Framing,
    framer: Framer,
    wire: BytesMut,
}

impl T {
    fn new(framing: Framing, session: bool) -> T {
        let t0 = Instant::now();
        let stats = Arc::new(Stats::default());
        let s = Session::new(Arc::new(profile(framing, session)), stats.clone(), t0);
        T { s, stats, t0, framing, framer: Framer::new(framing), wire: BytesMut::new() }
    }
    /// A session whose StartApplicationSession was granted (60 s).
    fn up() -> T {
        let mut t = T::new(Framing::XmlHeader, true);
        let sent = t.sent();
        assert!(matches!(&sent[..], [XmlMessage::Session { msg: AppSession::Start(_), .. }]), "{sent:?}");
        t.feed(1, "0000", "<StartApplicationSessionPosResponse xmlns=\"http://www.ecma-international.org/standards/ecma-354/appl_session\"><sessionID>S-17</sessionID><actualProtocolVersion>http://www.ecma-international.org/standards/ecma-323/csta/ed4</actualProtocolVersion><actualSessionDuration>60</actualSessionDuration></StartApplicationSessionPosResponse>");
        assert_eq!(t.events(), vec![SessionEvent::Up]);
        t
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }
    /// The PBX writes one document with invoke id `id` (ignored with NUL framing).
    fn feed(&mut self, ms: u64, id: &str, doc: &str) {
        let payload = if self.framing == Framing::XmlHeader { format!("{id}{doc}") } else { doc.to_owned() };
        let mut buf = BytesMut::from(&self.framing.frame(payload.as_bytes()).expect("frames")[..]);
        let now = self.at(ms);
        self.s.handle_input(now, &mut buf);
    }
    /// What the session wrote since last asked, decoded (and each frame as text).
    fn sent_raw(&mut self) -> Vec<(XmlMessage, String)> {
        while let Some(b) = self.s.poll_transmit() {
            self.wire.extend_from_slice(&b);
        }
        let mut v = Vec::new();
        while let Some(f) = self.framer.decode(&mut self.wire).expect("well-framed") {
            let text = String::from_utf8(f.to_vec()).expect("UTF-8");
            v.push((XmlMessage::decode(&f, self.framing).unwrap_or_else(|e| panic!("{e}: {text}")), text));
        }
        v
    }
    fn sent(&mut self) -> Vec<XmlMessage> {
        self.sent_raw().into_iter().map(|(m, _)| m).collect()
    }
    fn events(&mut self) -> Vec<SessionEvent> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }
}

#[test]
fn the_session_opens_with_the_login_and_version_and_only_then_requests_flow() {
    let mut t = T::new(Framing::XmlHeader, true);
    let sent = t.sent_raw();
    let [(XmlMessage::Session { invoke_id, msg: AppSession::Start(start) }, text)] = &sent[..] else { panic!("{sent:?}") };
    assert_eq!(*invoke_id, Some(0));
    assert_eq!(start.application_id, "cstagate");
    assert_eq!(start.protocol_versions, vec![format!("{NS}")]);
    assert_eq!(start.duration, Some(60));
    let login = start.login.as_ref().expect("login");
    assert_eq!((login.style, login.user.as_str(), login.password.expose().as_ref()), (LoginStyle::SessionLoginInfo, "ctiuser", &b"s3cret-pw"[..]));
    assert!(text.contains("<SessionLoginInfo><userName>ctiuser</userName><password>s3cret-pw</password></SessionLoginInfo>"), "{text}");
    assert!(!t.s.is_up());
    assert_eq!(t.s.request(t.at(1), Operation::MakeCall, csta::make_call("2005", "0800").unwrap()), Err(RequestError::LinkDown), "nothing before the session");
    assert!(t.sent().is_empty());
    t.feed(2, "0000", "<StartApplicationSessionPosResponse><sessionID>S</sessionID></StartApplicationSessionPosResponse>");
    assert_eq!(t.events(), vec![SessionEvent::Up]);
}

#[test]
fn a_refused_or_unanswered_session_ends_the_connection_with_its_reason() {
    let mut t = T::new(Framing::XmlHeader, true);
    t.sent();
    t.feed(1, "0000", "<StartApplicationSessionNegResponse><errorCode><definedError>invalidApplicationInfo</definedError></errorCode></StartApplicationSessionNegResponse>");
    assert_eq!(t.events(), vec![SessionEvent::Lost(LinkLoss::SessionRefused("invalidApplicationInfo".into()))]);
    assert!(t.s.is_dead());

    let mut t = T::new(Framing::XmlHeader, true);
    assert_eq!(t.s.poll_timeout(), Some(t.at(CONNECT.as_millis() as u64)));
    t.s.handle_timeout(t.at(CONNECT.as_millis() as u64 - 1));
    assert!(t.events().is_empty(), "not before the connect timeout");
    t.s.handle_timeout(t.at(CONNECT.as_millis() as u64));
    assert_eq!(t.events(), vec![SessionEvent::Lost(LinkLoss::NoSessionAnswer)]);
    assert_eq!(LinkLoss::SessionRefused("x".into()).to_string(), "application session refused: x");
}

#[test]
fn the_session_is_renewed_at_half_its_duration_and_ends_when_the_pbx_terminates_it() {
    let mut t = T::up();
    // Keep-alive traffic from the PBX so that the keep-alive does not interfere.
    for s in [10u64, 20] {
        t.feed(s * 1000, "0042", "<SystemStatus><systemStatus>normal</systemStatus></SystemStatus>");
    }
    let answers = t.sent_raw();
    assert_eq!(answers.len(), 2, "each SystemStatus answered");
    assert!(answers.iter().all(|(m, text)| m.invoke_id() == Some(42) && text.starts_with("0042") && text.contains("<SystemStatusResponse")), "{answers:?}");
    assert!(t.s.poll_timeout().is_some_and(|w| w <= t.at(30_001)), "the renewal is due at 30 s");
    t.s.handle_timeout(t.at(29_999));
    assert!(t.sent().is_empty(), "not before half the duration");
    t.s.handle_timeout(t.at(30_001));
    assert_eq!(t.sent(), vec![XmlMessage::Session { invoke_id: Some(0), msg: AppSession::ResetTimer { session_id: "S-17".into(), duration: Some(60) } }]);
    t.feed(30_100, "0000", "<ResetApplicationSessionTimerPosResponse><actualSessionDuration>40</actualSessionDuration></ResetApplicationSessionTimerPosResponse>");
    assert!(t.events().is_empty());
    assert!(t.s.is_up());
    t.feed(31_000, "9999", "<ApplicationSessionTerminated><sessionID>S-17</sessionID><sessionTermReason><definedTermReason>invalidSessionID</definedTermReason></sessionTermReason></ApplicationSessionTerminated>");
    assert_eq!(t.events(), vec![SessionEvent::Lost(LinkLoss::SessionTerminated("invalidSessionID".into()))]);
}

#[test]
fn requests_answers_errors_and_events_travel_as_documents_with_their_invoke_ids() {
    let mut t = T::up();
    let device: Arc<str> = "2005".into();
    assert!(!t.s.monitor(t.at(2), &device));
    let sent = t.sent_raw();
    let [(XmlMessage::Csta(Apdu::Invoke(ms)), text)] = &sent[..] else { panic!("{sent:?}") };
    assert_eq!(ms.op, Op::Known(Operation::MonitorStart));
    assert!(text.starts_with("0001") && text.contains("<monitorObject><deviceObject>2005</deviceObject></monitorObject>"), "{text}");
    t.feed(3, "0001", &format!("<MonitorStartResponse xmlns=\"{NS}\"><monitorCrossRefID>5511</monitorCrossRefID></MonitorStartResponse>"));
    assert_eq!(t.events(), vec![SessionEvent::MonitorStarted { device: device.clone() }]);

    let mc = t.s.request(t.at(4), Operation::MakeCall, csta::make_call("2005", "0800100200*12345678#").unwrap()).unwrap();
    let cc = t.s.request(t.at(4), Operation::ClearConnection, csta::clear_connection(&CallId::from(&b"A1"[..]), "2005")).unwrap();
    let sent = t.sent();
    assert_eq!(sent.iter().map(XmlMessage::invoke_id).collect::<Vec<_>>(), vec![Some(2), Some(3)]);
    // Answered out of order: an error for the second, the result for the first.
    t.feed(5, "0003", "<CSTAErrorCode><stateIncompatibility>invalidObjectState</stateIncompatibility></CSTAErrorCode>");
    t.feed(6, "0002", "<MakeCallResponse><callingDevice><callID>FF000100000000004A7F8F4F3C0E0000</callID><deviceID>N&lt;2005&gt;;noa=nk</deviceID></callingDevice></MakeCallResponse>");
    let ev = t.events();
    assert!(matches!(&ev[0], SessionEvent::Completed { id, result: Err(RequestError::Failure(u)) } if *id == cc && u.value == Some(2)), "{ev:?}");
    let SessionEvent::Completed { id, result: Ok(body) } = &ev[1] else { panic!("{ev:?}") };
    assert_eq!(*id, mc);
    assert_eq!(csta::made_call(body), Some(CallId::from(&b"FF000100000000004A7F8F4F3C0E0000"[..])));
    assert_eq!(body.connection(F::CallingDevice).and_then(|c| c.device_digits()).as_deref(), Some("2005"));

    t.feed(7, "9999", "<OriginatedEvent><monitorCrossRefID>5511</monitorCrossRefID><originatedConnection><callID>FF00</callID><deviceID>2005</deviceID></originatedConnection><callingDevice><deviceIdentifier>2005</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>0800</deviceIdentifier></calledDevice><localConnectionInfo>connected</localConnectionInfo><cause>newCall</cause></OriginatedEvent>");
    t.feed(7, "9999", "<OriginatedEvent><monitorCrossRefID>9</monitorCrossRefID><originatedConnection><callID>FF01</callID></originatedConnection></OriginatedEvent>");
    let ev = t.events();
    let [SessionEvent::Event { device: d, report }] = &ev[..] else { panic!("one routed event: {ev:?}") };
    assert_eq!(d, &device);
    assert_eq!(report.event.kind().and_then(|k| csta::call_event(k, report.event.body()?)).map(|e| e.call().clone()), Some(CallId::from(&b"FF00"[..])));
    assert_eq!(t.stats.snapshot().events_unrouted, 1, "an unknown cross-reference id is counted, not routed");
}

#[test]
fn unknown_requests_get_an_error_and_an_undecodable_answer_fails_its_request_alone() {
    let mut t = T::up();
    t.feed(2, "0007", "<SystemRegister><requestTypes><systemStatus>true</systemStatus></requestTypes></SystemRegister>");
    let sent = t.sent_raw();
    let [(XmlMessage::Csta(Apdu::Error(e)), text)] = &sent[..] else { panic!("{sent:?}") };
    assert_eq!(e.invoke_id, Some(7));
    assert!(text.contains("<operation>serviceNotSupported</operation>"), "{text}");

    let id = t.s.request(t.at(3), Operation::MakeCall, csta::make_call("2005", "0800").unwrap()).unwrap();
    let inv = t.sent()[0].invoke_id().expect("id");
    t.feed(4, &format!("{inv:04}"), "<MakeCallResponse><callingDevice><callID>1</callID></callingDevice>");
    let ev = t.events();
    assert!(matches!(&ev[..], [SessionEvent::Completed { id: i, result: Err(RequestError::Decode { operation: Operation::MakeCall, .. }) }] if *i == id), "{ev:?}");
    assert!(t.sent().is_empty(), "ECMA-323 has no reject for a broken answer: nothing is sent");
    assert!(t.s.is_up(), "and the link goes on");
}

#[test]
fn nul_framing_without_a_session_matches_answers_to_the_oldest_request_of_their_operation() {
    let mut t = T::new(Framing::XmlNul, false);
    assert_eq!(t.events(), vec![SessionEvent::Up], "no session: up at once");
    let a = t.s.request(t.at(1), Operation::MakeCall, csta::make_call("2005", "0800").unwrap()).unwrap();
    let b = t.s.request(t.at(2), Operation::ClearConnection, csta::clear_connection(&CallId::from(&b"7"[..]), "2005")).unwrap();
    let c = t.s.request(t.at(3), Operation::MakeCall, csta::make_call("2006", "0800").unwrap()).unwrap();
    let sent = t.sent_raw();
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|(m, text)| m.invoke_id().is_none() && text.starts_with("<?xml")), "no header, no id: {sent:?}");
    t.feed(4, "", "<ClearConnectionResponse/>");
    t.feed(5, "", "<MakeCallResponse><callingDevice><callID>11</callID><deviceID>2005</deviceID></callingDevice></MakeCallResponse>");
    t.feed(6, "", "<CSTAErrorCode><operation>invalidCallingDeviceID</operation></CSTAErrorCode>");
    let ev = t.events();
    assert!(matches!(&ev[0], SessionEvent::Completed { id, result: Ok(_) } if *id == b), "{ev:?}");
    assert!(matches!(&ev[1], SessionEvent::Completed { id, result: Ok(r) } if *id == a && csta::made_call(r) == Some(CallId::from(&b"11"[..]))), "{ev:?}");
    assert!(matches!(&ev[2], SessionEvent::Completed { id, result: Err(RequestError::Failure(u)) } if *id == c && u.value == Some(5)), "{ev:?}");
    t.feed(7, "", "<SystemStatus><systemStatus>normal</systemStatus></SystemStatus>");
    let sent = t.sent();
    assert!(matches!(&sent[..], [XmlMessage::Csta(Apdu::Result(r))] if matches!(&r.result, Some((Op::Known(Operation::SystemStatus), Argument::Body(_))))), "{sent:?}");
}

#[test]
fn closing_stops_the_session_and_waits_for_its_answer() {
    let mut t = T::up();
    t.s.close(t.at(2));
    assert_eq!(t.sent(), vec![XmlMessage::Session { invoke_id: Some(0), msg: AppSession::Stop { session_id: "S-17".into() } }]);
    assert!(t.events().is_empty());
    t.feed(3, "0000", "<StopApplicationSessionPosResponse/>");
    assert_eq!(t.events(), vec![SessionEvent::Closed]);
}

#[test]
fn logs_show_no_password_and_no_context_digits() {
    let doc = "0000<StartApplicationSession><applicationInfo><applicationSpecificInfo><ns1:SessionLoginInfo xmlns:ns1=\"urn:s\"><ns1:userName>u</ns1:userName><ns1:password>s3cret-pw</ns1:password></ns1:SessionLoginInfo><user>v</user><password type=\"x\">other-pw</password><passwordHint>ok</passwordHint></applicationSpecificInfo></applicationInfo></StartApplicationSession>";
    let shown = cstagate::codec::xml::for_log(doc.as_bytes());
    assert!(!shown.contains("s3cret-pw") && !shown.contains("other-pw"), "{shown}");
    assert!(shown.contains("<ns1:userName>u</ns1:userName>") && shown.contains("<passwordHint>ok</passwordHint>"), "only passwords are hidden: {shown}");
    let call = "0002<MakeCall><callingDevice>2005</callingDevice><calledDirectoryNumber>0800100200*12345678#</calledDirectoryNumber></MakeCall>";
    let shown = cstagate::codec::xml::for_log(call.as_bytes());
    assert!(shown.contains("0800100200*XXXXXXXX#"), "{shown}");
}
