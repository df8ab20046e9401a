//! The simulator's switch: the call model, monitors and the PBX's own keep-alive, in one task
//! that owns all state. Connections send it APDUs; it answers and emits events.
//!
//! It is the same for every wire: the connections turn BER or XML into [`Apdu`]s and back. What
//! differs with XML is only what the PBX's own identifiers look like (call and cross-reference
//! ids as text, events on invoke id 9999, its invoke ids four digits), chosen here because they
//! are the PBX's, not the wire's.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{lock, Behaviour, CallEnd, IvrSignal, Shared, SimCalls};
use crate::codec::apdu::{ErrorCategory, EventReport};
use crate::codec::body::{FieldName as F, Value};
use crate::codec::xml::{EVENT_INVOKE_ID, MAX_XML_INVOKE_ID};
use crate::codec::{Apdu, Argument, Body, ConnectionId, DeviceId, DeviceRef, Dialect, Event, EventKind, LocalDevice, Op, Operation, RejectProblem};

pub(crate) enum Out {
    Apdu(Apdu),
    /// XML only: a message that is no APDU (the connection's own session messages).
    Xml(crate::codec::xml::XmlMessage),
    Close,
}

pub(crate) enum Msg {
    Connected { conn: u64, tx: mpsc::UnboundedSender<Out> },
    Disconnected { conn: u64 },
    Apdu { conn: u64, apdu: Apdu },
    Timer(Timer),
    IvrHangup(String),
    /// A full reset: connections and calls end.
    Restart,
    /// The CTI process restarts: connections drop, monitors and cross-reference numbering are
    /// forgotten, the calls go on.
    RestartCti,
    /// The CTI links drop (a WAN cut, a cable): the calls go on.
    DropLinks,
    /// Send the answers held back by the withhold-results fault.
    ReleaseResults,
    /// The calls up and how the last ones ended.
    Calls { reply: tokio::sync::oneshot::Sender<SimCalls> },
    /// Emit `count` Delivered events to the monitors of a device, as fast as possible.
    Flood { device: String, count: u64 },
    /// What a phone shows it is dialling (its live outgoing call, suffix included).
    Dialled { device: String, reply: tokio::sync::oneshot::Sender<Option<String>> },
}

pub(crate) enum Timer {
    /// The calling phone's user picked up (or, for a locked phone, keyed the PIN).
    CallerAnswers { call: u16, generation: u64 },
    /// The called extension picked up.
    CalleeAnswers { call: u16, generation: u64 },
    /// The user of a locked phone keyed its PIN: the phone unlocks and the call goes out.
    PinKeyed { call: u16, generation: u64 },
    Keepalive { conn: u64 },
    Send { conn: u64, apdu: Apdu },
}

struct ConnState {
    tx: mpsc::UnboundedSender<Out>,
    next_invoke: i64,
    keepalive_outstanding: Vec<i64>,
    /// While an answer is withheld (the withhold-results fault): it and the events after it.
    held: Option<Vec<Apdu>>,
    /// Answers among `held`.
    withheld: u64,
}

/// How many ended calls the switch remembers (for [`SimCalls::ended`]).
const ENDED_KEPT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// The calling phone is being prompted (rings) before the call goes out.
    Prompting,
    Delivered,
    Established,
}

struct Call {
    /// BER: two bytes (`2B 00`, as OXE numbers calls); XML: 32 hex digits as text (OpenScape).
    id: Bytes,
    caller: String,
    /// Dialled number without any `*digits#` suffix.
    called: String,
    suffix: String,
    state: CallState,
    ivr: bool,
    internal_callee: bool,
}

struct Switch {
    shared: Arc<Shared>,
    ivr: mpsc::UnboundedSender<IvrSignal>,
    me: mpsc::UnboundedSender<Msg>,
    conns: HashMap<u64, ConnState>,
    /// xref → (connection, device)
    monitors: HashMap<Bytes, (u64, String)>,
    next_xref: u32,
    calls: HashMap<u16, Call>,
    next_call: u16,
    /// Bumped by a restart so timers of forgotten calls do nothing.
    generation: u64,
    /// The invoke being handled is one whose answer the withhold-results fault keeps back.
    withholding: bool,
    /// How the last calls ended (hex id), oldest first.
    ended: VecDeque<(String, CallEnd)>,
    /// The wire is CSTA XML: the PBX's identifiers are text.
    xml: bool,
    /// Calls placed since the start (never reset): XML call ids are unique for the PBX's life.
    calls_made: u64,
}

pub(crate) fn spawn(shared: Arc<Shared>, ivr: mpsc::UnboundedSender<IvrSignal>) -> mpsc::UnboundedSender<Msg> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let xml = lock(&shared.config).framing.is_xml();
    let mut sw = Switch { shared, ivr, me: tx.clone(), conns: HashMap::new(), monitors: HashMap::new(), next_xref: 1, calls: HashMap::new(), next_call: 0x2B00, generation: 0, withholding: false, ended: VecDeque::new(), xml, calls_made: 0 };
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            sw.handle(m);
        }
    });
    tx
}

/// A call id as [`IvrSignal`] and [`SimCalls`] name it: hex of the BER octets; the XML `callID`
/// as it is (already hex digits).
fn call_name(xml: bool, id: &Bytes) -> String {
    if xml { String::from_utf8_lossy(id).into_owned() } else { hex::encode(id) }
}

fn conn_id(call: &Bytes, device: &str) -> Value {
    Value::Connection(ConnectionId { call: Some(call.clone()), device: DeviceId::dialing(device).ok().map(LocalDevice::Static) })
}
fn dev(device: &str) -> Value {
    match DeviceId::dialing(device) {
        Ok(d) => Value::Device(DeviceRef::Id(d)),
        Err(_) => Value::Device(DeviceRef::NotKnown),
    }
}

impl Switch {
    fn after(&self, d: Duration, t: Timer) {
        let d = d + self.jitter();
        let me = self.me.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            let _ = me.send(Msg::Timer(t));
        });
    }

    fn send(&mut self, conn: u64, apdu: Apdu) {
        if let Some(c) = self.conns.get_mut(&conn) {
            // Events wait behind a withheld answer (wire order); other traffic passes.
            if let (Some(held), Apdu::Invoke(inv)) = (&mut c.held, &apdu)
                && inv.op == Op::Known(Operation::EventReport)
            {
                held.push(apdu);
                return;
            }
            let _ = c.tx.send(Out::Apdu(apdu));
        }
    }

    /// Remember how a call ended (the last [`ENDED_KEPT`]).
    fn ended(&mut self, id: &Bytes, how: CallEnd) {
        if self.ended.len() >= ENDED_KEPT {
            self.ended.pop_front();
        }
        self.ended.push_back((call_name(self.xml, id), how));
    }

    /// A random extra delay in `0..jitter` (the jitter fault), else zero.
    fn jitter(&self) -> Duration {
        use rand::Rng;
        match lock(&self.shared.faults).jitter {
            Some(j) if !j.is_zero() => rand::rng().random_range(Duration::ZERO..j),
            _ => Duration::ZERO,
        }
    }

    /// Send an answer, honouring the withhold-results, result-delay, jitter and duplicate-result
    /// faults.
    fn answer(&mut self, conn: u64, apdu: Apdu) {
        if std::mem::take(&mut self.withholding) {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.held.get_or_insert_with(Vec::new).push(apdu);
                c.withheld += 1;
            }
            return;
        }
        let (delay, dup, jitter) = {
            let f = lock(&self.shared.faults);
            (f.result_delay, f.duplicate_results, f.jitter.is_some())
        };
        if dup {
            self.send(conn, apdu.clone());
        }
        match delay {
            Some(d) => self.after(d, Timer::Send { conn, apdu }),
            None if jitter => self.after(Duration::ZERO, Timer::Send { conn, apdu }),
            None => self.send(conn, apdu),
        }
    }

    /// The PBX's next invoke id on `conn`: up to 32767 in BER, four digits below the events'
    /// 9999 in XML.
    fn pbx_invoke_id(&mut self, conn: u64) -> i64 {
        let max = if self.xml { MAX_XML_INVOKE_ID } else { 32767 };
        match self.conns.get_mut(&conn) {
            Some(c) => {
                c.next_invoke = if c.next_invoke >= max { 1 } else { c.next_invoke + 1 };
                c.next_invoke
            }
            None => 0,
        }
    }

    /// Emit an event to every monitor of `device`.
    fn emit(&mut self, device: &str, kind: EventKind, body: Body) {
        let targets: Vec<(Bytes, u64)> = self.monitors.iter().filter(|(_, (_, d))| d == device).map(|(x, (c, _))| (x.clone(), *c)).collect();
        for (xref, conn) in targets {
            // XML events all carry the events' invoke id; BER ones take the next of the PBX's.
            let id = if self.xml { EVENT_INVOKE_ID } else { self.pbx_invoke_id(conn) };
            let report = EventReport { xref, event: Event::Call { kind, body: body.clone() }, extensions: None };
            self.send(conn, Apdu::event(id, report));
        }
    }

    fn handle(&mut self, m: Msg) {
        self.handle_one(m);
        let live = self.calls.len() as u64;
        let withheld = self.conns.values().map(|c| c.withheld).sum::<u64>();
        let changed = {
            let now = self.shared.stats.borrow();
            now.live_calls != live || now.results_withheld != withheld
        };
        if changed {
            self.shared.stats.send_modify(|s| {
                s.live_calls = live;
                s.results_withheld = withheld;
            });
        }
    }

    fn handle_one(&mut self, m: Msg) {
        match m {
            Msg::Connected { conn, tx } => {
                self.conns.insert(conn, ConnState { tx, next_invoke: 0, keepalive_outstanding: Vec::new(), held: None, withheld: 0 });
                if let Some(period) = lock(&self.shared.config).keepalive {
                    self.after(period, Timer::Keepalive { conn });
                }
            }
            Msg::Disconnected { conn } => {
                self.conns.remove(&conn);
                self.monitors.retain(|_, (c, _)| *c != conn);
            }
            Msg::DropLinks => {
                for c in self.conns.values() {
                    let _ = c.tx.send(Out::Close);
                }
                self.conns.clear();
                self.monitors.clear();
            }
            Msg::Dialled { device, reply } => {
                let _ = reply.send(self.calls.values().find(|c| c.caller == device).map(|c| format!("{}{}", c.called, c.suffix)));
            }
            Msg::Restart => {
                self.handle_one(Msg::RestartCti);
                let calls: Vec<Call> = self.calls.drain().map(|(_, c)| c).collect();
                for call in calls {
                    if call.ivr && call.state == CallState::Established {
                        let _ = self.ivr.send(IvrSignal::Cleared { call: call_name(self.xml, &call.id) });
                    }
                    self.ended(&call.id, CallEnd::Reset);
                }
                self.generation += 1;
            }
            Msg::RestartCti => {
                self.handle_one(Msg::DropLinks);
                self.next_xref = 1;
            }
            Msg::ReleaseResults => {
                for c in self.conns.values_mut() {
                    c.withheld = 0;
                    for apdu in c.held.take().unwrap_or_default() {
                        let _ = c.tx.send(Out::Apdu(apdu));
                    }
                }
            }
            Msg::Calls { reply } => {
                let live = self.calls.values().map(|c| call_name(self.xml, &c.id)).collect();
                let _ = reply.send(SimCalls { live, ended: self.ended.iter().cloned().collect() });
            }
            Msg::IvrHangup(call) => self.ivr_hangup(&call),
            Msg::Flood { device, count } => {
                // About the device's own live call if it has one (a PBX stuck repeating itself),
                // else about a call nobody follows.
                let nobody = if self.xml { Bytes::from_static(b"FF00010000000000000000000000FFFF") } else { Bytes::from_static(&[0x7F, 0xFF]) };
                let id = self.calls.values().find(|c| c.caller == device).map_or(nobody, |c| c.id.clone());
                let body = party_event(&id, &device, "0800100200", &device, F::Connection, F::AlertingDevice, 2);
                for _ in 0..count {
                    self.emit(&device, EventKind::Delivered, body.clone());
                }
            }
            Msg::Timer(t) => self.timer(t),
            Msg::Apdu { conn, apdu } => self.apdu(conn, apdu),
        }
    }

    fn timer(&mut self, t: Timer) {
        match t {
            Timer::Send { conn, apdu } => self.send(conn, apdu),
            Timer::Keepalive { conn } => {
                let Some(period) = lock(&self.shared.config).keepalive else { return };
                let Some(c) = self.conns.get(&conn) else { return };
                // Two unanswered: the PBX declares the link faulty and drops it (OXO doc).
                if c.keepalive_outstanding.len() >= 2 {
                    let _ = c.tx.send(Out::Close);
                    return;
                }
                let id = self.pbx_invoke_id(conn);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.keepalive_outstanding.push(id);
                }
                self.shared.stats.send_modify(|s| s.keepalives_sent += 1);
                self.send(conn, Apdu::invoke(id, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))));
                self.after(period, Timer::Keepalive { conn });
            }
            Timer::CallerAnswers { call, generation } if generation == self.generation => self.caller_answers(call),
            Timer::CalleeAnswers { call, generation } if generation == self.generation => self.callee_answers(call),
            Timer::PinKeyed { call, generation } if generation == self.generation => {
                let Some(caller) = self.calls.get(&call).map(|c| c.caller.clone()) else { return };
                self.set_locked(&caller, false);
                self.goes_out(call);
            }
            Timer::CallerAnswers { .. } | Timer::CalleeAnswers { .. } | Timer::PinKeyed { .. } => {}
        }
    }

    fn apdu(&mut self, conn: u64, apdu: Apdu) {
        match apdu {
            Apdu::Invoke(inv) => {
                let Some(id) = inv.invoke_id else { return };
                let op = match &inv.op {
                    Op::Known(o) => *o,
                    Op::Other(_) => return self.send(conn, Apdu::reject(Some(id), RejectProblem::Invoke(1))),
                };
                self.shared.stats.send_modify(|s| *s.requests.entry(format!("{op:?}")).or_default() += 1);
                let (drop_on, reject, hold, withhold) = {
                    let f = lock(&self.shared.faults);
                    (f.drop_on, f.reject.contains(&op), f.hold.contains(&op), f.withhold_results.contains(&op))
                };
                if hold {
                    return;
                }
                if drop_on == Some(op) {
                    if let Some(c) = self.conns.get(&conn) {
                        let _ = c.tx.send(Out::Close);
                    }
                    return;
                }
                if reject {
                    return self.send(conn, Apdu::reject(Some(id), RejectProblem::Invoke(1)));
                }
                let Argument::Body(body) = inv.argument else {
                    return self.send(conn, Apdu::reject(Some(id), RejectProblem::Invoke(2)));
                };
                // The one answer this invoke gets is held back (see `answer`).
                self.withholding = withhold;
                match op {
                    Operation::SystemStatus => self.answer(conn, Apdu::result(id, op, Body::null())),
                    Operation::MonitorStart => self.monitor_start(conn, id, &body),
                    Operation::MonitorStop => {
                        let found = body.octets(F::CrossRefIdentifier).and_then(|x| self.monitors.remove(x)).is_some();
                        let a = if found { Apdu::result(id, op, Body::null()) } else { Apdu::universal_failure(id, ErrorCategory::Operation, Some(17)) };
                        self.answer(conn, a);
                    }
                    Operation::MakeCall => self.make_call(conn, id, &body),
                    Operation::GenerateDigits => self.generate_digits(conn, id, &body),
                    Operation::ClearConnection => self.clear_connection(conn, id, &body),
                    Operation::SnapshotDevice => {
                        // An empty snapshot: Phase II SnapshotDeviceData is [APPLICATION 22].
                        let empty = match lock(&self.shared.config).dialect {
                            _ if self.xml => Value::Raw(Bytes::from_static(b"<snapshotData/>")),
                            Dialect::Phase2 => Value::Raw(Bytes::from_static(&[0x76, 0x00])),
                            Dialect::Phase3 => Value::Raw(Bytes::from_static(&[0x30, 0x00])),
                        };
                        self.answer(conn, Apdu::result(id, op, Body::new().with(F::SnapshotData, empty)));
                    }
                    _ => self.send(conn, Apdu::reject(Some(id), RejectProblem::Invoke(1))),
                }
                self.withholding = false;
            }
            Apdu::Result(r) => {
                // Without invoke ids (XML with NUL framing) an answer is matched by operation:
                // a SystemStatusResponse answers the oldest keep-alive.
                let keepalive_answer = r.result.as_ref().is_some_and(|(op, _)| *op == Op::Known(Operation::SystemStatus));
                let oldest = self.conns.get(&conn).and_then(|c| c.keepalive_outstanding.first().copied()).filter(|_| keepalive_answer);
                let answered = r.invoke_id.or(oldest).and_then(|id| {
                    let c = self.conns.get_mut(&conn)?;
                    let pos = c.keepalive_outstanding.iter().position(|k| *k == id)?;
                    c.keepalive_outstanding.clear();
                    Some(pos)
                });
                self.shared.stats.send_modify(|s| match answered {
                    Some(_) => s.keepalives_answered += 1,
                    None => s.unexpected_responses += 1,
                });
            }
            Apdu::Error(_) | Apdu::Reject(_) => self.shared.stats.send_modify(|s| s.unexpected_responses += 1),
            _ => {}
        }
    }

    fn in_directory(&self, number: &str) -> Option<Behaviour> {
        lock(&self.shared.config).extensions.iter().find(|e| e.number == number).map(|e| e.behaviour.clone())
    }

    fn monitor_start(&mut self, conn: u64, id: i64, body: &Body) {
        let injected = lock(&self.shared.faults).monitor_error;
        if let Some(v) = injected {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::Operation, Some(v)));
        }
        let Some(device) = body.digits(F::MonitorObject) else {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::Operation, Some(62)));
        };
        if self.in_directory(&device).is_none() {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::Operation, Some(12)));
        }
        // XML: decimal text (a monitorCrossRefID is text); BER: four octets.
        let xref = if self.xml { Bytes::from(self.next_xref.to_string()) } else { Bytes::copy_from_slice(&self.next_xref.to_be_bytes()) };
        self.next_xref = self.next_xref.wrapping_add(1);
        self.monitors.insert(xref.clone(), (conn, device));
        self.answer(conn, Apdu::result(id, Operation::MonitorStart, Body::new().with(F::CrossRefIdentifier, Value::Octets(xref))));
    }

    fn busy(&self, ext: &str) -> bool {
        self.calls.values().any(|c| c.caller == ext || (c.internal_callee && c.called == ext))
    }

    fn make_call(&mut self, conn: u64, id: i64, body: &Body) {
        let Some((caller, dialled)) = crate::csta::make_call_args(body) else {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::Operation, Some(3)));
        };
        let Some(behaviour) = self.in_directory(&caller) else {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::Operation, Some(5)));
        };
        match behaviour {
            Behaviour::OutOfService => return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::SystemResourceAvailability, Some(18))),
            Behaviour::Busy => return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::StateIncompatibility, Some(19))),
            _ if self.busy(&caller) => return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::StateIncompatibility, Some(19))),
            _ => {}
        }
        if dialled.is_empty() {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::Operation, Some(6)));
        }
        let (ivr_number, pool) = {
            let c = lock(&self.shared.config);
            (c.ivr_number.clone(), c.ivr_pool.clone())
        };
        let (called, suffix, ivr) = match ivr_number.iter().chain(pool.iter()).find(|n| dialled.starts_with(n.as_str()) && (dialled.len() == n.len() || dialled[n.len()..].starts_with('*'))) {
            Some(n) => (n.clone(), dialled[n.len()..].to_owned(), true),
            None => (dialled.clone(), String::new(), false),
        };
        let internal_callee = self.in_directory(&called).is_some();
        let call = self.next_call;
        self.next_call = self.next_call.wrapping_add(1).max(1);
        self.calls_made += 1;
        let call_id = if self.xml {
            // 32 hex digits, as OpenScape's `FF000100000000004A7F8F4F3C0E0000`.
            Bytes::from(format!("FF0001{:018X}{call:04X}0000", self.calls_made))
        } else {
            Bytes::copy_from_slice(&call.to_be_bytes())
        };
        self.calls.insert(call, Call { id: call_id.clone(), caller: caller.clone(), called, suffix, state: CallState::Prompting, ivr, internal_callee });

        let result = Apdu::result(id, Operation::MakeCall, crate::csta::make_call_result(&crate::csta::CallId::new(call_id.clone()), &caller));
        let first = Body::new()
            .with(F::InitiatedConnection, conn_id(&call_id, &caller))
            .with(F::InitiatingDevice, dev(&caller))
            .with(F::LocalConnectionInfo, Value::Int(1))
            .with(F::Cause, Value::Int(44));
        if lock(&self.shared.faults).events_before_result {
            self.emit(&caller, EventKind::ServiceInitiated, first);
            self.answer(conn, result);
        } else {
            self.answer(conn, result);
            self.emit(&caller, EventKind::ServiceInitiated, first);
        }
        // autoOriginate doNotPrompt: the call goes out at once; prompt (default): the phone
        // rings and its user picks up according to the extension's behaviour.
        let do_not_prompt = body.int(F::AutoOriginate) == Some(1);
        match behaviour {
            Behaviour::Answer { after } => {
                let d = if do_not_prompt { Duration::ZERO } else { after };
                self.after(d, Timer::CallerAnswers { call, generation: self.generation });
            }
            _ if do_not_prompt => self.after(Duration::ZERO, Timer::CallerAnswers { call, generation: self.generation }),
            _ => {}
        }
    }

    fn caller_answers(&mut self, call: u16) {
        let Some(c) = self.calls.get(&call) else { return };
        let (id, caller, called) = (c.id.clone(), c.caller.clone(), c.called.clone());
        let lock_prefix = lock(&self.shared.config).lock_prefix.clone();
        // A MakeCall to the lock prefix locks the phone; the feature is acknowledged by a tone
        // and the call ends.
        if lock_prefix.as_deref().is_some_and(|p| called.starts_with(p)) {
            self.emit(&caller, EventKind::Originated, originated(&id, &caller, &called));
            self.set_locked(&caller, true);
            self.clear(call, &caller, 48, CallEnd::Feature);
            return;
        }
        let (locked, pin_ok, pin_delay) = {
            let cfg = lock(&self.shared.config);
            let e = cfg.extensions.iter().find(|e| e.number == caller);
            (e.is_some_and(|e| e.locked), e.is_some_and(|e| e.pin.is_some() && e.pin == e.user_pin), e.map_or(Duration::ZERO, |e| e.pin_delay))
        };
        if locked {
            if !pin_ok {
                let failed = Body::new()
                    .with(F::FailedConnection, conn_id(&id, &caller))
                    .with(F::FailingDevice, dev(&caller))
                    .with(F::CalledDevice, dev(&called))
                    .with(F::LocalConnectionInfo, Value::Int(6))
                    .with(F::Cause, Value::Int(35));
                self.emit(&caller, EventKind::Failed, failed);
                self.clear(call, &caller, 35, CallEnd::Failed);
                return;
            }
            // The phone asks for its PIN; the user keys it, and only then does the call go out.
            if !pin_delay.is_zero() {
                self.after(pin_delay, Timer::PinKeyed { call, generation: self.generation });
                return;
            }
            self.set_locked(&caller, false);
        }
        self.goes_out(call);
    }

    /// The calling phone is off-hook (and unlocked): the call goes out to the dialled number.
    fn goes_out(&mut self, call: u16) {
        let Some(c) = self.calls.get(&call) else { return };
        let (id, caller, called, suffix) = (c.id.clone(), c.caller.clone(), c.called.clone(), c.suffix.clone());
        self.emit(&caller, EventKind::Originated, originated(&id, &caller, &called));
        let (ivr, internal) = match self.calls.get(&call) {
            Some(c) => (c.ivr, c.internal_callee),
            None => return,
        };
        if !internal {
            // The trunk's dynamic id: octets in BER, text in XML.
            let trunk = if self.xml { Bytes::from_static(b"0BFC0104") } else { Bytes::from_static(&[0x0B, 0xFC, 0x01, 0x04]) };
            let reached = Body::new()
                .with(F::OutboundConnection, Value::Connection(ConnectionId { call: Some(id.clone()), device: Some(LocalDevice::Dynamic(trunk)) }))
                .with(F::NetworkInterfaceUsed, Value::Device(DeviceRef::NotKnown))
                .with(F::CallingDevice, dev(&caller))
                .with(F::CalledDevice, dev(&called))
                .with(F::LastRedirectionDevice, Value::Device(DeviceRef::NotRequired))
                .with(F::LocalConnectionInfo, Value::Int(3))
                .with(F::Cause, Value::Int(22));
            self.emit(&caller, EventKind::NetworkReached, reached);
        }
        let delivered = party_event(&id, &called, &caller, &called, F::Connection, F::AlertingDevice, 3);
        self.emit(&caller, EventKind::Delivered, delivered.clone());
        if internal {
            self.emit(&called, EventKind::Delivered, party_event(&id, &called, &caller, &called, F::Connection, F::AlertingDevice, 2));
        }
        if let Some(c) = self.calls.get_mut(&call) {
            c.state = CallState::Delivered;
        }
        if ivr {
            // The IVR platform answers at once.
            self.callee_answers(call);
            let did = format!("{}{}", lock(&self.shared.config).did_prefix, caller);
            let hexid = call_name(self.xml, &id);
            let _ = self.ivr.send(IvrSignal::Connected { call: hexid.clone(), calling: did, called: called.clone() });
            if !suffix.is_empty() {
                let _ = self.ivr.send(IvrSignal::Digits { call: hexid, digits: suffix });
            }
            return;
        }
        if internal {
            match self.in_directory(&called) {
                Some(Behaviour::Answer { after }) => self.after(after, Timer::CalleeAnswers { call, generation: self.generation }),
                Some(Behaviour::Busy) => {
                    let failed = Body::new()
                        .with(F::FailedConnection, conn_id(&id, &called))
                        .with(F::FailingDevice, dev(&called))
                        .with(F::CallingDevice, dev(&caller))
                        .with(F::CalledDevice, dev(&called))
                        .with(F::LocalConnectionInfo, Value::Int(6))
                        .with(F::Cause, Value::Int(3));
                    self.emit(&caller, EventKind::Failed, failed);
                }
                _ => {}
            }
        }
    }

    fn callee_answers(&mut self, call: u16) {
        let Some(c) = self.calls.get_mut(&call) else { return };
        if c.state != CallState::Delivered {
            return;
        }
        c.state = CallState::Established;
        let (id, caller, called, internal) = (c.id.clone(), c.caller.clone(), c.called.clone(), c.internal_callee);
        let est = party_event(&id, &called, &caller, &called, F::EstablishedConnection, F::AnsweringDevice, 3);
        self.emit(&caller, EventKind::Established, est.clone());
        if internal {
            self.emit(&called, EventKind::Established, est);
        }
    }

    fn set_locked(&mut self, ext: &str, locked: bool) {
        if let Some(e) = lock(&self.shared.config).extensions.iter_mut().find(|e| e.number == ext) {
            e.locked = locked;
        }
    }

    /// End a call: ConnectionCleared for the releasing device, to every monitor involved.
    fn clear(&mut self, call: u16, releasing: &str, cause: i64, how: CallEnd) {
        let Some(c) = self.calls.remove(&call) else { return };
        self.ended(&c.id, how);
        let cleared = Body::new()
            .with(F::DroppedConnection, conn_id(&c.id, releasing))
            .with(F::ReleasingDevice, dev(releasing))
            .with(F::LocalConnectionInfo, Value::Int(0))
            .with(F::Cause, Value::Int(cause));
        self.emit(&c.caller, EventKind::ConnectionCleared, cleared.clone());
        if c.internal_callee {
            self.emit(&c.called, EventKind::ConnectionCleared, cleared);
        }
        // Only a call the IVR answered is the IVR's to hear about.
        if c.ivr && c.state == CallState::Established {
            let _ = self.ivr.send(IvrSignal::Cleared { call: call_name(self.xml, &c.id) });
        }
    }

    /// The call `named` (read from a request by a [`crate::csta`] reader) in the call table.
    fn find_call(&self, named: Option<crate::csta::CallId>) -> Option<u16> {
        let call = named?;
        self.calls.iter().find(|(_, c)| c.id.as_ref() == call.as_bytes()).map(|(k, _)| *k)
    }

    fn generate_digits(&mut self, conn: u64, id: i64, body: &Body) {
        let Some(call) = self.find_call(crate::csta::digits_call(body)) else {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::Operation, Some(13)));
        };
        let Some(c) = self.calls.get(&call) else { return };
        if c.state != CallState::Established {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::StateIncompatibility, Some(3)));
        }
        if c.ivr {
            let digits = body.text(F::CharactersToSend).map(|t| t.as_str().to_owned()).unwrap_or_default();
            let _ = self.ivr.send(IvrSignal::Digits { call: call_name(self.xml, &c.id), digits });
        }
        self.answer(conn, Apdu::result(id, Operation::GenerateDigits, Body::null()));
    }

    fn clear_connection(&mut self, conn: u64, id: i64, body: &Body) {
        let Some(call) = self.find_call(crate::csta::cleared_call(body)) else {
            return self.answer(conn, Apdu::universal_failure(id, ErrorCategory::Operation, Some(13)));
        };
        let releasing = body
            .connection(F::ConnectionToBeCleared)
            .and_then(ConnectionId::device_digits)
            .or_else(|| self.calls.get(&call).map(|c| c.caller.clone()))
            .unwrap_or_default();
        self.answer(conn, Apdu::result(id, Operation::ClearConnection, Body::null()));
        self.clear(call, &releasing, 48, CallEnd::ClearConnection);
    }

    fn ivr_hangup(&mut self, hexid: &str) {
        let Some(call) = self.calls.iter().find(|(_, c)| call_name(self.xml, &c.id) == hexid).map(|(k, _)| *k) else { return };
        let Some(c) = self.calls.get(&call) else { return };
        let (id, caller, called) = (c.id.clone(), c.caller.clone(), c.called.clone());
        // The far end releases first; then the user's phone goes on-hook.
        let far = Body::new()
            .with(F::DroppedConnection, conn_id(&id, &called))
            .with(F::ReleasingDevice, dev(&called))
            .with(F::LocalConnectionInfo, Value::Int(3))
            .with(F::Cause, Value::Int(48));
        self.emit(&caller, EventKind::ConnectionCleared, far);
        if let Some(c) = self.calls.get_mut(&call) {
            c.ivr = false; // the IVR already knows
        }
        self.clear(call, &caller, 48, CallEnd::IvrHangup);
    }
}

fn originated(id: &Bytes, caller: &str, called: &str) -> Body {
    Body::new()
        .with(F::OriginatedConnection, conn_id(id, caller))
        .with(F::CallingDevice, dev(caller))
        .with(F::CalledDevice, dev(called))
        .with(F::LocalConnectionInfo, Value::Int(3))
        .with(F::Cause, Value::Int(22))
}

/// Delivered / Established: the far party's connection and role, calling and called devices.
fn party_event(id: &Bytes, party: &str, caller: &str, called: &str, conn_name: F, role: F, state: i64) -> Body {
    Body::new()
        .with(conn_name, conn_id(id, party))
        .with(role, dev(party))
        .with(F::CallingDevice, dev(caller))
        .with(F::CalledDevice, dev(called))
        .with(F::LastRedirectionDevice, Value::Device(DeviceRef::NotRequired))
        .with(F::LocalConnectionInfo, Value::Int(state))
        .with(F::Cause, Value::Int(22))
}
