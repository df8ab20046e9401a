//! The session over CSTA XML (ECMA-323 with ECMA-354 sessions): where the BER session has ACSE,
//! this one opens an application session (`StartApplicationSession`, its login in the vendor's
//! style), keeps it with `ResetApplicationSessionTimer` at half its duration (well before it
//! lapses), ends it with `StopApplicationSession`, and ends with the PBX's
//! `ApplicationSessionTerminated`. The CSTA messages themselves are the same [`Apdu`]s as in BER
//! and go through the same handling (`input`): only the codec differs. Without a header
//! (`xml-nul`) answers carry no invoke id and are matched to the oldest request of their
//! operation ([`Session::oldest_unnumbered`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, trace, warn};

use super::{LinkLoss, Phase, Session, SessionEvent};
use crate::codec::framing::Framing;
use crate::codec::xml::{self, AppSession, ProtocolVersion, StartSession, XmlMessage, EVENT_INVOKE_ID};
use crate::codec::{Apdu, DecodeError, Operation, RejectProblem};
use crate::config::{LinkProfile, XmlProfile};
use crate::link::{EncodeProblem, RequestError, Stats};

/// The invoke id of our session messages (CSTA requests use 1..=9998).
const SESSION_INVOKE_ID: i64 = 0;
/// The longest reason from the PBX kept in a [`LinkLoss`] (it ends up in logs and the API).
const MAX_REASON: usize = 200;

/// What an XML session holds beyond the BER session's state.
pub(super) struct XmlState {
    framing: Framing,
    profile: XmlProfile,
    /// The session the PBX opened (`None` before, and with `xml_session = "none"`).
    session_id: Option<String>,
    /// The duration the PBX granted.
    duration: Duration,
    /// When to send the next `ResetApplicationSessionTimer`.
    renew_at: Option<Instant>,
}

impl XmlState {
    pub(super) fn new(p: &LinkProfile) -> Option<XmlState> {
        let x = p.xml.as_ref()?;
        Some(XmlState { framing: p.framing, profile: x.clone(), session_id: None, duration: x.session_duration, renew_at: None })
    }
    pub(super) fn renew_at(&self) -> Option<Instant> {
        self.renew_at
    }
    /// The framing and edition documents are written in.
    pub(super) fn wire(&self) -> (Framing, ProtocolVersion) {
        (self.framing, self.profile.protocol_version)
    }
}

fn reason(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(MAX_REASON) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

impl Session {
    /// At connect: open the application session, or be up at once without one.
    pub(super) fn start_xml(&mut self, now: Instant) {
        let Some(x) = &self.xml else { return };
        if !x.profile.session {
            self.come_up(now);
            return;
        }
        let start = StartSession {
            application_id: x.profile.application_id.clone(),
            login: x.profile.login.clone(),
            protocol_versions: vec![x.profile.protocol_version.namespace().to_owned()],
            duration: u32::try_from(x.profile.session_duration.as_secs()).ok(),
        };
        self.phase = Phase::Associating { deadline: now + self.p.connect_timeout };
        self.send_session(SESSION_INVOKE_ID, AppSession::Start(start));
    }

    /// Send one ECMA-354 message with invoke id `invoke_id` (these always encode).
    fn send_session(&mut self, invoke_id: i64, msg: AppSession) {
        let Some(x) = &self.xml else { return };
        let (framing, version) = x.wire();
        self.scratch.clear();
        let sent = XmlMessage::Session { invoke_id: Some(invoke_id), msg }.encode(framing, version, &mut self.scratch).map_err(EncodeProblem::Xml).and_then(|()| self.frame_scratch());
        if let Err(e) = sent {
            warn!(error = %e, "a session message does not frame");
        }
    }

    /// `close()` of an XML link: `StopApplicationSession` and wait for its answer. False when
    /// there is no session to stop.
    pub(super) fn stop_xml_session(&mut self, now: Instant) -> bool {
        let Some(id) = self.xml.as_ref().and_then(|x| x.session_id.clone()) else { return false };
        self.send_session(SESSION_INVOKE_ID, AppSession::Stop { session_id: id });
        self.phase = Phase::Releasing { deadline: now + self.p.request_timeout.min(Duration::from_secs(2)) };
        true
    }

    /// On a timeout while up: renew the session when its time has come.
    pub(super) fn renew_xml_session(&mut self, now: Instant) {
        let Some(x) = &mut self.xml else { return };
        let (Some(at), Some(id)) = (x.renew_at, x.session_id.clone()) else { return };
        if now < at {
            return;
        }
        x.renew_at = Some(now + x.duration / 2);
        let duration = u32::try_from(x.profile.session_duration.as_secs()).ok();
        self.send_session(SESSION_INVOKE_ID, AppSession::ResetTimer { session_id: id, duration });
    }

    /// The PBX granted the session.
    fn session_granted(&mut self, now: Instant, session_id: String, duration: Option<u32>) {
        if let Some(x) = &mut self.xml {
            x.session_id = Some(session_id);
            if let Some(d) = duration.filter(|d| *d > 0) {
                x.duration = Duration::from_secs(u64::from(d));
            }
            // Half the duration: a renewal lost or answered late still lands in time.
            x.renew_at = Some(now + x.duration / 2);
        }
        self.come_up(now);
    }

    /// One frame of an XML link (any phase).
    pub(super) fn handle_xml_frame(&mut self, now: Instant, frame: &Bytes) {
        let framing = self.xml.as_ref().map_or(Framing::XmlHeader, |x| x.framing);
        trace!(xml = %xml::for_log(frame), "received");
        let msg = match XmlMessage::decode(frame, framing) {
            Ok(m) => m,
            Err(e) => return self.on_undecodable_xml(now, frame, framing, &e),
        };
        match (self.phase, msg) {
            (Phase::Dead, _) => {}
            (Phase::Associating { .. }, XmlMessage::Session { msg, .. }) => match msg {
                AppSession::StartPos { session_id, duration, .. } => self.session_granted(now, session_id, duration),
                AppSession::StartNeg { error } => self.lose(LinkLoss::SessionRefused(reason(&error))),
                AppSession::Terminated { reason: r, .. } => self.lose(LinkLoss::SessionTerminated(reason(&r))),
                other => debug!(message = other.name(), "ignored before the session is open"),
            },
            // The PBX's keep-alive may come before its answer: answer it, ignore anything else.
            (Phase::Associating { .. }, XmlMessage::Csta(a @ Apdu::Invoke(_))) if matches!(&a, Apdu::Invoke(i) if i.op.known() == Some(Operation::SystemStatus)) => self.on_apdu(now, a),
            (Phase::Associating { .. }, other) => debug!(message = %other.name(), "ignored before the session is open"),
            (Phase::Releasing { .. }, XmlMessage::Session { msg: AppSession::StopPos | AppSession::StopNeg { .. } | AppSession::Terminated { .. }, .. }) => self.finish(SessionEvent::Closed),
            (Phase::Releasing { .. }, _) => {}
            (Phase::Up, XmlMessage::Csta(a)) => self.on_apdu(now, a),
            (Phase::Up, XmlMessage::Session { invoke_id, msg }) => match msg {
                AppSession::ResetTimerPos { duration } => {
                    if let (Some(x), Some(d)) = (&mut self.xml, duration.filter(|d| *d > 0)) {
                        x.duration = Duration::from_secs(u64::from(d));
                    }
                }
                AppSession::ResetTimerNeg { error } => self.lose(LinkLoss::SessionRefused(format!("renewal: {}", reason(&error)))),
                AppSession::Terminated { reason: r, .. } => self.lose(LinkLoss::SessionTerminated(reason(&r))),
                AppSession::Stop { .. } => {
                    // Answered on the PBX's own invoke id.
                    self.send_session(invoke_id.unwrap_or(SESSION_INVOKE_ID), AppSession::StopPos);
                    self.lose(LinkLoss::ReleasedByPeer);
                }
                other => {
                    debug!(message = other.name(), "unexpected session message");
                    Stats::inc(&self.stats.unexpected_responses);
                }
            },
            (Phase::Up, XmlMessage::Unknown { invoke_id, name, .. }) => {
                if name.ends_with("Response") || name.ends_with("Event") || invoke_id == Some(EVENT_INVOKE_ID) {
                    debug!(message = %name, "unknown message from the PBX");
                    Stats::inc(&self.stats.unexpected_responses);
                } else {
                    // A request we do not serve (SystemRegister, a vendor's): refused, like an
                    // unknown ROSE invoke.
                    Stats::inc(&self.stats.rejects_sent);
                    self.send(&Apdu::reject(invoke_id, RejectProblem::Invoke(1)));
                }
            }
        }
    }

    /// A frame that does not decode: counted; an answer to a request of ours (by the header's id)
    /// fails that request now with the decode error. ECMA-323 has no reject for a broken answer,
    /// so nothing is sent for it; a broken request of the PBX's gets a `CSTAErrorCode`.
    fn on_undecodable_xml(&mut self, now: Instant, frame: &Bytes, framing: Framing, e: &DecodeError) {
        Stats::inc(&self.stats.decode_errors);
        if matches!(self.phase, Phase::Associating { .. }) {
            self.lose(LinkLoss::UndecodableDuringAssociation(e.clone()));
            return;
        }
        if self.phase != Phase::Up {
            return;
        }
        let id = xml::frame_invoke_id(frame, framing);
        match id.and_then(|i| Some((i, self.invokes.take(i)?))) {
            Some((i, p)) => {
                let operation = p.operation();
                warn!(error = %e, invoke_id = i, operation = operation.name(self.p.dialect), "undecodable answer from the PBX");
                Stats::inc(&self.stats.undecodable_responses);
                self.complete(now, p, Err(RequestError::Decode { operation, offset: e.offset, reason: e.kind.clone() }));
            }
            None => {
                warn!(error = %e, "undecodable message from the PBX");
                if id.is_some_and(|i| i != EVENT_INVOKE_ID) {
                    Stats::inc(&self.stats.rejects_sent);
                    self.send(&Apdu::reject(id, RejectProblem::General(2)));
                }
            }
        }
    }

    /// The outstanding request an answer without invoke id answers: the oldest of operation
    /// `op` (of any, for an error). Only on links whose answers carry no id (`xml-nul`).
    pub(super) fn oldest_unnumbered(&self, op: Option<Operation>) -> Option<i64> {
        if self.xml.as_ref().is_none_or(|x| x.framing != Framing::XmlNul) {
            return None;
        }
        self.invokes.iter().filter(|(_, p)| op.is_none_or(|o| p.operation() == o)).min_by_key(|(id, p)| (p.deadline(), **id)).map(|(id, _)| *id)
    }
}
