//! The PBX link manager: the only place that owns the PBX-side sockets.
//!
//! One supervised tokio task per PBX ([`Link::spawn`]) connects with a timeout, sends the
//! Alcatel preamble when the profile says so, opens the ACSE association (AARQ from the profile,
//! AARE checked: a rejection is reported with its diagnostic and retried with backoff), then
//! carries ROSE traffic:
//! - our invokes get ids from a per-link table and are correlated with their result, error or
//!   reject; each has a timeout; none is answered twice or lost silently; while the link is down
//!   requests fail at once with [`RequestError::LinkDown`];
//! - the PBX's SystemStatus invokes (52 or 211) are answered at once, its other unknown invokes
//!   get a ROSE Reject, event reports are never answered (ECMA-285: ALWAYS RESPONDS FALSE);
//! - our own keep-alive (a SystemStatus invoke after `keepalive` of silence) detects a dead or
//!   half-open peer within two keep-alive periods and reconnects;
//! - switching requests pass a token bucket (`max_requests_per_second`);
//! - monitors: one PBX monitor per device however many subscribers ([`Link::monitor`]), stopped
//!   when the last leaves; events are routed by cross-reference id; after every reconnect all
//!   monitors are started again and the new cross-reference ids mapped, and subscribers see only
//!   [`MonitorEvent::LinkLost`] and [`MonitorEvent::LinkRestored`].
//! - [`Link::shutdown`] releases the association (RLRQ) and closes.
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
//!   invokes are outstanding, one frame is at most the frame cap, each subscriber buffers
//!   [`SUBSCRIBER_BUFFER`] events (beyond, `events_dropped`). While a write is blocked the task
//!   reads nothing more, so a request waits at most about twice `request_timeout` for its answer.

pub mod parts;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, info_span, trace, warn, Instrument};

use crate::codec::acse::{aare_outcome, aarq, for_log};
use crate::codec::apdu::{ErrorParameter, EventReport, UniversalFailure};
use crate::codec::body::{FieldName, Value};
use crate::codec::framing::Framer;
use crate::codec::{Apdu, Argument, Body, DecodeError, Dialect, ErrorKind, Op, Operation, RejectProblem};
use crate::config::LinkProfile;
use parts::{Backoff, InvokeTable, TokenBucket};

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
    #[error("PBX returned error code {0}")]
    OtherError(String),
    #[error("cannot encode the request for this PBX: {0}")]
    Encode(String),
    /// The PBX answered (its result or error carried our invoke id) with a body that does not
    /// decode: a PBX whose wire form we do not know. `offset` is from the start of the APDU, as
    /// `cstagate decode` counts, so the byte can be found in a trace.
    #[error("the PBX's answer to {} does not decode: {reason} at byte {offset}", .operation.name(Dialect::Phase3))]
    Decode { operation: Operation, offset: usize, reason: ErrorKind },
    #[error("link closed")]
    Closed,
}

fn failure_name(u: &UniversalFailure) -> String {
    let name = u.value.and_then(|v| crate::codec::names::universal_failure(u.category, v));
    format!("{}/{}", u.category.name(), name.map_or_else(|| format!("{:?}", u.value), str::to_owned))
}

/// Observable link state.
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

type Reply = oneshot::Sender<Result<Body, RequestError>>;

enum Command {
    Request { op: Operation, arg: Body, reply: Reply },
    Monitor { device: String, sub: u64, tx: mpsc::Sender<MonitorEvent>, reply: oneshot::Sender<Result<(), RequestError>> },
}

enum Control {
    Unsubscribe { device: String, sub: u64 },
    Shutdown(oneshot::Sender<()>),
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
        tokio::spawn(supervise(profile, cmd_rx, ctl_rx, state_tx, stats).instrument(span));
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
        self.cmd.try_send(Command::Request { op, arg, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RequestError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => RequestError::Closed,
        })?;
        rx.await.unwrap_or(Err(RequestError::Closed))
    }

    /// Subscribe to a device's events, starting a PBX monitor if no one else has.
    ///
    /// # Errors
    /// Link down, or the PBX refused the MonitorStart.
    pub async fn monitor(&self, device: &str) -> Result<Monitor, RequestError> {
        let sub = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(SUBSCRIBER_BUFFER);
        let (reply, done) = oneshot::channel();
        self.cmd.try_send(Command::Monitor { device: device.to_owned(), sub, tx, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RequestError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => RequestError::Closed,
        })?;
        done.await.unwrap_or(Err(RequestError::Closed))?;
        Ok(Monitor { device: device.to_owned(), sub, rx, ctl: self.ctl.clone() })
    }

    /// Release the association (RLRQ/RLRE) and stop the task.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Control::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// A subscription to one device's events. Dropping it unsubscribes.
pub struct Monitor {
    pub device: String,
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
        let _ = self.ctl.send(Control::Unsubscribe { device: std::mem::take(&mut self.device), sub: self.sub });
    }
}

/// What an outstanding invoke of ours is for.
enum Pending {
    User { op: Operation, reply: Reply, sent: Instant, deadline: Instant },
    MonitorStart { device: String, deadline: Instant },
    /// MonitorStop, keep-alive: answers are only checked off.
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

/// A request waiting for a rate-limiter token.
enum Queued {
    User { op: Operation, arg: Body, reply: Reply, deadline: Instant },
    MonitorStart { device: String },
    MonitorStop { xref: Bytes },
}

struct MonitorEntry {
    xref: Option<Bytes>,
    starting: bool,
    subs: Vec<(u64, mpsc::Sender<MonitorEvent>)>,
    waiting: Vec<(u64, mpsc::Sender<MonitorEvent>, oneshot::Sender<Result<(), RequestError>>)>,
}

/// The monitor registry: one PBX monitor per device, fanned out to subscribers.
#[derive(Default)]
struct Monitors {
    by_device: HashMap<String, MonitorEntry>,
    by_xref: HashMap<Bytes, String>,
}

enum End {
    Shutdown(oneshot::Sender<()>),
    Stopped,
    Lost(String),
}

async fn supervise(profile: LinkProfile, mut cmd_rx: mpsc::Receiver<Command>, mut ctl_rx: mpsc::UnboundedReceiver<Control>, state: watch::Sender<LinkState>, stats: Arc<Stats>) {
    let mut monitors = Monitors::default();
    let mut backoff = Backoff::new(profile.reconnect_min, profile.reconnect_max);
    loop {
        let _ = state.send(LinkState::Connecting);
        let started = Instant::now();
        let mut s = Session::new(&profile, &stats);
        let end = s.run(&mut cmd_rx, &mut ctl_rx, &state, &mut monitors).await;
        if s.came_up && started.elapsed() > profile.reconnect_max {
            backoff.reset();
        }
        monitors.link_lost(&stats);
        match end {
            End::Shutdown(done) => {
                let _ = state.send(LinkState::Closed);
                let _ = done.send(());
                return;
            }
            End::Stopped => {
                let _ = state.send(LinkState::Closed);
                return;
            }
            End::Lost(reason) => {
                warn!(%reason, "link down");
                let _ = state.send(LinkState::Down { reason });
            }
        }
        let delay = backoff.next(rand::random::<f64>());
        debug!(?delay, "reconnecting after backoff");
        let wake = sleep_until(Instant::now() + delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                cmd = cmd_rx.recv() => match cmd {
                    Some(c) => fail_fast(c),
                    None => { let _ = state.send(LinkState::Closed); return; }
                },
                ctl = ctl_rx.recv() => match ctl {
                    Some(Control::Unsubscribe { device, sub }) => { monitors.unsubscribe(&device, sub); }
                    Some(Control::Shutdown(done)) => { let _ = state.send(LinkState::Closed); let _ = done.send(()); return; }
                    None => { let _ = state.send(LinkState::Closed); return; }
                },
            }
        }
        Stats::inc(&stats.reconnects);
    }
}

fn fail_fast(c: Command) {
    match c {
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(RequestError::LinkDown));
        }
        Command::Monitor { reply, .. } => {
            let _ = reply.send(Err(RequestError::LinkDown));
        }
    }
}

/// One connection's worth of state.
struct Session<'a> {
    p: &'a LinkProfile,
    stats: &'a Stats,
    invokes: InvokeTable<Pending>,
    queue: VecDeque<Queued>,
    bucket: TokenBucket,
    out: Vec<u8>,
    wr: Option<tokio::net::tcp::OwnedWriteHalf>,
    last_rx: Instant,
    keepalive_sent: Option<Instant>,
    came_up: bool,
}

impl<'a> Session<'a> {
    fn new(p: &'a LinkProfile, stats: &'a Stats) -> Self {
        Session {
            p,
            stats,
            invokes: InvokeTable::default(),
            queue: VecDeque::new(),
            bucket: TokenBucket::new(p.max_requests_per_second, Instant::now()),
            out: Vec::with_capacity(256),
            wr: None,
            last_rx: Instant::now(),
            keepalive_sent: None,
            came_up: false,
        }
    }

    async fn send(&mut self, apdu: &Apdu) -> Result<(), String> {
        self.out.clear();
        apdu.encode(self.p.dialect, &mut self.out).map_err(|e| e.to_string())?;
        let framed = self.p.framing.frame(&self.out).map_err(|e| e.to_string())?;
        trace!(apdu = %for_log(&self.out), "send");
        let wr = self.wr.as_mut().ok_or("not connected")?;
        // A peer that stops reading must not stall the link forever.
        match timeout(self.p.request_timeout, wr.write_all(&framed)).await {
            Ok(Ok(())) => {
                Stats::inc(&self.stats.frames_out);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("write stalled: the PBX does not read".into()),
        }
    }

    async fn run(&mut self, cmd_rx: &mut mpsc::Receiver<Command>, ctl_rx: &mut mpsc::UnboundedReceiver<Control>, state: &watch::Sender<LinkState>, monitors: &mut Monitors) -> End {
        let stream = match timeout(self.p.connect_timeout, TcpStream::connect(&self.p.address)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return End::Lost(format!("connect to {}: {e}", self.p.address)),
            Err(_) => return End::Lost(format!("connect to {}: timed out", self.p.address)),
        };
        let _ = stream.set_nodelay(true);
        let (mut rd, wr) = stream.into_split();
        self.wr = Some(wr);
        let mut framer = Framer::new(self.p.framing);
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let _ = state.send(LinkState::Associating);
        if self.p.preamble {
            framer = framer.expect_preamble(b'P');
            if let Some(wr) = self.wr.as_mut() {
                if let Err(e) = wr.write_all(b"B").await {
                    return End::Lost(format!("preamble: {e}"));
                }
            }
        }
        if let Some(params) = &self.p.acse {
            let body = match aarq(params) {
                Ok(b) => b,
                Err(e) => return End::Lost(format!("AARQ: {e}")),
            };
            if let Err(e) = self.send(&Apdu::Aarq(body)).await {
                return End::Lost(e);
            }
            let deadline = Instant::now() + self.p.connect_timeout;
            loop {
                let apdu = match timeout_at(deadline, next_apdu(&mut rd, &mut framer, &mut buf, self.stats, self.p.dialect)).await {
                    None => return End::Lost("no AARE within the connect timeout".into()),
                    Some(Err(e)) => return End::Lost(e),
                    Some(Ok(a)) => a,
                };
                match apdu {
                    Apdu::Aare(b) => match aare_outcome(&b) {
                        Ok(()) => break,
                        Err(rej) => return End::Lost(format!("AARE rejected: {rej}")),
                    },
                    Apdu::Abrt(_) => return End::Lost("association aborted by the PBX".into()),
                    other => {
                        debug!(kind = other.kind_name(), "ignored before AARE");
                    }
                }
            }
        }
        self.came_up = true;
        Stats::inc(&self.stats.connects);
        info!(address = %self.p.address, "link up");
        let _ = state.send(LinkState::Up);
        self.last_rx = Instant::now();
        // Re-monitor everything subscribers still want; new cross-reference ids map invisibly.
        for device in monitors.restart_all() {
            self.queue.push_back(Queued::MonitorStart { device });
        }

        loop {
            // Frames already buffered first: the AARE and the PBX's first SystemStatus often
            // arrive in one read.
            loop {
                match framer.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        Stats::inc(&self.stats.frames_in);
                        // Only a complete frame is a sign of life: bytes of a frame that never
                        // completes do not hold the keep-alive off.
                        self.last_rx = Instant::now();
                        self.keepalive_sent = None;
                        if let Some(end) = self.on_frame(frame, monitors).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        Stats::inc(&self.stats.decode_errors);
                        return End::Lost(format!("framing: {e}"));
                    }
                }
            }
            if let Err(e) = self.pump_queue(monitors).await {
                return End::Lost(e);
            }
            let wake = self.next_wake();
            tokio::select! {
                r = rd.read_buf(&mut buf) => {
                    match r {
                        Ok(0) => return End::Lost("connection closed by the PBX".into()),
                        Err(e) => return End::Lost(format!("read: {e}")),
                        Ok(_) => {}
                    }
                }
                cmd = cmd_rx.recv() => match cmd {
                    None => return End::Stopped,
                    Some(Command::Request { op, arg, reply }) => {
                        if self.queue.len() >= MAX_QUEUED_REQUESTS {
                            let _ = reply.send(Err(RequestError::QueueFull));
                        } else {
                            self.queue.push_back(Queued::User { op, arg, reply, deadline: Instant::now() + self.p.request_timeout });
                        }
                    }
                    Some(Command::Monitor { device, sub, tx, reply }) => {
                        if monitors.subscribe(&device, sub, tx, reply) {
                            self.queue.push_back(Queued::MonitorStart { device });
                        }
                    }
                },
                ctl = ctl_rx.recv() => match ctl {
                    None => return End::Stopped,
                    Some(Control::Unsubscribe { device, sub }) => {
                        if let Some(xref) = monitors.unsubscribe(&device, sub) {
                            self.queue.push_back(Queued::MonitorStop { xref });
                        }
                    }
                    Some(Control::Shutdown(done)) => {
                        self.release(&mut rd, &mut framer, &mut buf).await;
                        return End::Shutdown(done);
                    }
                },
                _ = sleep_until(wake) => {
                    if let Some(end) = self.on_timer(monitors).await {
                        return end;
                    }
                }
            }
        }
    }

    /// The earliest of: next request deadline, keep-alive check, next token when requests wait.
    fn next_wake(&mut self) -> Instant {
        let now = Instant::now();
        let mut wake = match self.keepalive_sent {
            Some(sent) => sent + self.p.keepalive,
            None => self.last_rx + self.p.keepalive,
        };
        if let Some(d) = self.invokes.values().map(Pending::deadline).min() {
            wake = wake.min(d);
        }
        for q in &self.queue {
            if let Queued::User { deadline, .. } = q {
                wake = wake.min(*deadline);
            }
        }
        if !self.queue.is_empty() {
            if let Err(wait) = self.bucket.clone().try_take(now) {
                wake = wake.min(now + wait);
            }
        }
        wake
    }

    /// Send queued requests while tokens last.
    async fn pump_queue(&mut self, monitors: &mut Monitors) -> Result<(), String> {
        while !self.queue.is_empty() {
            let now = Instant::now();
            if self.bucket.try_take(now).is_err() {
                return Ok(());
            }
            let Some(q) = self.queue.pop_front() else { return Ok(()) };
            let deadline = now + self.p.request_timeout;
            let (op, arg, pending) = match q {
                Queued::User { op, arg, reply, deadline } => (op, arg, Pending::User { op, reply, sent: now, deadline }),
                Queued::MonitorStart { device } => {
                    let Ok(dev) = crate::codec::DeviceId::dialing(&device) else {
                        monitors.start_failed(&device, RequestError::Encode("device number is not ASCII".into()));
                        continue;
                    };
                    (Operation::MonitorStart, Body::new().with(FieldName::MonitorObject, Value::DeviceId(dev)), Pending::MonitorStart { device, deadline })
                }
                Queued::MonitorStop { xref } => (Operation::MonitorStop, Body::new().with(FieldName::CrossRefIdentifier, Value::Octets(xref)), Pending::Internal { op: Operation::MonitorStop, deadline }),
            };
            self.invoke(op, arg, pending, monitors).await?;
        }
        Ok(())
    }

    /// Allocate an id and send. Encoding problems fail the request, not the link.
    async fn invoke(&mut self, op: Operation, arg: Body, pending: Pending, monitors: &mut Monitors) -> Result<(), String> {
        let Some(id) = self.invokes.insert(pending) else {
            return Ok(()); // 32767 outstanding: the entry was not stored; it times out below
        };
        let apdu = Apdu::invoke(id, op, arg).shaped(self.p.dialect, self.p.phase2_results);
        self.out.clear();
        if let Err(e) = apdu.encode(self.p.dialect, &mut self.out) {
            if let Some(p) = self.invokes.take(id) {
                self.complete(p, Err(RequestError::Encode(e.to_string())), monitors);
            }
            return Ok(());
        }
        self.send(&apdu).await
    }

    fn complete(&mut self, p: Pending, result: Result<Body, RequestError>, monitors: &mut Monitors) {
        match p {
            Pending::User { reply, sent, .. } => {
                match &result {
                    Ok(_) => {
                        Stats::inc(&self.stats.requests_ok);
                        let us = sent.elapsed().as_micros() as u64;
                        Stats::inc(&self.stats.latency_count);
                        self.stats.latency_sum_us.fetch_add(us, Ordering::Relaxed);
                        self.stats.latency_max_us.fetch_max(us, Ordering::Relaxed);
                    }
                    Err(RequestError::Timeout) => Stats::inc(&self.stats.requests_timed_out),
                    Err(_) => Stats::inc(&self.stats.requests_failed),
                }
                let _ = reply.send(result);
            }
            Pending::MonitorStart { device, .. } => match result {
                Ok(body) => match body.octets(FieldName::CrossRefIdentifier) {
                    Some(x) => {
                        if let Some(stop) = monitors.started(&device, x.clone(), self.stats) {
                            self.queue.push_back(Queued::MonitorStop { xref: stop });
                        }
                    }
                    None => monitors.start_failed(&device, RequestError::OtherError("MonitorStart result without crossRefIdentifier".into())),
                },
                Err(e) => monitors.start_failed(&device, e),
            },
            Pending::Internal { .. } => {}
        }
    }

    async fn on_frame(&mut self, frame: Bytes, monitors: &mut Monitors) -> Option<End> {
        let apdu = match Apdu::decode(&frame, self.p.dialect) {
            Ok(a) => a,
            Err(e) => return self.on_undecodable(&frame, &e, monitors).await,
        };
        match apdu {
            Apdu::Invoke(inv) => {
                let answer = match (&inv.op, inv.invoke_id) {
                    (Op::Known(Operation::EventReport), _) => {
                        if let Argument::Event(ev) = inv.argument {
                            Stats::inc(&self.stats.events_in);
                            monitors.route(ev, self.stats);
                        }
                        None
                    }
                    (Op::Known(Operation::SystemStatus), Some(id)) => {
                        Stats::inc(&self.stats.keepalives_answered);
                        Some(Apdu::result(id, Operation::SystemStatus, Body::null()))
                    }
                    (_, id) => {
                        Stats::inc(&self.stats.rejects_sent);
                        Some(Apdu::reject(id, RejectProblem::Invoke(1)))
                    }
                };
                if let Some(a) = answer {
                    if let Err(e) = self.send(&a).await {
                        return Some(End::Lost(e));
                    }
                }
            }
            Apdu::Result(r) => {
                let taken = r.invoke_id.and_then(|id| self.invokes.take(id));
                match taken {
                    Some(p) => {
                        let body = match r.result {
                            Some((_, Argument::Body(b))) => b,
                            _ => Body::null(),
                        };
                        self.complete(p, Ok(body), monitors);
                    }
                    None => Stats::inc(&self.stats.unexpected_responses),
                }
            }
            Apdu::Error(e) => match e.invoke_id.and_then(|id| self.invokes.take(id)) {
                Some(p) => {
                    let err = match e.parameter {
                        Some(ErrorParameter::UniversalFailure(u)) => RequestError::Failure(u),
                        _ => RequestError::OtherError(e.code.name(self.p.dialect)),
                    };
                    self.complete(p, Err(err), monitors);
                }
                None => Stats::inc(&self.stats.unexpected_responses),
            },
            Apdu::Reject(rj) => {
                Stats::inc(&self.stats.rejects_received);
                if let Some(p) = rj.invoke_id.and_then(|id| self.invokes.take(id)) {
                    self.complete(p, Err(RequestError::Rejected(rj.problem)), monitors);
                }
            }
            Apdu::Rlrq(_) => {
                let _ = self.send(&Apdu::Rlre(Body::new())).await;
                return Some(End::Lost("association released by the PBX".into()));
            }
            Apdu::Abrt(_) => return Some(End::Lost("association aborted by the PBX".into())),
            Apdu::Aarq(_) | Apdu::Aare(_) | Apdu::Rlre(_) => Stats::inc(&self.stats.unexpected_responses),
        }
        None
    }

    /// A frame that does not decode: counted and rejected, and the link goes on; only a framing
    /// error loses the stream. A result or error whose invoke id is one of ours outstanding
    /// answers that request: it fails now with the decode error (waiting for the timeout would
    /// only delay the same outcome), and the Reject names the invoke (X.880 mistypedResult /
    /// mistypedParameter). Anything else gets a general problem (badly structured APDU).
    async fn on_undecodable(&mut self, frame: &Bytes, e: &DecodeError, monitors: &mut Monitors) -> Option<End> {
        Stats::inc(&self.stats.decode_errors);
        trace!(apdu = %for_log(frame), "undecodable");
        let answered = Apdu::answer_invoke_id(frame).and_then(|id| Some((id, self.invokes.take(id)?)));
        let reject = match answered {
            Some((id, p)) => {
                let operation = p.operation();
                warn!(error = %e, invoke_id = id, operation = operation.name(self.p.dialect), "undecodable answer from the PBX");
                Stats::inc(&self.stats.undecodable_responses);
                self.complete(p, Err(RequestError::Decode { operation, offset: e.offset, reason: e.kind.clone() }), monitors);
                let problem = if frame.first() == Some(&0xA2) { RejectProblem::ReturnResult(2) } else { RejectProblem::ReturnError(4) };
                Apdu::reject(Some(id), problem)
            }
            None => {
                warn!(error = %e, "undecodable APDU from the PBX");
                Apdu::reject(None, RejectProblem::General(2))
            }
        };
        Stats::inc(&self.stats.rejects_sent);
        match self.send(&reject).await {
            Ok(()) => None,
            Err(e) => Some(End::Lost(e)),
        }
    }

    async fn on_timer(&mut self, monitors: &mut Monitors) -> Option<End> {
        let now = Instant::now();
        for (_, p) in self.invokes.drain_where(|p| p.deadline() <= now) {
            self.complete(p, Err(RequestError::Timeout), monitors);
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        while let Some(q) = self.queue.pop_front() {
            match q {
                Queued::User { reply, deadline, .. } if deadline <= now => {
                    Stats::inc(&self.stats.requests_timed_out);
                    let _ = reply.send(Err(RequestError::Timeout));
                }
                other => kept.push_back(other),
            }
        }
        self.queue = kept;
        match self.keepalive_sent {
            Some(sent) if now >= sent + self.p.keepalive => {
                return Some(End::Lost(format!("no answer to keep-alive within {:?}: peer dead", self.p.keepalive)));
            }
            None if now >= self.last_rx + self.p.keepalive => {
                self.keepalive_sent = Some(now);
                let body = Body::new().with(FieldName::SystemStatus, Value::Int(2));
                if let Err(e) = self.invoke(Operation::SystemStatus, body, Pending::Internal { op: Operation::SystemStatus, deadline: now + self.p.keepalive }, monitors).await {
                    return Some(End::Lost(e));
                }
            }
            _ => {}
        }
        None
    }

    /// Graceful release: RLRQ, wait briefly for RLRE, close; pending requests fail as closed.
    async fn release(&mut self, rd: &mut tokio::net::tcp::OwnedReadHalf, framer: &mut Framer, buf: &mut BytesMut) {
        if self.p.acse.is_some() && self.send(&Apdu::Rlrq(Body::new())).await.is_ok() {
            let deadline = Instant::now() + self.p.request_timeout.min(Duration::from_secs(2));
            while let Some(Ok(a)) = timeout_at(deadline, next_apdu(rd, framer, buf, self.stats, self.p.dialect)).await {
                if matches!(a, Apdu::Rlre(_)) {
                    break;
                }
            }
        }
        for (_, p) in self.invokes.drain() {
            if let Pending::User { reply, .. } = p {
                let _ = reply.send(Err(RequestError::Closed));
            }
        }
        for q in self.queue.drain(..) {
            if let Queued::User { reply, .. } = q {
                let _ = reply.send(Err(RequestError::Closed));
            }
        }
        if let Some(mut wr) = self.wr.take() {
            let _ = wr.shutdown().await;
        }
    }
}

impl Drop for Session<'_> {
    /// Whatever is still pending when a connection ends fails with `LinkDown`: nothing is lost
    /// silently.
    fn drop(&mut self) {
        for (_, p) in self.invokes.drain() {
            if let Pending::User { reply, .. } = p {
                Stats::inc(&self.stats.requests_failed);
                let _ = reply.send(Err(RequestError::LinkDown));
            }
        }
        for q in self.queue.drain(..) {
            if let Queued::User { reply, .. } = q {
                Stats::inc(&self.stats.requests_failed);
                let _ = reply.send(Err(RequestError::LinkDown));
            }
        }
    }
}

async fn timeout_at<F: std::future::Future>(deadline: Instant, f: F) -> Option<F::Output> {
    tokio::time::timeout_at(deadline, f).await.ok()
}

/// Read until one APDU is complete (used before the main loop and during release).
async fn next_apdu(rd: &mut tokio::net::tcp::OwnedReadHalf, framer: &mut Framer, buf: &mut BytesMut, stats: &Stats, dialect: Dialect) -> Result<Apdu, String> {
    loop {
        match framer.decode(buf) {
            Ok(Some(frame)) => {
                Stats::inc(&stats.frames_in);
                return Apdu::decode(&frame, dialect).map_err(|e| {
                    Stats::inc(&stats.decode_errors);
                    format!("undecodable APDU during association: {e}")
                });
            }
            Ok(None) => {}
            Err(e) => return Err(format!("framing: {e}")),
        }
        match rd.read_buf(buf).await {
            Ok(0) => return Err("connection closed by the PBX".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

impl Monitors {
    /// Add a subscriber. Returns true when a MonitorStart must be sent.
    fn subscribe(&mut self, device: &str, sub: u64, tx: mpsc::Sender<MonitorEvent>, reply: oneshot::Sender<Result<(), RequestError>>) -> bool {
        let e = self.by_device.entry(device.to_owned()).or_insert_with(|| MonitorEntry { xref: None, starting: false, subs: Vec::new(), waiting: Vec::new() });
        if e.xref.is_some() {
            e.subs.push((sub, tx));
            let _ = reply.send(Ok(()));
            return false;
        }
        e.waiting.push((sub, tx, reply));
        if e.starting {
            return false;
        }
        e.starting = true;
        true
    }

    /// The PBX accepted a MonitorStart. Returns the cross-reference id to stop when every
    /// would-be subscriber left while it was starting.
    fn started(&mut self, device: &str, xref: Bytes, stats: &Stats) -> Option<Bytes> {
        let Some(e) = self.by_device.get_mut(device) else { return Some(xref) };
        if let Some(old) = e.xref.replace(xref.clone()) {
            self.by_xref.remove(&old);
        } else {
            Stats::inc(&stats.monitors);
        }
        e.starting = false;
        self.by_xref.insert(xref, device.to_owned());
        // Existing subscribers are re-attached after a reconnect.
        for (_, tx) in &e.subs {
            let _ = tx.try_send(MonitorEvent::LinkRestored);
        }
        for (sub, tx, reply) in e.waiting.drain(..) {
            if reply.send(Ok(())).is_ok() {
                e.subs.push((sub, tx));
            }
        }
        if e.subs.is_empty() {
            let x = e.xref.take();
            self.by_device.remove(device);
            if let Some(x) = &x {
                self.by_xref.remove(x);
                stats.monitors.fetch_sub(1, Ordering::Relaxed);
            }
            return x;
        }
        None
    }

    fn start_failed(&mut self, device: &str, err: RequestError) {
        let Some(e) = self.by_device.get_mut(device) else { return };
        e.starting = false;
        for (_, _, reply) in e.waiting.drain(..) {
            let _ = reply.send(Err(err.clone()));
        }
        for (_, tx) in &e.subs {
            let _ = tx.try_send(MonitorEvent::MonitorFailed(Box::new(err.clone())));
        }
        if e.xref.is_none() {
            self.by_device.remove(device);
        }
    }

    /// Remove a subscriber; returns the cross-reference id to stop when it was the last.
    fn unsubscribe(&mut self, device: &str, sub: u64) -> Option<Bytes> {
        let e = self.by_device.get_mut(device)?;
        e.subs.retain(|(s, _)| *s != sub);
        if !e.subs.is_empty() || !e.waiting.is_empty() || e.starting {
            return None;
        }
        let e = self.by_device.remove(device)?;
        let xref = e.xref?;
        self.by_xref.remove(&xref);
        Some(xref)
    }

    fn route(&mut self, ev: EventReport, stats: &Stats) {
        let Some(device) = self.by_xref.get(&ev.xref) else {
            Stats::inc(&stats.events_unrouted);
            return;
        };
        let Some(e) = self.by_device.get_mut(device) else { return };
        e.subs.retain(|(_, tx)| !tx.is_closed());
        let ev = Arc::new(ev);
        for (_, tx) in &e.subs {
            if tx.try_send(MonitorEvent::Event(ev.clone())).is_err() {
                Stats::inc(&stats.events_dropped);
            }
        }
    }

    /// The connection is gone: every cross-reference id is void.
    fn link_lost(&mut self, stats: &Stats) {
        self.by_xref.clear();
        self.by_device.retain(|_, e| {
            for (_, _, reply) in e.waiting.drain(..) {
                let _ = reply.send(Err(RequestError::LinkDown));
            }
            e.starting = false;
            if e.xref.take().is_some() {
                stats.monitors.fetch_sub(1, Ordering::Relaxed);
            }
            e.subs.retain(|(_, tx)| tx.try_send(MonitorEvent::LinkLost).is_ok() || !tx.is_closed());
            !e.subs.is_empty()
        });
    }

    /// Devices to monitor again after a reconnect.
    fn restart_all(&mut self) -> Vec<String> {
        self.by_device
            .iter_mut()
            .filter(|(_, e)| !e.subs.is_empty() && e.xref.is_none() && !e.starting)
            .map(|(d, e)| {
                e.starting = true;
                d.clone()
            })
            .collect()
    }
}
