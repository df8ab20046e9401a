//! The session's input: bytes from the socket cut into frames, and each APDU the PBX sends
//! handled by the phase it arrives in (association, up, releasing): answers to our invokes,
//! the PBX's own invokes (events, keep-alives, anything else rejected), and undecodable frames.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::{debug, trace, warn};

use super::{LinkLoss, Phase, SessionEvent, Session};
use crate::codec::acse::{aare_outcome, for_log};
use crate::codec::apdu::ErrorParameter;
use crate::codec::{Apdu, Argument, Body, DecodeError, Op, Operation, RejectProblem, ReturnResult};
use crate::link::{RequestError, Stats};

impl Session {
    /// Feed bytes read from the socket: every complete frame in `buf` is taken off and handled;
    /// a partial frame stays in `buf` for the next read. A framing error ends the session.
    pub fn handle_input(&mut self, now: Instant, buf: &mut BytesMut) {
        while self.phase != Phase::Dead {
            match self.framer.decode(buf) {
                Ok(Some(frame)) => self.handle_frame(now, frame),
                Ok(None) => return,
                Err(e) => {
                    Stats::inc(&self.stats.decode_errors);
                    self.lose(LinkLoss::Framing(e));
                    return;
                }
            }
        }
    }

    /// Handle one APDU (a frame without its header).
    pub fn handle_frame(&mut self, now: Instant, frame: Bytes) {
        if self.phase == Phase::Dead {
            return;
        }
        self.now = self.now.max(now);
        Stats::inc(&self.stats.frames_in);
        // Only a complete frame is a sign of life: bytes of a frame that never completes do not
        // hold the keep-alive off.
        self.last_rx = now;
        self.keepalive_sent = None;
        if self.xml.is_some() {
            self.handle_xml_frame(now, &frame);
            self.pump(now);
            return;
        }
        let apdu = Apdu::decode(&frame, self.p.dialect);
        match self.phase {
            Phase::Associating { .. } => self.on_association_frame(now, apdu),
            Phase::Releasing { .. } => {
                if matches!(apdu, Ok(Apdu::Rlre(_))) {
                    self.finish(SessionEvent::Closed);
                }
            }
            Phase::Up => match apdu {
                Ok(a) => self.on_apdu(now, a),
                Err(e) => self.on_undecodable(now, &frame, &e),
            },
            Phase::Dead => {}
        }
        self.pump(now);
    }

    fn on_association_frame(&mut self, now: Instant, apdu: Result<Apdu, DecodeError>) {
        match apdu {
            Err(e) => {
                Stats::inc(&self.stats.decode_errors);
                self.lose(LinkLoss::UndecodableDuringAssociation(e));
            }
            Ok(Apdu::Aare(b)) => match aare_outcome(&b) {
                Ok(()) => self.come_up(now),
                Err(rej) => self.lose(LinkLoss::AareRejected(rej)),
            },
            Ok(Apdu::Abrt(_)) => self.lose(LinkLoss::AbortedByPeer),
            Ok(other) => debug!(kind = other.kind_name(), "ignored before AARE"),
        }
    }

    pub(super) fn on_apdu(&mut self, now: Instant, apdu: Apdu) {
        match apdu {
            Apdu::Invoke(inv) => match (&inv.op, inv.invoke_id) {
                (Op::Known(Operation::EventReport), _) => {
                    if let Argument::Event(ev) = inv.argument {
                        Stats::inc(&self.stats.events_in);
                        match self.by_xref.get(&ev.xref) {
                            Some(device) => self.events.push_back(SessionEvent::Event { device: device.clone(), report: Arc::new(ev) }),
                            None => Stats::inc(&self.stats.events_unrouted),
                        }
                    }
                }
                (Op::Known(Operation::SystemStatus), Some(id)) => {
                    Stats::inc(&self.stats.keepalives_answered);
                    self.send(&Apdu::result(id, Operation::SystemStatus, Body::null()));
                }
                // CSTA XML without a header: no invoke id, answered all the same.
                (Op::Known(Operation::SystemStatus), None) if self.xml.is_some() => {
                    Stats::inc(&self.stats.keepalives_answered);
                    self.send(&Apdu::Result(ReturnResult { invoke_id: None, result: Some((Op::Known(Operation::SystemStatus), Argument::Body(Body::null()))) }));
                }
                (_, id) => {
                    Stats::inc(&self.stats.rejects_sent);
                    self.send(&Apdu::reject(id, RejectProblem::Invoke(1)));
                }
            },
            Apdu::Result(r) => {
                // CSTA XML without a header: the oldest request of the operation it answers.
                let invoke = r.invoke_id.or_else(|| self.oldest_unnumbered(r.result.as_ref().and_then(|(op, _)| op.known())));
                let body = match r.result {
                    Some((_, Argument::Body(b))) => b,
                    _ => Body::null(),
                };
                if let Some(p) = invoke.and_then(|id| self.invokes.take(id)) {
                    self.complete(now, p, Ok(body));
                } else if let Some(g) = r.invoke_id.and_then(|id| self.take_gave_up(id, now)) {
                    // Carried out after we gave up on it: the driver must hear of it.
                    Stats::inc(&self.stats.late_answers);
                    self.events.push_back(SessionEvent::LateResult { id: g.id, op: g.op, body });
                } else {
                    Stats::inc(&self.stats.unexpected_responses);
                }
            }
            Apdu::Error(e) => {
                let invoke = e.invoke_id.or_else(|| self.oldest_unnumbered(None));
                if let Some(p) = invoke.and_then(|id| self.invokes.take(id)) {
                    let err = match e.parameter {
                        Some(ErrorParameter::UniversalFailure(u)) => RequestError::Failure(u),
                        _ => RequestError::OtherError(e.code),
                    };
                    self.complete(now, p, Err(err));
                } else if e.invoke_id.and_then(|id| self.take_gave_up(id, now)).is_some() {
                    // A late error answers a request of ours but carried nothing out: counted, dropped.
                    Stats::inc(&self.stats.late_answers);
                } else {
                    Stats::inc(&self.stats.unexpected_responses);
                }
            }
            Apdu::Reject(rj) => {
                Stats::inc(&self.stats.rejects_received);
                if let Some(p) = rj.invoke_id.and_then(|id| self.invokes.take(id)) {
                    self.complete(now, p, Err(RequestError::Rejected(rj.problem)));
                } else if let Some(id) = rj.invoke_id {
                    // A late reject carried nothing out: the request given up on is forgotten.
                    self.take_gave_up(id, now);
                }
            }
            Apdu::Rlrq(_) => {
                self.send(&Apdu::Rlre(Body::new()));
                self.lose(LinkLoss::ReleasedByPeer);
            }
            Apdu::Abrt(_) => self.lose(LinkLoss::AbortedByPeer),
            Apdu::Aarq(_) | Apdu::Aare(_) | Apdu::Rlre(_) => Stats::inc(&self.stats.unexpected_responses),
        }
    }

    /// A frame that does not decode: counted and rejected, and the link goes on; only a framing
    /// error loses the stream. A result or error whose invoke id is one of ours outstanding
    /// answers that request: it fails now with the decode error (waiting for the timeout would
    /// only delay the same outcome), and the Reject names the invoke (X.880 mistypedResult /
    /// mistypedParameter). Anything else gets a general problem (badly structured APDU).
    fn on_undecodable(&mut self, now: Instant, frame: &Bytes, e: &DecodeError) {
        Stats::inc(&self.stats.decode_errors);
        trace!(apdu = %for_log(frame), "undecodable");
        let answered = Apdu::answer_invoke_id(frame).and_then(|id| Some((id, self.invokes.take(id)?)));
        let reject = match answered {
            Some((id, p)) => {
                let operation = p.operation();
                warn!(error = %e, invoke_id = id, operation = operation.name(self.p.dialect), "undecodable answer from the PBX");
                Stats::inc(&self.stats.undecodable_responses);
                self.complete(now, p, Err(RequestError::Decode { operation, offset: e.offset, reason: e.kind.clone() }));
                let problem = if frame.first() == Some(&0xA2) { RejectProblem::ReturnResult(2) } else { RejectProblem::ReturnError(4) };
                Apdu::reject(Some(id), problem)
            }
            None => {
                warn!(error = %e, "undecodable APDU from the PBX");
                Apdu::reject(None, RejectProblem::General(2))
            }
        };
        Stats::inc(&self.stats.rejects_sent);
        self.send(&reject);
    }
}
