//! The sans-IO link [`Session`] in memory: no socket, no runtime, explicit `Instant`s. Bytes
//! the PBX sends are fed with `handle_input`; what the session writes is read back from
//! `poll_transmit` and decoded with the codec; outcomes come from `poll_event` in wire order.
//! At the end, the ordered delivery of a [`Port`] through the real driver (loopback TCP against a
//! scripted PBX: the order in which results and events are written is the order asserted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cstagate::codec::apdu::{ErrorCategory, Event, EventReport};
use cstagate::codec::body::{FieldName as F, Value};
use cstagate::codec::{Apdu, Body, ConnectionId, DeviceId, Dialect, EventKind, Framer, Framing, LocalDevice, Op, Operation, RejectProblem};
use cstagate::association::CallId;
use cstagate::config::LinkProfile;
use cstagate::link::{Delivery, Link, LinkLoss, LinkState, RequestError, RequestId, Session, SessionEvent, Stats, LATE_RESULTS_KEPT, LATE_RESULT_WINDOW};

const D: Dialect = Dialect::Phase3;
const FR: Framing = Framing::TwoByteLength;
const TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE: Duration = Duration::from_secs(30);

fn profile() -> LinkProfile {
    LinkProfile { request_timeout: TIMEOUT, keepalive: KEEPALIVE, max_requests_per_second: 1000.0, ..LinkProfile::new("t", "127.0.0.1:1", FR, D) }
}

fn aare() -> Apdu {
    Apdu::Aare(
        Body::new()
            .with(F::ProtocolVersion, Value::Raw(Bytes::from_static(&[0x80, 0x02, 0x07, 0x80])))
            .with(F::ApplicationContextName, Value::Oid(Bytes::from_static(&[0x2B, 0x0C, 0x00, 0x81, 0x5A])))
            .with(F::Result, Value::Int(0))
            .with(F::ResultSourceDiagnostic, Value::Diagnostic { source: 1, value: 0 }),
    )
}

fn framed(a: &Apdu) -> Vec<u8> {
    FR.frame(&a.to_vec(D).expect("encodes")).expect("frames").to_vec()
}

fn make_call() -> Body {
    let dev = |s: &str| Value::DeviceId(DeviceId::dialing(s).expect("ASCII"));
    Body::new().with(F::CallingDevice, dev("2005")).with(F::CalledDirectoryNumber, dev("0800100200"))
}

fn event(xref: &[u8]) -> Apdu {
    let conn = ConnectionId { call: Some(Bytes::from_static(&[1, 2])), device: Some(LocalDevice::Static(DeviceId::dialing("2005").expect("ASCII"))) };
    Apdu::event(900, EventReport { xref: Bytes::copy_from_slice(xref), extensions: None, event: Event::Call { kind: EventKind::ServiceInitiated, body: Body::new().with(F::InitiatedConnection, Value::Connection(conn)) } })
}

/// A session and the PBX's view of it.
struct T {
    s: Session,
    stats: Arc<Stats>,
    t0: Instant,
    /// The PBX's reading side of what the session wrote.
    framer: Framer,
    wire: BytesMut,
}

impl T {
    /// A session past its AARE, at `t0`.
    fn up() -> T {
        let t0 = Instant::now();
        let stats = Arc::new(Stats::default());
        let s = Session::new(Arc::new(profile()), stats.clone(), t0);
        let mut t = T { s, stats, t0, framer: Framer::new(FR), wire: BytesMut::new() };
        assert!(matches!(t.sent()[..], [Apdu::Aarq(_)]), "the AARQ goes first");
        t.feed(0, &[aare()]);
        assert_eq!(t.events(), vec![SessionEvent::Up]);
        assert!(t.s.is_up());
        t
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }
    fn feed(&mut self, ms: u64, apdus: &[Apdu]) {
        let mut buf = BytesMut::new();
        for a in apdus {
            buf.extend_from_slice(&framed(a));
        }
        let now = self.at(ms);
        self.s.handle_input(now, &mut buf);
        assert!(buf.is_empty() || self.s.is_dead(), "whole frames are all taken while alive");
    }
    /// What the session wrote since last asked, decoded.
    fn sent(&mut self) -> Vec<Apdu> {
        while let Some(b) = self.s.poll_transmit() {
            self.wire.extend_from_slice(&b);
        }
        let mut v = Vec::new();
        while let Some(f) = self.framer.decode(&mut self.wire).expect("the session writes well-framed APDUs") {
            v.push(Apdu::decode(&f, D).expect("the session writes decodable APDUs"));
        }
        v
    }
    fn events(&mut self) -> Vec<SessionEvent> {
        std::iter::from_fn(|| self.s.poll_event()).collect()
    }
    /// Request at `ms`; the invoke id it went out with.
    fn request(&mut self, ms: u64, op: Operation, body: Body) -> (RequestId, i64) {
        let now = self.at(ms);
        let id = self.s.request(now, op, body).expect("queued");
        let sent = self.sent();
        let [Apdu::Invoke(inv)] = &sent[..] else { panic!("one invoke expected, got {sent:?}") };
        assert_eq!(inv.op, Op::Known(op));
        (id, inv.invoke_id.expect("invoke id"))
    }
    /// Monitor `device` and answer the MonitorStart with `xref`.
    fn monitored(&mut self, ms: u64, device: &str, xref: &[u8]) -> Arc<str> {
        let device: Arc<str> = device.into();
        let now = self.at(ms);
        assert!(!self.s.monitor(now, &device), "not monitored yet");
        let sent = self.sent();
        let [Apdu::Invoke(inv)] = &sent[..] else { panic!("a MonitorStart expected, got {sent:?}") };
        let id = inv.invoke_id.expect("id");
        self.feed(ms, &[Apdu::result(id, Operation::MonitorStart, Body::new().with(F::CrossRefIdentifier, Value::Octets(Bytes::copy_from_slice(xref))))]);
        assert_eq!(self.events(), vec![SessionEvent::MonitorStarted { device: device.clone() }]);
        device
    }
}

#[test]
fn results_errors_and_rejects_answer_their_own_invoke_once() {
    let mut t = T::up();
    let (a, ia) = t.request(1, Operation::MakeCall, make_call());
    let (b, ib) = t.request(2, Operation::MakeCall, make_call());
    let (c, ic) = t.request(3, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2)));
    assert_ne!(ia, ib);
    // Answered out of order, with a duplicate.
    t.feed(10, &[Apdu::universal_failure(ib, ErrorCategory::StateIncompatibility, Some(2)), Apdu::result(ia, Operation::MakeCall, Body::null()), Apdu::reject(Some(ic), RejectProblem::Invoke(1)), Apdu::result(ia, Operation::MakeCall, Body::null())]);
    let ev = t.events();
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(matches!(&ev[0], SessionEvent::Completed { id, result: Err(RequestError::Failure(u)) } if *id == b && u.value == Some(2)), "{ev:?}");
    assert!(matches!(&ev[1], SessionEvent::Completed { id, result: Ok(_) } if *id == a), "{ev:?}");
    assert_eq!(ev[2], SessionEvent::Completed { id: c, result: Err(RequestError::Rejected(RejectProblem::Invoke(1))) });
    let s = t.stats.snapshot();
    assert_eq!((s.requests_ok, s.requests_failed, s.unexpected_responses, s.rejects_received), (1, 2, 1, 1));
    assert_eq!((s.latency_avg_us, s.latency_max_us), (9_000, 9_000), "latency is measured on the session's clock");
    assert_eq!(t.s.outstanding(), 0);
}

#[test]
fn a_request_times_out_on_handle_timeout_and_its_late_result_comes_once() {
    let mut t = T::up();
    let (id, invoke) = t.request(0, Operation::MakeCall, make_call());
    let deadline = t.at(0) + TIMEOUT;
    assert_eq!(t.s.poll_timeout(), Some(deadline), "the request's deadline comes before the keep-alive");
    t.s.handle_timeout(deadline - Duration::from_millis(1));
    assert_eq!(t.events(), vec![], "not yet");
    t.s.handle_timeout(deadline);
    assert_eq!(t.events(), vec![SessionEvent::Completed { id, result: Err(RequestError::Timeout) }]);
    assert_eq!(t.stats.snapshot().requests_timed_out, 1);
    assert!(t.s.awaits_late_result(id));
    // The PBX carried it out after all: its result is the request's late result, once.
    let placed = cstagate::csta::make_call_result(&CallId::from(vec![7, 7]), "2005");
    t.feed(6_000, &[Apdu::result(invoke, Operation::MakeCall, placed.clone())]);
    let ev = t.events();
    assert!(matches!(&ev[..], [SessionEvent::LateResult { id: late, op: Operation::MakeCall, body }] if *late == id && cstagate::csta::made_call(body) == Some(CallId::from(vec![7, 7]))), "{ev:?}");
    assert!(!t.s.awaits_late_result(id));
    t.feed(6_001, &[Apdu::result(invoke, Operation::MakeCall, placed)]);
    assert_eq!(t.events(), vec![], "answered once: a second copy is unexpected");
    let s = t.stats.snapshot();
    assert_eq!((s.late_answers, s.unexpected_responses, s.requests_ok), (1, 1, 0));
    assert!(t.s.is_up());
}

#[test]
fn a_result_for_an_invoke_id_never_issued_is_unexpected_not_late() {
    let mut t = T::up();
    let (id, invoke) = t.request(0, Operation::MakeCall, make_call());
    t.s.handle_timeout(t.at(0) + TIMEOUT);
    assert_eq!(t.events(), vec![SessionEvent::Completed { id, result: Err(RequestError::Timeout) }]);
    // Ids the session never sent, and one it sent but did not give up on (answered in time).
    let (answered, answered_invoke) = t.request(5_000, Operation::SnapshotDevice, Body::new().with(F::SnapshotObject, Value::DeviceId(DeviceId::dialing("2005").expect("ASCII"))));
    t.feed(5_001, &[Apdu::result(answered_invoke, Operation::SnapshotDevice, Body::null())]);
    assert!(matches!(&t.events()[..], [SessionEvent::Completed { id, result: Ok(_) }] if *id == answered));
    t.feed(5_002, &[Apdu::result(invoke + 100, Operation::MakeCall, Body::null()), Apdu::result(answered_invoke, Operation::SnapshotDevice, Body::null()), Apdu::universal_failure(invoke + 101, ErrorCategory::StateIncompatibility, Some(2))]);
    assert_eq!(t.events(), vec![]);
    let s = t.stats.snapshot();
    assert_eq!((s.late_answers, s.unexpected_responses), (0, 3));
    assert!(t.s.awaits_late_result(id), "the request given up on is still remembered");
}

#[test]
fn a_late_error_or_reject_is_dropped_and_the_request_forgotten() {
    let mut t = T::up();
    let (a, ia) = t.request(0, Operation::MakeCall, make_call());
    let (b, ib) = t.request(1, Operation::MakeCall, make_call());
    t.s.handle_timeout(t.at(1) + TIMEOUT);
    assert_eq!(t.events(), vec![SessionEvent::Completed { id: a, result: Err(RequestError::Timeout) }, SessionEvent::Completed { id: b, result: Err(RequestError::Timeout) }]);
    // The PBX refused them after all: nothing was placed, nothing to deliver.
    t.feed(6_000, &[Apdu::universal_failure(ia, ErrorCategory::StateIncompatibility, Some(2)), Apdu::reject(Some(ib), RejectProblem::Invoke(1))]);
    assert_eq!(t.events(), vec![]);
    let s = t.stats.snapshot();
    assert_eq!((s.late_answers, s.unexpected_responses, s.rejects_received), (1, 0, 1), "a late error is a late answer, not an unexpected one");
    assert!(!t.s.awaits_late_result(a) && !t.s.awaits_late_result(b));
    // Answered: a result now is unexpected.
    t.feed(6_001, &[Apdu::result(ia, Operation::MakeCall, Body::null()), Apdu::result(ib, Operation::MakeCall, Body::null())]);
    assert_eq!(t.events(), vec![]);
    assert_eq!(t.stats.snapshot().unexpected_responses, 2);
}

#[test]
fn requests_given_up_on_are_forgotten_with_the_connection() {
    let mut t = T::up();
    let (id, _) = t.request(0, Operation::MakeCall, make_call());
    t.s.handle_timeout(t.at(0) + TIMEOUT);
    assert_eq!(t.events(), vec![SessionEvent::Completed { id, result: Err(RequestError::Timeout) }]);
    assert!(t.s.awaits_late_result(id));
    t.s.connection_lost(LinkLoss::ClosedByPeer);
    assert_eq!(t.events(), vec![SessionEvent::Lost(LinkLoss::ClosedByPeer)]);
    assert!(!t.s.awaits_late_result(id), "invoke ids are per connection: no late result can come");
}

#[test]
fn a_late_result_after_the_window_is_unexpected() {
    let mut t = T::up();
    let (a, ia) = t.request(0, Operation::MakeCall, make_call());
    let (b, ib) = t.request(1, Operation::MakeCall, make_call());
    t.s.handle_timeout(t.at(0) + TIMEOUT);
    t.s.handle_timeout(t.at(1) + TIMEOUT);
    assert_eq!(t.events().len(), 2);
    let window = TIMEOUT * LATE_RESULT_WINDOW;
    // a was given up on 1 ms before b: at the end of a's window, b's has a millisecond to go.
    let end_of_a = t.at(0) + TIMEOUT + window;
    let t0 = t.t0;
    let ms = |i: Instant| (i - t0).as_millis() as u64;
    t.feed(ms(end_of_a) - 1, &[Apdu::result(ib, Operation::MakeCall, Body::null())]);
    assert_eq!(t.events(), vec![SessionEvent::LateResult { id: b, op: Operation::MakeCall, body: Body::null() }], "within its window");
    t.feed(ms(end_of_a), &[Apdu::result(ia, Operation::MakeCall, Body::null())]);
    assert_eq!(t.events(), vec![], "past its window: forgotten");
    assert!(!t.s.awaits_late_result(a));
    let s = t.stats.snapshot();
    assert_eq!((s.late_answers, s.unexpected_responses), (1, 1));
}

#[test]
fn beyond_the_cap_the_oldest_request_given_up_on_is_forgotten_first() {
    let mut t = T::up();
    // One more than the session keeps, a millisecond apart (the rate limiter's pace).
    let sent: Vec<(RequestId, i64)> = (0..=LATE_RESULTS_KEPT as u64).map(|i| t.request(i, Operation::MakeCall, make_call())).collect();
    t.s.handle_timeout(t.at(LATE_RESULTS_KEPT as u64) + TIMEOUT);
    assert_eq!(t.events().len(), LATE_RESULTS_KEPT + 1, "all timed out");
    let (first, second, last) = (sent[0], sent[1], sent[LATE_RESULTS_KEPT]);
    assert!(!t.s.awaits_late_result(first.0) && t.s.awaits_late_result(second.0) && t.s.awaits_late_result(last.0));
    let at = LATE_RESULTS_KEPT as u64 + 6_000;
    t.feed(at, &[Apdu::result(first.1, Operation::MakeCall, Body::null()), Apdu::result(second.1, Operation::MakeCall, Body::null()), Apdu::result(last.1, Operation::MakeCall, Body::null())]);
    let late = |(id, _): (RequestId, i64)| SessionEvent::LateResult { id, op: Operation::MakeCall, body: Body::null() };
    assert_eq!(t.events(), vec![late(second), late(last)], "the oldest was forgotten");
    let s = t.stats.snapshot();
    assert_eq!((s.late_answers, s.unexpected_responses), (2, 1));
}

#[test]
fn an_invoke_id_used_again_is_no_longer_a_late_one() {
    let mut t = T::up();
    let (a, ia) = t.request(0, Operation::MakeCall, make_call());
    t.s.handle_timeout(t.at(0) + TIMEOUT);
    assert_eq!(t.events(), vec![SessionEvent::Completed { id: a, result: Err(RequestError::Timeout) }]);
    // Invoke ids wrap (1..=32767): go round, each answered at once, until `ia` is used again.
    let snapshot = || Body::new().with(F::SnapshotObject, Value::DeviceId(DeviceId::dialing("2005").expect("ASCII")));
    let mut ms = 5_000;
    let (b, ib) = loop {
        ms += 1;
        let (id, invoke) = t.request(ms, Operation::SnapshotDevice, snapshot());
        if invoke == ia {
            break (id, invoke);
        }
        t.feed(ms, &[Apdu::result(invoke, Operation::SnapshotDevice, Body::null())]);
        assert!(matches!(&t.events()[..], [SessionEvent::Completed { result: Ok(_), .. }]));
    };
    assert!(ms - 5_000 < 40_000, "went round in {} requests", ms - 5_000);
    assert!(!t.s.awaits_late_result(a), "the id is the new request's now");
    // Answered twice: the first answers b, the copy is unexpected, not a's late result.
    t.feed(ms, &[Apdu::result(ib, Operation::SnapshotDevice, Body::null()), Apdu::result(ib, Operation::SnapshotDevice, Body::null())]);
    assert!(matches!(&t.events()[..], [SessionEvent::Completed { id, result: Ok(_) }] if *id == b));
    let s = t.stats.snapshot();
    assert_eq!((s.late_answers, s.unexpected_responses), (0, 1));
}

#[test]
fn keepalive_after_silence_and_a_dead_peer_after_two_periods() {
    let mut t = T::up();
    let first = t.at(0) + KEEPALIVE;
    assert_eq!(t.s.poll_timeout(), Some(first));
    t.s.handle_timeout(first);
    let sent = t.sent();
    let [Apdu::Invoke(inv)] = &sent[..] else { panic!("a keep-alive expected, got {sent:?}") };
    assert_eq!(inv.op, Op::Known(Operation::SystemStatus));
    // Answered: alive; the next keep-alive is a period after the answer.
    let answered = 30_500;
    t.feed(answered, &[Apdu::result(inv.invoke_id.expect("id"), Operation::SystemStatus, Body::null())]);
    assert_eq!(t.s.poll_timeout(), Some(t.at(answered) + KEEPALIVE));
    t.s.handle_timeout(t.at(answered) + KEEPALIVE);
    assert_eq!(t.sent().len(), 1, "second keep-alive");
    // Now silence: one more period and the peer is dead.
    let (id, _) = t.request(answered + 58_000, Operation::MakeCall, make_call());
    let dead = t.at(answered) + KEEPALIVE * 2;
    assert_eq!(t.s.poll_timeout(), Some(dead));
    t.s.handle_timeout(dead);
    assert_eq!(t.events(), vec![SessionEvent::Completed { id, result: Err(RequestError::LinkDown) }, SessionEvent::Lost(LinkLoss::DeadPeer(KEEPALIVE))]);
    assert!(LinkLoss::DeadPeer(KEEPALIVE).to_string().contains("keep-alive"));
    assert!(t.s.is_dead());
    assert_eq!(t.s.poll_timeout(), None);
}

#[test]
fn a_partial_frame_does_not_count_as_life() {
    let mut t = T::up();
    let bytes = framed(&Apdu::result(77, Operation::MakeCall, Body::null()));
    let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
    t.s.handle_input(t.at(20_000), &mut buf);
    assert_eq!(t.s.poll_timeout(), Some(t.at(0) + KEEPALIVE));
}

#[test]
fn the_pbx_system_status_is_answered_and_its_unknown_invokes_rejected() {
    let mut t = T::up();
    t.feed(1, &[Apdu::invoke(5, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))), Apdu::invoke(6, Operation::MakeCall, make_call())]);
    let sent = t.sent();
    assert_eq!(sent, vec![Apdu::result(5, Operation::SystemStatus, Body::null()), Apdu::reject(Some(6), RejectProblem::Invoke(1))]);
    let s = t.stats.snapshot();
    assert_eq!((s.keepalives_answered, s.rejects_sent), (1, 1));
    assert_eq!(t.events(), vec![]);
}

#[test]
fn events_are_routed_by_cross_reference_id() {
    let mut t = T::up();
    let a = t.monitored(1, "2005", &[0, 0, 0, 1]);
    let b = t.monitored(2, "2006", &[0, 0, 0, 2]);
    assert_eq!(t.stats.snapshot().monitors, 2);
    t.feed(3, &[event(&[0, 0, 0, 2]), event(&[0, 0, 0, 9]), event(&[0, 0, 0, 1])]);
    let ev = t.events();
    let devices: Vec<&str> = ev.iter().map(|e| match e {
        SessionEvent::Event { device, report } => {
            assert_eq!(report.event.kind(), Some(EventKind::ServiceInitiated));
            &**device
        }
        other => panic!("an event expected, got {other:?}"),
    }).collect();
    assert_eq!(devices, [&*b, &*a]);
    let s = t.stats.snapshot();
    assert_eq!((s.events_in, s.events_unrouted), (3, 1));
    assert!(t.sent().is_empty(), "events are never answered");
    // Unmonitored: a MonitorStop with its reference; its events are unrouted from now on.
    t.s.unmonitor(t.at(4), "2005");
    let sent = t.sent();
    let [Apdu::Invoke(inv)] = &sent[..] else { panic!("a MonitorStop expected, got {sent:?}") };
    assert_eq!(inv.op, Op::Known(Operation::MonitorStop));
    t.feed(5, &[event(&[0, 0, 0, 1])]);
    assert_eq!(t.events(), vec![]);
    assert_eq!(t.stats.snapshot().monitors, 1);
}

#[test]
fn an_undecodable_answer_fails_its_request_with_decode_and_names_it_in_the_reject() {
    let mut t = T::up();
    let (id, invoke) = t.request(0, Operation::MakeCall, make_call());
    // A ReturnResult for our invoke whose result carries a bad tag where the operation code is.
    let bad = [0xA2, 0x08, 0x02, 0x01, invoke as u8, 0x30, 0x03, 0x04, 0x01, 0x00];
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&FR.frame(&bad).expect("frames"));
    t.s.handle_input(t.at(1), &mut buf);
    let ev = t.events();
    assert!(matches!(&ev[..], [SessionEvent::Completed { id: got, result: Err(RequestError::Decode { operation: Operation::MakeCall, .. }) }] if *got == id), "{ev:?}");
    assert_eq!(t.sent(), vec![Apdu::reject(Some(invoke), RejectProblem::ReturnResult(2))]);
    let s = t.stats.snapshot();
    assert_eq!((s.decode_errors, s.undecodable_responses, s.rejects_sent), (1, 1, 1));
    assert!(t.s.is_up());
}

#[test]
fn results_and_events_come_out_in_wire_order_both_ways() {
    let mut t = T::up();
    let dev = t.monitored(0, "2005", &[7]);
    // Result, then event.
    let (a, ia) = t.request(1, Operation::MakeCall, make_call());
    t.feed(2, &[Apdu::result(ia, Operation::MakeCall, Body::null()), event(&[7])]);
    let ev = t.events();
    assert!(matches!(&ev[..], [SessionEvent::Completed { id, result: Ok(_) }, SessionEvent::Event { device, .. }] if *id == a && *device == dev), "{ev:?}");
    // Event, then result.
    let (b, ib) = t.request(3, Operation::MakeCall, make_call());
    t.feed(4, &[event(&[7]), Apdu::result(ib, Operation::MakeCall, Body::null())]);
    let ev = t.events();
    assert!(matches!(&ev[..], [SessionEvent::Event { device, .. }, SessionEvent::Completed { id, result: Ok(_) }] if *id == b && *device == dev), "{ev:?}");
}

#[test]
fn framing_errors_releases_and_aborts_end_the_session_with_their_cause() {
    let mut t = T::up();
    let (id, _) = t.request(0, Operation::MakeCall, make_call());
    let mut buf = BytesMut::from(&[0x00u8, 0x00][..]);
    t.s.handle_input(t.at(1), &mut buf);
    let ev = t.events();
    assert_eq!(ev[0], SessionEvent::Completed { id, result: Err(RequestError::LinkDown) });
    assert!(matches!(&ev[1], SessionEvent::Lost(LinkLoss::Framing(_))), "{ev:?}");
    assert_eq!(t.stats.snapshot().decode_errors, 1);

    let mut t = T::up();
    t.feed(0, &[Apdu::Rlrq(Body::new())]);
    assert_eq!(t.events(), vec![SessionEvent::Lost(LinkLoss::ReleasedByPeer)]);
    assert_eq!(t.sent(), vec![Apdu::Rlre(Body::new())]);

    let mut t = T::up();
    t.feed(0, &[Apdu::Abrt(Body::new().with(F::AbortSource, Value::Int(1)))]);
    assert_eq!(t.events(), vec![SessionEvent::Lost(LinkLoss::AbortedByPeer)]);
    t.feed(1, &[Apdu::invoke(1, Operation::SystemStatus, Body::null())]);
    assert!(t.sent().is_empty() && t.events().is_empty(), "a dead session ignores input");
}

#[test]
fn an_aare_rejection_or_none_in_time_ends_the_association() {
    let t0 = Instant::now();
    let p = Arc::new(profile());
    let mut s = Session::new(p.clone(), Arc::new(Stats::default()), t0);
    let Apdu::Aare(accepted) = aare() else { unreachable!() };
    let rejected = Apdu::Aare(Body::new().with(F::ProtocolVersion, accepted.get(F::ProtocolVersion).cloned().expect("set")).with(F::ApplicationContextName, accepted.get(F::ApplicationContextName).cloned().expect("set")).with(F::Result, Value::Int(1)).with(F::ResultSourceDiagnostic, Value::Diagnostic { source: 1, value: 13 }));
    let mut buf = BytesMut::from(&framed(&rejected)[..]);
    s.handle_input(t0, &mut buf);
    let ev: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    let [SessionEvent::Lost(loss @ LinkLoss::AareRejected(r))] = &ev[..] else { panic!("{ev:?}") };
    assert_eq!(r.diagnostic, Some((1, 13)));
    assert!(loss.to_string().contains("authentication-failure"), "{loss}");

    let mut s = Session::new(p.clone(), Arc::new(Stats::default()), t0);
    assert_eq!(s.poll_timeout(), Some(t0 + p.connect_timeout));
    s.handle_timeout(t0 + p.connect_timeout);
    assert_eq!(s.poll_event(), Some(SessionEvent::Lost(LinkLoss::NoAare)));
}

#[test]
fn the_rate_limiter_holds_requests_until_a_token_and_close_fails_what_waits() {
    let t0 = Instant::now();
    let p = Arc::new(LinkProfile { max_requests_per_second: 2.0, acse: None, ..profile() });
    let mut s = Session::new(p, Arc::new(Stats::default()), t0);
    assert_eq!(s.poll_event(), Some(SessionEvent::Up), "no ACSE: up at once");
    let ids: Vec<RequestId> = (0..3).map(|_| s.request(t0, Operation::MakeCall, make_call()).expect("queued")).collect();
    let mut framer = Framer::new(FR);
    let mut wire = BytesMut::from(&s.poll_transmit().expect("two sent")[..]);
    assert!(framer.decode(&mut wire).expect("frames").is_some() && framer.decode(&mut wire).expect("frames").is_some());
    assert_eq!(framer.decode(&mut wire).expect("frames"), None, "the third waits for a token");
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_millis(500)));
    s.handle_timeout(t0 + Duration::from_millis(500));
    assert!(s.poll_transmit().is_some(), "the third is sent with the next token");
    s.close(t0 + Duration::from_millis(600));
    let ev: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    let want: Vec<SessionEvent> = ids.iter().map(|id| SessionEvent::Completed { id: *id, result: Err(RequestError::Closed) }).chain([SessionEvent::Closed]).collect();
    assert_eq!(ev, want);
}

// ---- dead-peer detection, counted in keep-alive periods ---------------------------------------
//
// README: "keepalive: our SystemStatus after this much silence; dead after twice". A peer that
// sends no complete frame is sent one keep-alive one period after its last frame and is declared
// dead (`LinkLoss::DeadPeer`) exactly two periods after it: not a millisecond before, and not a
// period later. Any complete frame from the peer, whatever it is, starts the count again.

/// The keep-alive period in milliseconds.
const P: u64 = KEEPALIVE.as_millis() as u64;

impl T {
    fn ms(&self, at: Instant) -> u64 {
        at.duration_since(self.t0).as_millis() as u64
    }
    /// Drive a silent peer's session from `from` to `until` (ms) as the driver does: wake at
    /// each `poll_timeout`, and also every `step` ms in between when given (waking early is
    /// harmless). Returns the times the session sent a keep-alive and the time it declared the
    /// peer dead (nothing else may happen).
    fn silence(&mut self, from: u64, until: u64, step: Option<u64>) -> (Vec<u64>, Option<u64>) {
        let (mut keepalives, mut dead) = (Vec::new(), None);
        let mut now = from;
        while let Some(wake) = self.s.poll_timeout() {
            let mut next = step.map_or(self.ms(wake), |s| self.ms(wake).min(now + s)).max(now);
            if next == now && now > from {
                // A timer that stays due once handled would spin the driver: step past it.
                next += 1;
            }
            if next > until {
                break;
            }
            now = next;
            self.s.handle_timeout(self.at(now));
            for a in self.sent() {
                match a {
                    Apdu::Invoke(i) if i.op == Op::Known(Operation::SystemStatus) => keepalives.push(now),
                    other => panic!("only keep-alives go out to a silent peer, got {other:?} at {now} ms"),
                }
            }
            for ev in self.events() {
                match ev {
                    SessionEvent::Lost(loss) => {
                        assert_eq!(loss, LinkLoss::DeadPeer(KEEPALIVE), "at {now} ms");
                        assert_eq!(dead.replace(now), None, "declared dead once");
                    }
                    other => panic!("unexpected {other:?} at {now} ms"),
                }
            }
        }
        (keepalives, dead)
    }
}

#[test]
fn a_silent_peer_is_declared_dead_exactly_two_keepalive_periods_after_its_last_frame() {
    // Woken by its own timer only, as the driver wakes it: one keep-alive after one period, dead
    // at two (the AARE, at 0, was the peer's last frame).
    let mut t = T::up();
    assert_eq!(t.silence(0, 100 * P, None), (vec![P], Some(2 * P)));
    assert!(t.s.is_dead());
    assert_eq!(t.s.poll_timeout(), None);

    // Woken every tenth of a period as well: still alive at two periods less a millisecond, dead
    // at two periods.
    let mut t = T::up();
    assert_eq!(t.silence(0, 2 * P - 1, Some(P / 10)), (vec![P], None), "one keep-alive, and alive, up to two periods");
    t.s.handle_timeout(t.at(2 * P - 1));
    assert!(t.s.is_up() && t.events().is_empty(), "not dead a millisecond before two periods");
    t.s.handle_timeout(t.at(2 * P));
    assert_eq!(t.events(), vec![SessionEvent::Lost(LinkLoss::DeadPeer(KEEPALIVE))]);
    assert_eq!(LinkLoss::DeadPeer(KEEPALIVE).to_string(), "no answer to keep-alive within 30s: peer dead");
}

#[test]
fn any_frame_from_the_peer_starts_the_count_of_keepalive_periods_again() {
    // Frames that are not the keep-alive's answer: the PBX's own SystemStatus, an event report,
    // a result nobody waits for, a reject of nothing.
    let frames: [(&str, Apdu); 4] = [
        ("the PBX's SystemStatus", Apdu::invoke(5, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2)))),
        ("an event report", event(&[7])),
        ("a result nobody waits for", Apdu::result(99, Operation::MakeCall, Body::null())),
        ("a reject of nothing", Apdu::reject(None, RejectProblem::General(1))),
    ];
    for (what, frame) in frames {
        // With the keep-alive outstanding, a millisecond before the peer would be dead.
        let mut t = T::up();
        t.monitored(0, "2005", &[7]);
        assert_eq!(t.silence(0, 2 * P - 1, Some(P / 10)), (vec![P], None), "{what}");
        let f = 2 * P - 1;
        t.feed(f, std::slice::from_ref(&frame));
        t.sent(); // the answer to the PBX's SystemStatus, if any
        t.events(); // the event, if any
        // (At two periods the unanswered keep-alive's own deadline passes: forgotten, harmless.)
        t.s.handle_timeout(t.at(2 * P));
        assert!(t.s.is_up() && t.events().is_empty(), "{what}: no longer dead at two periods");
        assert_eq!(t.s.poll_timeout(), Some(t.at(f + P)), "{what}: the next keep-alive is a period after the frame");
        assert_eq!(t.silence(2 * P, 100 * P, None), (vec![f + P], Some(f + 2 * P)), "{what}: dead two periods after the frame");

        // Before the first keep-alive: the keep-alive waits a period after the frame.
        let mut t = T::up();
        t.monitored(0, "2005", &[7]);
        let f = P - 1;
        t.feed(f, std::slice::from_ref(&frame));
        t.sent();
        t.events();
        assert_eq!(t.silence(f, 100 * P, Some(P / 10)), (vec![f + P], Some(f + 2 * P)), "{what}: counted from the frame");
    }
}

#[test]
fn a_peer_that_answers_every_keepalive_is_never_declared_dead() {
    let mut t = T::up();
    for n in 1..=20u64 {
        // Each keep-alive goes out a period after the last answer, and is answered at once.
        let due = (n - 1) * (P + 1) + P;
        assert_eq!(t.s.poll_timeout(), Some(t.at(due)), "keep-alive {n}");
        t.s.handle_timeout(t.at(due));
        let sent = t.sent();
        let [Apdu::Invoke(inv)] = &sent[..] else { panic!("keep-alive {n} expected, got {sent:?}") };
        assert_eq!(inv.op, Op::Known(Operation::SystemStatus));
        t.feed(due + 1, &[Apdu::result(inv.invoke_id.expect("id"), Operation::SystemStatus, Body::null())]);
        assert!(t.s.is_up() && t.events().is_empty(), "alive after {n} periods");
    }
}

// ---- dead-peer detection through the driver, on tokio's paused clock ---------------------------

/// Await `f` while the runtime keeps busy (a yield between polls), so that the paused clock does
/// not auto-advance while a loopback byte is on its way (tokio advances it only when every task
/// is idle). Bounded by 30 s of wall-clock time.
async fn without_time_passing<F: std::future::Future>(f: F) -> F::Output {
    let wall = std::time::Instant::now();
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = futures_util::poll!(f.as_mut()) {
            return v;
        }
        assert!(wall.elapsed() < Duration::from_secs(30), "no progress within 30 s");
        tokio::task::yield_now().await;
    }
}

/// A link with keep-alive `period` to a PBX on loopback that answers the AARQ and then says
/// nothing; returns the link, the PBX's socket, and the (paused) time the link came up.
async fn silent_pbx(period: Duration) -> (Link, tokio::net::TcpStream, tokio::time::Instant) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let link = Link::spawn(LinkProfile { keepalive: period, request_timeout: TIMEOUT, connect_timeout: Duration::from_secs(3600), ..LinkProfile::new("t", &addr, FR, D) });
    let (mut sock, _) = without_time_passing(l.accept()).await.expect("accept");
    let (mut framer, mut buf) = (Framer::new(FR), BytesMut::new());
    let aarq = without_time_passing(async {
        loop {
            if let Some(f) = framer.decode(&mut buf).expect("frames") {
                return Apdu::decode(&f, D).expect("decodes");
            }
            assert!(sock.read_buf(&mut buf).await.expect("read") > 0, "the link closed");
        }
    })
    .await;
    assert!(matches!(aarq, Apdu::Aarq(_)), "{aarq:?}");
    sock.write_all(&framed(&aare())).await.expect("write");
    // The AARE is the PBX's last frame: the count starts when the link is up.
    without_time_passing(link.wait_for(|s| *s == LinkState::Up)).await;
    (link, sock, tokio::time::Instant::now())
}

/// Let (paused) time run until the link is down; the time it went down and why. Fails after 20
/// periods of paused time, or 30 s of wall-clock time (a driver spinning on a timer that stays
/// due keeps the runtime busy, and paused time then never advances).
async fn down(link: &Link, period: Duration) -> (tokio::time::Instant, LinkState) {
    let (tx, wall) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        let _ = tx.send(());
    });
    let state = tokio::select! {
        s = tokio::time::timeout(period * 20, link.wait_for(|s| matches!(s, LinkState::Down { .. }))) => s.expect("declared dead within 20 periods"),
        _ = wall => panic!("not declared dead within 30 s of wall-clock time (paused time stuck at {:?})", tokio::time::Instant::now()),
    };
    (tokio::time::Instant::now(), state)
}

/// The driver sleeps on the session's `poll_timeout` with tokio's clock; tokio's timer wheel
/// rounds each sleep up to its next millisecond, so two timers may each add at most one.
const TIMER_SLACK: Duration = Duration::from_millis(2);

#[tokio::test(start_paused = true)]
async fn through_the_driver_a_silent_pbx_is_down_two_keepalive_periods_after_its_last_frame() {
    let period = Duration::from_secs(10);
    let (link, _sock, up) = silent_pbx(period).await;
    let (at, state) = down(&link, period).await;
    let after = at - up;
    assert!(after >= 2 * period && after <= 2 * period + TIMER_SLACK, "declared dead {after:?} after the last frame, keep-alive {period:?}");
    assert_eq!(state, LinkState::Down { reason: LinkLoss::DeadPeer(period).to_string() });
    assert_eq!(link.stats().keepalives_answered, 0);
}

#[tokio::test(start_paused = true)]
async fn through_the_driver_a_frame_from_the_pbx_starts_the_count_again() {
    use tokio::io::AsyncWriteExt;
    let period = Duration::from_secs(10);
    let (link, mut sock, up) = silent_pbx(period).await;
    // After our keep-alive went out, half a period before the peer would be dead: the PBX's own
    // SystemStatus (not the keep-alive's answer).
    tokio::time::sleep_until(up + period * 3 / 2).await;
    let frames_in = link.stats().frames_in;
    sock.write_all(&framed(&Apdu::invoke(5, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))))).await.expect("write");
    without_time_passing(async {
        while link.stats().frames_in == frames_in {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let frame = tokio::time::Instant::now();
    assert_eq!(frame - up, period * 3 / 2, "no time passed while the frame was on its way");
    let (at, state) = down(&link, period).await;
    let after = at - frame;
    assert!(after >= 2 * period && after <= 2 * period + TIMER_SLACK, "declared dead {after:?} after the last frame ({:?} after the link came up), keep-alive {period:?}", at - up);
    assert_eq!(state, LinkState::Down { reason: LinkLoss::DeadPeer(period).to_string() });
}

// ---- ordered delivery through the driver -----------------------------------------------------

/// A scripted PBX on loopback: accepts, answers the AARQ, then hands each APDU of the link to the
/// test and writes what the test says, in that order.
mod pbx {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    pub struct Pbx {
        pub sock: TcpStream,
        framer: Framer,
        buf: BytesMut,
    }

    pub async fn start() -> (Link, Pbx) {
        start_with(|p| p).await
    }

    /// [`start`] with the link's profile changed by `f`.
    pub async fn start_with(f: impl FnOnce(LinkProfile) -> LinkProfile) -> (Link, Pbx) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let link = Link::spawn(f(LinkProfile { max_requests_per_second: 1000.0, ..LinkProfile::new("t", &addr, FR, D) }));
        let (sock, _) = l.accept().await.expect("accept");
        let mut p = Pbx { sock, framer: Framer::new(FR), buf: BytesMut::new() };
        assert!(matches!(p.next().await, Apdu::Aarq(_)));
        p.write(&[aare()]).await;
        link.wait_for(|s| *s == LinkState::Up).await;
        (link, p)
    }

    impl Pbx {
        pub async fn next(&mut self) -> Apdu {
            loop {
                if let Some(f) = self.framer.decode(&mut self.buf).expect("frames") {
                    return Apdu::decode(&f, D).expect("decodes");
                }
                assert!(self.sock.read_buf(&mut self.buf).await.expect("read") > 0, "the link closed");
            }
        }
        /// The next invoke of the link: its id and operation.
        pub async fn invoke(&mut self) -> (i64, Operation) {
            match self.next().await {
                Apdu::Invoke(i) => (i.invoke_id.expect("id"), i.op.known().expect("known op")),
                other => panic!("an invoke expected, got {other:?}"),
            }
        }
        /// All in one write: the link reads them in one go.
        pub async fn write(&mut self, apdus: &[Apdu]) {
            let mut out = Vec::new();
            for a in apdus {
                out.extend(framed(a));
            }
            self.sock.write_all(&out).await.expect("write");
        }
    }
}

async fn recv(rx: &mut tokio::sync::mpsc::Receiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.expect("a delivery in time").expect("the link is alive")
}

#[tokio::test]
async fn a_port_gets_results_and_events_in_wire_order_both_ways() {
    let (link, mut pbx) = pbx::start().await;
    let (port, mut rx) = link.attach();
    port.monitor(1, "2005").expect("accepted");
    let (id, op) = pbx.invoke().await;
    assert_eq!(op, Operation::MonitorStart);
    pbx.write(&[Apdu::result(id, op, Body::new().with(F::CrossRefIdentifier, Value::Octets(Bytes::from_static(&[7]))))]).await;
    assert!(matches!(recv(&mut rx).await, Delivery::Completed { tag: 1, result: Ok(_) }));

    // The MakeCall result before the event on the wire: delivered before it.
    port.request(2, Operation::MakeCall, make_call()).expect("accepted");
    let (id, _) = pbx.invoke().await;
    pbx.write(&[Apdu::result(id, Operation::MakeCall, Body::null()), event(&[7])]).await;
    assert!(matches!(recv(&mut rx).await, Delivery::Completed { tag: 2, result: Ok(_) }));
    assert!(matches!(recv(&mut rx).await, Delivery::Event { ref device, .. } if &**device == "2005"));

    // And the other way round.
    port.request(3, Operation::MakeCall, make_call()).expect("accepted");
    let (id, _) = pbx.invoke().await;
    pbx.write(&[event(&[7]), Apdu::universal_failure(id, ErrorCategory::StateIncompatibility, Some(2))]).await;
    assert!(matches!(recv(&mut rx).await, Delivery::Event { .. }));
    assert!(matches!(recv(&mut rx).await, Delivery::Completed { tag: 3, result: Err(RequestError::Failure(_)) }));

    // The link drops: the outstanding request's completion, then the notice.
    port.request(4, Operation::MakeCall, make_call()).expect("accepted");
    assert_eq!(pbx.invoke().await.1, Operation::MakeCall);
    drop(pbx);
    assert_eq!(recv(&mut rx).await, Delivery::Completed { tag: 4, result: Err(RequestError::LinkDown) });
    assert_eq!(recv(&mut rx).await, Delivery::LinkLost);
}

#[tokio::test]
async fn a_full_port_refuses_requests_never_drops_completions_and_counts_dropped_events() {
    let (link, mut pbx) = pbx::start().await;
    // Three slots: one kept for link notices, two for deliveries.
    let (port, mut rx) = link.attach_with_capacity(3);
    port.monitor(1, "2005").expect("accepted");
    let (id, op) = pbx.invoke().await;
    pbx.write(&[Apdu::result(id, op, Body::new().with(F::CrossRefIdentifier, Value::Octets(Bytes::from_static(&[7]))))]).await;
    assert!(matches!(recv(&mut rx).await, Delivery::Completed { tag: 1, result: Ok(_) }));
    port.request(2, Operation::MakeCall, make_call()).expect("accepted");
    // The notice slot and the request's own slot are taken: one event fits, then the channel is
    // full.
    let (id, _) = pbx.invoke().await;
    let before = link.stats();
    pbx.write(&[event(&[7]), event(&[7]), event(&[7]), Apdu::result(id, Operation::MakeCall, Body::null())]).await;
    // Read nothing until the link has handled all four (else a slot could free up between reads).
    tokio::time::timeout(Duration::from_secs(20), async {
        while link.stats().frames_in < before.frames_in + 4 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the link reads what the PBX wrote");
    assert!(matches!(recv(&mut rx).await, Delivery::Event { .. }));
    assert!(matches!(recv(&mut rx).await, Delivery::Completed { tag: 2, result: Ok(_) }), "the completion had its slot");
    assert_eq!(link.stats().events_dropped - before.events_dropped, 2);
    // Nothing buffered now; fill the channel with requests: the third is refused at once.
    port.request(3, Operation::SystemStatus, Body::null()).expect("accepted");
    port.request(4, Operation::SystemStatus, Body::null()).expect("accepted");
    assert_eq!(port.request(5, Operation::SystemStatus, Body::null()), Err(RequestError::QueueFull));
    drop(rx);
    assert_eq!(port.request(6, Operation::SystemStatus, Body::null()), Err(RequestError::Closed));
}

#[tokio::test]
async fn dropping_the_port_stops_its_monitors() {
    let (link, mut pbx) = pbx::start().await;
    let (port, mut rx) = link.attach();
    port.monitor(1, "2005").expect("accepted");
    let (id, op) = pbx.invoke().await;
    pbx.write(&[Apdu::result(id, op, Body::new().with(F::CrossRefIdentifier, Value::Octets(Bytes::from_static(&[7]))))]).await;
    assert!(matches!(recv(&mut rx).await, Delivery::Completed { tag: 1, result: Ok(_) }));
    assert_eq!(link.stats().monitors, 1);
    drop(port);
    let (_, op) = pbx.invoke().await;
    assert_eq!(op, Operation::MonitorStop);
    assert_eq!(link.stats().monitors, 0);
}

#[tokio::test]
async fn a_port_hears_of_a_pbx_restart_once_and_its_monitors_come_back() {
    use cstagate::sim::{SimConfig, SimPbx};
    let cfg = SimConfig::phase3(&["2005", "2006"]);
    let sim = SimPbx::start(cfg.clone(), "127.0.0.1:0").await.expect("sim");
    let link = Link::spawn(LinkProfile { max_requests_per_second: 1000.0, reconnect_min: Duration::from_millis(10), reconnect_max: Duration::from_millis(50), ..LinkProfile::new("t", &sim.addr().to_string(), cfg.framing, cfg.dialect) });
    link.wait_for(|s| *s == LinkState::Up).await;
    let (port, mut rx) = link.attach();
    port.monitor(1, "2005").expect("accepted");
    assert!(matches!(recv(&mut rx).await, Delivery::Completed { tag: 1, result: Ok(_) }));
    sim.restart();
    assert_eq!(recv(&mut rx).await, Delivery::LinkLost);
    assert_eq!(recv(&mut rx).await, Delivery::LinkRestored);
    // Once the monitor runs again: the MakeCall's result and the call's first event both arrive.
    tokio::time::timeout(Duration::from_secs(20), async {
        while link.stats().monitors < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the monitor is started again");
    let call = Body::new().with(F::CallingDevice, Value::DeviceId(DeviceId::dialing("2005").expect("ASCII"))).with(F::CalledDirectoryNumber, Value::DeviceId(DeviceId::dialing("2006").expect("ASCII")));
    port.request(2, Operation::MakeCall, call).expect("accepted");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match recv(&mut rx).await {
            Delivery::Completed { tag: 2, result } => {
                assert!(result.as_ref().is_ok_and(|b| cstagate::csta::made_call(b).is_some()), "a MakeCall result naming the call: {result:?}");
                seen.push("result");
            }
            Delivery::Event { device, .. } => {
                assert_eq!(&*device, "2005");
                seen.push("event");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sim.stats().requests.get("MonitorStart"), Some(&2), "monitored again once");
}

#[tokio::test]
async fn a_late_result_goes_to_the_port_that_made_the_request_after_its_timeout() {
    let (link, mut pbx) = pbx::start_with(|p| LinkProfile { request_timeout: Duration::from_millis(200), ..p }).await;
    let (port, mut rx) = link.attach();
    let (_other, mut other_rx) = link.attach();
    port.request(1, Operation::MakeCall, make_call()).expect("accepted");
    let (made, _) = pbx.invoke().await;
    // A `Link::request` that times out too: its caller has stopped waiting.
    let snapshot = Body::new().with(F::SnapshotObject, Value::DeviceId(DeviceId::dialing("2005").expect("ASCII")));
    let (once, mut once_rx) = tokio::sync::oneshot::channel();
    let l = link.clone();
    tokio::spawn(async move { drop(once.send(l.request(Operation::SnapshotDevice, snapshot).await)) });
    let (snapped, _) = pbx.invoke().await;
    assert_eq!(recv(&mut rx).await, Delivery::Completed { tag: 1, result: Err(RequestError::Timeout) });
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), &mut once_rx).await.expect("in time").expect("answered"), Err(RequestError::Timeout));
    // Both answered late, then a request in time: the port hears the MakeCall's late result, then
    // its new request's answer; the other port hears nothing.
    let placed = cstagate::csta::make_call_result(&CallId::from(vec![7, 7]), "2005");
    port.request(2, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))).expect("accepted");
    let (status, _) = pbx.invoke().await;
    pbx.write(&[Apdu::result(snapped, Operation::SnapshotDevice, Body::null()), Apdu::result(made, Operation::MakeCall, placed.clone()), Apdu::result(status, Operation::SystemStatus, Body::null())]).await;
    let late = recv(&mut rx).await;
    assert!(matches!(&late, Delivery::LateResult { tag: 1, result } if cstagate::csta::made_call(result) == cstagate::csta::made_call(&placed)), "{late:?}");
    assert!(matches!(recv(&mut rx).await, Delivery::Completed { tag: 2, result: Ok(_) }));
    assert!(other_rx.try_recv().is_err(), "only the port that made the request hears of it");
    let s = link.stats();
    assert_eq!((s.late_answers, s.unexpected_responses), (2, 0));
}
