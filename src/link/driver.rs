//! The link's tokio task: one per PBX, supervised. It connects with a timeout, hands the
//! socket's bytes to a fresh [`Session`] per connection, writes what the session transmits, sleeps
//! until its `poll_timeout`, reconnects with backoff after a loss, and maps the session's
//! [`RequestId`]s and devices to the callers (through the [`Registry`]), and the late results of
//! requests that timed out to the port that made them. The only code of the link that touches
//! sockets and the runtime's clock.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, warn};

use super::parts::Backoff;
use super::tls::LinkTls;
use super::registry::{Need, PortEntry, Registry};
use super::{Command, Control, LinkLoss, LinkState, Reply, RequestError, RequestId, Session, SessionEvent, Stats, LATE_RESULTS_KEPT};
use crate::config::LinkProfile;

enum End {
    Shutdown(oneshot::Sender<()>),
    Stopped,
    Lost(LinkLoss),
}

/// The link task's state: what outlives a connection.
pub(super) struct Driver {
    p: Arc<LinkProfile>,
    stats: Arc<Stats>,
    state: watch::Sender<LinkState>,
    cmd_rx: mpsc::Receiver<Command>,
    ctl_rx: mpsc::UnboundedReceiver<Control>,
    reg: Registry,
    /// The callers of the current session's requests.
    replies: HashMap<RequestId, Reply>,
    /// The port and tag of the current session's requests that timed out and whose late result
    /// the session awaits. Bounded: pruned to those the session still awaits (at most
    /// [`LATE_RESULTS_KEPT`]) whenever it holds twice that.
    late: HashMap<RequestId, (u64, u64)>,
}

/// An I/O error of a connection: over TLS, an error rustls reports (an alert from the PBX, such
/// as the refusal of our client certificate after a TLS 1.3 handshake) is a TLS loss in words;
/// anything else is `plain`.
fn io_loss(e: &std::io::Error, tls: Option<&LinkTls>, plain: LinkLoss) -> LinkLoss {
    match (tls, super::tls::rustls_error(e)) {
        (Some(t), Some(r)) => LinkLoss::Tls(super::tls::describe(r, t)),
        _ => plain,
    }
}

/// The session's clock is the runtime's (paused in tests that pause it).
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Driver {
    pub(super) fn new(p: Arc<LinkProfile>, stats: Arc<Stats>, state: watch::Sender<LinkState>, cmd_rx: mpsc::Receiver<Command>, ctl_rx: mpsc::UnboundedReceiver<Control>) -> Driver {
        Driver { p, stats, state, cmd_rx, ctl_rx, reg: Registry::default(), replies: HashMap::new(), late: HashMap::new() }
    }

    pub(super) async fn supervise(mut self) {
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
            // Invoke ids are per connection: no late result comes after it.
            self.late.clear();
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
                    if let LinkLoss::Tls(_) = loss {
                        Stats::inc(&self.stats.tls_failures);
                    }
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

    /// One connection: connect (and with `tls`, complete the handshake), then drive a fresh
    /// session until it ends. The TCP connect and the TLS handshake each have `connect_timeout`.
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
        let Some(tls) = self.p.tls.clone() else {
            let (rd, wr) = stream.into_split();
            return self.drive(rd, wr, None, came_up).await;
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        match timeout(self.p.connect_timeout, connector.connect(tls.server_name.clone(), stream)).await {
            Ok(Ok(s)) => {
                // One TLS stream, shared by the read and the write half (rustls keeps one state).
                let (rd, wr) = tokio::io::split(s);
                self.drive(rd, wr, Some(&tls), came_up).await
            }
            Ok(Err(e)) => {
                let why = super::tls::handshake_failure(&e, &tls);
                warn!(address = %self.p.address, reason = %why, "TLS handshake failed");
                End::Lost(LinkLoss::Tls(why))
            }
            Err(_) => End::Lost(LinkLoss::Tls("no handshake within the connect timeout (a plain CSTA port?)".into())),
        }
    }

    /// Drive a fresh session over one connection's halves (plain TCP or TLS) until it ends.
    async fn drive<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(&mut self, mut rd: R, mut wr: W, tls: Option<&LinkTls>, came_up: &mut bool) -> End {
        let _ = self.state.send(LinkState::Associating);
        let mut s = Session::new(self.p.clone(), self.stats.clone(), now());
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut shutdown: Option<oneshot::Sender<()>> = None;
        loop {
            // Write what the session transmits (answers first go out before anything is read).
            if let Some(out) = s.poll_transmit() {
                match timeout(self.p.request_timeout, wr.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => s.connection_lost(io_loss(&e, tls, LinkLoss::Write(e.kind()))),
                    // A peer that stops reading must not stall the link forever.
                    Err(_) => s.connection_lost(LinkLoss::WriteStalled),
                }
            }
            while let Some(ev) = s.poll_event() {
                match ev {
                    SessionEvent::Up => {
                        *came_up = true;
                        // After a loss the operator looks for the line that says it is over.
                        let reconnects = self.stats.reconnects.load(std::sync::atomic::Ordering::Relaxed);
                        if reconnects == 0 {
                            info!(address = %self.p.address, "link up");
                        } else {
                            info!(address = %self.p.address, reconnects, "link up again");
                        }
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
                            if let (Err(RequestError::Timeout), Reply::Port { port, tag, .. }) = (&result, &r)
                                && s.awaits_late_result(id)
                            {
                                self.late.insert(id, (*port, *tag));
                                if self.late.len() >= 2 * LATE_RESULTS_KEPT {
                                    self.late.retain(|id, _| s.awaits_late_result(*id));
                                }
                            }
                            r.deliver(result);
                        }
                    }
                    SessionEvent::LateResult { id, op, body } => match self.late.remove(&id) {
                        Some((port, tag)) => self.reg.late(port, tag, body),
                        // A `Link::request` caller stopped waiting at its timeout.
                        None => debug!(operation = op.name(self.p.dialect), "late result of a request nobody awaits"),
                    },
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
                    Err(e) => s.connection_lost(io_loss(&e, tls, LinkLoss::Read(e.kind()))),
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
