//! The simulator's TCP side: accept, preamble, ACSE or the CSTA XML session, then frames to and
//! from the switch, with the transport faults applied (stall, split, coalesce, malformed frames,
//! drop after N frames).
//!
//! How bytes are read and written ([`Wire`]) is decided here: BER APDUs, or CSTA XML documents
//! that decode to the same [`Apdu`]s, so the switch serves both alike. What only XML has, the
//! ECMA-354 session, is per connection and lives here too, as ACSE does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::trace;

use super::switch::{Msg, Out};
use super::{lock, Shared, SimXml};
use crate::codec::acse::{for_log, Authentication};
use crate::codec::apdu::ErrorCategory;
use crate::codec::body::{FieldName, Value, Wrapping};
use crate::codec::framing::{Framer, Framing};
use crate::codec::values::Secret;
use crate::codec::xml::{frame_invoke_id, AppSession, StartSession, XmlMessage, MAX_XML_INVOKE_ID};
use crate::codec::{Apdu, Body, Dialect, RejectProblem};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, switch: mpsc::UnboundedSender<Msg>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let _ = stream.set_nodelay(true);
                shared.stats.send_modify(|s| s.connections += 1);
                let tls = lock(&shared.config).tls.clone();
                let (shared, switch, stop) = (shared.clone(), switch.clone(), stop.clone());
                tokio::spawn(async move {
                    match tls {
                        None => {
                            let (rd, wr) = stream.into_split();
                            serve(rd, wr, shared, switch, stop).await;
                        }
                        Some(tls) => {
                            if let Some(s) = handshake(stream, &tls, &shared).await {
                                let (rd, wr) = tokio::io::split(s);
                                serve(rd, wr, shared, switch, stop).await;
                            }
                        }
                    }
                });
            }
            _ = stop.changed() => return,
        }
    }
}

/// How long a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of a TLS handshake; `None` when it failed (counted). A failed handshake's
/// alert is sent, then what the client already sent is read (bounded) before the socket is
/// closed: closing with unread bytes would send a reset that could overtake the alert, and the
/// client would see "connection reset" instead of why.
async fn handshake(stream: TcpStream, tls: &super::SimTls, shared: &Shared) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream).into_fallible()).await {
        Ok(Ok(s)) => return Some(s),
        Ok(Err((e, mut stream))) => {
            trace!(error = %e, "sim TLS handshake failed");
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 4096];
            let mut left = 64 * 1024usize;
            let drain = async {
                while left > 0 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
        Err(_) => {}
    }
    shared.stats.send_modify(|s| s.tls_failures += 1);
    None
}

/// While stalled, a connection neither reads nor writes; this is how often it looks again.
const STALL_POLL: Duration = Duration::from_millis(5);

/// What the bytes of a connection are.
#[derive(Clone, Copy)]
enum Wire {
    Ber { dialect: Dialect, wrapping: Wrapping },
    Xml { framing: Framing, version: crate::codec::xml::ProtocolVersion },
}

impl Wire {
    /// One outgoing message as a frame's content; `None` for what has no form on this wire
    /// (never sent).
    fn encode(self, out: Out) -> Option<Vec<u8>> {
        match (self, out) {
            (Wire::Ber { dialect, wrapping }, Out::Apdu(apdu)) => apdu.shaped(dialect, wrapping).to_vec(dialect).ok(),
            (Wire::Xml { framing, version }, Out::Apdu(apdu)) => XmlMessage::Csta(apdu).to_vec(framing, version).ok(),
            (Wire::Xml { framing, version }, Out::Xml(msg)) => msg.to_vec(framing, version).ok(),
            (_, Out::Xml(_) | Out::Close) => None,
        }
    }

    /// The malformed-frames fault: a well-framed content that does not decode. BER: a ROSE
    /// invoke whose invoke id is a constructed INTEGER; XML: the document cut in half (its
    /// invoke id kept), as a PBX that lost part of a write would send it.
    fn malformed(self, content: &[u8]) -> Vec<u8> {
        match self {
            Wire::Ber { .. } => vec![0xA1, 0x05, 0x22, 0x03, 0x02, 0x01, 0x01],
            Wire::Xml { .. } => content[..content.len() / 2].to_vec(),
        }
    }
}

/// One connection's state as its frames arrive: whether it is associated (given to the switch)
/// and, over XML, its session.
struct Peer {
    conn: u64,
    shared: Arc<Shared>,
    switch: mpsc::UnboundedSender<Msg>,
    out: mpsc::UnboundedSender<Out>,
    creds: Option<(String, Secret)>,
    /// Past the AARQ or the session start (or needing neither): the switch serves it.
    associated: bool,
    /// The XML session open on this connection.
    session: Option<Session>,
    /// XML with NUL framing: the invoke ids given to the client's requests, which carry none,
    /// so that the switch's answers find them (the ids are never written).
    last_nul_id: i64,
}

struct Session {
    id: String,
    /// Seconds granted.
    duration: u32,
    /// When it lapses unless reset.
    lapses: Instant,
}

impl Peer {
    fn send(&self, out: Out) {
        let _ = self.out.send(out);
    }

    fn associate(&mut self) {
        if !self.associated {
            self.shared.stats.send_modify(|s| {
                s.associated += 1;
                s.associated_max = s.associated_max.max(s.associated);
            });
        }
        self.associated = true;
        let _ = self.switch.send(Msg::Connected { conn: self.conn, tx: self.out.clone() });
    }

    /// Whether `user` and `password` are the required login (any login when none is required).
    fn login_ok(&self, user: &[u8], password: &Secret) -> bool {
        match &self.creds {
            None => true,
            Some((u, p)) => user == u.as_bytes() && password == p,
        }
    }

    /// A BER frame. `false`: close the connection now.
    fn ber_frame(&mut self, frame: &Bytes, dialect: Dialect) -> bool {
        let apdu = match Apdu::decode(frame, dialect) {
            Ok(a) => a,
            Err(_) => {
                self.send(Out::Apdu(Apdu::reject(None, RejectProblem::General(2))));
                return true;
            }
        };
        if !self.associated {
            let Apdu::Aarq(aarq) = &apdu else { return false };
            let ok = match aarq.get(FieldName::CallingAuthenticationValue) {
                Some(Value::Auth(Authentication::UserPassword { user, password })) => self.login_ok(user, password),
                _ => self.creds.is_none(),
            };
            self.send(Out::Apdu(Apdu::Aare(aare(aarq, ok))));
            if !ok {
                self.send(Out::Close);
                return true;
            }
            self.associate();
            return true;
        }
        match apdu {
            Apdu::Rlrq(_) => {
                self.shared.stats.send_modify(|s| s.releases += 1);
                self.send(Out::Apdu(Apdu::Rlre(Body::new())));
                self.send(Out::Close);
            }
            other => {
                let _ = self.switch.send(Msg::Apdu { conn: self.conn, apdu: other });
            }
        }
        true
    }

    /// The invoke id of a request: its own, or (NUL framing) the next one we give it.
    fn request_id(&mut self, id: Option<i64>) -> i64 {
        id.unwrap_or_else(|| {
            self.last_nul_id = if self.last_nul_id >= MAX_XML_INVOKE_ID { 1 } else { self.last_nul_id + 1 };
            self.last_nul_id
        })
    }

    /// A CSTA XML frame.
    fn xml_frame(&mut self, frame: &Bytes, framing: Framing, xml: &SimXml) {
        let msg = match XmlMessage::decode(frame, framing) {
            Ok(m) => m,
            // A document that does not parse: a CSTAErrorCode on its invoke id if it had one.
            Err(_) => return self.send(Out::Apdu(Apdu::reject(frame_invoke_id(frame, framing), RejectProblem::General(2)))),
        };
        trace!(conn = self.conn, msg = %msg.name(), "sim received");
        match msg {
            XmlMessage::Session { invoke_id, msg } => self.session_msg(invoke_id, msg, xml),
            // A request this PBX does not know (SystemRegister, a vendor's): serviceNotSupported.
            XmlMessage::Unknown { invoke_id, .. } => {
                let id = self.request_id(invoke_id);
                self.send(Out::Apdu(Apdu::reject(Some(id), RejectProblem::Invoke(1))));
            }
            XmlMessage::Csta(mut apdu) => {
                if let Apdu::Invoke(inv) = &mut apdu {
                    let id = self.request_id(inv.invoke_id);
                    inv.invoke_id = Some(id);
                    if !self.associated {
                        // No session yet: a security error, as OpenScape answers.
                        return self.send(Out::Apdu(Apdu::universal_failure(id, ErrorCategory::Security, Some(0))));
                    }
                }
                if self.associated {
                    let _ = self.switch.send(Msg::Apdu { conn: self.conn, apdu });
                }
            }
        }
    }

    /// An ECMA-354 message from the client. Answers carry the request's invoke id.
    fn session_msg(&mut self, invoke_id: Option<i64>, msg: AppSession, xml: &SimXml) {
        let answer = |msg| Out::Xml(XmlMessage::Session { invoke_id, msg });
        let grant = |requested: Option<u32>, current: u32| requested.unwrap_or(current).clamp(1, xml.max_session_duration.max(1));
        match msg {
            AppSession::Start(start) => match self.start_session(&start, xml) {
                Ok(version) => {
                    let duration = grant(start.duration, xml.max_session_duration);
                    // A session id as OpenScape gives them: opaque, unguessable, per connection.
                    let id = crate::random::id().to_uppercase();
                    self.session = Some(Session { id: id.clone(), duration, lapses: Instant::now() + Duration::from_secs(duration.into()) });
                    self.send(answer(AppSession::StartPos { session_id: id, protocol_version: Some(version), duration: Some(duration) }));
                    if !self.associated {
                        self.associate();
                    }
                }
                Err(error) => {
                    // Refused as an AARQ is: the answer, then the connection closes.
                    self.send(answer(AppSession::StartNeg { error: error.into() }));
                    self.send(Out::Close);
                }
            },
            AppSession::ResetTimer { session_id, duration } => match &mut self.session {
                Some(s) if s.id == session_id => {
                    s.duration = grant(duration, s.duration);
                    s.lapses = Instant::now() + Duration::from_secs(s.duration.into());
                    let d = s.duration;
                    self.send(answer(AppSession::ResetTimerPos { duration: Some(d) }));
                }
                _ => self.send(answer(AppSession::ResetTimerNeg { error: "invalidSessionID".into() })),
            },
            AppSession::Stop { session_id } => match &self.session {
                Some(s) if s.id == session_id => {
                    self.shared.stats.send_modify(|s| s.releases += 1);
                    self.session = None;
                    self.send(answer(AppSession::StopPos));
                    self.send(Out::Close);
                }
                _ => self.send(answer(AppSession::StopNeg { error: "invalidSessionID".into() })),
            },
            // Answers and notices are the PBX's to send, not to receive.
            _ => self.shared.stats.send_modify(|s| s.unexpected_responses += 1),
        }
    }

    /// Check a `StartApplicationSession`: the login, then the protocol version. The version
    /// granted is the requested URI naming our edition (ours when none is requested).
    fn start_session(&self, start: &StartSession, xml: &SimXml) -> Result<String, &'static str> {
        let login_ok = match &start.login {
            Some(l) => self.login_ok(l.user.as_bytes(), &l.password),
            None => self.creds.is_none(),
        };
        if !login_ok {
            return Err("invalidApplicationInfo");
        }
        let ours = xml.protocol_version;
        if start.protocol_versions.is_empty() {
            return Ok(ours.namespace().to_owned());
        }
        start
            .protocol_versions
            .iter()
            .find(|v| crate::codec::xml::ProtocolVersion::from_namespace(v) == Some(ours))
            .cloned()
            .ok_or("requestedProtocolVersionNotSupported")
    }

    /// The session was not reset in time: the PBX says so and drops the link.
    fn session_lapsed(&mut self) {
        let session_id = self.session.take().map(|s| s.id);
        self.send(Out::Xml(XmlMessage::Session { invoke_id: None, msg: AppSession::Terminated { session_id, reason: "sessionTimerExpired".into() } }));
        self.send(Out::Close);
    }
}

/// Serve one connection's halves (plain TCP, or TLS after its handshake).
async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut rd: R, mut wr: W, shared: Arc<Shared>, switch: mpsc::UnboundedSender<Msg>, mut stop: watch::Receiver<bool>) {
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (dialect, framing, preamble, acse, creds, wrapping, xml) = {
        let c = lock(&shared.config);
        (c.dialect, c.framing, c.preamble, c.acse, c.credentials.clone(), c.phase2_results, c.xml.clone())
    };
    let wire = if framing.is_xml() { Wire::Xml { framing, version: xml.protocol_version } } else { Wire::Ber { dialect, wrapping } };
    let mut framer = Framer::new(framing);
    if preamble {
        framer = framer.expect_preamble(b'B');
    }
    let mut buf = BytesMut::with_capacity(4096);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let mut peer = Peer { conn, shared: shared.clone(), switch: switch.clone(), out: out_tx, creds, associated: false, session: None, last_nul_id: 0 };
    // BER without ACSE, or XML without a required session: served at once.
    let at_once = if framing.is_xml() { !xml.session } else { !acse };
    if at_once {
        peer.associate();
    }
    let mut frames_in = 0u64;
    let mut frames_out = 0u64;
    let mut held = Vec::new();
    let mut preamble_answered = !preamble;
    loop {
        if lock(&shared.faults).stall {
            tokio::select! {
                _ = tokio::time::sleep(STALL_POLL) => continue,
                _ = stop.changed() => break,
            }
        }
        let lapses = peer.session.as_ref().map(|s| s.lapses);
        tokio::select! {
            r = rd.read_buf(&mut buf) => {
                match r { Ok(0) | Err(_) => break, Ok(_) => {} }
                if !preamble_answered && !buf.is_empty() {
                    // Answer 'P' once the client's 'B' has arrived (the framer checks it).
                    if buf[0] == b'B' && wr.write_all(b"P").await.is_err() { break; }
                    preamble_answered = true;
                }
                let mut close = false;
                loop {
                    let frame = match framer.decode(&mut buf) {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(_) => { close = true; break; }
                    };
                    frames_in += 1;
                    if !framing.is_xml() {
                        trace!(conn, apdu = %for_log(&frame), "sim received");
                    }
                    shared.stats.send_modify(|s| s.frames_in += 1);
                    if lock(&shared.faults).drop_after_frames.is_some_and(|n| frames_in >= n) {
                        close = true;
                        break;
                    }
                    match wire {
                        Wire::Ber { dialect, .. } => if !peer.ber_frame(&frame, dialect) { close = true; break; },
                        Wire::Xml { framing, .. } => peer.xml_frame(&frame, framing, &xml),
                    }
                }
                if close { break; }
            }
            () = async { match lapses { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => peer.session_lapsed(),
            out = out_rx.recv() => {
                let Some(out) = out else { break };
                if matches!(out, Out::Close) { let _ = flush(&mut wr, &mut held).await; break; }
                let faults = lock(&shared.faults).clone();
                let mut batch = Vec::new();
                let mut next = Some(out);
                let mut closing = false;
                while let Some(msg) = next.take() {
                    let Some(content) = wire.encode(msg) else { continue };
                    let Ok(framed) = framing.frame(&content) else { continue };
                    match wire {
                        Wire::Ber { .. } => trace!(conn, apdu = %for_log(&content), "sim sent"),
                        // Names only: a document may carry a login or a context id.
                        Wire::Xml { .. } => trace!(conn, bytes = content.len(), "sim sent"),
                    }
                    frames_out += 1;
                    if faults.malformed_every.is_some_and(|n| n > 0 && frames_out.is_multiple_of(n))
                        && let Ok(bad) = framing.frame(&wire.malformed(&content))
                    {
                        batch.push(bad);
                    }
                    batch.push(framed);
                    // Like a real PBX's socket buffer, whatever is already queued goes out in
                    // the same write (up to 64 KiB), unless frames are to be split.
                    if !faults.split_frames && batch.iter().map(Bytes::len).sum::<usize>() < 65536 {
                        match out_rx.try_recv() {
                            Ok(Out::Close) => closing = true,
                            Ok(o) => next = Some(o),
                            Err(_) => {}
                        }
                    }
                }
                let n = batch.len() as u64;
                shared.stats.send_modify(|s| s.frames_out += n);
                let mut failed = false;
                if faults.split_frames {
                    'split: for framed in &batch {
                        for b in framed.iter() {
                            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() { failed = true; break 'split; }
                            tokio::task::yield_now().await;
                        }
                    }
                } else {
                    for framed in &batch {
                        held.extend_from_slice(framed);
                    }
                    // With the coalesce fault, frames wait until the switch has gone quiet.
                    if (!faults.coalesce || out_rx.is_empty()) && flush(&mut wr, &mut held).await.is_err() {
                        failed = true;
                    }
                }
                if failed { break; }
                if closing { let _ = flush(&mut wr, &mut held).await; break; }
            }
            _ = stop.changed() => break,
        }
    }
    if peer.associated {
        shared.stats.send_modify(|s| s.associated -= 1);
    }
    let _ = switch.send(Msg::Disconnected { conn });
    let _ = wr.shutdown().await;
}

async fn flush<W: AsyncWrite + Unpin>(wr: &mut W, held: &mut Vec<u8>) -> std::io::Result<()> {
    if held.is_empty() {
        return Ok(());
    }
    let r = wr.write_all(held).await;
    held.clear();
    r
}

/// The AARE for an AARQ: same context, accepted, or rejected-permanent with
/// authentication-failure.
fn aare(aarq: &Body, ok: bool) -> Body {
    let ctx = match aarq.get(FieldName::ApplicationContextName) {
        Some(Value::Oid(o)) => o.clone(),
        _ => Bytes::from_static(&[0x2B, 0x0C, 0x00, 0x81, 0x5A]),
    };
    Body::new()
        .with(FieldName::ProtocolVersion, Value::Raw(Bytes::from_static(&[0x80, 0x02, 0x07, 0x80])))
        .with(FieldName::ApplicationContextName, Value::Oid(ctx))
        .with(FieldName::Result, Value::Int(if ok { 0 } else { 1 }))
        .with(FieldName::ResultSourceDiagnostic, Value::Diagnostic { source: 1, value: if ok { 0 } else { 13 } })
}
