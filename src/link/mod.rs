//! The PBX link manager: the only place that owns the PBX-side sockets.
//!
//! Two layers, so that the protocol is tested and fuzzed without sockets or clocks:
//! - [`session`]: the sans-IO [`Session`] of one connection: the association (preamble,
//!   AARQ/AARE, release), framing, the invoke table with deadlines, keep-alive and dead-peer
//!   detection, the rate limiter, the PBX's invokes (SystemStatus answered, others rejected,
//!   events routed by cross-reference id), this connection's monitors, the counters. Time comes in
//!   as `now`; frames go out through `poll_transmit`, outcomes through `poll_event`, in wire order;
//!   why a connection ended is a typed [`LinkLoss`].
//! - `driver`: the tokio driver. One supervised task per PBX ([`Link::spawn`]) connects with
//!   a timeout, hands the socket's bytes to a fresh [`Session`] per connection, writes what it
//!   transmits, sleeps until its `poll_timeout`, reconnects with backoff after a loss, and maps
//!   the session's [`RequestId`]s and devices to the callers: a oneshot per [`Link::request`], a
//!   channel per [`Monitor`], or one ordered channel per [`Port`]. What outlives a connection
//!   lives here: who subscribed to which device (monitors are started again on every new
//!   connection, the new cross-reference ids mapped invisibly; subscribers see only
//!   [`MonitorEvent::LinkLost`] and [`MonitorEvent::LinkRestored`]), the backoff, the state.
//!
//! Where the rest is, and why apart: this file holds the public handles ([`Link`], [`Port`],
//! [`Monitor`]), what they deliver ([`Delivery`], [`MonitorEvent`], [`LinkState`]) and the
//! commands they send the driver, so that the API is read in one place; `registry` is who wants
//! which device's events and which port's answers across connections (the driver's only state
//! that outlives a connection besides the backoff); `errors` and `stats` hold [`RequestError`] /
//! [`EncodeProblem`] and [`Stats`] / [`StatsSnapshot`], which every layer uses; [`parts`] holds
//! the small protocol-free pieces (invoke table, token bucket, backoff).
//!
//! The behaviour, whichever layer holds it:
//! - our invokes get ids from a per-link table and are correlated with their result, error or
//!   reject; each has a timeout; none is answered twice or lost silently; while the link is down
//!   requests fail at once with [`RequestError::LinkDown`];
//! - a request that timed out after it was sent may still have been carried out (a MakeCall's
//!   call placed): its connection remembers it ([`session::LATE_RESULTS_KEPT`] at most, for
//!   [`session::LATE_RESULT_WINDOW`] request timeouts), and a result that comes for it later is
//!   delivered to the [`Port`] that made it as [`Delivery::LateResult`] (`late_answers`; a late
//!   error or reject is dropped); a [`Link::request`] caller has stopped waiting, so its late
//!   result is dropped;
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
//! requests and monitor starts, the late results of its requests that timed out, the events of the
//! devices it monitors, link notices) arrives on
//! one bounded channel in the order the link handled it on the wire, because the driver hands
//! over each session event as it pops it, synchronously. A completion is never dropped: the port
//! reserves a slot of its channel for it when the request is made (a full channel refuses the
//! request at once with `QueueFull`), so a slow consumer limits its own requests in flight and
//! never stalls the link or other ports; events and late results find the slots left (beyond,
//! dropped: events counted in `events_dropped`, as for a [`Monitor`], late results logged); one
//! more slot is kept for the link notices.
//!
//! Hostile or broken input from the PBX has one defined outcome each, and memory stays bounded:
//! - stays up, counted in [`Link::stats`]: an APDU that does not decode (over-long inner
//!   lengths, nesting past the BER reader's depth cap, bad tags) is answered with a ROSE Reject
//!   (`decode_errors`, `rejects_sent`); when it is a result or error naming an outstanding invoke
//!   of ours, that request fails at once with [`RequestError::Decode`] (the operation and the
//!   byte) rather than waiting for its timeout, and the Reject names the invoke
//!   (`undecodable_responses`); a result or error for no outstanding invoke of ours (nor one
//!   remembered as timed out: `late_answers`) (`unexpected_responses`); rejects (`rejects_received`; one naming an outstanding invoke fails
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
pub mod tls;

mod driver;
mod errors;
mod registry;
mod stats;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info_span, Instrument};

use crate::codec::apdu::EventReport;
use crate::codec::{Body, Dialect, Operation};
use crate::config::LinkProfile;
use driver::Driver;
pub use errors::{EncodeProblem, RequestError};
pub use session::{LinkLoss, RequestId, Session, SessionEvent, LATE_RESULTS_KEPT, LATE_RESULT_WINDOW};
pub use stats::{Stats, StatsSnapshot};
/// Commands (requests, monitor subscriptions) waiting for the link task; beyond this, requests
/// fail at once with `QueueFull`.
pub const COMMAND_QUEUE: usize = 1024;
/// Requests waiting for the rate limiter beyond this are refused with `QueueFull`.
pub const MAX_QUEUED_REQUESTS: usize = 10_000;
/// Events buffered per subscriber; a subscriber that does not keep up loses events (counted).
pub const SUBSCRIBER_BUFFER: usize = 1024;

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

/// Where a completion goes: the caller of [`Link::request`] / [`Link::monitor`] waiting on a
/// oneshot, or a [`Port`], through the channel slot reserved for it when the request was made.
enum Reply {
    Once(oneshot::Sender<Result<Body, RequestError>>),
    Port { permit: mpsc::OwnedPermit<Delivery>, port: u64, tag: u64 },
}

impl Reply {
    fn deliver(self, result: Result<Body, RequestError>) {
        match self {
            Reply::Once(tx) => {
                let _ = tx.send(result);
            }
            Reply::Port { permit, tag, .. } => {
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
    /// The result of the request made with this tag, which came after the request had completed
    /// with [`RequestError::Timeout`]: the PBX carried it out after all (a MakeCall's call is up).
    /// At most once per request, only while the link remembers it (see the module docs); it takes
    /// a slot of the channel like an event (beyond, dropped and logged).
    LateResult { tag: u64, result: Body },
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
        let driver = Driver::new(Arc::new(profile), stats, state_tx, cmd_rx, ctl_rx);
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
    /// same timeouts, rate limit and errors as [`Link::request`]. After a `Completed` with
    /// [`RequestError::Timeout`], the PBX's result may still come as [`Delivery::LateResult`].
    ///
    /// # Errors
    /// `QueueFull` (the link's command queue, or this port's channel, is full) or `Closed`, at
    /// once; then no `Completed` follows.
    pub fn request(&self, tag: u64, op: Operation, arg: Body) -> Result<(), RequestError> {
        let permit = self.reserve()?;
        self.cmd.try_send(Command::Request { op, arg, reply: Reply::Port { permit, port: self.id, tag } }).map_err(queue_error)
    }

    /// Monitor `device` through this port: `Completed { tag, Ok(_) }` once monitored (or the
    /// error), then its events as [`Delivery::Event`]. Monitoring a device twice through one port
    /// delivers its events once.
    ///
    /// # Errors
    /// As [`Port::request`].
    pub fn monitor(&self, tag: u64, device: &str) -> Result<(), RequestError> {
        let permit = self.reserve()?;
        self.cmd.try_send(Command::Monitor { device: device.into(), sub: Sub { id: self.id, sink: Sink::Port }, reply: Reply::Port { permit, port: self.id, tag } }).map_err(queue_error)
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
