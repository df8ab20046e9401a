//! The `link_session` target: the PBX link session (`cstagate::link`) over real TCP on
//! 127.0.0.1 against a fake PBX that writes arbitrary bytes, interleaved with the gateway's
//! requests, monitors and dropped monitors. Included by `lib.rs` (and so by
//! `tests/fuzz_regressions.rs`).
//!
//! Input layout:
//! - byte 0, configuration: bit 0 framing (two-byte length or Siemens), bit 1 dialect (Phase III
//!   or Phase II), bit 2 the Alcatel preamble;
//! - then up to [`MAX_OPS`] operations, each an op byte (`% 8`) and its operands:
//!   0 `len, bytes`: raw bytes written to the socket (framing errors included);
//!   1 `len, bytes`: one APDU, framed by the fake PBX with the link's framing;
//!   2 `k, kind`: answer the `k`-th invoke of the link not answered yet (result, with a
//!     crossRefIdentifier for a MonitorStart; universalFailure; reject; or a result twice);
//!   3 `k`: the gateway sends a request (MakeCall, a MonitorStop with a made-up reference, or a
//!     request that does not encode in Phase II);
//!   4 `k`: the gateway subscribes to a device's events (`monitor`, one of three devices);
//!   5 `k`: the gateway drops one of its monitors;
//!   6 `k`: time passes (0, 10 ms, half the request timeout, more than the request timeout);
//!   7: the PBX sends a SystemStatus (keep-alive) invoke.
//!
//! Each input runs in one current-thread tokio runtime kept across inputs: a listener, a [`Link`]
//! with short timeouts, the AARQ read and an AARE accepting it (real time, a few hundred
//! microseconds), then the operations in **paused** time: after each one the fake PBX waits until the runtime is idle
//! (a 1 ms virtual sleep: the clock only moves when every task is blocked), so the link has read
//! and handled all that was written. The fake PBX reads all the link writes (framed and decoded
//! with the codec) and keeps the link's invoke ids. It models what the link must make of what it
//! was sent: the same framer over the same bytes, each frame decoded; a framing error, an RLRQ or
//! an ABRT ends the connection, everything else must not.
//!
//! Checks:
//! 1. nothing panics (the link task's panics are caught by tokio: a link task that ended while the
//!    handle is alive is reported as one);
//! 2. every request and monitor future of the gateway completes (with a result or an error)
//!    within a bounded virtual time (3 request timeouts after the last operation): nothing hangs;
//! 3. if the model says the connection must have ended: the link leaves `Up` within a bounded
//!    virtual time, and a framing error is counted in `decode_errors`;
//! 4. otherwise the link is still `Up` on its first connection; and if the bytes written end on
//!    a frame boundary: once every invoke of the link has passed its deadline, a (late) result for
//!    each invoke it sent that was never answered is counted as an unexpected response, one each
//!    (the invoke table forgot them all: it does not grow without bound), and a new request gets
//!    its correct result (invoke id read from the wire) as `Ok`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cstagate::codec::body::{FieldName, Value};
use cstagate::codec::apdu::ErrorCategory;
use cstagate::codec::{Apdu, Body, DeviceId, Dialect, Framer, Framing, Op, Operation, RejectProblem};
use cstagate::config::LinkProfile;
use cstagate::link::{Link, LinkState, Monitor, RequestError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

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

/// An invoke the link sent, as the fake PBX read it.
#[derive(Debug, Clone)]
struct Seen {
    id: i64,
    op: Option<Operation>,
}

#[derive(Default)]
struct Wire {
    invokes: Vec<Seen>,
    /// Bytes that did not frame or decode (the link must always write well-formed APDUs).
    garbage: Option<String>,
}

/// The fake PBX's reading side: frames and decodes all the link writes.
async fn reader(mut rd: tokio::net::tcp::OwnedReadHalf, framing: Framing, dialect: Dialect, preamble: bool, wire: Arc<Mutex<Wire>>) {
    let mut framer = Framer::new(framing);
    if preamble {
        framer = framer.expect_preamble(b'B');
    }
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        loop {
            match framer.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let mut w = wire.lock().unwrap_or_else(|e| e.into_inner());
                    match Apdu::decode(&frame, dialect) {
                        Ok(Apdu::Invoke(inv)) => {
                            let op = match inv.op {
                                Op::Known(o) => Some(o),
                                _ => None,
                            };
                            if let Some(id) = inv.invoke_id {
                                w.invokes.push(Seen { id, op });
                            }
                        }
                        Ok(_) => {}
                        Err(e) => w.garbage = Some(format!("the link wrote an undecodable APDU: {e}")),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    wire.lock().unwrap_or_else(|e| e.into_inner()).garbage = Some(format!("the link's stream does not frame: {e}"));
                    return;
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// What the link must make of the bytes the fake PBX wrote: the same framer, each frame decoded.
struct Model {
    framer: Framer,
    buf: BytesMut,
    dialect: Dialect,
    /// Why the connection must have ended, if it must.
    ended: Option<String>,
    framing_error: bool,
    /// Invoke ids of the link answered (result, error or reject) by what was written.
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
                        self.ended = Some("RLRQ".into());
                        return;
                    }
                    Ok(Apdu::Abrt(_)) => {
                        self.ended = Some("ABRT".into());
                        return;
                    }
                    Ok(Apdu::Result(r)) => self.answered.extend(r.invoke_id),
                    Ok(Apdu::Error(e)) => self.answered.extend(e.invoke_id),
                    Ok(Apdu::Reject(r)) => self.answered.extend(r.invoke_id),
                    _ => {}
                },
                Ok(None) => return,
                Err(e) => {
                    self.ended = Some(format!("framing error: {e}"));
                    self.framing_error = true;
                    return;
                }
            }
        }
    }
    /// The bytes written end on a frame boundary.
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

/// The `link_session` target (see the module docs).
pub fn link_session(data: &[u8]) {
    let Some((&cfg, rest)) = data.split_first() else { return };
    // One runtime for all inputs (building one per input costs more than a short session).
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("tokio runtime: {e}")));
    rt.block_on(session(cfg, rest));
}

/// Time is paused while this lives (also when an oracle check panics, so that the runtime is
/// left in real time for the next input).
struct Paused;

impl Paused {
    fn start() -> Paused {
        tokio::time::pause();
        Paused
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        tokio::time::resume();
    }
}

async fn session(cfg: u8, ops: &[u8]) {
    let framing = if cfg & 1 == 0 { Framing::TwoByteLength } else { Framing::Siemens };
    let dialect = if cfg & 2 == 0 { Dialect::Phase3 } else { Dialect::Phase2 };
    let preamble = cfg & 4 != 0;

    // Set-up, in real time: connect, AARQ, AARE, up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    let profile = LinkProfile {
        preamble,
        request_timeout: REQUEST_TIMEOUT,
        connect_timeout: Duration::from_secs(2),
        // Long enough never to fire within one input: the model stays exact.
        keepalive: Duration::from_secs(3600),
        max_requests_per_second: 1000.0,
        reconnect_min: Duration::from_millis(5),
        reconnect_max: Duration::from_millis(20),
        ..LinkProfile::new("fuzz", &addr.to_string(), framing, dialect)
    };
    let link = Link::spawn(profile);
    let (sock, _) = timeout(Duration::from_secs(5), listener.accept()).await.unwrap_or_else(|_| panic!("the link did not connect")).unwrap_or_else(|e| panic!("accept: {e}"));
    // Reconnects are refused from now on: a lost link goes down and stays down (fails fast).
    drop(listener);
    let _ = sock.set_nodelay(true);
    let (rd, mut wr) = sock.into_split();
    let wire = Arc::new(Mutex::new(Wire::default()));
    let reader_task = tokio::spawn(reader(rd, framing, dialect, preamble, wire.clone()));
    let frame = |a: &Apdu| -> Vec<u8> {
        let enc = a.to_vec(dialect).unwrap_or_else(|e| panic!("the fake PBX's APDU does not encode: {e}"));
        framing.frame(&enc).unwrap_or_else(|e| panic!("framing: {e}")).to_vec()
    };
    let mut hello = Vec::new();
    if preamble {
        hello.push(b'P');
    }
    hello.extend(frame(&Apdu::Aare(aare())));
    wr.write_all(&hello).await.unwrap_or_else(|e| panic!("write AARE: {e}"));
    match timeout(Duration::from_secs(5), link.wait_for(|s| *s == LinkState::Up)).await {
        Ok(LinkState::Up) => {}
        other => panic!("the link did not come up: {other:?}"),
    }
    // The AARQ was read before the AARE could be written: it is the first invoke-less APDU.

    // The operations, in paused time.
    let _paused = Paused::start();
    let settle = || tokio::time::sleep(Duration::from_millis(1));
    let mut model = Model { framer: Framer::new(framing), buf: BytesMut::new(), dialect, ended: None, framing_error: false, answered: Vec::new() };
    let mut input = Input { data: ops, pos: 0 };
    let mut requests: Vec<tokio::task::JoinHandle<Result<Body, RequestError>>> = Vec::new();
    let mut monitor_tasks: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let monitors: Arc<Mutex<Vec<Monitor>>> = Arc::new(Mutex::new(Vec::new()));
    let mut write_ok = true;
    let mut next_pbx_invoke = 1i64;
    let mut xref = 0u8;
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
                let open: Vec<Seen> = {
                    let w = wire.lock().unwrap_or_else(|e| e.into_inner());
                    w.invokes.iter().filter(|s| !model.answered.contains(&s.id)).cloned().collect()
                };
                if !open.is_empty() {
                    let s = &open[k % open.len()];
                    let apdu = match kind % 4 {
                        0 | 3 => {
                            let body = if s.op == Some(Operation::MonitorStart) {
                                xref = xref.wrapping_add(1);
                                if kind & 0x10 != 0 { Body::null() } else { Body::new().with(FieldName::CrossRefIdentifier, Value::Octets(Bytes::from(vec![xref]))) }
                            } else {
                                Body::null()
                            };
                            Apdu::result(s.id, s.op.unwrap_or(Operation::MakeCall), body)
                        }
                        1 => Apdu::universal_failure(s.id, ErrorCategory::StateIncompatibility, Some(2)),
                        _ => Apdu::reject(Some(s.id), RejectProblem::Invoke(1)),
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
                let l = link.clone();
                requests.push(tokio::spawn(async move { l.request(op, body).await }));
            }
            4 => {
                let k = usize::from(input.byte().unwrap_or(0));
                let (l, m) = (link.clone(), monitors.clone());
                monitor_tasks.push(tokio::spawn(async move {
                    if let Ok(mon) = l.monitor(DEVICES[k % DEVICES.len()]).await {
                        m.lock().unwrap_or_else(|e| e.into_inner()).push(mon);
                    }
                }));
            }
            5 => {
                let k = usize::from(input.byte().unwrap_or(0));
                let mut m = monitors.lock().unwrap_or_else(|e| e.into_inner());
                if !m.is_empty() {
                    let i = k % m.len();
                    drop(m.swap_remove(i));
                }
            }
            6 => {
                let d = match input.byte().unwrap_or(0) % 4 {
                    0 => Duration::ZERO,
                    1 => Duration::from_millis(10),
                    2 => REQUEST_TIMEOUT / 2,
                    _ => REQUEST_TIMEOUT + Duration::from_millis(1),
                };
                tokio::time::sleep(d).await;
            }
            _ => {
                let body = Body::new().with(FieldName::SystemStatus, Value::Int(2));
                out = frame(&Apdu::invoke(next_pbx_invoke, Operation::SystemStatus, body));
                next_pbx_invoke += 1;
            }
        }
        if !out.is_empty() && write_ok {
            model.feed(&out);
            if wr.write_all(&out).await.is_err() {
                write_ok = false;
            }
        }
        settle().await;
    }

    // Every future of the gateway completes within a bounded (virtual) time.
    let bound = REQUEST_TIMEOUT * 3;
    for h in requests.drain(..) {
        count(5);
        match timeout(bound, h).await {
            Ok(Ok(r)) => {
                if r.is_ok() {
                    count(4);
                }
            }
            Ok(Err(e)) => panic!("a request task failed: {e}"),
            Err(_) => panic!("a request did not complete within {bound:?} (link {:?})", link.state()),
        }
    }
    for h in monitor_tasks.drain(..) {
        match timeout(bound, h).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("a monitor task failed: {e}"),
            Err(_) => panic!("a monitor subscription did not complete within {bound:?} (link {:?})", link.state()),
        }
    }
    if let Some(g) = wire.lock().unwrap_or_else(|e| e.into_inner()).garbage.clone() {
        panic!("{g}");
    }

    let stats = link.stats();
    if let Some(why) = &model.ended {
        // The connection must end: the link leaves Up (and, the PBX refusing reconnects, stays
        // away from it), a framing error counted.
        match timeout(bound, link.wait_for(|s| *s != LinkState::Up)).await {
            Ok(LinkState::Closed) => panic!("the link task ended (panicked?) after {why}"),
            Ok(_) => {}
            Err(_) => panic!("the link is still up after {why}"),
        }
        count(if model.framing_error { 0 } else { 1 });
        if model.framing_error {
            assert!(link.stats().decode_errors >= 1, "framing error not counted: {:?}", link.stats());
        }
    } else {
        let state = link.state();
        assert_eq!(state, LinkState::Up, "the link went down though nothing the PBX sent ends a connection ({stats:?})");
        assert_eq!((stats.connects, stats.reconnects), (1, 0), "the link reconnected though nothing the PBX sent ends a connection");
        count(if model.clean() && write_ok { 2 } else { 3 });
        if model.clean() && write_ok {
            // Let every invoke of the link pass its deadline, then answer all the unanswered
            // ones: each must be unexpected (the table forgot it).
            tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
            let stale: Vec<i64> = {
                let w = wire.lock().unwrap_or_else(|e| e.into_inner());
                let mut v: Vec<i64> = w.invokes.iter().map(|s| s.id).filter(|id| !model.answered.contains(id)).collect();
                v.sort_unstable();
                v.dedup();
                v
            };
            let before = link.stats();
            let mut out = Vec::new();
            for id in &stale {
                out.extend(frame(&Apdu::result(*id, Operation::MakeCall, Body::null())));
            }
            let seen_before = wire.lock().unwrap_or_else(|e| e.into_inner()).invokes.len();
            wr.write_all(&out).await.unwrap_or_else(|e| panic!("write: {e}"));
            // A fresh request: read its invoke id from the wire and answer it.
            let l = link.clone();
            let req = tokio::spawn(async move { l.request(Operation::MakeCall, make_call()).await });
            let mut answered = false;
            for _ in 0..100 {
                settle().await;
                let new: Option<i64> = {
                    let w = wire.lock().unwrap_or_else(|e| e.into_inner());
                    w.invokes[seen_before..].iter().find(|s| s.op == Some(Operation::MakeCall)).map(|s| s.id)
                };
                if let Some(id) = new {
                    wr.write_all(&frame(&Apdu::result(id, Operation::MakeCall, Body::null()))).await.unwrap_or_else(|e| panic!("write: {e}"));
                    answered = true;
                    break;
                }
            }
            assert!(answered, "the link did not send the new request (state {:?})", link.state());
            match timeout(bound, req).await {
                Ok(Ok(Ok(_))) => {}
                other => panic!("a well-formed result was not delivered: {other:?} (stats {:?})", link.stats()),
            }
            let after = link.stats();
            assert_eq!(
                after.unexpected_responses - before.unexpected_responses,
                stale.len() as u64,
                "late results for the {} expired invokes {stale:?}: not each unexpected (the invoke table kept some)",
                stale.len()
            );
            assert_eq!(link.state(), LinkState::Up);
        }
    }
    // Leave nothing running into the next input: the link task ends once every handle is gone.
    drop(monitors);
    let mut state = link.watch_state();
    drop(link);
    match timeout(bound, state.wait_for(|s| *s == LinkState::Closed)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("the link task ended without closing (panicked?)"),
        Err(_) => panic!("the link task did not end once its handles were dropped"),
    }
    drop(wr);
    reader_task.abort();
}
