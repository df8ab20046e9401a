//! The `link_session` target: the sans-IO PBX link session (`cstagate::link::Session`) fed
//! arbitrary bytes from a fake PBX, interleaved with the gateway's requests, monitors and dropped
//! monitors, in **virtual time** (explicit `Instant`s): no socket, no tokio runtime, no sleep.
//! Included by `lib.rs` (and so by `tests/hostile/fuzz_regressions.rs`).
//!
//! Input layout:
//! - byte 0, configuration: bit 0 framing (two-byte length or Siemens), bit 1 dialect (Phase III
//!   or Phase II), bit 2 the Alcatel preamble;
//! - then up to [`MAX_OPS`] operations, each an op byte (`% 8`) and its operands:
//!   0 `len, bytes`: raw bytes from the PBX (framing errors included);
//!   1 `len, bytes`: one APDU, framed by the fake PBX with the link's framing;
//!   2 `k, kind`: answer the `k`-th invoke of the session not answered yet (result, with a
//!     crossRefIdentifier for a MonitorStart; universalFailure; reject; or a result twice);
//!   3 `k`: the gateway sends a request (MakeCall, a MonitorStop with a made-up reference, or a
//!     request that does not encode in Phase II);
//!   4 `k`: the gateway monitors a device (one of three);
//!   5 `k`: the gateway stops monitoring one of the devices it monitors;
//!   6 `k`: time passes (0, 10 ms, half the request timeout, more than the request timeout), the
//!     session's timeouts handled on the way, each at its own instant;
//!   7: the PBX sends a SystemStatus (keep-alive) invoke.
//!
//! Each input: a session at a virtual `t0` with short timeouts (request 500 ms; keep-alive an
//! hour so that it never fires within an input and the model stays exact), its preamble and AARQ
//! read, an AARE accepting it fed (built with the codec), then the operations. After each one the
//! fake PBX reads all the session transmitted (framed and decoded with the codec: the session's
//! invoke ids come from the wire) and the driver's side takes every event. It models what the
//! session must make of what it was fed: the same framer over the same bytes, each frame decoded;
//! a framing error, an RLRQ or an ABRT ends the connection, everything else must not.
//!
//! Checks:
//! 1. nothing panics; the session transmits only well-framed, decodable APDUs;
//! 2. every request is completed exactly once, and only requests that were made; a late result
//!    comes only for a request that completed with a timeout after it was sent (and that the
//!    session then says it awaits), at most once; after the last
//!    operation, within 3 request timeouts of virtual time, every request is completed and every
//!    monitor still wanted is started or failed (or the session is dead): nothing hangs;
//! 3. if the model says the connection must have ended: the session is dead, its last event is
//!    the loss with the model's cause (`Framing` for a framing error, counted in `decode_errors`;
//!    `ReleasedByPeer` for an RLRQ; `AbortedByPeer` for an ABRT), and every request completed
//!    before it;
//! 4. otherwise the session is up; and if the bytes fed end on a frame boundary: once every
//!    invoke has passed its deadline, a (late) result for each invoke it sent that was never
//!    answered is, for a request of the gateway's that timed out less than
//!    `LATE_RESULT_WINDOW` request timeouts ago, its `LateResult` (exactly those requests), and
//!    for every other one an unexpected response, one each (the invoke table forgot them all: it
//!    does not grow without bound), and a new request gets its correct result (invoke id read
//!    from the wire) as `Ok`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cstagate::codec::apdu::ErrorCategory;
use cstagate::codec::body::{FieldName, Value};
use cstagate::codec::{Apdu, Body, DeviceId, Dialect, Framer, Framing, Operation, RejectProblem};
use cstagate::config::LinkProfile;
use cstagate::link::{LinkLoss, RequestError, RequestId, Session, SessionEvent, Stats, LATE_RESULT_WINDOW};

/// How the inputs run so far ended (to see what a corpus reaches; `outcomes()`): connection ended
/// by a framing error, by an RLRQ or ABRT; still up with the late-answer and liveness checks run,
/// still up without them (bytes left mid-frame); requests answered `Ok`, requests in all.
static OUTCOMES: [std::sync::atomic::AtomicU64; 6] = [const { std::sync::atomic::AtomicU64::new(0) }; 6];

fn count(i: usize) {
    OUTCOMES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// See [`OUTCOMES`].
pub fn outcomes() -> [u64; 6] {
    std::array::from_fn(|i| OUTCOMES[i].load(std::sync::atomic::Ordering::Relaxed))
}

/// Operations per input at most.
pub const MAX_OPS: usize = 48;
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);
const DEVICES: [&str; 3] = ["2001", "2002", "3001"];

/// An invoke the session sent, as the fake PBX read it.
#[derive(Debug, Clone)]
struct Seen {
    id: i64,
    op: Option<Operation>,
}

/// The fake PBX's reading side: frames and decodes all the session transmits.
struct Wire {
    framer: Framer,
    buf: BytesMut,
    dialect: Dialect,
    invokes: Vec<Seen>,
    /// ACSE APDUs (AARQ, RLRE) the session sent.
    acse: Vec<&'static str>,
}

impl Wire {
    fn read(&mut self, s: &mut Session) {
        while let Some(b) = s.poll_transmit() {
            self.buf.extend_from_slice(&b);
        }
        loop {
            match self.framer.decode(&mut self.buf) {
                Ok(Some(frame)) => match Apdu::decode(&frame, self.dialect) {
                    Ok(Apdu::Invoke(inv)) => {
                        if let Some(id) = inv.invoke_id {
                            self.invokes.push(Seen { id, op: inv.op.known() });
                        }
                    }
                    Ok(a @ (Apdu::Aarq(_) | Apdu::Rlre(_) | Apdu::Rlrq(_))) => self.acse.push(a.kind_name()),
                    Ok(_) => {}
                    Err(e) => panic!("the session transmitted an undecodable APDU: {e}"),
                },
                Ok(None) => return,
                Err(e) => panic!("the session's stream does not frame: {e}"),
            }
        }
    }
}

/// The driver's side: every event taken, each request's completion checked off.
#[derive(Default)]
struct Driver {
    /// Requests made and not completed yet.
    open: BTreeMap<RequestId, ()>,
    done: HashSet<RequestId>,
    /// The invoke id each request went out with (read from the wire when it was made).
    sent: HashMap<RequestId, i64>,
    /// Requests that completed with a timeout after they were sent, and when.
    timed_out: HashMap<RequestId, Instant>,
    /// Requests whose late result came.
    late: BTreeSet<RequestId>,
    ok: u64,
    /// Devices asked for (monitor returned false) and not answered, started, failed.
    starting: HashSet<Arc<str>>,
    running: HashSet<Arc<str>>,
    lost: Option<LinkLoss>,
    /// The last event: the loss, if the session ended, must come after every completion.
    after_loss: bool,
}

impl Driver {
    fn take(&mut self, s: &mut Session, now: Instant) {
        while let Some(ev) = s.poll_event() {
            assert!(!self.after_loss, "an event after the loss: {ev:?}");
            match ev {
                SessionEvent::Up => panic!("Up twice"),
                SessionEvent::Completed { id, result } => {
                    assert!(self.open.remove(&id).is_some(), "{id:?} completed but {}", if self.done.contains(&id) { "it was completed before" } else { "never made" });
                    self.done.insert(id);
                    if result.is_ok() {
                        self.ok += 1;
                    }
                    if result == Err(RequestError::Timeout) && self.sent.contains_key(&id) {
                        assert!(s.awaits_late_result(id) || s.is_dead(), "{id:?} timed out after it was sent, but the session does not await its late result");
                        self.timed_out.insert(id, now);
                    }
                }
                SessionEvent::LateResult { id, .. } => {
                    assert!(self.timed_out.contains_key(&id), "a late result for {id:?}, which did not time out after it was sent");
                    assert!(self.late.insert(id), "a second late result for {id:?}");
                }
                SessionEvent::Event { device, .. } => assert!(self.running.contains(&device), "an event for {device}, not monitored"),
                SessionEvent::MonitorStarted { device } => {
                    assert!(self.starting.remove(&device), "{device} started unasked");
                    self.running.insert(device);
                }
                SessionEvent::MonitorFailed { device, .. } => {
                    assert!(self.starting.remove(&device), "{device} failed unasked");
                }
                SessionEvent::Lost(loss) => {
                    self.lost = Some(loss);
                    self.after_loss = true;
                }
                SessionEvent::Closed => panic!("Closed without close()"),
            }
        }
    }
}

/// What the session must make of the bytes the fake PBX fed: the same framer, each frame decoded.
struct Model {
    framer: Framer,
    buf: BytesMut,
    dialect: Dialect,
    /// The loss the connection must have ended with, if it must.
    ended: Option<LinkLoss>,
    framing_error: bool,
    /// Invoke ids of the session answered (result, error or reject) by what was fed.
    answered: Vec<i64>,
}

impl Model {
    fn feed(&mut self, bytes: &[u8]) {
        if self.ended.is_some() {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            match self.framer.decode(&mut self.buf) {
                Ok(Some(frame)) => match Apdu::decode(&frame, self.dialect) {
                    Ok(Apdu::Rlrq(_)) => {
                        self.ended = Some(LinkLoss::ReleasedByPeer);
                        return;
                    }
                    Ok(Apdu::Abrt(_)) => {
                        self.ended = Some(LinkLoss::AbortedByPeer);
                        return;
                    }
                    Ok(Apdu::Result(r)) => self.answered.extend(r.invoke_id),
                    Ok(Apdu::Error(e)) => self.answered.extend(e.invoke_id),
                    Ok(Apdu::Reject(r)) => self.answered.extend(r.invoke_id),
                    _ => {}
                },
                Ok(None) => return,
                Err(e) => {
                    self.ended = Some(LinkLoss::Framing(e));
                    self.framing_error = true;
                    return;
                }
            }
        }
    }
    /// The bytes fed end on a frame boundary.
    fn clean(&self) -> bool {
        self.ended.is_none() && self.buf.is_empty()
    }
}

fn make_call() -> Body {
    let dev = |s: &str| Value::DeviceId(DeviceId::dialing(s).unwrap_or_else(|_| unreachable!("ASCII device")));
    Body::new().with(FieldName::CallingDevice, dev("2001")).with(FieldName::CalledDirectoryNumber, dev("0800100200"))
}

fn aare() -> Body {
    Body::new()
        .with(FieldName::ProtocolVersion, Value::Raw(Bytes::from_static(&[0x80, 0x02, 0x07, 0x80])))
        .with(FieldName::ApplicationContextName, Value::Oid(Bytes::from_static(&[0x2B, 0x0C, 0x00, 0x81, 0x5A])))
        .with(FieldName::Result, Value::Int(0))
        .with(FieldName::ResultSourceDiagnostic, Value::Diagnostic { source: 1, value: 0 })
}

struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len() - self.pos);
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        s
    }
}

/// Move the clock to `to`, handling every timeout of the session on the way at its own instant.
fn advance(s: &mut Session, now: &mut Instant, to: Instant, wire: &mut Wire, drv: &mut Driver) {
    while let Some(t) = s.poll_timeout() {
        if t > to {
            break;
        }
        *now = t.max(*now);
        s.handle_timeout(*now);
        wire.read(s);
        drv.take(s, *now);
    }
    *now = to.max(*now);
}

/// The `link_session` target (see the module docs).
pub fn link_session(data: &[u8]) {
    let Some((&cfg, ops)) = data.split_first() else { return };
    let framing = if cfg & 1 == 0 { Framing::TwoByteLength } else { Framing::Siemens };
    let dialect = if cfg & 2 == 0 { Dialect::Phase3 } else { Dialect::Phase2 };
    let preamble = cfg & 4 != 0;
    let profile = LinkProfile {
        preamble,
        request_timeout: REQUEST_TIMEOUT,
        // Long enough never to fire within one input: the model stays exact.
        keepalive: Duration::from_secs(3600),
        max_requests_per_second: 1000.0,
        ..LinkProfile::new("fuzz", "127.0.0.1:1", framing, dialect)
    };
    let frame = |a: &Apdu| -> Vec<u8> {
        let enc = a.to_vec(dialect).unwrap_or_else(|e| panic!("the fake PBX's APDU does not encode: {e}"));
        framing.frame(&enc).unwrap_or_else(|e| panic!("framing: {e}")).to_vec()
    };
    let stats = Arc::new(Stats::default());
    let t0 = Instant::now();
    let mut now = t0;
    let mut s = Session::new(Arc::new(profile), stats.clone(), now);
    let mut wire = Wire { framer: Framer::new(framing), buf: BytesMut::new(), dialect, invokes: Vec::new(), acse: Vec::new() };
    if preamble {
        wire.framer = Framer::new(framing).expect_preamble(b'B');
    }
    let mut drv = Driver::default();
    wire.read(&mut s);
    assert_eq!(wire.acse, ["aarq"], "the session opens with its AARQ");
    let mut hello = Vec::new();
    if preamble {
        hello.push(b'P');
    }
    hello.extend(frame(&Apdu::Aare(aare())));
    s.handle_input(now, &mut BytesMut::from(&hello[..]));
    assert_eq!(s.poll_event(), Some(SessionEvent::Up), "an accepting AARE brings the session up");

    let mut model = Model { framer: Framer::new(framing), buf: BytesMut::new(), dialect, ended: None, framing_error: false, answered: Vec::new() };
    let mut input = Input { data: ops, pos: 0 };
    let mut buf = BytesMut::new();
    let mut next_pbx_invoke = 1i64;
    let mut xref = 0u8;
    let mut wanted: Vec<Arc<str>> = Vec::new();
    for _ in 0..MAX_OPS {
        let Some(op) = input.byte() else { break };
        let mut out: Vec<u8> = Vec::new();
        match op % 8 {
            0 => {
                let n = usize::from(input.byte().unwrap_or(0) % 64);
                out.extend_from_slice(input.bytes(n));
            }
            1 => {
                let n = usize::from(input.byte().unwrap_or(0));
                let apdu = input.bytes(n).to_vec();
                if let Ok(f) = framing.frame(&apdu) {
                    out = f.to_vec();
                }
            }
            2 => {
                let k = usize::from(input.byte().unwrap_or(0));
                let kind = input.byte().unwrap_or(0);
                let open: Vec<Seen> = wire.invokes.iter().filter(|s| !model.answered.contains(&s.id)).cloned().collect();
                if !open.is_empty() {
                    let seen = &open[k % open.len()];
                    let apdu = match kind % 4 {
                        0 | 3 => {
                            let body = if seen.op == Some(Operation::MonitorStart) {
                                xref = xref.wrapping_add(1);
                                if kind & 0x10 != 0 { Body::null() } else { Body::new().with(FieldName::CrossRefIdentifier, Value::Octets(Bytes::from(vec![xref]))) }
                            } else {
                                Body::null()
                            };
                            Apdu::result(seen.id, seen.op.unwrap_or(Operation::MakeCall), body)
                        }
                        1 => Apdu::universal_failure(seen.id, ErrorCategory::StateIncompatibility, Some(2)),
                        _ => Apdu::reject(Some(seen.id), RejectProblem::Invoke(1)),
                    };
                    out = frame(&apdu);
                    if kind % 4 == 3 {
                        // Answered twice: the second is unexpected.
                        out.extend(frame(&apdu));
                    }
                }
            }
            3 => {
                let k = input.byte().unwrap_or(0);
                let (op, body) = match k % 3 {
                    0 => (Operation::MakeCall, make_call()),
                    1 => (Operation::MonitorStop, Body::new().with(FieldName::CrossRefIdentifier, Value::Octets(Bytes::from(vec![k])))),
                    _ => (Operation::SnapshotDevice, Body::new().with(FieldName::SnapshotObject, Value::DeviceId(DeviceId::dialing("2001").unwrap_or_else(|_| unreachable!())))),
                };
                match s.request(now, op, body) {
                    Ok(id) => {
                        assert!(!s.is_dead(), "a dead session took a request");
                        count(5);
                        drv.open.insert(id, ());
                        // Sent at once (tokens to spare), unless it does not encode.
                        let seen = wire.invokes.len();
                        wire.read(&mut s);
                        if let Some(inv) = wire.invokes[seen..].iter().rev().find(|i| i.op == Some(op)) {
                            drv.sent.insert(id, inv.id);
                        }
                    }
                    Err(e) => assert!(s.is_dead() && e == RequestError::LinkDown, "request refused: {e} (dead: {})", s.is_dead()),
                }
            }
            4 => {
                let k = usize::from(input.byte().unwrap_or(0));
                let device: Arc<str> = DEVICES[k % DEVICES.len()].into();
                let dead = s.is_dead();
                let already = s.monitor(now, &device);
                if already {
                    assert!(drv.running.contains(&device), "{device} monitored already, says the session");
                } else if !dead {
                    drv.running.remove(&device);
                    drv.starting.insert(device.clone());
                }
                if !wanted.contains(&device) {
                    wanted.push(device);
                }
            }
            5 => {
                let k = usize::from(input.byte().unwrap_or(0));
                if !wanted.is_empty() {
                    let device = wanted.swap_remove(k % wanted.len());
                    s.unmonitor(now, &device);
                    // A start in flight is answered (and stopped) without an event.
                    drv.starting.remove(&device);
                    drv.running.remove(&device);
                }
            }
            6 => {
                let d = match input.byte().unwrap_or(0) % 4 {
                    0 => Duration::ZERO,
                    1 => Duration::from_millis(10),
                    2 => REQUEST_TIMEOUT / 2,
                    _ => REQUEST_TIMEOUT + Duration::from_millis(1),
                };
                let to = now + d;
                advance(&mut s, &mut now, to, &mut wire, &mut drv);
            }
            _ => {
                let body = Body::new().with(FieldName::SystemStatus, Value::Int(2));
                out = frame(&Apdu::invoke(next_pbx_invoke, Operation::SystemStatus, body));
                next_pbx_invoke += 1;
            }
        }
        if !out.is_empty() {
            model.feed(&out);
            buf.extend_from_slice(&out);
            s.handle_input(now, &mut buf);
        }
        wire.read(&mut s);
        drv.take(&mut s, now);
    }

    // Every request completes, every monitor still wanted is answered, within a bounded
    // (virtual) time.
    let bound = REQUEST_TIMEOUT * 3;
    let to = now + bound;
    advance(&mut s, &mut now, to, &mut wire, &mut drv);
    assert!(drv.open.is_empty(), "requests {:?} not completed within {bound:?} ({s:?})", drv.open.keys().collect::<Vec<_>>());
    assert!(drv.starting.is_empty() || s.is_dead(), "monitors {:?} neither started nor failed within {bound:?}", drv.starting);
    OUTCOMES[4].fetch_add(drv.ok, std::sync::atomic::Ordering::Relaxed);

    if let Some(want) = &model.ended {
        // The connection must end, with the model's cause, after every completion.
        assert!(s.is_dead(), "the session is still alive after {want}");
        match (&drv.lost, want) {
            (Some(LinkLoss::Framing(_)), LinkLoss::Framing(_)) => {}
            (Some(got), want) => assert_eq!(got, want, "the session ended for another cause"),
            (None, want) => panic!("the session died without a loss event after {want}"),
        }
        count(if model.framing_error { 0 } else { 1 });
        if model.framing_error {
            assert!(stats.snapshot().decode_errors >= 1, "framing error not counted: {:?}", stats.snapshot());
        }
        if matches!(want, LinkLoss::ReleasedByPeer) {
            assert_eq!(wire.acse.last(), Some(&"rlre"), "an RLRQ is answered with an RLRE");
        }
    } else {
        assert!(s.is_up(), "the session ended ({:?}) though nothing the PBX sent ends a connection ({:?})", drv.lost, stats.snapshot());
        count(if model.clean() { 2 } else { 3 });
        if model.clean() {
            // Every invoke of the session is past its deadline: answer all the unanswered ones;
            // each must be unexpected (the table forgot it).
            let mut stale: Vec<i64> = wire.invokes.iter().map(|s| s.id).filter(|id| !model.answered.contains(id)).collect();
            stale.sort_unstable();
            stale.dedup();
            // Those of the gateway's requests given up on within the window come as late results.
            let window = REQUEST_TIMEOUT * LATE_RESULT_WINDOW;
            let want: BTreeSet<RequestId> = drv.sent.iter().filter(|(req, inv)| stale.contains(inv) && drv.timed_out.get(req).is_some_and(|at| now.saturating_duration_since(*at) < window)).map(|(req, _)| *req).collect();
            let late_before = drv.late.clone();
            let before = stats.snapshot();
            let mut out = Vec::new();
            for id in &stale {
                out.extend(frame(&Apdu::result(*id, Operation::MakeCall, Body::null())));
            }
            s.handle_input(now, &mut BytesMut::from(&out[..]));
            wire.read(&mut s);
            drv.take(&mut s, now);
            let after = stats.snapshot();
            let got: BTreeSet<RequestId> = drv.late.difference(&late_before).copied().collect();
            assert_eq!(got, want, "late results for the expired invokes {stale:?}: not exactly the requests given up on within {window:?}");
            assert_eq!(after.late_answers - before.late_answers, want.len() as u64, "late answers not counted");
            assert_eq!(
                after.unexpected_responses - before.unexpected_responses,
                (stale.len() - want.len()) as u64,
                "late results for the {} expired invokes {stale:?}: the others not each unexpected (the invoke table kept some)",
                stale.len()
            );
            // A fresh request: its invoke id read from the wire, answered, delivered `Ok`.
            let seen = wire.invokes.len();
            let id = s.request(now, Operation::MakeCall, make_call()).unwrap_or_else(|e| panic!("a live session refused a request: {e}"));
            drv.open.insert(id, ());
            wire.read(&mut s);
            let sent: Vec<&Seen> = wire.invokes[seen..].iter().filter(|i| i.op == Some(Operation::MakeCall)).collect();
            let [new] = &sent[..] else { panic!("the session did not send the new request at once: {sent:?}") };
            s.handle_input(now, &mut BytesMut::from(&frame(&Apdu::result(new.id, Operation::MakeCall, Body::null()))[..]));
            let ok_before = drv.ok;
            drv.take(&mut s, now);
            assert!(drv.open.is_empty() && drv.ok == ok_before + 1, "a well-formed result was not delivered as Ok ({:?})", stats.snapshot());
            assert!(s.is_up());
        }
    }
}
