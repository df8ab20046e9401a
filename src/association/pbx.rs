//! The CSTA side of the engine: the requests it sends the PBX (each with a [`RequestId`] and,
//! when its answer matters, a [`Purpose`]), and what it does with the answers and events that come
//! back through [`Engine::csta`]: monitor, lock call, proof call, digits.

use super::model::*;
use super::*;

impl Engine {
    /// Name a new CSTA request for the association `id` (see [`RequestId`]); `purpose` is what
    /// its answer is read as (`None`: its answer changes nothing and is not awaited).
    pub(crate) fn request(&mut self, id: &str, pbx: &str, request: CstaRequest, purpose: Option<Purpose>, actions: &mut Vec<Action>) -> RequestId {
        let rid = RequestId(self.next_request);
        self.next_request += 1;
        if let Some(purpose) = purpose {
            self.pending.insert(rid, Pending { association: id.to_owned(), purpose });
        }
        actions.push(Action::Csta { id: rid, association: id.into(), pbx: pbx.into(), request });
        rid
    }

    /// Before a new attempt: what the PBX may still say about the last one must not be taken for
    /// the new one's. Its calls are remembered as ended, and its MakeCalls not answered yet keep
    /// events from naming the new proof call until they are (then their calls are known).
    pub(crate) fn retire_attempt(&mut self, id: &str) {
        let Some(a) = self.assocs.get(id) else { return };
        let unanswered: Vec<RequestId> = [a.attempt.lock_request, a.attempt.proof_request].into_iter().flatten().filter(|r| self.pending.contains_key(r)).collect();
        let Some(a) = self.assocs.get_mut(id) else { return };
        a.earlier_make_calls.extend(unanswered);
        for call in [a.view.call.take(), a.lock_call.take()].into_iter().flatten() {
            a.call_ended(call);
        }
        a.lock_unknown = false;
    }

    /// Whether the engine awaits the answer to `id`. The shell clears a call that a MakeCall it no
    /// longer awaits placed (nothing else would).
    pub fn awaits(&self, id: RequestId) -> bool {
        self.pending.contains_key(&id)
    }

    /// Forget the association's proof call and ask the shell to clear it, if there is one; and
    /// its lock call, while the attempt still waits for that to end (the phone prompts its user,
    /// who has not picked up): the gateway placed it too, and nothing else would end it.
    pub(crate) fn clear_call(&mut self, id: &str, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get_mut(id) else { return };
        let lock = if a.view.state == State::Locking { a.lock_call.take() } else { None };
        let (pbx, extension) = (a.view.pbx.clone(), a.view.extension.clone());
        let calls: Vec<CallId> = [a.view.call.take(), lock].into_iter().flatten().collect();
        for call in calls {
            if let Some(a) = self.assocs.get_mut(id) {
                a.call_ended(call.clone());
            }
            self.request(id, &pbx, CstaRequest::ClearConnection { call, extension: extension.clone() }, None, actions);
        }
    }

    /// What the PBX link reported: a request's answer, an event, the link's loss.
    pub fn csta(&mut self, input: CstaInput) -> Vec<Action> {
        let mut actions = Vec::new();
        match input {
            CstaInput::Done { id, outcome, now } => self.csta_done(id, outcome, now, &mut actions),
            CstaInput::Event { pbx, extension, event, now } => self.csta_event(&pbx, &extension, event, now, &mut actions),
            CstaInput::LinkDown { pbx, now } => {
                let ids: Vec<AssociationId> = self.by_ext.iter().filter(|((p, _), _)| *p == pbx).map(|(_, id)| id.clone()).collect();
                for id in ids {
                    if let Some(a) = self.assocs.get_mut(id.as_str()) {
                        a.monitored = false;
                        if matches!(a.view.state, State::Monitoring | State::Locking | State::Calling | State::Ringing | State::InIvr) {
                            // A lost CTI link does not end the PBX's calls: the attempt fails
                            // closed and its call is cleared once the link is back (the shell
                            // retries the ClearConnection).
                            self.fail_attempt(&id, Reason::LinkDown, "PBX link lost", now, &mut actions);
                        }
                    }
                }
            }
        }
        self.rearm();
        actions
    }

    /// Monitor running: lock first if the policy says so, else place the proof call.
    pub(super) fn after_monitor(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get(id) else { return };
        let (pbx, ext) = (a.view.pbx.clone(), a.view.extension.clone());
        match self.policies.get(&pbx).and_then(|p| p.lock_prefix.clone()) {
            Some(prefix) => {
                if let Some(a) = self.assocs.get_mut(id) {
                    a.lock_unknown = true;
                }
                self.set_state(id, State::Locking, now, "locking", "MakeCall to the lock prefix", actions);
                let rid = self.request(id, &pbx, CstaRequest::MakeCall { from: ext, to: prefix }, Some(Purpose::LockCall), actions);
                if let Some(a) = self.assocs.get_mut(id) {
                    a.attempt.lock_request = Some(rid);
                }
            }
            None => self.place_call(id, now, actions),
        }
    }

    fn place_call(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get(id) else { return };
        let (pbx, ext) = (a.view.pbx.clone(), a.view.extension.clone());
        let Some(ctx) = a.attempt.context.clone() else { return };
        let Some(policy) = self.policies.get(&pbx) else { return };
        let to = match policy.context_delivery {
            ContextDelivery::DialSuffix => format!("{}*{ctx}#", policy.ivr_number),
            ContextDelivery::Dtmf | ContextDelivery::None => policy.ivr_number.clone(),
            // The held number alone: it is what names the attempt at the IVR.
            ContextDelivery::NumberPool => match &a.attempt.pool_number {
                Some(n) => n.clone(),
                None => return,
            },
        };
        let deadline = now + policy.ring_timeout.as_millis() as Millis;
        if let Some(a) = self.assocs.get_mut(id) {
            a.deadline = Some(deadline);
        }
        self.set_state(id, State::Calling, now, "calling", "MakeCall from the extension to the IVR", actions);
        let rid = self.request(id, &pbx, CstaRequest::MakeCall { from: ext, to }, Some(Purpose::ProofCall), actions);
        if let Some(a) = self.assocs.get_mut(id) {
            a.attempt.proof_request = Some(rid);
        }
    }

    fn csta_done(&mut self, rid: RequestId, outcome: Result<CstaResultInfo, CstaFailure>, now: Millis, actions: &mut Vec<Action>) {
        // Unknown (never issued, or its association forgotten) or answered already: ignored.
        let Some(Pending { association, purpose }) = self.pending.remove(&rid) else { return };
        let id = association.as_str();
        let Some(a) = self.assocs.get_mut(id) else { return };
        if matches!(purpose, Purpose::LockCall | Purpose::ProofCall) && matches!(outcome, Err(CstaFailure::LinkDown)) {
            a.calls_unknown = true;
        }
        // A MakeCall of an earlier attempt: its call is that attempt's, never this one's.
        if matches!(purpose, Purpose::LockCall | Purpose::ProofCall) && ![a.attempt.lock_request, a.attempt.proof_request].contains(&Some(rid)) {
            a.earlier_make_calls.retain(|r| *r != rid);
            if let Ok(CstaResultInfo { call: Some(call) }) = outcome {
                a.call_ended(call.clone());
                // A proof call nobody follows would ring for nothing: cleared. The PBX ends a
                // lock call itself.
                if purpose == Purpose::ProofCall {
                    let (pbx, extension) = (a.view.pbx.clone(), a.view.extension.clone());
                    self.request(id, &pbx, CstaRequest::ClearConnection { call, extension }, None, actions);
                }
            }
            return;
        }
        let state = a.view.state;
        let failure_reason = |f: CstaFailure| match f {
            CstaFailure::LinkDown => Reason::LinkDown,
            CstaFailure::Busy => Reason::Busy,
            CstaFailure::Rejected => Reason::RejectedByPbx,
        };
        match (purpose, outcome) {
            (Purpose::Monitor, Ok(_)) if state == State::Monitoring => {
                if let Some(a) = self.assocs.get_mut(id) {
                    a.monitored = true;
                }
                self.after_monitor(id, now, actions);
            }
            // A lost link is the link failing, not the PBX refusing the monitor.
            (Purpose::Monitor, Err(CstaFailure::LinkDown)) if state == State::Monitoring => self.fail_attempt(id, Reason::LinkDown, "PBX link lost during MonitorStart", now, actions),
            (Purpose::Monitor, Err(f)) if state == State::Monitoring => self.fail_attempt(id, failure_reason(f), "MonitorStart refused", now, actions),
            // The lock feature call: the PBX ends it itself. Its id is remembered whenever it
            // comes (also after the attempt moved on, when the lock call's end was seen first), so
            // that its events are never taken for the proof call's.
            (Purpose::LockCall, Ok(info)) => {
                if let (Some(a), Some(call)) = (self.assocs.get_mut(id), info.call) {
                    a.lock_call = Some(call);
                    a.lock_unknown = false;
                }
            }
            (Purpose::ProofCall, Ok(info)) => self.make_call_placed(id, info.call, actions),
            (Purpose::LockCall, Err(f)) if state == State::Locking => self.fail_attempt(id, failure_reason(f), "the PBX refused the lock call", now, actions),
            (Purpose::ProofCall, Err(f)) if state == State::Calling => self.fail_attempt(id, failure_reason(f), "the PBX refused the proof call", now, actions),
            (Purpose::Digits, Err(_)) => self.step(id, now, "dtmf_failed", "the PBX refused to send the context digits", actions),
            _ => {}
        }
    }

    /// A proof call's MakeCall succeeded: the association follows it if it is waiting for one. A
    /// proof call it does not follow — its result came after the attempt failed or the
    /// association ended, or it follows another call — is cleared at once: nothing else would
    /// ever clear it, and the phone would ring for nothing.
    fn make_call_placed(&mut self, id: &str, call: Option<CallId>, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get_mut(id) else { return };
        let state = a.view.state;
        let Some(call) = call else { return };
        match (state, a.view.call.as_ref()) {
            (State::Calling | State::Ringing, None) => {
                a.view.call = Some(call);
                // Durable before anything else happens: a restarted gateway clears it.
                actions.push(Action::Store(StoreWrite::Association(a.view.clone())));
            }
            // Events came first and named it already.
            (State::Calling | State::Ringing | State::InIvr, Some(c)) if *c == call => {}
            _ => {
                a.call_ended(call.clone());
                let (pbx, extension) = (a.view.pbx.clone(), a.view.extension.clone());
                self.request(id, &pbx, CstaRequest::ClearConnection { call, extension }, None, actions);
            }
        }
    }

    fn csta_event(&mut self, pbx: &str, extension: &str, event: CallEvent, now: Millis, actions: &mut Vec<Action>) {
        let Some(id) = self.by_ext.get(&(pbx.into(), extension.into())).cloned() else { return };
        let Some(a) = self.assocs.get_mut(id.as_str()) else { return };
        let state = a.view.state;
        if state == State::Locking {
            let is_lock_call = a.lock_call.as_ref().is_none_or(|c| c == event.call()) && !a.ended_calls.contains(event.call());
            match event {
                CallEvent::Cleared { .. } if is_lock_call => {
                    self.step(&id, now, "locked", "the phone is locked; its user unlocks it with the local PIN", actions);
                    self.place_call(&id, now, actions);
                }
                CallEvent::Failed { .. } if is_lock_call => self.fail_attempt(&id, Reason::RejectedByPbx, "the PBX refused the lock feature", now, actions),
                _ => {}
            }
            return;
        }
        if !matches!(state, State::Calling | State::Ringing | State::InIvr) {
            return;
        }
        // Follow our call only; the first event names it if the MakeCall result is late, unless
        // it is (or, while the PBX has not named it, could be) this attempt's lock call or a call
        // of an earlier attempt: then only the proof call's MakeCall result names it.
        let named = match &a.view.call {
            Some(c) if c != event.call() => return,
            Some(_) => true,
            None => !a.lock_unknown && a.lock_call.as_ref() != Some(event.call()) && a.earlier_make_calls.is_empty() && !a.calls_unknown && !a.ended_calls.contains(event.call()),
        };
        // A PBX that repeats events without end must not hold the engine (each step is written);
        // events while the attempt waits for its call to be named count too.
        a.attempt.events += 1;
        if a.attempt.events > MAX_ATTEMPT_EVENTS {
            self.fail_attempt(&id, Reason::PbxFlood, "the PBX sent more events about the proof call than a call has", now, actions);
            return;
        }
        if !named {
            return;
        }
        if a.view.call.is_none() {
            a.view.call = Some(event.call().clone());
        }
        match event {
            CallEvent::Initiated { .. } if state == State::Calling => self.set_state(&id, State::Ringing, now, "ringing", "the phone is ringing", actions),
            CallEvent::Initiated { .. } => {}
            CallEvent::Originated { .. } => {
                if !std::mem::replace(&mut a.attempt.answered, true) {
                    self.step(&id, now, "answered", "the user picked up", actions);
                }
            }
            CallEvent::Delivered { .. } => {
                if !std::mem::replace(&mut a.attempt.reaching_ivr, true) {
                    self.step(&id, now, "reaching_ivr", "the call is reaching the IVR", actions);
                }
            }
            CallEvent::Established { .. } => {
                if state == State::InIvr {
                    return;
                }
                let deadline = self.ivr_deadline(pbx, now);
                if let Some(a) = self.assocs.get_mut(id.as_str()) {
                    a.deadline = Some(deadline);
                    a.attempt.in_ivr_at = Some(now);
                }
                self.set_state(&id, State::InIvr, now, "in_ivr", "the user is connected to the IVR", actions);
                let dtmf = self.policies.get(pbx).is_some_and(|p| p.context_delivery == ContextDelivery::Dtmf);
                if let (true, Some(a)) = (dtmf, self.assocs.get(id.as_str())) {
                    if let (Some(call), Some(ctx)) = (a.view.call.clone(), a.attempt.context.as_ref()) {
                        let digits = format!("*{ctx}#");
                        self.request(&id, pbx, CstaRequest::SendDigits { call, extension: extension.into(), digits }, Some(Purpose::Digits), actions);
                    }
                }
                // An IVR request that came just before this report was waiting for it.
                self.claim_waiting(&id, now, actions);
            }
            CallEvent::Failed { cause, .. } => {
                let reason = match cause {
                    Some(3) | Some(7) => Reason::Busy,
                    Some(18) | Some(35) => Reason::PhoneLocked,
                    Some(10) | Some(60) => Reason::NoAnswer,
                    _ => Reason::RejectedByPbx,
                };
                // The cause by its ECMA-269 name (a number only when it has none).
                let named = cause.map_or_else(|| "unknown".to_owned(), |c| crate::codec::names::event_cause(c).map_or_else(|| c.to_string(), str::to_owned));
                self.fail_attempt(&id, reason, &format!("the call failed (cause: {named})"), now, actions);
            }
            CallEvent::Diverted { .. } => self.fail_attempt(&id, Reason::CallDiverted, "the proof call left the extension (diverted, transferred or conferenced)", now, actions),
            CallEvent::Cleared { .. } => {
                let reason = if state == State::InIvr { Reason::CallCleared } else { Reason::NoAnswer };
                if let Some(a) = self.assocs.get_mut(id.as_str()) {
                    a.view.call = None; // nothing to clear any more
                }
                self.fail_attempt(&id, reason, "the call ended before the code was accepted", now, actions);
            }
        }
    }
}
