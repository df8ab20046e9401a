//! The simulator's TCP side: accept, preamble, ACSE, then frames to and from the switch, with
//! the transport faults applied (stall, split, coalesce, malformed frames, drop after N frames).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::trace;

use super::switch::{Msg, Out};
use super::{lock, Shared};
use crate::codec::acse::{for_log, Authentication};
use crate::codec::body::{FieldName, Value};
use crate::codec::framing::Framer;
use crate::codec::{Apdu, Body, RejectProblem};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, switch: mpsc::UnboundedSender<Msg>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let _ = stream.set_nodelay(true);
                shared.stats.send_modify(|s| s.connections += 1);
                tokio::spawn(serve(stream, shared.clone(), switch.clone(), stop.clone()));
            }
            _ = stop.changed() => return,
        }
    }
}

/// While stalled, a connection neither reads nor writes; this is how often it looks again.
const STALL_POLL: Duration = Duration::from_millis(5);

async fn serve(stream: TcpStream, shared: Arc<Shared>, switch: mpsc::UnboundedSender<Msg>, mut stop: watch::Receiver<bool>) {
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let (dialect, framing, preamble, acse, creds, wrapping) = {
        let c = lock(&shared.config);
        (c.dialect, c.framing, c.preamble, c.acse, c.credentials.clone(), c.phase2_results)
    };
    let (mut rd, mut wr) = stream.into_split();
    let mut framer = Framer::new(framing);
    if preamble {
        framer = framer.expect_preamble(b'B');
    }
    let mut buf = BytesMut::with_capacity(4096);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
    let mut associated = !acse;
    if associated {
        let _ = switch.send(Msg::Connected { conn, tx: out_tx.clone() });
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
                    trace!(conn, apdu = %for_log(&frame), "sim received");
                    shared.stats.send_modify(|s| s.frames_in += 1);
                    if lock(&shared.faults).drop_after_frames.is_some_and(|n| frames_in >= n) {
                        close = true;
                        break;
                    }
                    let apdu = match Apdu::decode(&frame, dialect) {
                        Ok(a) => a,
                        Err(_) => { let _ = out_tx.send(Out::Apdu(Apdu::reject(None, RejectProblem::General(2)))); continue; }
                    };
                    if !associated {
                        let Apdu::Aarq(aarq) = &apdu else { close = true; break };
                        let ok = match &creds {
                            None => true,
                            Some((u, p)) => matches!(aarq.get(FieldName::CallingAuthenticationValue),
                                Some(Value::Auth(Authentication::UserPassword { user, password })) if user.as_ref() == u.as_bytes() && password == p),
                        };
                        let _ = out_tx.send(Out::Apdu(Apdu::Aare(aare(aarq, ok))));
                        if !ok { let _ = out_tx.send(Out::Close); continue; }
                        associated = true;
                        let _ = switch.send(Msg::Connected { conn, tx: out_tx.clone() });
                        continue;
                    }
                    match apdu {
                        Apdu::Rlrq(_) => { shared.stats.send_modify(|s| s.releases += 1); let _ = out_tx.send(Out::Apdu(Apdu::Rlre(Body::new()))); let _ = out_tx.send(Out::Close); }
                        other => { let _ = switch.send(Msg::Apdu { conn, apdu: other }); }
                    }
                }
                if close { break; }
            }
            out = out_rx.recv() => {
                let Some(out) = out else { break };
                match out {
                    Out::Close => { let _ = flush(&mut wr, &mut held).await; break; }
                    Out::Apdu(apdu) => {
                        let faults = lock(&shared.faults).clone();
                        let mut batch = Vec::new();
                        let mut next = Some(apdu);
                        let mut closing = false;
                        while let Some(apdu) = next.take() {
                            let Ok(body) = apdu.shaped(dialect, wrapping).to_vec(dialect) else { continue };
                            let Ok(framed) = framing.frame(&body) else { continue };
                            trace!(conn, apdu = %for_log(&body), "sim sent");
                            frames_out += 1;
                            if faults.malformed_every.is_some_and(|n| n > 0 && frames_out % n == 0) {
                                // Well framed, but a ROSE invoke whose invoke id is a constructed INTEGER.
                                if let Ok(bad) = framing.frame(&[0xA1, 0x05, 0x22, 0x03, 0x02, 0x01, 0x01]) {
                                    batch.push(bad);
                                }
                            }
                            batch.push(framed);
                            // Like a real PBX's socket buffer, whatever is already queued goes out in
                            // the same write (up to 64 KiB), unless frames are to be split.
                            if !faults.split_frames && batch.iter().map(Bytes::len).sum::<usize>() < 65536 {
                                match out_rx.try_recv() {
                                    Ok(Out::Apdu(a)) => next = Some(a),
                                    Ok(Out::Close) => closing = true,
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
                }
            }
            _ = stop.changed() => break,
        }
    }
    let _ = switch.send(Msg::Disconnected { conn });
    let _ = wr.shutdown().await;
}

async fn flush(wr: &mut tokio::net::tcp::OwnedWriteHalf, held: &mut Vec<u8>) -> std::io::Result<()> {
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
