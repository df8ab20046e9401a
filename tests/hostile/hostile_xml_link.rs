//! Hostile CSTA XML from the PBX side, over a real socket: a scripted XML PBX (its bytes built
//! here, by hand where the point is that they are wrong) opens the session, answers the monitor,
//! then sends what a broken or hostile peer would: billion laughs, an external entity, nesting
//! past the cap, non-UTF-8, a second root, unknown requests and events for unknown monitors —
//! the link counts them, answers what ECMA-323 lets it answer, and stays up, the good event after
//! them still delivered — and then a header that no stream can recover from, which drops the
//! connection, after which the link reconnects and monitors again.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cstagate::codec::xml::{AppSession, XmlMessage};
use cstagate::codec::{Apdu, Framer, Framing, Operation};
use cstagate::config::LinkProfile;
use cstagate::link::{Link, LinkState, MonitorEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);
const NS: &str = "http://www.ecma-international.org/standards/ecma-323/csta/ed4";

/// The PBX's side of one connection.
struct Pbx {
    s: TcpStream,
    framer: Framer,
    buf: BytesMut,
}

impl Pbx {
    async fn accept(l: &TcpListener) -> Pbx {
        let (s, _) = timeout(LIMIT, l.accept()).await.expect("the link connects").expect("accept");
        Pbx { s, framer: Framer::new(Framing::XmlHeader), buf: BytesMut::new() }
    }
    /// The next message from the gateway.
    async fn next(&mut self) -> XmlMessage {
        loop {
            if let Some(f) = self.framer.decode(&mut self.buf).expect("the gateway frames well") {
                return XmlMessage::decode(&f, Framing::XmlHeader).expect("the gateway writes decodable documents");
            }
            let n = timeout(LIMIT, self.s.read_buf(&mut self.buf)).await.expect("the gateway writes").expect("read");
            assert!(n > 0, "the gateway closed");
        }
    }
    /// The next message that is not a keep-alive answer.
    async fn next_request(&mut self) -> XmlMessage {
        loop {
            let m = self.next().await;
            if !matches!(&m, XmlMessage::Csta(Apdu::Result(r)) if r.result.as_ref().and_then(|(op, _)| op.known()) == Some(Operation::SystemStatus)) {
                return m;
            }
        }
    }
    /// Send `doc` (any bytes) with invoke id `id`, framed correctly.
    async fn send(&mut self, id: u16, doc: &[u8]) {
        let mut payload = format!("{id:04}").into_bytes();
        payload.extend_from_slice(doc);
        self.raw(&Framing::XmlHeader.frame(&payload).expect("frames")).await;
    }
    async fn raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write");
    }
    /// Open the session and answer the MonitorStart for 2005 with cross-reference `xref`.
    async fn serve_session_and_monitor(&mut self, xref: &str) {
        let m = self.next().await;
        assert!(matches!(m, XmlMessage::Session { msg: AppSession::Start(_), .. }), "{m:?}");
        self.send(0, b"<StartApplicationSessionPosResponse><sessionID>S1</sessionID><actualSessionDuration>180</actualSessionDuration></StartApplicationSessionPosResponse>").await;
        let m = self.next_request().await;
        let XmlMessage::Csta(Apdu::Invoke(i)) = &m else { panic!("a MonitorStart expected: {m:?}") };
        assert_eq!(i.op.known(), Some(Operation::MonitorStart));
        let id = u16::try_from(i.invoke_id.expect("an id")).expect("4 digits");
        self.send(id, format!("<MonitorStartResponse xmlns=\"{NS}\"><monitorCrossRefID>{xref}</monitorCrossRefID></MonitorStartResponse>").as_bytes()).await;
    }
    async fn event(&mut self, xref: &str, call: &str) {
        self.send(9999, format!("<DeliveredEvent xmlns=\"{NS}\"><monitorCrossRefID>{xref}</monitorCrossRefID><connection><callID>{call}</callID><deviceID>2005</deviceID></connection><alertingDevice><deviceIdentifier>2005</deviceIdentifier></alertingDevice><callingDevice><deviceIdentifier>2006</deviceIdentifier></callingDevice><calledDevice><deviceIdentifier>2005</deviceIdentifier></calledDevice><lastRedirectionDevice><notRequired/></lastRedirectionDevice><localConnectionInfo>alerting</localConnectionInfo><cause>newCall</cause></DeliveredEvent>").as_bytes()).await;
    }
}

/// The call id of the next event the monitor delivers.
async fn next_call(m: &mut cstagate::link::Monitor) -> Bytes {
    loop {
        match timeout(LIMIT, m.next()).await.expect("an event in time").expect("the monitor lives") {
            MonitorEvent::Event(r) => return r.event.body().and_then(|b| b.first_connection()).and_then(|c| c.call.clone()).expect("a call id"),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_documents_are_counted_the_link_stays_up_and_bad_headers_drop_and_reconnect() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let link = Link::spawn(LinkProfile { reconnect_min: Duration::from_millis(10), reconnect_max: Duration::from_millis(50), ..LinkProfile::xml("hostile", &addr, Framing::XmlHeader) });
    let mut pbx = Pbx::accept(&l).await;
    let (monitor, ()) = tokio::join!(link.monitor("2005"), pbx.serve_session_and_monitor("71"));
    let mut mon = monitor.expect("monitored");

    let deep = format!("<DeliveredEvent>{}{}</DeliveredEvent>", "<x>".repeat(64), "</x>".repeat(64));
    let hostile: Vec<Vec<u8>> = vec![
        br#"<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><DeliveredEvent><monitorCrossRefID>&c;</monitorCrossRefID></DeliveredEvent>"#.to_vec(),
        br#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><DeliveredEvent><monitorCrossRefID>&e;</monitorCrossRefID></DeliveredEvent>"#.to_vec(),
        b"<DeliveredEvent><monitorCrossRefID>&undefined;</monitorCrossRefID></DeliveredEvent>".to_vec(),
        deep.into_bytes(),
        b"<DeliveredEvent><monitorCrossRefID>71\xff\xfe</monitorCrossRefID></DeliveredEvent>".to_vec(),
        b"<DeliveredEvent/><DeliveredEvent/>".to_vec(),
        b"<DeliveredEvent><monitorCrossRefID>71</monitorCrossRefID>".to_vec(),
    ];
    let n = hostile.len() as u64;
    let before = link.stats();
    for doc in &hostile {
        pbx.send(9999, doc).await;
    }
    // A request the gateway does not serve, and an event for a monitor it never started.
    pbx.send(42, b"<SystemRegister><requestTypes><systemStatus>true</systemStatus></requestTypes></SystemRegister>").await;
    pbx.event("999", "DEAD").await;
    pbx.event("71", "C0FFEE").await;
    assert_eq!(next_call(&mut mon).await.as_ref(), b"C0FFEE", "the good event after the hostile ones is delivered");
    let m = pbx.next_request().await;
    assert!(matches!(&m, XmlMessage::Csta(Apdu::Error(e)) if e.invoke_id == Some(42)), "the unknown request gets a CSTAErrorCode: {m:?}");
    let after = link.stats();
    assert_eq!(after.decode_errors - before.decode_errors, n, "each hostile document counted once");
    assert_eq!(after.events_unrouted - before.events_unrouted, 1);
    assert_eq!((link.state(), after.reconnects), (LinkState::Up, before.reconnects), "the link stayed up");

    // Headers no stream can recover from (a length shorter than the header itself, an invoke id
    // that is not digits, a first word that is not 00 00): the connection drops, the link
    // reconnects and monitors again on the new one. (No header can announce more than the cap:
    // its 16-bit length is the cap.)
    for bad in [&b"\x00\x00\x00\x05"[..], b"\x00\x00\x00\x0cab12<a/>", b"\x01\x02\x00\x20"] {
        pbx.raw(bad).await;
        let mut next = Pbx::accept(&l).await;
        next.serve_session_and_monitor("72").await;
        next.event("72", "BEEF").await;
        assert_eq!(next_call(&mut mon).await.as_ref(), b"BEEF", "{bad:?}: events flow on the new connection");
        pbx = next;
    }
    assert!(link.stats().reconnects >= 3, "{:?}", link.stats());
    link.shutdown().await;
}
