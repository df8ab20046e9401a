//! The sans-IO PBX link session: all the ROSE/ACSE logic of **one** connection, with no socket,
//! no task and no clock of its own (in the style of quinn-proto's `Connection`).
//!
//! Why: the tokio driver ([`super`]) used to mix this logic with socket writes and
//! `Instant::now()`, so it could only be tested (and fuzzed) over real TCP and real time. Here
//! time comes in as `now` on every call, bytes come in through [`Session::handle_input`] (or one
//! unframed APDU through [`Session::handle_frame`]) and go out through
//! [`Session::poll_transmit`], and what the caller must learn comes out of
//! [`Session::poll_event`] in the order it happened on the wire. The driver sleeps until
//! [`Session::poll_timeout`] and then calls [`Session::handle_timeout`].
//!
//! What lives here:
//! - the association: the Alcatel preamble and the AARQ are queued at [`Session::new`]; the AARE
//!   is checked (a rejection ends the session with [`LinkLoss::AareRejected`]); no AARE within
//!   `connect_timeout` ends it too; [`Session::close`] sends an RLRQ and waits (briefly) for the
//!   RLRE;
//! - the session owns the [`Framer`] (the driver feeds raw bytes: one place decides what a frame
//!   is, and a framing error ends the session with [`LinkLoss::Framing`]);
//! - our invokes: ids from the [`InvokeTable`], a deadline each, correlated with their result,
//!   error or reject, each completed exactly once as [`SessionEvent::Completed`]; queued behind
//!   the [`TokenBucket`]; each APDU is **encoded once**, straight into the transmit buffer;
//! - the requests it gave up on: a request whose deadline passed after it was sent may still be
//!   carried out by the PBX (a MakeCall places its call all the same), so its invoke id is
//!   remembered, bounded (see [`LATE_RESULTS_KEPT`]), and a result that comes for it later is
//!   [`SessionEvent::LateResult`], not an unexpected response;
//! - keep-alive: a SystemStatus invoke after `keepalive` of silence; no complete frame within
//!   two periods is a dead peer ([`LinkLoss::DeadPeer`]);
//! - the PBX's invokes: SystemStatus answered, events routed by cross-reference id to
//!   [`SessionEvent::Event`], anything else rejected;
//! - monitors of this connection: MonitorStart/Stop and the cross-reference map. Which devices
//!   are wanted across reconnects, and by whom, is the driver's business: after a reconnect it
//!   asks a fresh session to monitor them again.
//! - the counters of [`Stats`] (shared with the handle, atomics only).
//!
//! Where: this file holds the types, the session's state, its output, requests, release and
//! timers; `input` handles what the PBX sends (frames, APDUs by phase, undecodable ones) and
//! `monitors` this connection's monitors and cross-reference ids. They are one `impl Session`
//! split by concern (the children use the session's private state and helpers directly).
//!
//! Once the session reports [`SessionEvent::Lost`] (or [`SessionEvent::Closed`]) it is dead: every
//! request it held has been completed (with [`RequestError::LinkDown`] or
//! [`RequestError::Closed`]) before that event, and further input is ignored.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tracing::{trace, warn};

use super::parts::InvokeTable;
use super::parts::TokenBucket;
use super::{EncodeProblem, RequestError, Stats, MAX_QUEUED_REQUESTS};
use crate::codec::acse::{aarq, for_log, AareRejection};
use crate::codec::apdu::EventReport;
use crate::codec::body::{FieldName, Value};
use crate::codec::framing::Framer;
use crate::codec::{Apdu, Body, DecodeError, Operation};
use crate::config::LinkProfile;

mod input;
mod monitors;
mod xml;

use monitors::MonitorState;
use xml::XmlState;

/// Requests given up on (timed out after they were sent) whose invoke ids a session remembers
/// for their late results, at most; beyond, the oldest is forgotten first. Each is also forgotten
/// [`LATE_RESULT_WINDOW`] request timeouts after it timed out, when its invoke id is used again,
/// once answered, and with the connection (invoke ids are per connection).
pub const LATE_RESULTS_KEPT: usize = 1024;
/// How long (in request timeouts) a session remembers a request it gave up on.
pub const LATE_RESULT_WINDOW: u32 = 10;

/// A request of the session's user, named in its [`SessionEvent::Completed`]. Allocated by the
/// session, never reused within one session (unlike ROSE invoke ids, which wrap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Why a connection ended. Typed so that the driver and the tests can tell the causes apart; its
/// `Display` is the human reason [`super::LinkState::Down`] shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkLoss {
    #[error("connect: {0}")]
    Connect(std::io::ErrorKind),
    #[error("connect: timed out")]
    ConnectTimeout,
    #[error("AARQ: the configured application context is not a dotted OID")]
    BadContext,
    #[error("no AARE within the connect timeout")]
    NoAare,
    #[error("AARE rejected: {0}")]
    AareRejected(AareRejection),
    #[error("no answer to StartApplicationSession within the connect timeout")]
    NoSessionAnswer,
    /// The PBX refused to open (or renew) the ECMA-354 session: its error, as it named it.
    #[error("application session refused: {0}")]
    SessionRefused(String),
    /// The PBX ended the ECMA-354 session (`ApplicationSessionTerminated`).
    #[error("application session terminated by the PBX: {0}")]
    SessionTerminated(String),
    #[error("undecodable APDU during association: {0}")]
    UndecodableDuringAssociation(DecodeError),
    #[error("framing: {0}")]
    Framing(DecodeError),
    #[error("association released by the PBX")]
    ReleasedByPeer,
    #[error("association aborted by the PBX")]
    AbortedByPeer,
    #[error("no answer to keep-alive within {0:?}: peer dead")]
    DeadPeer(Duration),
    #[error("connection closed by the PBX")]
    ClosedByPeer,
    #[error("read: {0}")]
    Read(std::io::ErrorKind),
    #[error("write: {0}")]
    Write(std::io::ErrorKind),
    #[error("write stalled: the PBX does not read")]
    WriteStalled,
    /// CSTA over TLS: the handshake failed, or the PBX ended TLS with an alert (a client
    /// certificate it refuses shows only after a TLS 1.3 handshake). In words an administrator
    /// acts on (see [`super::tls::describe`]).
    #[error("TLS: {0}")]
    Tls(String),
}

/// What the session tells its driver, in wire order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The association is accepted (or there is none to open): requests flow from now on.
    Up,
    /// A request of ours got its answer (or failed).
    Completed { id: RequestId, result: Result<Body, RequestError> },
    /// The result of a request that already completed with [`RequestError::Timeout`] (sent, then
    /// given up on): the PBX carried it out after all (a MakeCall's call is up). Comes at most
    /// once per request, and only while the session remembers it ([`LATE_RESULTS_KEPT`],
    /// [`LATE_RESULT_WINDOW`]). A late error or reject is dropped: it carried nothing out.
    LateResult { id: RequestId, op: Operation, body: Body },
    /// An event report for a device this session monitors.
    Event { device: Arc<str>, report: Arc<EventReport> },
    /// The PBX monitors the device (a [`Session::monitor`] answered).
    MonitorStarted { device: Arc<str> },
    /// The PBX refused to monitor the device (or the start could not be sent).
    MonitorFailed { device: Arc<str>, error: RequestError },
    /// The connection is gone; nothing more comes from this session.
    Lost(LinkLoss),
    /// [`Session::close`] finished (RLRE received, or its wait ended).
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Associating { deadline: Instant },
    Up,
    Releasing { deadline: Instant },
    Dead,
}

/// One outstanding invoke of ours.
enum Pending {
    User { id: RequestId, op: Operation, sent: Instant, deadline: Instant },
    MonitorStart { device: Arc<str>, deadline: Instant },
    Internal { op: Operation, deadline: Instant },
}

impl Pending {
    fn deadline(&self) -> Instant {
        match self {
            Pending::User { deadline, .. } | Pending::MonitorStart { deadline, .. } | Pending::Internal { deadline, .. } => *deadline,
        }
    }
    fn operation(&self) -> Operation {
        match self {
            Pending::User { op, .. } | Pending::Internal { op, .. } => *op,
            Pending::MonitorStart { .. } => Operation::MonitorStart,
        }
    }
}

/// A user request given up on after it was sent, remembered for its late result.
struct GaveUp {
    invoke: i64,
    id: RequestId,
    op: Operation,
    at: Instant,
}

/// An invoke waiting for a rate-limiter token.
enum Queued {
    User { id: RequestId, op: Operation, arg: Body, deadline: Instant },
    MonitorStart { device: Arc<str> },
    MonitorStop { xref: Bytes },
}

/// The sans-IO session of one connection (see the module docs).
pub struct Session {
    p: Arc<LinkProfile>,
    stats: Arc<Stats>,
    phase: Phase,
    framer: Framer,
    invokes: InvokeTable<Pending>,
    queue: VecDeque<Queued>,
    /// Queued user requests (bounded by [`MAX_QUEUED_REQUESTS`]).
    queued_user: usize,
    bucket: TokenBucket,
    last_rx: Instant,
    keepalive_sent: Option<Instant>,
    next_request: u64,
    /// The latest `now` the session was given (for [`Session::poll_timeout`], which takes none).
    now: Instant,
    /// Framed APDUs to write, in order.
    transmit: BytesMut,
    /// Encoding scratch, reused.
    scratch: Vec<u8>,
    events: VecDeque<SessionEvent>,
    monitors: HashMap<Arc<str>, MonitorState>,
    by_xref: HashMap<Bytes, Arc<str>>,
    /// Requests given up on, oldest first (at most [`LATE_RESULTS_KEPT`]).
    gave_up: VecDeque<GaveUp>,
    /// CSTA XML: the wire and the ECMA-354 session (`None`: BER).
    xml: Option<XmlState>,
}

impl Session {
    /// A session on a connection just opened at `now`: the preamble and the AARQ (when the
    /// profile has them) are queued for transmission; without ACSE the session is up at once.
    pub fn new(profile: Arc<LinkProfile>, stats: Arc<Stats>, now: Instant) -> Session {
        let mut framer = Framer::new(profile.framing);
        if profile.preamble {
            framer = framer.expect_preamble(b'P');
        }
        let xml = XmlState::new(&profile);
        let mut s = Session {
            bucket: TokenBucket::new(profile.max_requests_per_second, now),
            phase: Phase::Up,
            framer,
            invokes: if xml.is_some() { InvokeTable::with_max(crate::codec::xml::MAX_XML_INVOKE_ID) } else { InvokeTable::default() },
            queue: VecDeque::new(),
            queued_user: 0,
            last_rx: now,
            keepalive_sent: None,
            next_request: 1,
            now,
            transmit: BytesMut::with_capacity(1024),
            scratch: Vec::with_capacity(256),
            events: VecDeque::new(),
            monitors: HashMap::new(),
            by_xref: HashMap::new(),
            gave_up: VecDeque::new(),
            xml,
            stats,
            p: profile,
        };
        if s.xml.is_some() {
            s.start_xml(now);
            return s;
        }
        if s.p.preamble {
            s.transmit.extend_from_slice(b"B");
        }
        match s.p.acse.as_ref().map(aarq) {
            None => s.come_up(now),
            Some(Ok(body)) => {
                s.phase = Phase::Associating { deadline: now + s.p.connect_timeout };
                s.send(&Apdu::Aarq(body));
            }
            Some(Err(_)) => s.lose(LinkLoss::BadContext),
        }
        s
    }

    pub fn is_up(&self) -> bool {
        self.phase == Phase::Up
    }
    /// Lost or closed: nothing more will happen.
    pub fn is_dead(&self) -> bool {
        self.phase == Phase::Dead
    }
    /// Invokes of ours waiting for their answer.
    pub fn outstanding(&self) -> usize {
        self.invokes.len()
    }
    /// Devices this session monitors (started or starting).
    pub fn monitored(&self) -> usize {
        self.monitors.len()
    }
    /// Whether the session remembers request `id`, given up on, for its late result (its
    /// [`SessionEvent::LateResult`] may still come).
    pub fn awaits_late_result(&self, id: RequestId) -> bool {
        self.gave_up.iter().any(|g| g.id == id)
    }

    fn come_up(&mut self, now: Instant) {
        self.phase = Phase::Up;
        self.last_rx = now;
        Stats::inc(&self.stats.connects);
        self.events.push_back(SessionEvent::Up);
        self.pump(now);
    }

    // ---- output ----------------------------------------------------------------------------

    /// Frames to write, in order, all of them at once (`None`: nothing to write).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// Whether frames wait in the transmit buffer.
    pub fn poll_transmit_pending(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// The next thing the driver must learn, in the order it happened.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] must be called next (`None` when dead).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut wake = match self.phase {
            Phase::Dead => return None,
            Phase::Associating { deadline } | Phase::Releasing { deadline } => return Some(deadline),
            Phase::Up => match self.keepalive_sent {
                Some(sent) => sent + self.p.keepalive,
                None => self.last_rx + self.p.keepalive,
            },
        };
        if let Some(renew) = self.xml.as_ref().and_then(XmlState::renew_at) {
            wake = wake.min(renew);
        }
        if let Some(d) = self.invokes.values().map(Pending::deadline).min() {
            wake = wake.min(d);
        }
        let mut may_send = false;
        for q in &self.queue {
            if let Queued::User { deadline, .. } = q {
                wake = wake.min(*deadline);
            }
            may_send = true;
        }
        if may_send && (self.invokes.len() as i64) < self.invokes.max() {
            if let Err(wait) = self.bucket.clone().try_take(self.now) {
                wake = wake.min(self.now + wait);
            }
        }
        Some(wake)
    }

    /// Encode `apdu` once, frame it into the transmit buffer. Counts `frames_out`.
    ///
    /// # Errors
    /// The APDU does not encode in the dialect, or is too large for the framing.
    fn try_send(&mut self, apdu: &Apdu) -> Result<(), EncodeProblem> {
        self.scratch.clear();
        match &self.xml {
            Some(x) => {
                let (framing, version) = x.wire();
                crate::codec::xml::encode_apdu(apdu, framing, version, &mut self.scratch).map_err(EncodeProblem::Xml)?;
            }
            None => apdu.encode(self.p.dialect, &mut self.scratch).map_err(EncodeProblem::Apdu)?,
        }
        self.frame_scratch()
    }

    /// Frame what was encoded into `scratch` into the transmit buffer (header, frame, trailer),
    /// traced the wire's way (secrets masked). Counts `frames_out`.
    ///
    /// # Errors
    /// The frame is too large for the framing.
    fn frame_scratch(&mut self) -> Result<(), EncodeProblem> {
        self.p.framing.write_header(self.scratch.len(), &mut self.transmit).map_err(|_| EncodeProblem::TooLarge(self.scratch.len()))?;
        self.transmit.extend_from_slice(&self.scratch);
        self.p.framing.write_trailer(&mut self.transmit);
        if self.xml.is_some() {
            trace!(xml = %crate::codec::xml::for_log(&self.scratch), "send");
        } else {
            trace!(apdu = %for_log(&self.scratch), "send");
        }
        Stats::inc(&self.stats.frames_out);
        Ok(())
    }

    /// Send what the session itself originates (answers, AARQ, RLRQ): these always encode.
    fn send(&mut self, apdu: &Apdu) {
        if let Err(e) = self.try_send(apdu) {
            warn!(error = %e, kind = apdu.kind_name(), "an APDU of the link does not encode");
        }
    }

    // ---- requests (this connection's monitors: `monitors`) ---------------------------------

    /// Queue a request; its answer comes as [`SessionEvent::Completed`] with the returned id.
    ///
    /// # Errors
    /// `QueueFull` when [`MAX_QUEUED_REQUESTS`] wait for the rate limiter; `LinkDown` when the
    /// session is not up.
    pub fn request(&mut self, now: Instant, op: Operation, arg: Body) -> Result<RequestId, RequestError> {
        if self.phase != Phase::Up {
            return Err(if matches!(self.phase, Phase::Releasing { .. }) { RequestError::Closed } else { RequestError::LinkDown });
        }
        if self.queued_user >= MAX_QUEUED_REQUESTS {
            return Err(RequestError::QueueFull);
        }
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.queue.push_back(Queued::User { id, op, arg, deadline: now + self.p.request_timeout });
        self.queued_user += 1;
        self.pump(now);
        Ok(id)
    }

    /// Release the association: RLRQ, then [`SessionEvent::Closed`] on the RLRE or after a
    /// short wait. Requests still held fail with [`RequestError::Closed`].
    pub fn close(&mut self, now: Instant) {
        if self.phase == Phase::Dead {
            return;
        }
        self.fail_all(&RequestError::Closed);
        if self.phase == Phase::Up && self.xml.is_some() {
            if self.stop_xml_session(now) {
                return;
            }
            self.finish(SessionEvent::Closed);
        } else if self.phase == Phase::Up && self.p.acse.is_some() {
            self.send(&Apdu::Rlrq(Body::new()));
            self.phase = Phase::Releasing { deadline: now + self.p.request_timeout.min(Duration::from_secs(2)) };
        } else {
            self.finish(SessionEvent::Closed);
        }
    }

    /// The connection is gone for a reason the driver saw (I/O).
    pub fn connection_lost(&mut self, loss: LinkLoss) {
        if self.phase == Phase::Dead {
            return;
        }
        if matches!(self.phase, Phase::Releasing { .. }) {
            self.finish(SessionEvent::Closed);
        } else {
            self.lose(loss);
        }
    }

    fn lose(&mut self, loss: LinkLoss) {
        if self.phase == Phase::Dead {
            return;
        }
        self.fail_all(&RequestError::LinkDown);
        self.finish(SessionEvent::Lost(loss));
    }

    fn finish(&mut self, last: SessionEvent) {
        for (_, m) in self.monitors.drain() {
            if m.xref.is_some() {
                self.stats.monitors.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.by_xref.clear();
        // Invoke ids are per connection: no late result can come any more.
        self.gave_up.clear();
        self.phase = Phase::Dead;
        self.events.push_back(last);
    }

    /// Every user request still held fails with `err` (nothing is lost silently), in the order
    /// they were made.
    fn fail_all(&mut self, err: &RequestError) {
        let mut held: Vec<RequestId> = Vec::new();
        for (_, p) in self.invokes.drain() {
            if let Pending::User { id, .. } = p {
                held.push(id);
            }
        }
        for q in self.queue.drain(..) {
            if let Queued::User { id, .. } = q {
                held.push(id);
            }
        }
        self.queued_user = 0;
        held.sort_unstable();
        for id in held {
            if *err == RequestError::LinkDown {
                Stats::inc(&self.stats.requests_failed);
            }
            self.events.push_back(SessionEvent::Completed { id, result: Err(err.clone()) });
        }
    }

    /// Send queued invokes while tokens (and invoke ids) last.
    fn pump(&mut self, now: Instant) {
        self.now = self.now.max(now);
        while self.phase == Phase::Up && !self.queue.is_empty() && (self.invokes.len() as i64) < self.invokes.max() {
            if self.bucket.try_take(now).is_err() {
                return;
            }
            let Some(q) = self.queue.pop_front() else { return };
            let deadline = now + self.p.request_timeout;
            let (op, arg, pending) = match q {
                Queued::User { id, op, arg, deadline } => {
                    self.queued_user -= 1;
                    (op, arg, Pending::User { id, op, sent: now, deadline })
                }
                Queued::MonitorStart { device } => {
                    if !self.monitors.get(&device).is_some_and(|m| m.wanted) {
                        // Nobody wants it any more: do not start it at all.
                        self.monitors.remove(&device);
                        continue;
                    }
                    let Ok(dev) = crate::codec::DeviceId::dialing(&device) else {
                        self.monitors.remove(&device);
                        self.events.push_back(SessionEvent::MonitorFailed { device, error: RequestError::Encode(EncodeProblem::DeviceNotAscii) });
                        continue;
                    };
                    (Operation::MonitorStart, Body::new().with(FieldName::MonitorObject, Value::DeviceId(dev)), Pending::MonitorStart { device, deadline })
                }
                Queued::MonitorStop { xref } => (Operation::MonitorStop, Body::new().with(FieldName::CrossRefIdentifier, Value::Octets(xref)), Pending::Internal { op: Operation::MonitorStop, deadline }),
            };
            self.invoke(now, op, arg, pending);
        }
    }

    /// Allocate an id and send. Encoding problems fail the request, not the link.
    fn invoke(&mut self, now: Instant, op: Operation, arg: Body, pending: Pending) {
        let Some(id) = self.invokes.insert(pending) else { return };
        // The id is this invoke's now: an answer to it is not a late one of an older request.
        if !self.gave_up.is_empty() {
            self.gave_up.retain(|g| g.invoke != id);
        }
        let apdu = Apdu::invoke(id, op, arg).shaped(self.p.dialect, self.p.phase2_results);
        if let Err(e) = self.try_send(&apdu) {
            if let Some(p) = self.invokes.take(id) {
                self.complete(now, p, Err(RequestError::Encode(e)));
            }
        }
    }

    fn complete(&mut self, now: Instant, p: Pending, result: Result<Body, RequestError>) {
        match p {
            Pending::User { id, sent, .. } => {
                match &result {
                    Ok(_) => {
                        Stats::inc(&self.stats.requests_ok);
                        let us = now.saturating_duration_since(sent).as_micros() as u64;
                        Stats::inc(&self.stats.latency_count);
                        self.stats.latency_sum_us.fetch_add(us, Ordering::Relaxed);
                        self.stats.latency_max_us.fetch_max(us, Ordering::Relaxed);
                    }
                    Err(RequestError::Timeout) => Stats::inc(&self.stats.requests_timed_out),
                    Err(_) => Stats::inc(&self.stats.requests_failed),
                }
                self.events.push_back(SessionEvent::Completed { id, result });
            }
            Pending::MonitorStart { device, .. } => {
                let outcome = result.and_then(|body| body.octets(FieldName::CrossRefIdentifier).cloned().ok_or(RequestError::NoCrossRef));
                self.monitor_answered(now, device, outcome);
            }
            Pending::Internal { .. } => {}
        }
    }

    /// Time has come (at or after [`Session::poll_timeout`]; calling it early is harmless):
    /// deadlines of requests, the AARE and release waits, keep-alive and dead-peer detection,
    /// rate-limited invokes.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        match self.phase {
            Phase::Dead => return,
            Phase::Associating { deadline } => {
                if now >= deadline {
                    self.lose(if self.xml.is_some() { LinkLoss::NoSessionAnswer } else { LinkLoss::NoAare });
                }
                return;
            }
            Phase::Releasing { deadline } => {
                if now >= deadline {
                    self.finish(SessionEvent::Closed);
                }
                return;
            }
            Phase::Up => {}
        }
        let mut expired = self.invokes.drain_where(|p| p.deadline() <= now);
        // Completions in the order the requests were sent (ids wrap, so by deadline).
        expired.sort_by_key(|(_, p)| p.deadline());
        for (invoke, p) in expired {
            if let Pending::User { id, op, .. } = &p {
                self.gave_up.push_back(GaveUp { invoke, id: *id, op: *op, at: now });
                if self.gave_up.len() > LATE_RESULTS_KEPT {
                    self.gave_up.pop_front();
                }
            }
            self.complete(now, p, Err(RequestError::Timeout));
        }
        self.forget_old(now);
        if self.queue.iter().any(|q| matches!(q, Queued::User { deadline, .. } if *deadline <= now)) {
            let mut kept = VecDeque::with_capacity(self.queue.len());
            while let Some(q) = self.queue.pop_front() {
                match q {
                    Queued::User { id, deadline, .. } if deadline <= now => {
                        self.queued_user -= 1;
                        Stats::inc(&self.stats.requests_timed_out);
                        self.events.push_back(SessionEvent::Completed { id, result: Err(RequestError::Timeout) });
                    }
                    other => kept.push_back(other),
                }
            }
            self.queue = kept;
        }
        match self.keepalive_sent {
            Some(sent) if now >= sent + self.p.keepalive => {
                self.lose(LinkLoss::DeadPeer(self.p.keepalive));
                return;
            }
            None if now >= self.last_rx + self.p.keepalive => {
                self.keepalive_sent = Some(now);
                let body = Body::new().with(FieldName::SystemStatus, Value::Int(2));
                self.invoke(now, Operation::SystemStatus, body, Pending::Internal { op: Operation::SystemStatus, deadline: now + self.p.keepalive });
            }
            _ => {}
        }
        self.renew_xml_session(now);
        self.pump(now);
    }
}

impl Session {
    /// How long a request given up on is remembered.
    fn late_window(&self) -> Duration {
        self.p.request_timeout.saturating_mul(LATE_RESULT_WINDOW)
    }

    /// Forget the requests given up on longer than the window ago.
    fn forget_old(&mut self, now: Instant) {
        let window = self.late_window();
        while self.gave_up.front().is_some_and(|g| now.saturating_duration_since(g.at) >= window) {
            self.gave_up.pop_front();
        }
    }

    /// The request given up on that `invoke` answers late, if the session still remembers it
    /// (then forgotten: answered once). Those past the window are forgotten first: `gave_up` is
    /// in the order they were given up on, so the old ones are at its front.
    fn take_gave_up(&mut self, invoke: i64, now: Instant) -> Option<GaveUp> {
        self.forget_old(now);
        let i = self.gave_up.iter().position(|g| g.invoke == invoke)?;
        self.gave_up.remove(i)
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("phase", &self.phase).field("outstanding", &self.invokes.len()).field("queued", &self.queue.len()).field("monitors", &self.monitors.len()).finish_non_exhaustive()
    }
}
