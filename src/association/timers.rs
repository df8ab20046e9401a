//! The engine's timer interface: [`Engine::poll_timeout`] / [`Engine::handle_timeout`], the
//! ordered index of live associations' deadlines that answers the first without a scan, what a
//! passed deadline does, and when ended associations and the other memory are forgotten.

use super::model::*;
use super::*;

impl Engine {
    /// The earliest moment the engine has something to do without any input (a code expiring,
    /// a phone ringing too long, an IVR request waiting, memory to free): the shell calls
    /// [`Engine::handle_timeout`] then. `None`: nothing is due, ever, without an input.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let sweep = (!self.ivr_calls.is_empty() || !self.ended_contexts.is_empty() || !self.proof_calls.is_empty() || !self.blocks.is_empty()).then_some(self.next_sweep);
        [self.timers.first().map(|(t, _)| *t), self.forget.first().map(|(t, _)| *t), sweep].into_iter().flatten().min()
    }

    /// Do what is due at `now` (see [`Engine::poll_timeout`]); before the earliest deadline it
    /// does nothing. Reads only the deadlines that are due.
    pub fn handle_timeout(&mut self, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        self.timeouts(now, &mut actions);
        self.rearm();
        actions
    }

    /// Re-arm the deadlines of the associations the last input changed.
    pub(crate) fn rearm(&mut self) {
        while let Some(id) = self.touched.pop() {
            let next = self.assocs.get(id.as_str()).and_then(|a| a.next_deadline());
            if self.armed.get(&id) == next.as_ref() {
                continue;
            }
            if let Some(old) = self.armed.remove(&id) {
                self.timers.remove(&(old, id.clone()));
            }
            if let Some(t) = next {
                self.timers.insert((t, id.clone()));
                self.armed.insert(id, t);
            }
        }
    }

    pub(crate) fn touch(&mut self, id: &str) {
        self.touched.push(id.to_owned());
    }

    /// When the IVR platform, silent from `now` on, has lost a call of `pbx`'s association.
    pub(crate) fn ivr_deadline(&self, pbx: &str, now: Millis) -> Millis {
        now + self.policies.get(pbx).map_or(60_000, |p| p.ivr_timeout.as_millis() as Millis)
    }

    /// What is due at `now`: each live association whose deadline passed, ended ones to forget,
    /// and (every [`SWEEP_EVERY`]) the rest of the memory.
    pub(crate) fn timeouts(&mut self, now: Millis, actions: &mut Vec<Action>) {
        while let Some((at, id)) = self.timers.first().cloned() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id.clone()));
            self.armed.remove(&id);
            self.touch(&id);
            self.deadline_passed(&id, now, actions);
        }
        while let Some((at, id)) = self.forget.first().cloned() {
            if at > now {
                break;
            }
            self.forget.remove(&(at, id.clone()));
            // A step recorded after the end (a late IVR request) keeps it a while longer.
            let keep = self.assocs.get(id.as_str()).and_then(|a| a.view.history.last()).map(|s| s.at + FORGET_AFTER).filter(|t| *t > now);
            match keep {
                Some(t) => {
                    self.forget.insert((t, id));
                }
                None => self.forget_assoc(&id),
            }
        }
        // Swept whenever the engine wakes (those maps are bounded and small next to the
        // associations), and at least every SWEEP_EVERY while they hold anything.
        {
            self.next_sweep = now + SWEEP_EVERY;
            // Forget silent IVR calls and proof calls older than the hour they count in.
            self.ivr_calls.retain(|_, c| now.saturating_sub(c.last) < FORGET_AFTER);
            self.blocks.retain(|_, b| b.until > now);
            self.ended_contexts.retain(|_, at| now.saturating_sub(*at) < FORGET_AFTER);
            self.proof_calls.retain(|_, calls| {
                calls.retain(|c| now.saturating_sub(c.at) < HOUR);
                !calls.is_empty()
            });
        }
    }

    fn deadline_passed(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get(id) else { return };
        if a.view.state.is_final(a.view.retryable) {
            return;
        }
        if a.attempt.waiting.as_ref().is_some_and(|(_, until)| now >= *until) {
            self.claim_waiting(id, now, actions);
        } else if now >= a.view.expires_at {
            self.finish(id, State::Expired, Some(Reason::Expired), "expired", now, actions);
        } else if a.deadline.is_some_and(|d| now >= d) {
            match a.view.state {
                State::Calling | State::Ringing => self.fail_attempt(id, Reason::NoAnswer, "nobody answered in time", now, actions),
                State::InIvr => self.fail_attempt(id, Reason::IvrTimeout, "the IVR platform stopped sending requests for the call", now, actions),
                _ => {
                    // A deadline no state acts on must not stay due (the shell would wake at once,
                    // again and again).
                    if let Some(a) = self.assocs.get_mut(id) {
                        a.deadline = None;
                    }
                }
            }
        }
    }

    /// An ended association leaves memory (the store keeps it), with the requests it awaited.
    fn forget_assoc(&mut self, id: &str) {
        if self.assocs.get(id).is_some_and(|a| a.view.state.is_final(a.view.retryable)) {
            self.assocs.remove(id);
            self.pending.retain(|_, p| p.association != id);
        }
    }
}
