//! Hostile input from the PBX side, over real sockets: the real gateway (store, API, PBX link)
//! talks to the simulated PBX through a man-in-the-middle written here that speaks real bytes
//! (frames and APDUs built with the crate's codec) and injects, holds or stops reading:
//! length fields past the frame and frames up to and over the frame cap, frames that never
//! complete, deeply nested values, PBX invoke ids colliding with the gateway's outstanding ones,
//! results and errors for invokes never sent, a reject storm, event floods for unknown and known
//! cross-reference ids, and a peer that never reads.
//!
//! What it proves, for each: the outcome the link's documentation defines — either the link
//! stays up with the input counted in `Link::stats()` (and answered with a ROSE Reject where
//! ROSE says so), or it drops and reconnects — memory stays within the documented bounds
//! (command queue, subscriber buffer), monitors on good devices keep working afterwards, and the
//! store does not change (audit log and bindings through the API).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cstagate::codec::apdu::ErrorCategory;
use cstagate::codec::body::{FieldName as F, Value};
use cstagate::codec::framing::DEFAULT_MAX_FRAME;
use cstagate::codec::{Apdu, Argument, Body, ConnectionId, DeviceId, LocalDevice, Dialect, EventKind, EventReport, Framer, Framing, Op, Operation, RejectProblem};
use cstagate::testkit::{Http, Tokens};
use cstagate::link::{Link, LinkState, Monitor, MonitorEvent, RequestError, COMMAND_QUEUE, MAX_QUEUED_REQUESTS, SUBSCRIBER_BUFFER};
use cstagate::sim::{Behaviour, SimConfig, SimPbx};
use futures_util::FutureExt;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Generous bound so a broken feature fails instead of hanging; never reached when it works.
const LIMIT: Duration = Duration::from_secs(20);
const FRAMING: Framing = Framing::TwoByteLength;
const DIALECT: Dialect = Dialect::Phase3;

// ---------------------------------------------------------------------------------------------
// The man in the middle.

#[derive(Default)]
struct Seen {
    /// Connections accepted from the gateway.
    conns: u64,
    /// Stop reading what the gateway sends on the current connection.
    stop_reading: bool,
    /// Hold the gateway's next invoke of this operation instead of passing it on.
    hold: Option<Operation>,
    held: Option<(i64, Bytes)>,
    /// Cross-reference ids the PBX handed out (MonitorStart results), in order.
    xrefs: Vec<Bytes>,
    /// Event reports the PBX sent.
    events: Vec<EventReport>,
    /// Invoke ids of invokes injected towards the gateway: its answers to them stop here.
    injected: HashSet<i64>,
    /// Every APDU the gateway sent.
    from_gw: Vec<Apdu>,
}

struct Conn {
    to_gw: mpsc::UnboundedSender<Bytes>,
    to_sim: mpsc::UnboundedSender<Bytes>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[derive(Clone)]
struct Proxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
    version: Arc<watch::Sender<u64>>,
    current: Arc<Mutex<Option<Conn>>>,
}

impl Proxy {
    async fn start(sim: SocketAddr) -> Proxy {
        // A small receive buffer, so that a gateway whose peer stops reading blocks soon.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let p = Proxy { addr: listener.local_addr().unwrap(), seen: Arc::default(), version: Arc::new(watch::channel(0).0), current: Arc::default() };
        let p2 = p.clone();
        tokio::spawn(async move {
            while let Ok((gw, _)) = listener.accept().await {
                let _ = gw.set_nodelay(true);
                let Ok(pbx) = TcpStream::connect(sim).await else { continue };
                let _ = pbx.set_nodelay(true);
                // The new peer replaces the old one entirely.
                p2.update(|s| {
                    s.conns += 1;
                    s.stop_reading = false;
                });
                let conn = p2.serve(gw, pbx);
                *p2.current.lock().unwrap() = Some(conn);
            }
        });
        p
    }

    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap());
        self.version.send_modify(|v| *v += 1);
    }

    /// Wait until `f` finds something.
    async fn wait<T>(&self, what: &str, f: impl Fn(&Seen) -> Option<T>) -> T {
        let mut rx = self.version.subscribe();
        let r = timeout(LIMIT, async {
            loop {
                if let Some(v) = f(&self.seen.lock().unwrap()) {
                    return v;
                }
                rx.changed().await.unwrap();
            }
        })
        .await;
        r.unwrap_or_else(|_| panic!("the proxy never saw {what}"))
    }

    fn serve(&self, gw: TcpStream, pbx: TcpStream) -> Conn {
        let (mut gw_rd, mut gw_wr) = gw.into_split();
        let (mut pbx_rd, mut pbx_wr) = pbx.into_split();
        let (to_gw, mut to_gw_rx) = mpsc::unbounded_channel::<Bytes>();
        let (to_sim, mut to_sim_rx) = mpsc::unbounded_channel::<Bytes>();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(async move {
            while let Some(b) = to_gw_rx.recv().await {
                if gw_wr.write_all(&b).await.is_err() {
                    return;
                }
            }
        }));
        tasks.push(tokio::spawn(async move {
            while let Some(b) = to_sim_rx.recv().await {
                if pbx_wr.write_all(&b).await.is_err() {
                    return;
                }
            }
        }));
        // PBX → gateway: frame by frame (so that injections fall between frames), noting the
        // cross-reference ids handed out.
        let (me, to_gw2) = (self.clone(), to_gw.clone());
        tasks.push(tokio::spawn(async move {
            let mut framer = Framer::new(FRAMING);
            let mut buf = BytesMut::new();
            loop {
                while let Ok(Some(frame)) = framer.decode(&mut buf) {
                    match Apdu::decode(&frame, DIALECT) {
                        Ok(Apdu::Result(r)) => {
                            if let Some((Op::Known(Operation::MonitorStart), Argument::Body(b))) = &r.result {
                                if let Some(x) = b.octets(F::CrossRefIdentifier) {
                                    let x = x.clone();
                                    me.update(|s| s.xrefs.push(x));
                                }
                            }
                        }
                        Ok(Apdu::Invoke(inv)) => {
                            if let Argument::Event(ev) = inv.argument {
                                me.update(|s| s.events.push(ev));
                            }
                        }
                        _ => {}
                    }
                    let _ = to_gw2.send(FRAMING.frame(&frame).unwrap());
                }
                match pbx_rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }));
        // Gateway → PBX: recorded; answers to injected invokes stop here; one invoke may be held.
        let (me, to_sim2) = (self.clone(), to_sim.clone());
        tasks.push(tokio::spawn(async move {
            let mut framer = Framer::new(FRAMING);
            let mut buf = BytesMut::new();
            loop {
                while let Ok(Some(frame)) = framer.decode(&mut buf) {
                    let framed = FRAMING.frame(&frame).unwrap();
                    let apdu = Apdu::decode(&frame, DIALECT).expect("the gateway sends well-formed APDUs");
                    let mut forward = true;
                    me.update(|s| {
                        match &apdu {
                            Apdu::Invoke(inv) if s.hold.is_some() && inv.op == Op::Known(s.hold.unwrap()) => {
                                s.hold = None;
                                s.held = Some((inv.invoke_id.unwrap(), framed.clone()));
                                forward = false;
                            }
                            Apdu::Result(_) | Apdu::Error(_) | Apdu::Reject(_) => {
                                forward = apdu.invoke_id().is_some_and(|id| !s.injected.contains(&id));
                            }
                            _ => {}
                        }
                        s.from_gw.push(apdu.clone());
                    });
                    if forward {
                        let _ = to_sim2.send(framed);
                    }
                }
                if me.seen.lock().unwrap().stop_reading {
                    // Never read again: the gateway's writes pile up in the kernel, then block.
                    std::future::pending::<()>().await;
                }
                match gw_rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }));
        Conn { to_gw, to_sim, tasks }
    }

    /// Raw bytes to the gateway, after the frames already passed on.
    fn inject_raw(&self, b: impl Into<Bytes>) {
        let cur = self.current.lock().unwrap();
        cur.as_ref().expect("a connection").to_gw.send(b.into()).unwrap();
    }

    /// Each byte string framed, in one write.
    fn inject_frames<B: AsRef<[u8]>>(&self, apdus: &[B]) {
        let mut out = Vec::new();
        for a in apdus {
            out.extend_from_slice(&FRAMING.frame(a.as_ref()).unwrap());
        }
        self.inject_raw(out);
    }

    /// APDUs encoded with the codec, framed, in one write.
    fn inject(&self, apdus: &[Apdu]) {
        let ids: Vec<i64> = apdus.iter().filter(|a| matches!(a, Apdu::Invoke(_))).filter_map(Apdu::invoke_id).collect();
        self.update(|s| s.injected.extend(ids));
        let raw: Vec<Vec<u8>> = apdus.iter().map(|a| a.to_vec(DIALECT).unwrap()).collect();
        self.inject_frames(&raw);
    }

    fn release_held(&self) {
        let (_, b) = self.seen.lock().unwrap().held.take().expect("an invoke held");
        self.current.lock().unwrap().as_ref().unwrap().to_sim.send(b).unwrap();
    }

    fn conns(&self) -> u64 {
        self.seen.lock().unwrap().conns
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway behind it.

struct Env {
    _sim: SimPbx,
    proxy: Proxy,
    _running: cstagate::server::Running,
    http: Http,
    tokens: Tokens,
    link: Link,
    /// A subscriber on a good device, 2005.
    good: Monitor,
}

async fn env() -> Env {
    let mut cfg = SimConfig::phase3(&["2005", "2006", "2007"]);
    // The PBX's own keep-alives would blur the counts.
    cfg.keepalive = None;
    for e in &mut cfg.extensions {
        e.behaviour = Behaviour::Answer { after: Duration::from_millis(5) };
    }
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(sim.addr()).await;
    let dir = std::env::temp_dir().join(format!("cstagate-hostile-csta-{}", cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\n[[tenant]]\nid = \"acme\"\ntoken_env = \"UNUSED\"\n[[tenant]]\nid = \"globex\"\ntoken_env = \"UNUSED\"\n\n\
         [[pbx]]\nid = \"paris\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"acme\"\nivr_number = \"0800100200\"\nextensions = [\"2005-2007\"]\n\
         keepalive = \"1s\"\nrequest_timeout = \"1s\"\nconnect_timeout = \"2s\"\nreconnect_min = \"300ms\"\nreconnect_max = \"400ms\"\nmax_requests_per_second = 200\n",
        dir.join("gw.db").display(),
        proxy.addr
    );
    let config = cstagate::config::Config::parse(&toml).unwrap();
    let tokens = Tokens::random();
    let running = cstagate::server::start(&config, tokens.secrets()).await.unwrap();
    let link = running.gateway.links()["paris"].clone();
    timeout(LIMIT, link.wait_for(|s| *s == LinkState::Up)).await.expect("link up");
    let good = link.monitor("2005").await.unwrap();
    let http = Http::new(&format!("http://{}", running.addr));
    let env = Env { _sim: sim, proxy, _running: running, http, tokens, link, good };
    store_is_empty(&env).await;
    env
}

/// Nothing from the PBX side reaches the store: no audit record, no binding.
async fn store_is_empty(e: &Env) {
    let (s, audit) = e.http.json("GET", "/v1/audit?limit=10000", &e.tokens.admin, None).await.unwrap();
    assert_eq!((s, audit["records"].as_array().map(Vec::len)), (200, Some(0)), "{audit}");
    for ext in ["2005", "2006", "2007"] {
        let (s, _) = e.http.json("GET", &format!("/v1/bindings/paris/{ext}"), &e.tokens.admin, None).await.unwrap();
        assert_eq!(s, 404);
    }
}

fn make_call(from: &str, to: &str) -> Body {
    Body::new().with(F::CallingDevice, Value::DeviceId(DeviceId::dialing(from).unwrap())).with(F::CalledDirectoryNumber, Value::DeviceId(DeviceId::dialing(to).unwrap()))
}

/// The good device still works: a MakeCall is answered and its events reach the subscriber.
/// Its result comes after everything injected before it, so it is also the barrier after which
/// every injected frame has been handled.
async fn good_device_works(e: &mut Env) {
    let r = timeout(LIMIT, e.link.request(Operation::MakeCall, make_call("2005", "2007"))).await.expect("MakeCall answered in time");
    let call = match r {
        Ok(body) => body.connection(F::CallingDevice).and_then(|c| c.call.clone()).expect("a call id"),
        Err(err) => panic!("MakeCall after hostile input: {err:?}"),
    };
    loop {
        match timeout(LIMIT, e.good.next()).await.expect("an event in time").expect("link alive") {
            MonitorEvent::Event(ev) if ev.event.kind() == Some(EventKind::ServiceInitiated) || ev.event.kind() == Some(EventKind::Originated) => break,
            MonitorEvent::Event(_) | MonitorEvent::LinkLost | MonitorEvent::LinkRestored => {}
            MonitorEvent::MonitorFailed(err) => panic!("monitor failed: {err}"),
        }
    }
    // Hang up, so that the phone is free for the next check.
    let conn = ConnectionId { call: Some(call), device: Some(LocalDevice::Static(DeviceId::dialing("2005").unwrap())) };
    let r = timeout(LIMIT, e.link.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(conn)))).await.expect("ClearConnection answered");
    assert_eq!(r, Ok(Body::null()), "the PBX cleared the call");
}

/// The link drops (with a reason containing `why`), the monitor sees it lost and restored,
/// and the proxy got a new connection.
async fn drops_and_reconnects(e: &mut Env, conns_before: u64, why: &str, state: &mut watch::Receiver<LinkState>) {
    let down = timeout(LIMIT, state.wait_for(|s| matches!(s, LinkState::Down { .. }))).await.expect("the link drops").unwrap().clone();
    let LinkState::Down { reason } = down else { unreachable!() };
    assert!(reason.contains(why), "dropped for {reason:?}, expected {why:?}");
    timeout(LIMIT, e.link.wait_for(|s| *s == LinkState::Up)).await.expect("the link comes back");
    e.proxy.wait("a new connection", |s| (s.conns > conns_before).then_some(())).await;
    let mut notices = Vec::new();
    while notices.last() != Some(&"restored") {
        match timeout(LIMIT, e.good.next()).await.expect("link notices").expect("link task alive") {
            MonitorEvent::LinkLost => notices.push("lost"),
            MonitorEvent::LinkRestored => notices.push("restored"),
            MonitorEvent::Event(_) => {}
            MonitorEvent::MonitorFailed(err) => panic!("monitor not restored: {err}"),
        }
    }
    assert_eq!(notices, ["lost", "restored"]);
}

/// An event report as the PBX sends them (one it really sent), for another cross-reference id.
async fn event_for(e: &mut Env, xref: &[u8]) -> EventReport {
    if e.proxy.seen.lock().unwrap().events.is_empty() {
        good_device_works(e).await;
    }
    let mut ev = e.proxy.seen.lock().unwrap().events[0].clone();
    ev.xref = Bytes::copy_from_slice(xref);
    ev
}

/// BER length in definite form.
fn ber_len(n: usize, out: &mut Vec<u8>) {
    if n < 128 {
        out.push(n as u8);
    } else {
        let b = (n as u32).to_be_bytes();
        let skip = b.iter().take_while(|x| **x == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&b[skip..]);
    }
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    ber_len(content.len(), &mut v);
    v.extend_from_slice(content);
    v
}

/// A ROSE invoke (id 1, MakeCall) whose argument is `depth` nested SEQUENCEs in definite form.
fn nested_definite(depth: usize) -> Vec<u8> {
    let mut inner = vec![0x05, 0x00];
    for _ in 0..depth {
        inner = tlv(0x30, &inner);
    }
    tlv(0xA1, &[&[0x02, 0x01, 0x01, 0x02, 0x01, 0x0A][..], &inner].concat())
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_apdus_are_rejected_counted_and_the_link_stays_up() {
    let mut e = env().await;
    let before = e.link.stats();
    let mut at_cap = vec![0xA1, 0x82];
    at_cap.extend_from_slice(&((DEFAULT_MAX_FRAME - 4) as u16).to_be_bytes());
    at_cap.extend(std::iter::repeat_n(0x04, DEFAULT_MAX_FRAME - 4));
    assert_eq!(at_cap.len(), DEFAULT_MAX_FRAME);
    let mut deep_indefinite = vec![0xA1, 0x80, 0x02, 0x01, 0x01, 0x02, 0x01, 0x0A];
    deep_indefinite.extend(std::iter::repeat_n([0x30, 0x80], 4000).flatten());
    deep_indefinite.extend(std::iter::repeat_n(0x00, 2 * 4000 + 2));
    assert!(deep_indefinite.len() <= DEFAULT_MAX_FRAME);
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("outer length past the frame", vec![0xA1, 0x10, 0x02, 0x01, 0x01]),
        ("inner length past the frame", vec![0xA1, 0x05, 0x02, 0x01, 0x01, 0x30, 0x7F]),
        ("length of 4 GiB", vec![0xA1, 0x84, 0xFF, 0xFF, 0xFF, 0xFF, 0x02, 0x01, 0x01]),
        ("nine length octets", vec![0xA1, 0x89, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]),
        ("length octets missing", vec![0xA1, 0x82, 0x01]),
        ("indefinite length never ended", vec![0xA1, 0x80, 0x02, 0x01, 0x01]),
        ("high tag number never ended", vec![0x1F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]),
        ("constructed INTEGER invoke id", vec![0xA1, 0x05, 0x22, 0x03, 0x02, 0x01, 0x01]),
        ("33 nested SEQUENCEs", nested_definite(33)),
        ("200 nested SEQUENCEs", nested_definite(200)),
        ("4000 nested indefinite SEQUENCEs", deep_indefinite),
        ("a frame of exactly the cap", at_cap),
        ("text", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("one byte", vec![0xA1]),
    ];
    let n = bad.len() as u64;
    e.proxy.inject_frames(&bad.iter().map(|(_, b)| b.clone()).collect::<Vec<_>>());
    good_device_works(&mut e).await;
    let after = e.link.stats();
    assert_eq!(after.decode_errors - before.decode_errors, n, "each undecodable APDU is counted once: {:?}", bad.iter().map(|(w, _)| w).collect::<Vec<_>>());
    assert_eq!(after.rejects_sent - before.rejects_sent, n, "each is answered with a ROSE Reject");
    assert_eq!((after.connects, after.reconnects), (before.connects, before.reconnects), "the link stayed up");
    // The Rejects are X.880 general problems (badly structured APDU), without an invoke id.
    let rejects = e.proxy.seen.lock().unwrap().from_gw.iter().filter(|a| matches!(a, Apdu::Reject(r) if r.invoke_id.is_none() && r.problem == RejectProblem::General(2))).count();
    assert_eq!(rejects as u64, n);
    assert_eq!(e.link.state(), LinkState::Up);
    store_is_empty(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_over_the_cap_or_never_completed_drop_the_link_which_recovers() {
    let mut e = env().await;
    // A frame header announcing one byte more than the cap, then the largest 2-byte length: the
    // stream cannot be resynchronised, so the link drops at once, before the body arrives.
    for announced in [DEFAULT_MAX_FRAME + 1, 0xFFFF] {
        let conns = e.proxy.conns();
        let mut state = e.link.watch_state();
        let reconnects = e.link.stats().reconnects;
        e.proxy.inject_raw((announced as u16).to_be_bytes().to_vec());
        drops_and_reconnects(&mut e, conns, "framing", &mut state).await;
        assert_eq!(e.link.stats().reconnects, reconnects + 1);
        good_device_works(&mut e).await;
    }
    // A frame of exactly the cap announced, 100 bytes of it sent, then one byte every 200 ms for
    // ever: bytes keep arriving, but no frame completes, and the keep-alive declares the peer
    // dead within two periods (1 s each here).
    let conns = e.proxy.conns();
    let mut state = e.link.watch_state();
    let mut partial = (DEFAULT_MAX_FRAME as u16).to_be_bytes().to_vec();
    partial.extend([0xA1, 0x82, 0x3F, 0xFC]);
    partial.extend([0x04; 96]);
    e.proxy.inject_raw(partial);
    let to_gw = e.proxy.current.lock().unwrap().as_ref().unwrap().to_gw.clone();
    let trickle = tokio::spawn(async move {
        // The hostile peer's own pace, not a synchronisation: it stops when its connection goes.
        while to_gw.send(Bytes::from_static(&[0x04])).is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let t0 = tokio::time::Instant::now();
    drops_and_reconnects(&mut e, conns, "keep-alive", &mut state).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "dead peer detected in {:?}", t0.elapsed());
    trickle.abort();
    good_device_works(&mut e).await;
    store_is_empty(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_to_invokes_never_sent_and_a_reject_storm_are_counted_and_the_link_stays_up() {
    let mut e = env().await;
    let before = e.link.stats();
    let frames_out = before.frames_out;
    let mut apdus = Vec::new();
    for id in 20_000..20_100 {
        apdus.push(Apdu::result(id, Operation::MakeCall, Body::null()));
        apdus.push(Apdu::universal_failure(id + 1000, ErrorCategory::Operation, Some(3)));
    }
    e.proxy.inject(&apdus);
    // The storm: 10,000 rejects, half naming invokes we never sent, half without an id.
    let storm: Vec<Apdu> = (0..10_000).map(|i| Apdu::reject(if i % 2 == 0 { Some(25_000 + i) } else { None }, RejectProblem::Invoke(1))).collect();
    for chunk in storm.chunks(1000) {
        e.proxy.inject(chunk);
    }
    good_device_works(&mut e).await;
    let after = e.link.stats();
    assert_eq!(after.unexpected_responses - before.unexpected_responses, 200);
    assert_eq!(after.rejects_received - before.rejects_received, 10_000);
    assert_eq!((after.connects, after.reconnects, after.decode_errors), (before.connects, before.reconnects, before.decode_errors));
    // Nothing is sent back for any of them (no amplification): only the barrier's own traffic.
    assert!(after.frames_out - frames_out <= 3, "{} frames sent", after.frames_out - frames_out);
    assert_eq!(e.link.state(), LinkState::Up);
    store_is_empty(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_invokes_reusing_our_outstanding_invoke_id_do_not_answer_our_request() {
    let mut e = env().await;
    let template = event_for(&mut e, &[0xDE, 0xAD]).await;
    let before = e.link.stats();
    // Our MakeCall is outstanding (held in the middle): its invoke id is X.
    e.proxy.update(|s| s.hold = Some(Operation::MakeCall));
    let link = e.link.clone();
    let ours = tokio::spawn(async move { link.request(Operation::MakeCall, make_call("2005", "2006")).await });
    let x = e.proxy.wait("the MakeCall", |s| s.held.as_ref().map(|(id, _)| *id)).await;
    // The PBX invokes with the same id: a SystemStatus (answered), an operation the gateway does
    // not serve (rejected), an event for no monitor (not answered).
    let unknown = template;
    e.proxy.inject(&[
        Apdu::invoke(x, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2))),
        Apdu::invoke(x, Operation::MakeCall, make_call("2006", "2005")),
        Apdu::event(x, unknown),
    ]);
    good_device_works(&mut e).await;
    assert!(!ours.is_finished(), "our request was not answered by the PBX's invokes");
    let after = e.link.stats();
    assert_eq!(after.keepalives_answered - before.keepalives_answered, 1);
    assert_eq!(after.rejects_sent - before.rejects_sent, 1);
    assert_eq!(after.events_unrouted - before.events_unrouted, 1);
    assert_eq!(after.unexpected_responses, before.unexpected_responses);
    {
        let s = e.proxy.seen.lock().unwrap();
        assert!(s.from_gw.iter().any(|a| matches!(a, Apdu::Result(r) if r.invoke_id == Some(x) && matches!(r.result, Some((Op::Known(Operation::SystemStatus), _))))));
        assert!(s.from_gw.iter().any(|a| matches!(a, Apdu::Reject(r) if r.invoke_id == Some(x) && r.problem == RejectProblem::Invoke(1))));
    }
    // Our MakeCall reaches the PBX late and gets its own result.
    e.proxy.release_held();
    let r = timeout(LIMIT, ours).await.expect("answered").unwrap();
    let body = r.expect("our MakeCall succeeds");
    assert!(body.connection(F::CallingDevice).is_some(), "{body:?}");
    assert_eq!(e.link.state(), LinkState::Up);
    assert_eq!(e.link.stats().reconnects, before.reconnects);
    store_is_empty(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_floods_are_counted_a_slow_subscriber_is_bounded_and_monitors_keep_working() {
    let mut e = env().await;
    // A second device whose only subscriber never reads.
    let mut slow = e.link.monitor("2006").await.unwrap();
    let xref_2006 = e.proxy.wait("2006's cross-reference id", |s| s.xrefs.last().cloned()).await;
    let template = event_for(&mut e, &[]).await;
    let before = e.link.stats();
    let event = |xref: Bytes, i: i64| Apdu::event(10_000 + (i % 1000), EventReport { xref, ..template.clone() });
    // 10,000 events for cross-reference ids nobody has.
    for chunk in (0..10_000).collect::<Vec<i64>>().chunks(1000) {
        e.proxy.inject(&chunk.iter().map(|i| event(Bytes::from([&[0xDE, 0xAD][..], &(*i as u32).to_be_bytes()].concat()), *i)).collect::<Vec<_>>());
    }
    // 5,000 events for the slow subscriber's device.
    for chunk in (0..5_000).collect::<Vec<i64>>().chunks(1000) {
        e.proxy.inject(&chunk.iter().map(|i| event(xref_2006.clone(), *i)).collect::<Vec<_>>());
    }
    good_device_works(&mut e).await;
    let after = e.link.stats();
    assert_eq!(after.decode_errors, before.decode_errors, "{after:?}");
    assert_eq!(after.events_unrouted - before.events_unrouted, 10_000, "{after:?}");
    // The slow subscriber holds its buffer's worth; the rest is dropped and counted.
    assert_eq!(after.events_dropped - before.events_dropped, 5_000 - SUBSCRIBER_BUFFER as u64);
    let mut buffered = Vec::new();
    let n = timeout(LIMIT, slow.next_many(&mut buffered, 10 * SUBSCRIBER_BUFFER)).await.expect("buffered events");
    assert_eq!((n, buffered.len()), (SUBSCRIBER_BUFFER, SUBSCRIBER_BUFFER));
    assert!(buffered.iter().all(|ev| matches!(ev, MonitorEvent::Event(r) if r.xref == xref_2006)));
    assert_eq!((after.connects, after.reconnects), (before.connects, before.reconnects));
    // Nothing is answered: events are never acknowledged.
    assert_eq!(after.rejects_sent, before.rejects_sent);
    store_is_empty(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_bounds_the_queue_fails_requests_fast_and_is_replaced() {
    let mut e = env().await;
    let conns = e.proxy.conns();
    let mut state = e.link.watch_state();
    // The peer stops reading and floods SystemStatus invokes, each of which the gateway answers:
    // its answers fill the socket buffers and its writes block.
    e.proxy.update(|s| s.stop_reading = true);
    let flood: Vec<Apdu> = (1..=2000).map(|i| Apdu::invoke(i, Operation::SystemStatus, Body::new().with(F::SystemStatus, Value::Int(2)))).collect();
    for _ in 0..100 {
        e.proxy.inject(&flood);
    }
    // Requests: accepted into the bounded command queue while the link task is blocked, refused
    // at once with QueueFull beyond it.
    let mut pending = Vec::new();
    let mut refused = 0;
    let t0 = tokio::time::Instant::now();
    while refused < 100 {
        assert!(t0.elapsed() < LIMIT, "no request was ever refused: the queue is unbounded");
        let mut f = Box::pin({
            let link = e.link.clone();
            async move { link.request(Operation::MakeCall, make_call("2005", "2006")).await }
        });
        match (&mut f).now_or_never() {
            Some(Err(RequestError::QueueFull)) => {
                refused += 1;
                assert_eq!(e.link.queued_commands(), COMMAND_QUEUE, "refused only when the queue is full");
            }
            Some(other) => panic!("a request finished at once with {other:?}"),
            None => pending.push(tokio::spawn(f)),
        }
        // Accepted requests the link has not answered yet are in its command queue or its rate
        // limiter's queue; far more than both means the queue is not bounded.
        assert!(pending.len() <= 4 * (COMMAND_QUEUE + MAX_QUEUED_REQUESTS), "{} requests accepted", pending.len());
        if pending.len() % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(e.link.queued_commands() <= COMMAND_QUEUE);
    // The blocked write times out (request_timeout, 1 s): the link drops, every accepted request
    // gets an answer — none is lost, none succeeds — and the peer is replaced by a working one.
    drops_and_reconnects(&mut e, conns, "write stalled", &mut state).await;
    let answered = timeout(Duration::from_secs(5), futures_util::future::join_all(pending)).await.expect("every accepted request is answered within a few request timeouts");
    for r in answered {
        let r = r.unwrap();
        assert!(matches!(r, Err(RequestError::LinkDown | RequestError::Timeout | RequestError::QueueFull)), "{r:?}");
    }
    assert_eq!(e.link.queued_commands(), 0);
    good_device_works(&mut e).await;
    // The new connection is served normally: keep-alives flow again.
    let stats: Json = e.http.json("GET", "/v1/pbx", &e.tokens.admin, None).await.unwrap().1;
    assert_eq!(stats["pbx"][0]["state"]["state"], "up", "{stats}");
    store_is_empty(&e).await;
}
