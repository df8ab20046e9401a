//! The link against recorded PBX sessions: a server that answers with the captured PBX bytes
//! (Panasonic, Siemens HiPath). The link logs in, answers SystemStatus byte for byte as the
//! recorded application did, monitors, and delivers the recorded events exactly.

use crate::common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{apdu, traces, Trace};
use cstagate::capture::Direction;
use cstagate::codec::acse::AarqParams;
use cstagate::codec::body::{FieldName as F, Value};
use cstagate::codec::values::Secret;
use cstagate::codec::{Apdu, Argument, Body, DeviceId, Dialect, EventReport, Framer, Operation};
use cstagate::config::LinkProfile;
use cstagate::link::{Link, LinkState, MonitorEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

struct Peer {
    s: TcpStream,
    framer: Framer,
    buf: BytesMut,
    trace: (cstagate::codec::Framing, Dialect),
}

impl Peer {
    async fn read(&mut self) -> Bytes {
        loop {
            if let Some(f) = self.framer.decode(&mut self.buf).expect("valid framing from the link") {
                return f;
            }
            let n = timeout(LIMIT, self.s.read_buf(&mut self.buf)).await.expect("link sends").expect("read");
            assert!(n > 0, "link closed");
        }
    }
    async fn write(&mut self, apdu: &[u8]) {
        let framed = self.trace.0.frame(apdu).unwrap();
        self.s.write_all(&framed).await.unwrap();
    }
}

/// Replay the recorded session `frames` (a slice of one trace): P2C frames are sent, C2P
/// frames are awaited from the link and checked; recorded answers get the link's invoke ids.
async fn replay(peer: &mut Peer, t: &Trace, range: std::ops::Range<usize>, skip_c2p_ops: &[Operation]) {
    let d = t.dialect;
    let mut id_map: Vec<(i64, i64)> = Vec::new();
    let mut skipped_ids: Vec<i64> = Vec::new();
    for f in &t.frames[range] {
        let rec = apdu(t, f);
        let recorded = Apdu::decode(&rec, d).unwrap();
        match f.dir {
            Some(Direction::C2P) => {
                if let Apdu::Invoke(i) = &recorded {
                    if i.op.known().is_some_and(|o| skip_c2p_ops.contains(&o)) {
                        skipped_ids.extend(i.invoke_id);
                        continue;
                    }
                }
                let got_bytes = peer.read().await;
                let got = Apdu::decode(&got_bytes, d).unwrap();
                assert_eq!(got.kind_name(), recorded.kind_name(), "{}", f.origin);
                match (&recorded, &got) {
                    (Apdu::Invoke(r), Apdu::Invoke(g)) => {
                        assert_eq!(r.op, g.op, "{}", f.origin);
                        id_map.push((r.invoke_id.unwrap(), g.invoke_id.unwrap()));
                    }
                    // Answers to the PBX's own invokes: byte for byte what the application sent.
                    (Apdu::Result(_), Apdu::Result(_)) => assert_eq!(hex::encode(&got_bytes), hex::encode(&rec), "{}", f.origin),
                    _ => {}
                }
            }
            _ => {
                let patched = match recorded {
                    Apdu::Result(mut r) => {
                        let rid = r.invoke_id.unwrap();
                        if skipped_ids.contains(&rid) {
                            continue;
                        }
                        r.invoke_id = id_map.iter().find(|(a, _)| *a == rid).map(|(_, b)| *b).or(Some(rid));
                        Apdu::Result(r).to_vec(d).unwrap()
                    }
                    _ => rec.to_vec(),
                };
                peer.write(&patched).await;
            }
        }
    }
}

async fn accept(listener: &TcpListener, t: &Trace) -> Peer {
    let (s, _) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    Peer { s, framer: Framer::new(t.framing), buf: BytesMut::new(), trace: (t.framing, t.dialect) }
}

fn profile(addr: String, t: &Trace, credentials: Option<(String, Secret)>) -> LinkProfile {
    LinkProfile {
        acse: Some(AarqParams { context: "1.3.12.0.218".into(), credentials, user_information: None }),
        keepalive: Duration::from_secs(300),
        max_requests_per_second: 100.0,
        ..LinkProfile::new("replay", &addr, t.framing, t.dialect)
    }
}

fn recorded_events(t: &Trace, range: std::ops::Range<usize>, xref: &str) -> Vec<EventReport> {
    t.frames[range]
        .iter()
        .filter_map(|f| match Apdu::decode(&apdu(t, f), t.dialect).unwrap() {
            Apdu::Invoke(i) => match i.argument {
                Argument::Event(e) if hex::encode(&e.xref) == xref => Some(e),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

async fn events(m: &mut cstagate::link::Monitor, n: usize) -> Vec<EventReport> {
    let mut v = Vec::new();
    while v.len() < n {
        match timeout(LIMIT, m.next()).await.expect("event").expect("open") {
            MonitorEvent::Event(e) => v.push((*e).clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
    v
}

#[tokio::test]
async fn panasonic_makecall_session_replayed() {
    let t = traces("panasonic-csta3-makecall-20160727.frames.tsv").remove(0);
    // The second TCP connection of the capture: frames 13..=39 (0-based 12..39).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link = Link::spawn(profile(listener.local_addr().unwrap().to_string(), &t, None));
    let mut peer = accept(&listener, &t).await;
    // AARQ, AARE, the PBX's SystemStatus and our byte-exact answer.
    replay(&mut peer, &t, 12..16, &[]).await;
    timeout(LIMIT, link.wait_for(|s| *s == LinkState::Up)).await.unwrap();

    let l = link.clone();
    let m6 = tokio::spawn(async move { l.monitor("2006").await.unwrap() });
    replay(&mut peer, &t, 16..18, &[]).await;
    let mut m6 = m6.await.unwrap();
    let l = link.clone();
    let m5 = tokio::spawn(async move { l.monitor("2005").await.unwrap() });
    replay(&mut peer, &t, 18..20, &[]).await;
    let mut m5 = m5.await.unwrap();
    // Six events on 2006's monitor before the call.
    replay(&mut peer, &t, 20..26, &[]).await;
    assert_eq!(events(&mut m6, 6).await, recorded_events(&t, 20..26, "01110005"));

    let l = link.clone();
    let call = tokio::spawn(async move {
        let body = Body::new().with(F::CallingDevice, Value::DeviceId(DeviceId::dialing("2005").unwrap())).with(F::CalledDirectoryNumber, Value::DeviceId(DeviceId::dialing("2006").unwrap()));
        l.request(Operation::MakeCall, body).await
    });
    replay(&mut peer, &t, 26..39, &[]).await;
    let result = call.await.unwrap().unwrap();
    assert_eq!(result.connection(F::CallingDevice).and_then(|c| c.call.clone()).map(|c| hex::encode(c)), Some("30303638".into()));
    let want5 = recorded_events(&t, 26..39, "01110004");
    let want6 = recorded_events(&t, 26..39, "01110005");
    assert_eq!((want5.len(), want6.len()), (5, 6));
    assert_eq!(events(&mut m5, want5.len()).await, want5);
    assert_eq!(events(&mut m6, want6.len()).await, want6, "including the physicalDeviceFeature event kept raw");

    // Unknown invokes from the PBX get a ROSE Reject (unrecognizedOperation) with their id.
    peer.write(&[0xA1, 0x08, 0x02, 0x01, 0x63, 0x02, 0x03, 0x00, 0x9C, 0x40]).await; // op 40000
    assert_eq!(hex::encode(peer.read().await), "a406020163810101");
    let s = link.stats();
    assert_eq!((s.events_in, s.events_unrouted, s.decode_errors), (17, 0, 0));
}

#[tokio::test]
async fn hipath_session_replayed_with_acse_login() {
    let t = traces("hipath-csta3-session-20130104.frames.tsv").remove(0);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let creds = Some(("AMHOST".to_owned(), Secret::new(Bytes::from_static(b"77777"))));
    let link = Link::spawn(profile(listener.local_addr().unwrap().to_string(), &t, creds));
    let mut peer = accept(&listener, &t).await;
    // Our AARQ carries the login like the recorded one.
    let aarq = Apdu::decode(&peer.read().await, Dialect::Phase3).unwrap();
    let Apdu::Aarq(body) = aarq else { panic!("AARQ first") };
    let Some(Value::Auth(auth)) = body.get(F::CallingAuthenticationValue) else { panic!("no login") };
    assert_eq!(auth.user().map(|u| u.as_ref()), Some(&b"AMHOST"[..]));
    // The recorded AARE and SystemStatus; the escape heart-beat is the recorded app's own.
    replay(&mut peer, &t, 1..6, &[Operation::Escape]).await;
    timeout(LIMIT, link.wait_for(|s| *s == LinkState::Up)).await.unwrap();
    let l = link.clone();
    let m = tokio::spawn(async move { l.monitor("108").await });
    replay(&mut peer, &t, 6..8, &[]).await;
    let m = m.await.unwrap().expect("the recorded MonitorStart result is a success");
    assert_eq!(m.device, "108");
    assert_eq!(link.stats().monitors, 1);
}

/// The invoke id of an invoke the link sent.
fn invoke_id(bytes: &Bytes, d: Dialect) -> i64 {
    match Apdu::decode(bytes, d).expect("the link sends valid APDUs") {
        Apdu::Invoke(i) => i.invoke_id.expect("an invoke id"),
        other => panic!("expected an invoke, got {other:?}"),
    }
}

/// A PBX (here, Phase II like OXE) that answers our request with a result or error whose body
/// does not decode: the request fails at once with a decode error naming the operation and the
/// byte, rather than waiting out its timeout; the answer is counted and rejected by invoke id,
/// and the link stays up and serves the next request, wrapped result form included.
#[tokio::test]
async fn an_answer_that_does_not_decode_fails_its_request_at_once_and_the_link_stays_up() {
    use cstagate::codec::{ErrorKind, RejectProblem};
    use cstagate::link::RequestError;
    let (framing, d) = (cstagate::codec::Framing::TwoByteLength, Dialect::Phase2);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link = Link::spawn(LinkProfile {
        acse: None,
        keepalive: Duration::from_secs(300),
        // Far beyond the test's own limit: the outcome must not come from the timeout.
        request_timeout: Duration::from_secs(300),
        max_requests_per_second: 100.0,
        ..LinkProfile::new("garbage", &listener.local_addr().unwrap().to_string(), framing, d)
    });
    let (s, _) = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let mut peer = Peer { s, framer: Framer::new(framing), buf: BytesMut::new(), trace: (framing, d) };
    timeout(LIMIT, link.wait_for(|s| *s == LinkState::Up)).await.unwrap();
    let make_call = || Body::new().with(F::CallingDevice, Value::DeviceId(DeviceId::dialing("24105").unwrap())).with(F::CalledDirectoryNumber, Value::DeviceId(DeviceId::dialing("24640").unwrap()));

    // 1. A MakeCall result whose value is an OCTET STRING where the ConnectionID belongs.
    let l = link.clone();
    let call = tokio::spawn(async move { l.request(Operation::MakeCall, make_call()).await });
    let id = invoke_id(&peer.read().await, d);
    let id8 = u8::try_from(id).unwrap();
    peer.write(&[0xA2, 0x0C, 0x02, 0x01, id8, 0x30, 0x07, 0x02, 0x01, 0x0A, 0x04, 0x02, 0xFF, 0xFF]).await;
    let e = timeout(LIMIT, call).await.expect("answered at once").unwrap().unwrap_err();
    assert!(matches!(e, RequestError::Decode { operation: Operation::MakeCall, offset: 10, reason: ErrorKind::UnexpectedTag { .. } }), "{e:?}");
    assert!(e.to_string().contains("makeCall") && e.to_string().contains("byte 10"), "{e}");
    // Rejected by its invoke id: mistypedResult.
    let reject = Apdu::decode(&peer.read().await, d).unwrap();
    assert_eq!(reject, Apdu::reject(Some(id), RejectProblem::ReturnResult(2)));
    let s = link.stats();
    assert_eq!((s.undecodable_responses, s.decode_errors, s.requests_failed, s.requests_timed_out), (1, 1, 1, 0), "{s:?}");

    // 2. An error whose universalFailure holds two values.
    let l = link.clone();
    let clear = tokio::spawn(async move { l.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(Default::default()))).await });
    let id = invoke_id(&peer.read().await, d);
    peer.write(&[0xA3, 0x0E, 0x02, 0x01, u8::try_from(id).unwrap(), 0x02, 0x01, 0x01, 0xA1, 0x06, 0x0A, 0x01, 0x05, 0x0A, 0x01, 0x06]).await;
    let e = timeout(LIMIT, clear).await.expect("answered at once").unwrap().unwrap_err();
    assert!(matches!(e, RequestError::Decode { operation: Operation::ClearConnection, offset: 13, .. }), "{e:?}");
    assert_eq!(Apdu::decode(&peer.read().await, d).unwrap(), Apdu::reject(Some(id), RejectProblem::ReturnError(4)));
    assert_eq!(link.stats().undecodable_responses, 2);

    // 3. The link is still up and the next MakeCall is served, its result in the wrapped form.
    let l = link.clone();
    let call = tokio::spawn(async move { l.request(Operation::MakeCall, make_call()).await });
    let id = invoke_id(&peer.read().await, d);
    let mut good = vec![0xA2, 0x16, 0x02, 0x01, u8::try_from(id).unwrap(), 0x30, 0x11, 0x02, 0x01, 0x0A, 0x30, 0x0C];
    good.extend_from_slice(&hex::decode("6b0a82022b7a830408b30100").unwrap());
    peer.write(&good).await;
    let r = timeout(LIMIT, call).await.unwrap().unwrap().expect("served");
    assert_eq!(r.connection(F::CallingDevice).and_then(|c| c.call.clone()).map(hex::encode), Some("2b7a".into()));
    let s = link.stats();
    assert_eq!((s.connects, s.reconnects, s.requests_ok, s.undecodable_responses), (1, 0, 1, 2), "{s:?}");
    assert_eq!(link.state(), LinkState::Up);
}
