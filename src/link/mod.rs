//! The PBX link manager: the only place that owns the PBX-side sockets.
//!
//! Two layers, so that the protocol is tested and fuzzed without sockets or clocks:
//! - [`session`]: the sans-IO [`Session`] of one connection: the association (preamble,
//!   AARQ/AARE, release), framing, the invoke table with deadlines, keep-alive and dead-peer
//!   detection, the rate limiter, the PBX's invokes (SystemStatus answered, others rejected,
//!   events routed by cross-reference id), this connection's monitors, the counters. Time comes in
//!   as `now`; frames go out through `poll_transmit`, outcomes through `poll_event`, in wire order;
//!   why a connection ended is a typed [`LinkLoss`].
//! - this module: the tokio driver. One supervised task per PBX ([`Link::spawn`]) connects with
//!   a timeout, hands the socket's bytes to a fresh [`Session`] per connection, writes what it
//!   transmits, sleeps until its `poll_timeout`, reconnects with backoff after a loss, and maps
//!   the session's [`RequestId`]s and devices to the callers: a oneshot per [`Link::request`], a
//!   channel per [`Monitor`], or one ordered channel per [`Port`]. What outlives a connection
//!   lives here: who subscribed to which device (monitors are started again on every new
//!   connection, the new cross-reference ids mapped invisibly; subscribers see only
//!   [`MonitorEvent::LinkLost`] and [`MonitorEvent::LinkRestored`]), the backoff, the state.
//!
//! The behaviour, whichever layer holds it:
//! - our invokes get ids from a per-link table and are correlated with their result, error or
//!   reject; each has a timeout; none is answered twice or lost silently; while the link is down
//!   requests fail at once with [`RequestError::LinkDown`];
//! - the PBX's SystemStatus invokes (52 or 211) are answered at once, its other unknown invokes
//!   get a ROSE Reject, event reports are never answered (ECMA-285: ALWAYS RESPONDS FALSE);
//! - our own keep-alive (a SystemStatus invoke after `keepalive` of silence) detects a dead or
//!   half-open peer within two keep-alive periods and reconnects;
//! - switching requests pass a token bucket (`max_requests_per_second`);
//! - monitors: one PBX monitor per device however many subscribers ([`Link::monitor`],
//!   [`Port::monitor`]), stopped when the last leaves;
//! - [`Link::shutdown`] releases the association (RLRQ) and closes.
//!
//! **Ordered delivery** ([`Link::attach`]): everything for one [`Port`] (the completions of its
//! requests and monitor starts, the events of the devices it monitors, link notices) arrives on
//! one bounded channel in the order the link handled it on the wire, because the driver hands
//! over each session event as it pops it, synchronously. A completion is never dropped: the port
//! reserves a slot of its channel for it when the request is made (a full channel refuses the
//! request at once with `QueueFull`), so a slow consumer limits its own requests in flight and
//! never stalls the link or other ports; events find the slots left (beyond, dropped and counted
//! in `events_dropped`, as for a [`Monitor`]); one more slot is kept for the link notices.
//!
//! Hostile or broken input from the PBX has one defined outcome each, and memory stays bounded:
//! - stays up, counted in [`Link::stats`]: an APDU that does not decode (over-long inner
//!   lengths, nesting past the BER reader's depth cap, bad tags) is answered with a ROSE Reject
//!   (`decode_errors`, `rejects_sent`); when it is a result or error naming an outstanding invoke
//!   of ours, that request fails at once with [`RequestError::Decode`] (the operation and the
//!   byte) rather than waiting for its timeout, and the Reject names the invoke
//!   (`undecodable_responses`); a result or error for no outstanding invoke of ours
//!   (`unexpected_responses`); rejects (`rejects_received`; one naming an outstanding invoke fails
//!   that request with [`RequestError::Rejected`]); events for no monitor of ours
//!   (`events_unrouted`); PBX invokes are matched by nothing of ours, so an invoke id that equals
//!   one of our outstanding ids is answered (or rejected) on its own and our request still gets
//!   its own answer;
//! - drops and reconnects (with backoff; monitors restored): a frame header over the frame cap
//!   ([`crate::codec::framing::DEFAULT_MAX_FRAME`]) or otherwise unframeable; no complete frame
//!   within two keep-alive periods (a peer that starts a frame and never finishes it, or trickles
//!   it, is dead like a silent one: only complete frames count as life); a write that does not
//!   complete within `request_timeout` (a peer that does not read).
//! - bounds: [`COMMAND_QUEUE`] commands wait for the link task (beyond, requests fail at once
//!   with [`RequestError::QueueFull`]; [`Link::queued_commands`] tells how many wait), at most
//!   [`MAX_QUEUED_REQUESTS`] wait for the rate limiter (beyond, `QueueFull`), at most 32767
//!   invokes are outstanding (more wait in the rate limiter's queue), one frame is at most the
//!   frame cap, each subscriber or port buffers [`SUBSCRIBER_BUFFER`] deliveries (beyond,
//!   `events_dropped`). While a write is blocked the task reads nothing more, so a request waits
//!   at most about twice `request_timeout` for its answer.

pub mod parts;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::codec::apdu::{EncodeError, EventReport, UniversalFailure};
use crate::codec::{Body, Code, Dialect, ErrorKind, Operation, RejectProblem};
use crate::config::LinkProfile;
use parts::Backoff;
pub use session::{LinkLoss, RequestId, Session, SessionEvent};
/// Commands (requests, monitor subscriptions) waiting for the link task; beyond this, requests
/// fail at once with `QueueFull`.
pub const COMMAND_QUEUE: usize = 1024;
/// Requests waiting for the rate limiter beyond this are refused with `QueueFull`.
pub const MAX_QUEUED_REQUESTS: usize = 10_000;
/// Events buffered per subscriber; a subscriber that does not keep up loses events (counted).
pub const SUBSCRIBER_BUFFER: usize = 1024;

/// Why a request did not get a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    #[error("link down")]
    LinkDown,
    #[error("no answer within the request timeout")]
    Timeout,
    #[error("request queue full")]
    QueueFull,
    #[error("rejected by the PBX ({0:?})")]
    Rejected(RejectProblem),
    #[error("CSTA error {}", failure_name(.0))]
    Failure(UniversalFailure),
    /// A ReturnError other than CSTA's universalFailure: the PBX's error code.
    #[error("PBX returned error code {}", code_name(.0))]
    OtherError(Code),
    /// A MonitorStart result without the crossRefIdentifier its events will carry.
    #[error("MonitorStart result without crossRefIdentifier")]
    NoCrossRef,
    #[error("cannot encode the request for this PBX: {0}")]
    Encode(EncodeProblem),
    /// The PBX answered (its result or error carried our invoke id) with a body that does not
    /// decode: a PBX whose wire form we do not know. `offset` is from the start of the APDU, as
    /// `cstagate decode` counts, so the byte can be found in a trace.
    #[error("the PBX's answer to {} does not decode: {reason} at byte {offset}", .operation.name(Dialect::Phase3))]
    Decode { operation: Operation, offset: usize, reason: ErrorKind },
    #[error("link closed")]
    Closed,
}

/// Why a request of ours could not be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeProblem {
    #[error("{0}")]
    Apdu(EncodeError),
    #[error("an APDU of {0} bytes is over the framing's limit")]
    TooLarge(usize),
    #[error("device number is not ASCII")]
    DeviceNotAscii,
}

fn code_name(c: &Code) -> String {
    match c {
        Code::Local(n) => n.to_string(),
        Code::Global(_) => c.name(Dialect::Phase3),
    }
}

fn failure_name(u: &UniversalFailure) -> String {
    let name = u.value.and_then(|v| crate::codec::names::universal_failure(u.category, v));
    format!("{}/{}", u.category.name(), name.map_or_else(|| format!("{:?}", u.value), str::to_owned))
}

/// Observable link state. `Down`'s reason is the [`LinkLoss`]'s `Display` (for the JSON view).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LinkState {
    Connecting,
    Associating,
    Up,
    Down { reason: String },
    Closed,
}

/// What a monitor subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    /// Shared between subscribers; small so that idle subscriptions cost little memory.
    Event(Arc<EventReport>),
    /// The link dropped; events stop until `LinkRestored`.
    LinkLost,
    /// The link is back and this device is monitored again.
    LinkRestored,
    /// The PBX refused to monitor the device again after a reconnect.
    MonitorFailed(Box<RequestError>),
}

/// Counters of one link, shared with the task.
#[derive(Debug, Default)]
pub struct Stats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub decode_errors: AtomicU64,
    pub connects: AtomicU64,
    pub reconnects: AtomicU64,
    pub rejects_sent: AtomicU64,
    pub rejects_received: AtomicU64,
    pub keepalives_answered: AtomicU64,
    pub events_in: AtomicU64,
    pub events_unrouted: AtomicU64,
    pub events_dropped: AtomicU64,
    pub unexpected_responses: AtomicU64,
    pub undecodable_responses: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    pub requests_timed_out: AtomicU64,
    pub latency_count: AtomicU64,
    pub latency_sum_us: AtomicU64,
    pub latency_max_us: AtomicU64,
    pub monitors: AtomicU64,
}

/// A point-in-time copy of [`Stats`], for the API and `probe`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub frames_in: u64,
    pub frames_out: u64,
    pub decode_errors: u64,
    pub connects: u64,
    pub reconnects: u64,
    pub rejects_sent: u64,
    pub rejects_received: u64,
    pub keepalives_answered: u64,
    pub events_in: u64,
    pub events_unrouted: u64,
    pub events_dropped: u64,
    pub unexpected_responses: u64,
    /// Results and errors for an outstanding invoke of ours whose body did not decode (each also
    /// in `decode_errors`; the request failed with [`RequestError::Decode`]).
    pub undecodable_responses: u64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub requests_timed_out: u64,
    pub latency_avg_us: u64,
    pub latency_max_us: u64,
    pub monitors: u64,
}

impl Stats {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let n = g(&self.latency_count);
        StatsSnapshot {
            frames_in: g(&self.frames_in),
            frames_out: g(&self.frames_out),
            decode_errors: g(&self.decode_errors),
            connects: g(&self.connects),
            reconnects: g(&self.reconnects),
            rejects_sent: g(&self.rejects_sent),
            rejects_received: g(&self.rejects_received),
            keepalives_answered: g(&self.keepalives_answered),
            events_in: g(&self.events_in),
            events_unrouted: g(&self.events_unrouted),
            events_dropped: g(&self.events_dropped),
            unexpected_responses: g(&self.unexpected_responses),
            undecodable_responses: g(&self.undecodable_responses),
            requests_ok: g(&self.requests_ok),
            requests_failed: g(&self.requests_failed),
            requests_timed_out: g(&self.requests_timed_out),
            latency_avg_us: if n == 0 { 0 } else { g(&self.latency_sum_us) / n },
            latency_max_us: g(&self.latency_max_us),
            monitors: g(&self.monitors),
        }
    }
}

/// Where a completion goes: the caller of [`Link::request`] / [`Link::monitor`] waiting on a
/// oneshot, or a [`Port`], through the channel slot reserved for it when the request was made.
enum Reply {
    Once(oneshot::Sender<Result<Body, RequestError>>),
    Port { permit: mpsc::OwnedPermit<Delivery>, tag: u64 },
}

impl Reply {
    fn deliver(self, result: Result<Body, RequestError>) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(result);
            }
            Reply::Port { permit, tag } => {
                permit.send(Delivery::Completed { tag, result });
            }
        }
    }
    /// Whoever waits for this answer is gone.
    fn is_closed(&self) -> bool {
        match self {
            Reply::Once(tx) => tx.is_closed(),
            Reply::Port { .. } => false,
        }
    }
}

/// Where a subscriber's events go.
enum Sink {
    /// A [`Monitor`]'s own channel.
    Channel(mpsc::Sender<MonitorEvent>),
    /// A [`Port`] (its channel is in the port table: one per port, not per device).
    Port,
}

struct Sub {
    id: u64,
    sink: Sink,
}

enum Command {
    Request { op: Operation, arg: Body, reply: Reply },
    Monitor { device: Arc<str>, sub: Sub, reply: Reply },
    Attach { port: u64, tx: mpsc::Sender<Delivery> },
}

enum Control {
    Unsubscribe { device: Arc<str>, sub: u64 },
    Detach { port: u64 },
    Shutdown(oneshot::Sender<()>),
}

/// What a [`Port`]'s channel carries, in the order the link handled it on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// The answer to [`Port::request`] or [`Port::monitor`] made with this tag (a monitor start
    /// answers `Ok` with an empty body). Never dropped.
    Completed { tag: u64, result: Result<Body, RequestError> },
    /// An event of a device this port monitors.
    Event { device: Arc<str>, report: Arc<EventReport> },
    /// The link dropped: the port's requests in flight failed (their `Completed` came first) and
    /// its monitors are silent until `LinkRestored`.
    LinkLost,
    /// The link is up again; the port's monitors are being started again (events follow, or
    /// `MonitorFailed`).
    LinkRestored,
    /// The PBX refused to monitor the device again after a reconnect; the port no longer
    /// monitors it.
    MonitorFailed { device: Arc<str>, error: RequestError },
}

/// Handle to one PBX link. Cheap to clone.
#[derive(Clone)]
pub struct Link {
    id: Arc<str>,
    dialect: Dialect,
    cmd: mpsc::Sender<Command>,
    ctl: mpsc::UnboundedSender<Control>,
    state: watch::Receiver<LinkState>,
    stats: Arc<Stats>,
    next_sub: Arc<AtomicU64>,
}

fn queue_error<T>(e: mpsc::error::TrySendError<T>) -> RequestError {
    match e {
        mpsc::error::TrySendError::Full(_) => RequestError::QueueFull,
        mpsc::error::TrySendError::Closed(_) => RequestError::Closed,
    }
}

impl Link {
    /// Start the supervised task for one PBX.
    pub fn spawn(profile: LinkProfile) -> Link {
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(LinkState::Connecting);
        let stats = Arc::new(Stats::default());
        let span = info_span!("link", pbx = %profile.id);
        let link = Link {
            id: profile.id.as_str().into(),
            dialect: profile.dialect,
            cmd: cmd_tx,
            ctl: ctl_tx,
            state: state_rx,
            stats: stats.clone(),
            next_sub: Arc::new(AtomicU64::new(1)),
        };
        let driver = Driver { p: Arc::new(profile), stats, state: state_tx, cmd_rx, ctl_rx, reg: Registry::default(), replies: HashMap::new() };
        tokio::spawn(driver.supervise().instrument(span));
        link
    }

    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }
    /// A receiver of state changes.
    pub fn watch_state(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
    /// Commands waiting for the link task (at most [`COMMAND_QUEUE`]).
    pub fn queued_commands(&self) -> usize {
        self.cmd.max_capacity() - self.cmd.capacity()
    }

    /// Wait until the link is in a state `pred` accepts.
    pub async fn wait_for(&self, pred: impl Fn(&LinkState) -> bool) -> LinkState {
        let mut rx = self.state.clone();
        match rx.wait_for(|s| pred(s)).await {
            Ok(s) => s.clone(),
            Err(_) => LinkState::Closed,
        }
    }

    /// Invoke a CSTA service and wait for its result.
    ///
    /// # Errors
    /// Link down, timeout, queue full, or the PBX's reject or error.
    pub async fn request(&self, op: Operation, arg: Body) -> Result<Body, RequestError> {
        let (reply, rx) = oneshot::channel();
        self.cmd.try_send(Command::Request { op, arg, reply: Reply::Once(reply) }).map_err(queue_error)?;
        rx.await.unwrap_or(Err(RequestError::Closed))
    }

    /// Subscribe to a device's events, starting a PBX monitor if no one else has.
    ///
    /// # Errors
    /// Link down, or the PBX refused the MonitorStart.
    pub async fn monitor(&self, device: &str) -> Result<Monitor, RequestError> {
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let (reply, done) = oneshot::channel();
        let device: Arc<str> = device.into();
        self.cmd.try_send(Command::Monitor { device: device.clone(), sub: Sub { id, sink: Sink::Channel(tx) }, reply: Reply::Once(reply) }).map_err(queue_error)?;
        done.await.unwrap_or(Err(RequestError::Closed))?;
        Ok(Monitor { device: device.to_string(), key: device, sub: id, rx, ctl: self.ctl.clone() })
    }

    /// One ordered delivery channel (see the module docs): requests and monitors made through
    /// the [`Port`] are answered, and the monitored devices' events delivered, on the receiver,
    /// in wire order. Buffers [`SUBSCRIBER_BUFFER`] deliveries.
    pub fn attach(&self) -> (Port, mpsc::Receiver<Delivery>) {
        self.attach_with_capacity(SUBSCRIBER_BUFFER)
    }

    /// [`Link::attach`] with a channel of `capacity` deliveries (at least 2: one slot is kept for
    /// the link notices).
    pub fn attach_with_capacity(&self, capacity: usize) -> (Port, mpsc::Receiver<Delivery>) {
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(capacity.max(2));
        // Unbounded would be wrong here (outside input); a full command queue means the port is
        // registered by the first request or monitor that gets through instead.
        let attached = self.cmd.try_send(Command::Attach { port: id, tx: tx.clone() }).is_ok();
        (Port { id, tx, attached: std::sync::atomic::AtomicBool::new(attached), cmd: self.cmd.clone(), ctl: self.ctl.clone() }, rx)
    }

    /// Release the association (RLRQ/RLRE) and stop the task.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Control::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The sending half of an ordered delivery channel ([`Link::attach`]). Dropping it (or the
/// receiver) releases its monitors.
pub struct Port {
    id: u64,
    tx: mpsc::Sender<Delivery>,
    attached: std::sync::atomic::AtomicBool,
    cmd: mpsc::Sender<Command>,
    ctl: mpsc::UnboundedSender<Control>,
}

impl Port {
    /// Reserve the slot of the answer, then hand the command to the link.
    fn reserve(&self) -> Result<mpsc::OwnedPermit<Delivery>, RequestError> {
        if !self.attached.load(Ordering::Relaxed) {
            self.cmd.try_send(Command::Attach { port: self.id, tx: self.tx.clone() }).map_err(queue_error)?;
            self.attached.store(true, Ordering::Relaxed);
        }
        self.tx.clone().try_reserve_owned().map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RequestError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => RequestError::Closed,
        })
    }

    /// Invoke a CSTA service; the answer comes as [`Delivery::Completed`] with `tag`, with the
    /// same timeouts, rate limit and errors as [`Link::request`].
    ///
    /// # Errors
    /// `QueueFull` (the link's command queue, or this port's channel, is full) or `Closed`, at
    /// once; then no `Completed` follows.
    pub fn request(&self, tag: u64, op: Operation, arg: Body) -> Result<(), RequestError> {
        let permit = self.reserve()?;
        self.cmd.try_send(Command::Request { op, arg, reply: Reply::Port { permit, tag } }).map_err(queue_error)
    }

    /// Monitor `device` through this port: `Completed { tag, Ok(_) }` once monitored (or the
    /// error), then its events as [`Delivery::Event`]. Monitoring a device twice through one port
    /// delivers its events once.
    ///
    /// # Errors
    /// As [`Port::request`].
    pub fn monitor(&self, tag: u64, device: &str) -> Result<(), RequestError> {
        let permit = self.reserve()?;
        self.cmd.try_send(Command::Monitor { device: device.into(), sub: Sub { id: self.id, sink: Sink::Port }, reply: Reply::Port { permit, tag } }).map_err(queue_error)
    }

    /// Stop this port's monitor of `device` (the PBX monitor stops when no one else wants it).
    pub fn unmonitor(&self, device: &str) {
        let _ = self.ctl.send(Control::Unsubscribe { device: device.into(), sub: self.id });
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        let _ = self.ctl.send(Control::Detach { port: self.id });
    }
}

/// A subscription to one device's events. Dropping it unsubscribes.
pub struct Monitor {
    pub device: String,
    key: Arc<str>,
    sub: u64,
    rx: mpsc::Receiver<MonitorEvent>,
    ctl: mpsc::UnboundedSender<Control>,
}

impl Monitor {
    /// The next event or link notice; `None` when the link task has ended.
    pub async fn next(&mut self) -> Option<MonitorEvent> {
        self.rx.recv().await
    }

    /// Up to `limit` waiting events at once (at least one; 0 when the link task has ended).
    pub async fn next_many(&mut self, out: &mut Vec<MonitorEvent>, limit: usize) -> usize {
        self.rx.recv_many(out, limit).await
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.ctl.send(Control::Unsubscribe { device: self.key.clone(), sub: self.sub });
    }
}

// ---- the driver's registry: who wants what, across connections ------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MonState {
    /// Not monitored on the current connection (none, or not restarted yet).
    Idle,
    Starting,
    Running,
}

struct DeviceEntry {
    state: MonState,
    subs: Vec<Sub>,
    waiting: Vec<(Sub, Reply)>,
}

struct PortEntry {
    tx: mpsc::Sender<Delivery>,
    /// A slot kept for the next link notice, so that a port whose channel is full of events still
    /// learns that the link dropped.
    notice: Option<mpsc::OwnedPermit<Delivery>>,
    devices: Vec<Arc<str>>,
    told_lost: bool,
}

impl PortEntry {
    fn new(tx: mpsc::Sender<Delivery>) -> PortEntry {
        let notice = tx.clone().try_reserve_owned().ok();
        PortEntry { tx, notice, devices: Vec::new(), told_lost: false }
    }
    fn notify(&mut self, d: Delivery) {
        match self.notice.take() {
            Some(p) => {
                p.send(d);
            }
            None => {
                let _ = self.tx.try_send(d);
            }
        }
        self.notice = self.tx.clone().try_reserve_owned().ok();
    }
    /// An event: only into the slots not kept for notices.
    fn event(&mut self, d: Delivery) -> Result<(), mpsc::error::TrySendError<Delivery>> {
        if self.notice.is_none() {
            self.notice = self.tx.clone().try_reserve_owned().ok();
        }
        self.tx.try_send(d)
    }
}

#[derive(Default)]
struct Registry {
    devices: HashMap<Arc<str>, DeviceEntry>,
    ports: HashMap<u64, PortEntry>,
}

/// What the session must do after a registry change.
enum Need {
    Nothing,
    Start,
    Stop,
}

impl Registry {
    /// Add a subscriber: answered at once when the device is monitored on the current
    /// connection; otherwise it waits, and `Start` says the session must be asked.
    fn subscribe(&mut self, device: &Arc<str>, sub: Sub, reply: Reply) -> Need {
        if matches!(sub.sink, Sink::Port) {
            let Some(p) = self.ports.get_mut(&sub.id) else {
                reply.deliver(Err(RequestError::Closed));
                return Need::Nothing;
            };
            if !p.devices.contains(device) {
                p.devices.push(device.clone());
            } else if let Some(e) = self.devices.get_mut(device) {
                // Already monitored through this port (or on its way): answered, events once.
                if e.state == MonState::Running {
                    reply.deliver(Ok(Body::null()));
                } else {
                    // Answered with the others; `started` does not add the port twice.
                    e.waiting.push((Sub { id: sub.id, sink: Sink::Port }, reply));
                }
                return Need::Nothing;
            }
        }
        let e = self.devices.entry(device.clone()).or_insert_with(|| DeviceEntry { state: MonState::Idle, subs: Vec::new(), waiting: Vec::new() });
        match e.state {
            MonState::Running => {
                reply.deliver(Ok(Body::null()));
                e.subs.push(sub);
                Need::Nothing
            }
            MonState::Starting => {
                e.waiting.push((sub, reply));
                Need::Nothing
            }
            MonState::Idle => {
                e.waiting.push((sub, reply));
                e.state = MonState::Starting;
                Need::Start
            }
        }
    }

    /// Remove a subscriber; `Stop` when it was the last.
    fn unsubscribe(&mut self, device: &str, sub: u64) -> Need {
        if let Some(p) = self.ports.get_mut(&sub) {
            p.devices.retain(|d| &**d != device);
        }
        let Some(e) = self.devices.get_mut(device) else { return Need::Nothing };
        e.subs.retain(|s| s.id != sub);
        for (s, reply) in std::mem::take(&mut e.waiting) {
            if s.id == sub {
                reply.deliver(Err(RequestError::Closed));
            } else {
                e.waiting.push((s, reply));
            }
        }
        if !e.subs.is_empty() || !e.waiting.is_empty() {
            return Need::Nothing;
        }
        let was = e.state;
        self.devices.remove(device);
        if was == MonState::Idle { Need::Nothing } else { Need::Stop }
    }

    /// The session monitors `device`. Returns `Stop` when nobody wants it any more.
    fn started(&mut self, device: &Arc<str>) -> Need {
        let Some(e) = self.devices.get_mut(device) else { return Need::Stop };
        let restored = e.state != MonState::Running;
        e.state = MonState::Running;
        if restored {
            // Existing subscribers are re-attached after a reconnect.
            for s in &e.subs {
                if let Sink::Channel(tx) = &s.sink {
                    let _ = tx.try_send(MonitorEvent::LinkRestored);
                }
            }
        }
        for (sub, reply) in std::mem::take(&mut e.waiting) {
            if reply.is_closed() {
                continue;
            }
            let already = matches!(sub.sink, Sink::Port) && e.subs.iter().any(|s| s.id == sub.id);
            reply.deliver(Ok(Body::null()));
            if !already {
                e.subs.push(sub);
            }
        }
        if e.subs.is_empty() {
            self.devices.remove(device);
            return Need::Stop;
        }
        Need::Nothing
    }

    fn start_failed(&mut self, device: &Arc<str>, err: &RequestError) {
        let Some(e) = self.devices.remove(device) else { return };
        for (_, reply) in e.waiting {
            reply.deliver(Err(err.clone()));
        }
        for s in e.subs {
            match s.sink {
                Sink::Channel(tx) => {
                    let _ = tx.try_send(MonitorEvent::MonitorFailed(Box::new(err.clone())));
                }
                Sink::Port => {
                    if let Some(p) = self.ports.get_mut(&s.id) {
                        p.devices.retain(|d| d != device);
                        let _ = p.tx.try_send(Delivery::MonitorFailed { device: device.clone(), error: err.clone() });
                    }
                }
            }
        }
    }

    /// Deliver an event to the device's subscribers. Returns the devices nobody wants any more
    /// (a port found closed here is detached).
    fn route(&mut self, device: &Arc<str>, report: Arc<EventReport>, stats: &Stats) -> Vec<Arc<str>> {
        let Some(e) = self.devices.get_mut(device) else { return Vec::new() };
        let mut closed_ports = Vec::new();
        e.subs.retain(|s| match &s.sink {
            Sink::Channel(tx) => !tx.is_closed(),
            Sink::Port => true,
        });
        for s in &e.subs {
            match &s.sink {
                Sink::Channel(tx) => {
                    if tx.try_send(MonitorEvent::Event(report.clone())).is_err() {
                        Stats::inc(&stats.events_dropped);
                    }
                }
                Sink::Port => {
                    let Some(p) = self.ports.get_mut(&s.id) else { continue };
                    match p.event(Delivery::Event { device: device.clone(), report: report.clone() }) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => Stats::inc(&stats.events_dropped),
                        Err(mpsc::error::TrySendError::Closed(_)) => closed_ports.push(s.id),
                    }
                }
            }
        }
        closed_ports.into_iter().flat_map(|id| self.detach(id)).collect()
    }

    /// A port is gone: its monitors are released. Returns the devices nobody wants any more.
    fn detach(&mut self, port: u64) -> Vec<Arc<str>> {
        let Some(p) = self.ports.remove(&port) else { return Vec::new() };
        let mut stop = Vec::new();
        for d in p.devices {
            if let Need::Stop = self.unsubscribe(&d, port) {
                stop.push(d);
            }
        }
        stop
    }

    /// A connection that came up is gone: every monitor is void, waiting subscribers fail,
    /// subscribers and ports hear of it once.
    fn link_lost(&mut self, was_up: bool) {
        let closed: Vec<u64> = self.ports.iter().filter(|(_, p)| p.tx.is_closed()).map(|(id, _)| *id).collect();
        for id in closed {
            self.detach(id);
        }
        self.devices.retain(|_, e| {
            for (_, reply) in std::mem::take(&mut e.waiting) {
                reply.deliver(Err(RequestError::LinkDown));
            }
            e.state = MonState::Idle;
            if was_up {
                e.subs.retain(|s| match &s.sink {
                    Sink::Channel(tx) => tx.try_send(MonitorEvent::LinkLost).is_ok() || !tx.is_closed(),
                    Sink::Port => true,
                });
            }
            !e.subs.is_empty()
        });
        if was_up {
            for p in self.ports.values_mut() {
                p.notify(Delivery::LinkLost);
                p.told_lost = true;
            }
        }
        // A port's devices whose entries went are not monitored through it any more.
        let devices = &self.devices;
        for p in self.ports.values_mut() {
            p.devices.retain(|d| devices.contains_key(d));
        }
    }

    /// A new connection is up: the ports told of the loss hear of the restoration; the devices
    /// with subscribers are to be monitored again.
    fn restore(&mut self) -> Vec<Arc<str>> {
        for p in self.ports.values_mut() {
            if std::mem::take(&mut p.told_lost) {
                p.notify(Delivery::LinkRestored);
            }
        }
        self.devices
            .iter_mut()
            .filter(|(_, e)| !e.subs.is_empty() && e.state == MonState::Idle)
            .map(|(d, e)| {
                e.state = MonState::Starting;
                d.clone()
            })
            .collect()
    }
}

// ---- the driver ----------------------------------------------------------------------------

enum End {
    Shutdown(oneshot::Sender<()>),
    Stopped,
    Lost(LinkLoss),
}

/// The link task's state: what outlives a connection.
struct Driver {
    p: Arc<LinkProfile>,
    stats: Arc<Stats>,
    state: watch::Sender<LinkState>,
    cmd_rx: mpsc::Receiver<Command>,
    ctl_rx: mpsc::UnboundedReceiver<Control>,
    reg: Registry,
    /// The callers of the current session's requests.
    replies: HashMap<RequestId, Reply>,
}

/// The session's clock is the runtime's (paused in tests that pause it).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Driver {
    async fn supervise(mut self) {
        let mut backoff = Backoff::new(self.p.reconnect_min, self.p.reconnect_max);
        loop {
            let _ = self.state.send(LinkState::Connecting);
            let started = Instant::now();
            let mut came_up = false;
            let end = self.connection(&mut came_up).await;
            if came_up && started.elapsed() > self.p.reconnect_max {
                backoff.reset();
            }
            for (_, r) in self.replies.drain() {
                r.deliver(Err(RequestError::LinkDown));
            }
            self.reg.link_lost(came_up);
            match end {
                End::Shutdown(done) => {
                    let _ = self.state.send(LinkState::Closed);
                    let _ = done.send(());
                    return;
                }
                End::Stopped => {
                    let _ = self.state.send(LinkState::Closed);
                    return;
                }
                End::Lost(loss) => {
                    warn!(reason = %loss, "link down");
                    let _ = self.state.send(LinkState::Down { reason: loss.to_string() });
                }
            }
            let delay = backoff.next(rand::random::<f64>());
            debug!(?delay, "reconnecting after backoff");
            let wake = sleep_until(Instant::now() + delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    cmd = self.cmd_rx.recv() => match cmd {
                        Some(c) => self.fail_fast(c),
                        None => { let _ = self.state.send(LinkState::Closed); return; }
                    },
                    ctl = self.ctl_rx.recv() => match ctl {
                        Some(Control::Unsubscribe { device, sub }) => { self.reg.unsubscribe(&device, sub); }
                        Some(Control::Detach { port }) => { self.reg.detach(port); }
                        Some(Control::Shutdown(done)) => { let _ = self.state.send(LinkState::Closed); let _ = done.send(()); return; }
                        None => { let _ = self.state.send(LinkState::Closed); return; }
                    },
                }
            }
            Stats::inc(&self.stats.reconnects);
        }
    }

    /// While down, requests fail at once (ports still attach).
    fn fail_fast(&mut self, c: Command) {
        match c {
            Command::Request { reply, .. } | Command::Monitor { reply, .. } => reply.deliver(Err(RequestError::LinkDown)),
            Command::Attach { port, tx } => {
                self.reg.ports.insert(port, PortEntry::new(tx));
            }
        }
    }

    /// One connection: connect, then drive a fresh session until it ends.
    async fn connection(&mut self, came_up: &mut bool) -> End {
        let stream = match timeout(self.p.connect_timeout, TcpStream::connect(&self.p.address)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(address = %self.p.address, error = %e, "connect failed");
                return End::Lost(LinkLoss::Connect(e.kind()));
            }
            Err(_) => return End::Lost(LinkLoss::ConnectTimeout),
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let _ = self.state.send(LinkState::Associating);
        let mut s = Session::new(self.p.clone(), self.stats.clone(), now());
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            // Write what the session transmits (answers first go out before anything is read).
            if let Some(out) = s.poll_transmit() {
                match timeout(self.p.request_timeout, wr.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => s.connection_lost(LinkLoss::Write(e.kind())),
                    // A peer that stops reading must not stall the link forever.
                    Err(_) => s.connection_lost(LinkLoss::WriteStalled),
                }
            }
            while let Some(ev) = s.poll_event() {
                match ev {
                    SessionEvent::Up => {
                        *came_up = true;
                        info!(address = %self.p.address, "link up");
                        let _ = self.state.send(LinkState::Up);
                        // Re-monitor everything subscribers still want; new cross-reference ids
                        // map invisibly.
                        let t = now();
                        for device in self.reg.restore() {
                            if s.monitor(t, &device) {
                                self.reg.started(&device);
                            }
                        }
                    }
                    SessionEvent::Completed { id, result } => {
                        if let Some(r) = self.replies.remove(&id) {
                            r.deliver(result);
                        }
                    }
                    SessionEvent::Event { device, report } => {
                        for gone in self.reg.route(&device, report, &self.stats) {
                            s.unmonitor(now(), &gone);
                        }
                    }
                    SessionEvent::MonitorStarted { device } => {
                        if let Need::Stop = self.reg.started(&device) {
                            s.unmonitor(now(), &device);
                        }
                    }
                    SessionEvent::MonitorFailed { device, error } => self.reg.start_failed(&device, &error),
                    SessionEvent::Lost(loss) => return End::Lost(loss),
                    SessionEvent::Closed => {
                        let _ = wr.shutdown().await;
                        return match shutdown.take() {
                            Some(done) => End::Shutdown(done),
                            None => End::Stopped,
                        };
                    }
                }
            }
            if s.poll_transmit_pending() {
                continue;
            }
            let wake = s.poll_timeout().map_or_else(|| Instant::now() + self.p.keepalive, Instant::from_std);
            let accepting = s.is_up() && shutdown.is_none();
            tokio::select! {
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) => s.connection_lost(LinkLoss::ClosedByPeer),
                    Err(e) => s.connection_lost(LinkLoss::Read(e.kind())),
                    Ok(_) => s.handle_input(now(), &mut buf),
                },
                cmd = self.cmd_rx.recv(), if accepting => match cmd {
                    // Every handle is gone: nobody is left to tell, stop at once.
                    None => return End::Stopped,
                    Some(c) => self.command(&mut s, c),
                },
                ctl = self.ctl_rx.recv(), if shutdown.is_none() => match ctl {
                    None => return End::Stopped,
                    Some(Control::Unsubscribe { device, sub }) => {
                        if let Need::Stop = self.reg.unsubscribe(&device, sub) {
                            s.unmonitor(now(), &device);
                        }
                    }
                    Some(Control::Detach { port }) => {
                        let t = now();
                        for device in self.reg.detach(port) {
                            s.unmonitor(t, &device);
                        }
                    }
                    Some(Control::Shutdown(done)) => {
                        shutdown = Some(done);
                        s.close(now());
                    }
                },
                () = sleep_until(wake) => s.handle_timeout(now()),
            }
        }
    }

    fn command(&mut self, s: &mut Session, c: Command) {
        let t = now();
        match c {
            Command::Request { op, arg, reply } => match s.request(t, op, arg) {
                Ok(id) => {
                    self.replies.insert(id, reply);
                }
                Err(e) => reply.deliver(Err(e)),
            },
            Command::Monitor { device, sub, reply } => {
                if let Need::Start = self.reg.subscribe(&device, sub, reply) {
                    if s.monitor(t, &device) {
                        self.reg.started(&device);
                    }
                }
            }
            Command::Attach { port, tx } => {
                self.reg.ports.insert(port, PortEntry::new(tx));
            }
        }
    }
}
