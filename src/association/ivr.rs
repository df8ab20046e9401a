//! The IVR dialogue (step 7–8): the gateway is the IVR application's logic; the IVR platform
//! only plays prompts and collects DTMF. Identify the association (context id, else calling
//! number), name the account and require the confirm key (anti-phishing), collect the code,
//! compare it in constant time, bind or say what went wrong.

use subtle::ConstantTimeEq;

use super::engine::{audit, Engine, MAX_CODE_ENTRIES, MAX_ENTRIES_PER_CALL};
use super::*;

/// The confirm key after the account's name.
const CONFIRM_KEY: &str = "1";
/// IVR calls followed at once at most.
pub(crate) const MAX_IVR_CALLS: usize = 10_000;
/// How many times the caller may key an unknown context id.
const CONTEXT_TRIES: u32 = 3;

#[derive(Debug, Clone)]
pub(crate) enum Stage {
    AwaitContext { tries: u32 },
    AwaitConfirm { association: String },
    AwaitCode { association: String, tries: u32 },
    Done,
}

#[derive(Debug, Clone)]
pub(crate) struct IvrCall {
    /// The platform's last request on the call: a call silent for [`super::engine::FORGET_AFTER`]
    /// is forgotten (a live one speaks every few seconds).
    pub(crate) last: Millis,
    pub(crate) from: String,
    pub(crate) stage: Stage,
}

fn gather(max_digits: usize) -> Option<Gather> {
    Some(Gather { max_digits, finish_on_key: "#".into(), timeout_ms: 8000 })
}
fn prompt(id: &'static str, say: &str, max_digits: usize) -> IvrReply {
    IvrReply { prompt: id, say: say.to_owned(), gather: gather(max_digits), hangup: false }
}
fn bye(id: &'static str, say: &str) -> IvrReply {
    IvrReply { prompt: id, say: say.to_owned(), gather: None, hangup: true }
}

impl Engine {
    /// One request of the IVR platform on `call`; it also proves the platform still follows the
    /// call (the association's `ivr_timeout` starts again).
    pub(crate) fn ivr(&mut self, call: &str, from: &str, to: &str, digits: Option<&str>, now: Millis, actions: &mut Vec<Action>) -> IvrReply {
        let reply = self.ivr_step(call, from, to, digits, now, actions);
        if let Some(c) = self.ivr_calls.get_mut(call) {
            c.last = now;
        }
        let association = match self.ivr_calls.get(call).map(|c| &c.stage) {
            Some(Stage::AwaitConfirm { association } | Stage::AwaitCode { association, .. }) => Some(association.clone()),
            _ => None,
        };
        if let Some(id) = association {
            let deadline = self.assocs.get(&id).map(|a| self.ivr_deadline(&a.view.pbx, now));
            if let (Some(a), Some(d)) = (self.assocs.get_mut(&id).filter(|a| a.view.state == State::InIvr), deadline) {
                a.deadline = Some(d);
            }
        }
        reply
    }

    fn ivr_step(&mut self, call: &str, from: &str, _to: &str, digits: Option<&str>, now: Millis, actions: &mut Vec<Action>) -> IvrReply {
        let digits = digits.map(|d| d.trim().trim_end_matches('#').trim_start_matches('*').to_owned());
        let Some(session) = self.ivr_calls.get(call).cloned() else {
            // First request of a call. Find the association by calling number where the PBX
            // presents a known DID; otherwise collect the context id (dialled after the number
            // or sent as DTMF by the gateway, or keyed by the user).
            if self.ivr_calls.len() >= MAX_IVR_CALLS {
                // More calls in the IVR than any PBX fleet places: a platform gone wrong, or
                // someone with the webhook key. Refuse new calls rather than grow.
                return bye("busy", "The service is busy. Please try again later. Goodbye.");
            }
            self.ivr_calls.insert(call.to_owned(), IvrCall { last: now, from: from.to_owned(), stage: Stage::AwaitContext { tries: 0 } });
            if let Some(id) = self.by_calling_number(from) {
                return self.confirm_prompt(call, &id, now, actions);
            }
            if let Some(d) = digits.filter(|d| !d.is_empty()) {
                return self.context_entered(call, &d, 0, now, actions);
            }
            return prompt("enter_context", "Please enter the number shown in your app, then the hash key.", 12);
        };
        let entered = digits.unwrap_or_default();
        match session.stage {
            Stage::Done => bye("goodbye", "Goodbye."),
            Stage::AwaitContext { tries } => self.context_entered(call, &entered, tries, now, actions),
            Stage::AwaitConfirm { association } => {
                if entered == CONFIRM_KEY && self.live_in_call(&association) {
                    self.set_stage(call, Stage::AwaitCode { association: association.clone(), tries: 0 });
                    let n = self.assocs.get(&association).map_or(6, |a| a.code.len());
                    self.step(&association, now, "confirmed", "the caller confirmed the account", actions);
                    prompt("enter_code", "Please enter the code shown in your app, then the hash key.", n)
                } else {
                    self.set_stage(call, Stage::Done);
                    if self.live_in_call(&association) {
                        self.fail_attempt(&association, Reason::NotConfirmed, "the caller did not confirm the account", now, actions);
                    }
                    bye("not_linked", "Nothing was linked. Goodbye.")
                }
            }
            Stage::AwaitCode { association, tries } => self.code_entered(call, &association, &entered, tries, now, actions),
        }
    }

    fn set_stage(&mut self, call: &str, stage: Stage) {
        if let Some(c) = self.ivr_calls.get_mut(call) {
            c.stage = stage;
        }
    }

    /// The association is waiting for this proof call.
    fn live_in_call(&self, id: &str) -> bool {
        self.assocs.get(id).is_some_and(|a| matches!(a.view.state, State::Calling | State::Ringing | State::InIvr))
    }

    /// A live association in a call whose extension the calling number presents.
    fn by_calling_number(&self, from: &str) -> Option<String> {
        let mut found = self.by_ext.iter().filter_map(|((pbx, ext), id)| {
            let prefix = self.policies.get(pbx)?.did_prefix.as_ref()?;
            (from == format!("{prefix}{ext}") && self.live_in_call(id)).then(|| id.clone())
        });
        let first = found.next()?;
        // Ambiguous: ask for the context id instead.
        found.next().is_none().then_some(first)
    }

    fn context_entered(&mut self, call: &str, entered: &str, tries: u32, now: Millis, actions: &mut Vec<Action>) -> IvrReply {
        match self.by_context.get(entered).cloned().filter(|id| self.live_in_call(id)) {
            Some(id) => self.confirm_prompt(call, &id, now, actions),
            None if tries + 1 < CONTEXT_TRIES => {
                self.set_stage(call, Stage::AwaitContext { tries: tries + 1 });
                prompt("unknown_context", "This number is not known. Please enter the number shown in your app, then the hash key.", 12)
            }
            None => {
                self.set_stage(call, Stage::Done);
                bye("unknown_context_bye", "This number is not known. Goodbye.")
            }
        }
    }

    /// Name the account being linked and ask for the confirm key (anti-phishing).
    fn confirm_prompt(&mut self, call: &str, id: &str, now: Millis, actions: &mut Vec<Action>) -> IvrReply {
        let Some(a) = self.assocs.get(id) else { return bye("goodbye", "Goodbye.") };
        let name = a.account_name.clone().unwrap_or_else(|| a.view.account.clone());
        self.set_stage(call, Stage::AwaitConfirm { association: id.to_owned() });
        self.step(id, now, "ivr_identified", "the IVR found the association", actions);
        prompt("confirm_account", &format!("To link this phone to the account of {name}, press 1. If you did not ask for this, hang up."), 1)
    }

    fn code_entered(&mut self, call: &str, id: &str, entered: &str, tries: u32, now: Millis, actions: &mut Vec<Action>) -> IvrReply {
        let Some(a) = self.assocs.get(id) else {
            self.set_stage(call, Stage::Done);
            return bye("goodbye", "Goodbye.");
        };
        if !self.live_in_call(id) {
            self.set_stage(call, Stage::Done);
            return bye("no_longer_valid", "This request is no longer valid. Goodbye.");
        }
        if now >= a.view.expires_at {
            // "Expired" is told apart from "incorrect" (without revealing anything of the code).
            self.set_stage(call, Stage::Done);
            self.finish(id, State::Expired, Some(Reason::Expired), "the code expired before it was entered", now, actions);
            return bye("code_expired", "This code has expired. Please request a new code in the app. Goodbye.");
        }
        let ok = !a.code.is_empty() && a.code.len() == entered.len() && bool::from(a.code.as_bytes().ct_eq(entered.as_bytes()));
        let (pbx, ext, tenant, account) = (a.view.pbx.clone(), a.view.extension.clone(), a.view.tenant.clone(), a.view.account.clone());
        let ext_key = CounterKey::Extension { pbx: pbx.clone(), extension: ext.clone() };
        let acc_key = CounterKey::Account { tenant: tenant.clone(), account: account.clone() };
        if ok {
            self.set_stage(call, Stage::Done);
            let from = self.ivr_calls.get(call).map(|c| c.from.clone()).filter(|f| !f.is_empty());
            let binding = Binding { tenant, account, pbx: pbx.clone(), extension: ext.clone(), did: from, did_verified: false, bound_at: now };
            // Success resets the failure counters (only success does).
            for key in [ext_key, acc_key] {
                if self.counters.get(&key).copied().unwrap_or(0) != 0 {
                    self.counters.insert(key.clone(), 0);
                    actions.push(Action::Store(StoreWrite::Counter { key, value: 0 }));
                }
            }
            self.bindings.insert((pbx, ext), binding.clone());
            actions.push(Action::Store(StoreWrite::Bind(binding)));
            // The IVR hangs up; the call is the PBX's to clear.
            if let Some(a) = self.assocs.get_mut(id) {
                a.view.call = None;
            }
            self.finish(id, State::Bound, None, "the code matched: extension bound", now, actions);
            let name = self.assocs.get(id).and_then(|a| a.account_name.clone()).unwrap_or_else(|| self.assocs.get(id).map(|a| a.view.account.clone()).unwrap_or_default());
            return bye("bound", &format!("Thank you. This phone is now linked to the account of {name}. Goodbye."));
        }
        // Wrong code: counted per extension and per account, and per code.
        let mut locked = false;
        for key in [ext_key, acc_key] {
            let v = self.counters.entry(key.clone()).or_insert(0);
            *v = v.saturating_add(1);
            actions.push(Action::Store(StoreWrite::Counter { key, value: *v }));
        }
        let entries = match self.assocs.get_mut(id) {
            Some(a) => {
                a.code_entries += 1;
                a.code_entries
            }
            None => MAX_CODE_ENTRIES,
        };
        if let Some(a) = self.assocs.get(id) {
            actions.push(audit(&a.view, now, "code_entered", "wrong_code"));
            locked = self.locked_out(&a.view.pbx, &a.view.extension, &a.view.tenant, &a.view.account);
        }
        if locked {
            self.set_stage(call, Stage::Done);
            self.fail_attempt(id, Reason::LockedOut, "too many wrong codes for this extension or account", now, actions);
            return bye("locked_out", "Too many wrong codes. This phone cannot be linked for now. Goodbye.");
        }
        if entries >= MAX_CODE_ENTRIES {
            self.set_stage(call, Stage::Done);
            self.fail_attempt(id, Reason::AttemptsExhausted, "the code was entered wrongly too often", now, actions);
            return bye("attempts_exhausted", "Too many wrong codes. Please request a new code in the app. Goodbye.");
        }
        if tries + 1 >= MAX_ENTRIES_PER_CALL {
            self.set_stage(call, Stage::Done);
            self.fail_attempt(id, Reason::WrongCode, "three wrong codes on this call", now, actions);
            return bye("wrong_code_bye", "The code is not correct. You can try again from the app. Goodbye.");
        }
        self.set_stage(call, Stage::AwaitCode { association: id.to_owned(), tries: tries + 1 });
        let n = self.assocs.get(id).map_or(6, |a| a.code.len());
        prompt("wrong_code", "The code is not correct. Please try again, then the hash key.", n)
    }

    pub(crate) fn ivr_hangup(&mut self, call: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(c) = self.ivr_calls.remove(call) else { return };
        if let Stage::AwaitConfirm { association } | Stage::AwaitCode { association, .. } = c.stage {
            if self.live_in_call(&association) {
                self.fail_attempt(&association, Reason::CallCleared, "the caller hung up in the IVR", now, actions);
            }
        }
    }
}
