//! The IVR dialogue (step 7–8): the gateway is the IVR application's logic; the IVR platform
//! only plays prompts and collects DTMF.
//!
//! An IVR call first has to **claim** an attempt, and only the proof call can: it presents the
//! attempt's context id (or, with `context_delivery = "none"`, the extension's DID), the PBX has
//! reported the proof call answered at the IVR, the IVR call started within `ivr_claim_window`
//! of that report (a request that comes just before the report waits for it, [`CLAIM_WAIT`] at
//! most), and no other IVR call claimed the attempt first. Anything else is a suspected attack:
//! the attempt fails as `ivr_call_mismatch`, the call is cleared, the audit log and the account
//! are told. Then the IVR names the asking account (anti-phishing) and the phone's owner accepts
//! (1) or refuses (9); then the code, compared in constant time.

use subtle::ConstantTimeEq;

use super::model::{audit, Engine, IvrCall, Stage, MAX_CODE_ENTRIES, MAX_ENTRIES_PER_CALL};
use super::*;

/// "I asked for this", after the account's name.
pub const CONFIRM_KEY: &str = "1";
/// "I did not ask for this": blocks the account from the extension for `owner_block`.
pub const REFUSE_KEY: &str = "9";
/// IVR calls followed at once at most.
pub(crate) const MAX_IVR_CALLS: usize = 10_000;
/// How many times the caller may key an unknown context id.
const CONTEXT_TRIES: u32 = 3;

fn gather(max_digits: usize) -> Option<Gather> {
    Some(Gather { max_digits, finish_on_key: "#".into(), timeout_ms: 8000 })
}

impl Engine {
    /// The words of prompt `id` for `call`, in the call's language, with `values` in its
    /// placeholders; it gathers up to `max_digits`, or (`None`) says goodbye and hangs up. The
    /// text is the configured catalogue's ([`crate::ivr::prompts`]): the engine only picks the
    /// prompt and its values.
    fn words(&self, call: &str, id: &'static str, values: &[(&str, &str)], max_digits: Option<usize>) -> IvrReply {
        let language = self.ivr_calls.get(call).map_or_else(|| self.first_language(""), |c| c.language.clone());
        let say = self.prompts().render(&language, id, values);
        IvrReply { prompt: id, say, language, gather: max_digits.and_then(gather), hangup: max_digits.is_none() }
    }
    fn prompt(&self, call: &str, id: &'static str, max_digits: usize) -> IvrReply {
        self.words(call, id, &[], Some(max_digits))
    }
    fn bye(&self, call: &str, id: &'static str) -> IvrReply {
        self.words(call, id, &[], None)
    }
    fn not_linked(&self, call: &str) -> IvrReply {
        self.bye(call, "not_linked")
    }
    fn no_longer_valid(&self, call: &str) -> IvrReply {
        self.bye(call, "no_longer_valid")
    }

    /// The configuration's prompt catalogue (every policy carries the same one).
    fn prompts(&self) -> &crate::ivr::prompts::Prompts {
        self.policies.values().next().map_or_else(|| crate::ivr::prompts::Prompts::shipped_ref(), |p| &*p.prompts)
    }

    /// The language of a call not yet tied to a PBX: that of the PBXs whose IVR number it
    /// called (`to`), when they share one; else the one all PBXs share; else the default. Once
    /// the call presents an attempt, it is that attempt's PBX's ([`Engine::claim`]).
    fn first_language(&self, to: &str) -> String {
        let one = |mut langs: std::collections::hash_map::Values<'_, PbxId, Policy>, called: &dyn Fn(&Policy) -> bool| {
            let first = langs.find(|p| called(p))?;
            langs.filter(|p| called(p)).all(|p| p.language == first.language).then(|| first.language.clone())
        };
        let called = |p: &Policy| p.answers_number(to);
        one(self.policies.values(), &called).or_else(|| one(self.policies.values(), &|_| true)).unwrap_or_else(|| crate::ivr::prompts::DEFAULT_LANGUAGE.to_owned())
    }

    /// One request of the IVR platform on `call`; it also proves the platform still follows the
    /// call (the association's `ivr_timeout` starts again). `None`: the answer waits for the
    /// PBX's report of the answer and comes as [`Action::IvrReply`].
    pub(crate) fn ivr_request(&mut self, call: &str, from: &str, to: &str, digits: Option<&str>, now: Millis, actions: &mut Vec<Action>) -> Option<IvrReply> {
        let reply = self.ivr_step(call, from, to, digits, now, actions);
        if let Some(c) = self.ivr_calls.get_mut(call) {
            c.last = now;
        }
        let association = match self.ivr_calls.get(call).map(|c| &c.stage) {
            Some(Stage::AwaitConfirm { association } | Stage::AwaitCode { association, .. }) => Some(association.clone()),
            _ => None,
        };
        if let Some(id) = association {
            self.touch(&id);
            let deadline = self.assocs.get(id.as_str()).map(|a| self.ivr_deadline(&a.view.pbx, now));
            if let (Some(a), Some(d)) = (self.assocs.get_mut(id.as_str()).filter(|a| a.view.state == State::InIvr), deadline) {
                a.deadline = Some(d);
            }
        }
        reply
    }

    fn ivr_step(&mut self, call: &str, from: &str, to: &str, digits: Option<&str>, now: Millis, actions: &mut Vec<Action>) -> Option<IvrReply> {
        let digits = digits.map(|d| d.trim().trim_end_matches('#').trim_start_matches('*').to_owned());
        let Some(session) = self.ivr_calls.get(call).cloned() else {
            // First request of a call: the context id dialled after the number (or sent as DTMF
            // by the gateway), or, where the PBX does not deliver one, the calling number.
            if self.ivr_calls.len() >= MAX_IVR_CALLS {
                // More calls in the IVR than any PBX fleet places: a platform gone wrong, or
                // someone with the webhook key. Refuse new calls rather than grow.
                let language = self.first_language(to);
                let say = self.prompts().render(&language, "busy", &[]);
                return Some(IvrReply { prompt: "busy", say, language, gather: None, hangup: true });
            }
            let language = self.first_language(to);
            self.ivr_calls.insert(call.to_owned(), IvrCall { first: now, last: now, from: from.to_owned(), stage: Stage::AwaitContext { tries: 0 }, language });
            // A pool number names the attempt holding it; one that no attempt holds names none.
            if let Some(held) = self.by_pool_number(to) {
                return match held {
                    Some(id) => self.claim(call, &id, now, actions),
                    None => {
                        self.set_stage(call, Stage::Done);
                        Some(self.not_linked(call))
                    }
                };
            }
            if let Some(d) = digits.filter(|d| !d.is_empty()) {
                return self.context_entered(call, &d, 0, now, actions);
            }
            if let Some(id) = self.by_calling_number(from) {
                return self.claim(call, &id, now, actions);
            }
            return Some(self.prompt(call, "enter_context", 16));
        };
        let entered = digits.unwrap_or_default();
        Some(match session.stage {
            Stage::Done => self.bye(call, "goodbye"),
            // The platform asked again before we answered: it gave up on the earlier request.
            Stage::AwaitAnswer { .. } => return None,
            Stage::AwaitContext { tries } => return self.context_entered(call, &entered, tries, now, actions),
            Stage::AwaitConfirm { association } => {
                if !self.claimed(call, &association) {
                    self.set_stage(call, Stage::Done);
                    self.no_longer_valid(call)
                } else if entered == CONFIRM_KEY {
                    self.set_stage(call, Stage::AwaitCode { association: association.clone(), tries: 0 });
                    let n = self.assocs.get(association.as_str()).map_or(6, |a| a.code.len());
                    self.step(&association, now, "confirmed", "the phone's owner confirmed the request", actions);
                    self.prompt(call, "enter_code", n)
                } else if entered == REFUSE_KEY {
                    self.set_stage(call, Stage::Done);
                    self.refused_by_owner(&association, now, actions);
                    self.bye(call, "refused")
                } else {
                    self.set_stage(call, Stage::Done);
                    self.fail_attempt(&association, Reason::NotConfirmed, "the caller did not confirm the request", now, actions);
                    self.not_linked(call)
                }
            }
            Stage::AwaitCode { association, tries } => self.code_entered(call, &association, &entered, tries, now, actions),
        })
    }

    fn set_stage(&mut self, call: &str, stage: Stage) {
        if let Some(c) = self.ivr_calls.get_mut(call) {
            c.stage = stage;
        }
    }

    /// `call` is the IVR call that claimed the association's current attempt, still in the IVR.
    fn claimed(&self, call: &str, id: &str) -> bool {
        self.assocs.get(id).is_some_and(|a| a.view.state == State::InIvr && a.attempt.claimed_by.as_deref() == Some(call))
    }

    /// `to` is a number of a PBX's IVR pool: `Some(holder)`, the attempt holding it if any.
    /// `None`: not a pool number.
    fn by_pool_number(&self, to: &str) -> Option<Option<AssociationId>> {
        if to.is_empty() {
            return None;
        }
        let (pbx, number) = self.policies.iter().filter(|(_, p)| p.context_delivery == ContextDelivery::NumberPool).find_map(|(pbx, p)| p.ivr_numbers.iter().find(|n| pool_number_matches(n, to)).map(|n| (pbx, n)))?;
        Some(self.pool_held.get(&(pbx.clone(), number.clone())).cloned())
    }

    /// Where the PBX delivers no context id: the one live proof call of an extension whose DID
    /// the calling number presents. Caller ID can be spoofed, so the claim's timing rules matter
    /// all the more (README: weaker).
    fn by_calling_number(&self, from: &str) -> Option<AssociationId> {
        let mut found = self.by_ext.iter().filter_map(|((pbx, ext), id)| {
            let p = self.policies.get(pbx)?;
            let prefix = p.did_prefix.as_ref()?;
            let live = self.assocs.get(id).is_some_and(|a| matches!(a.view.state, State::Calling | State::Ringing | State::InIvr));
            (p.context_delivery == ContextDelivery::None && live && from == format!("{prefix}{ext}")).then(|| id.clone())
        });
        let first = found.next()?;
        // Ambiguous: nobody.
        found.next().is_none().then_some(first)
    }

    fn context_entered(&mut self, call: &str, entered: &str, tries: u32, now: Millis, actions: &mut Vec<Action>) -> Option<IvrReply> {
        if let Some(id) = self.by_context.get(entered).cloned() {
            return self.claim(call, &id, now, actions);
        }
        if self.ended_contexts.contains_key(entered) {
            // A proof call (or its context) of an attempt that is over: not a guess.
            self.set_stage(call, Stage::Done);
            return Some(self.no_longer_valid(call));
        }
        // Unknown or stale: audited (never the digits), and the adapters count it.
        actions.push(Action::Store(StoreWrite::Audit(AuditRecord { at: now, tenant: TenantId::default(), account: AccountId::default(), pbx: PbxId::default(), extension: Extension::default(), association: AssociationId::default(), step: "ivr_unknown_context".into(), result: format!("IVR call {call}") })));
        Some(if tries + 1 < CONTEXT_TRIES {
            self.set_stage(call, Stage::AwaitContext { tries: tries + 1 });
            self.prompt(call, "unknown_context", 16)
        } else {
            self.set_stage(call, Stage::Done);
            self.bye(call, "unknown_context_bye")
        })
    }

    /// `call` presents the attempt of `id` (its context id, or its DID). Only the proof call may
    /// claim it; see the module docs.
    fn claim(&mut self, call: &str, id: &str, now: Millis, actions: &mut Vec<Action>) -> Option<IvrReply> {
        let Some(a) = self.assocs.get(id) else { return Some(self.not_linked(call)) };
        // From here the call speaks the language of the PBX whose attempt it presented.
        if let (Some(p), Some(c)) = (self.policies.get(&a.view.pbx), self.ivr_calls.get_mut(call)) {
            c.language.clone_from(&p.language);
        }
        let Some(c) = self.ivr_calls.get(call) else {
            // Forgotten while it waited (silent too long): the attempt is not left for the next
            // call to claim.
            self.fail_attempt(id, Reason::CallCleared, "the IVR call that presented the context is gone", now, actions);
            return Some(self.not_linked(call));
        };
        let policy = self.policies.get(&a.view.pbx);
        let did = policy.and_then(|p| p.did_prefix.as_ref()).map(|p| format!("{p}{}", a.view.extension));
        let window = policy.map_or(30_000, |p| p.ivr_claim_window.as_millis() as Millis);
        if a.attempt.claimed_by.as_deref().is_some_and(|other| other != call) || a.attempt.waiting.as_ref().is_some_and(|(other, _)| other != call) {
            return Some(self.mismatch(call, id, "a second IVR call presented the proof call's context", now, actions));
        }
        // A withheld number contradicts nothing.
        if did.is_some_and(|did| !c.from.is_empty() && c.from != did) {
            return Some(self.mismatch(call, id, "the IVR call's calling number is not the extension's", now, actions));
        }
        match (a.view.state, a.attempt.in_ivr_at) {
            (State::InIvr, Some(at)) => {
                // The proof call's IVR leg starts when the PBX reports the answer: an IVR call
                // that began well before (while the phone rang) or long after is another call.
                if c.first + (CLAIM_WAIT.as_millis() as Millis) < at || c.first > at + window {
                    return Some(self.mismatch(call, id, "the IVR call did not start with the proof call", now, actions));
                }
                if let Some(a) = self.assocs.get_mut(id) {
                    a.attempt.claimed_by = Some(call.to_owned());
                }
                Some(self.confirm_prompt(call, id, now, actions))
            }
            (State::Calling | State::Ringing, _) => {
                // The request may have overtaken the PBX's report of the answer: wait for it.
                if let Some(a) = self.assocs.get_mut(id) {
                    a.attempt.waiting = Some((call.to_owned(), now + CLAIM_WAIT.as_millis() as Millis));
                }
                self.touch(id);
                self.set_stage(call, Stage::AwaitAnswer { association: id.into() });
                None
            }
            // Monitoring or locking: the proof call has not even been placed.
            _ => Some(self.mismatch(call, id, "an IVR call presented the context before the proof call was placed", now, actions)),
        }
    }

    /// The IVR call waiting on the attempt of `id` (if any) gets its answer: claimed if the PBX
    /// has now reported the proof call answered, a mismatch once [`CLAIM_WAIT`] has passed.
    pub(crate) fn claim_waiting(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        self.touch(id);
        let Some(a) = self.assocs.get_mut(id) else { return };
        let Some((call, until)) = a.attempt.waiting.take() else { return };
        let reply = if a.view.state == State::InIvr {
            self.set_stage(&call, Stage::AwaitContext { tries: 0 });
            self.claim(&call, id, now, actions)
        } else if now >= until {
            Some(self.mismatch(&call, id, "an IVR call presented the context while the phone had not answered", now, actions))
        } else {
            a.attempt.waiting = Some((call, until));
            return;
        };
        if let Some(reply) = reply {
            actions.push(Action::IvrReply { call, reply });
        }
    }

    /// The attempt of `id` is over (failed, ended): its context is forgotten, and a waiting IVR
    /// request is answered.
    pub(crate) fn end_attempt(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        self.touch(id);
        let Some(a) = self.assocs.get_mut(id) else { return };
        // Its pool number goes back (its call, if any, is being cleared with the attempt).
        if let Some(n) = a.attempt.pool_number.take() {
            let key = (a.view.pbx.clone(), n);
            if self.pool_held.get(&key).is_some_and(|holder| holder == id) {
                self.pool_held.remove(&key);
            }
            self.pool_released.insert(key, now);
        }
        if let Some(ctx) = a.attempt.context.take() {
            self.by_context.remove(&ctx);
            self.ended_contexts.insert(ctx, now);
        }
        if let Some((call, _)) = a.attempt.waiting.take() {
            self.set_stage(&call, Stage::Done);
            let reply = self.no_longer_valid(&call);
            actions.push(Action::IvrReply { call, reply });
        }
    }

    /// An IVR call that is not the proof call acted on the attempt: fail it (clearing the proof
    /// call), record a suspected attack and tell the account.
    fn mismatch(&mut self, call: &str, id: &str, detail: &str, now: Millis, actions: &mut Vec<Action>) -> IvrReply {
        self.set_stage(call, Stage::Done);
        if let Some(a) = self.assocs.get(id) {
            actions.push(audit(&a.view, now, "suspected_attack", detail));
            actions.push(Action::Notify { tenant: a.view.tenant.clone(), account: a.view.account.clone(), event: "suspected_attack".into(), association: id.into() });
        }
        self.fail_attempt(id, Reason::IvrCallMismatch, detail, now, actions);
        self.not_linked(call)
    }

    /// Name the asking account and tenant, and the tenant's display name as theirs, then ask
    /// the phone's owner to accept or refuse (anti-phishing: the requester's own words are never
    /// spoken as if they were the gateway's).
    fn confirm_prompt(&mut self, call: &str, id: &str, now: Millis, actions: &mut Vec<Action>) -> IvrReply {
        let Some(a) = self.assocs.get(id) else { return self.bye(call, "goodbye") };
        let (tenant, account) = (a.view.tenant.to_string(), a.view.account.to_string());
        let named = a.account_name.as_ref().map_or_else(String::new, |n| format!(" {}", self.words(call, "account_name", &[("tenant", &tenant), ("name", n)], None).say));
        self.set_stage(call, Stage::AwaitConfirm { association: id.into() });
        self.step(id, now, "ivr_identified", "the proof call reached the IVR and claimed the attempt", actions);
        self.words(call, "confirm_account", &[("account", &account), ("tenant", &tenant), ("named", &named), ("confirm_key", CONFIRM_KEY), ("refuse_key", REFUSE_KEY)], Some(1))
    }

    /// The phone's owner pressed 9: the attempt ends, and the account may not ask for this
    /// extension for `owner_block`.
    fn refused_by_owner(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get(id) else { return };
        let v = &a.view;
        let until = now + self.policies.get(&v.pbx).map_or(86_400_000, |p| p.owner_block.as_millis() as Millis);
        let block = OwnerBlock { tenant: v.tenant.clone(), account: v.account.clone(), pbx: v.pbx.clone(), extension: v.extension.clone(), until };
        actions.push(audit(v, now, "refused_by_phone_owner", &format!("account blocked from the extension until {until}")));
        actions.push(Action::Notify { tenant: v.tenant.clone(), account: v.account.clone(), event: "refused_by_phone_owner".into(), association: id.into() });
        self.blocks.insert(block.key(), block.clone());
        actions.push(Action::Store(StoreWrite::Block(block)));
        self.finish(id, State::Failed, Some(Reason::RefusedByPhoneOwner), "the phone's owner did not ask for this", now, actions);
    }

    fn code_entered(&mut self, call: &str, id: &str, entered: &str, tries: u32, now: Millis, actions: &mut Vec<Action>) -> IvrReply {
        if !self.claimed(call, id) {
            self.set_stage(call, Stage::Done);
            return self.no_longer_valid(call);
        }
        let Some(a) = self.assocs.get(id) else { return self.no_longer_valid(call) };
        if now >= a.view.expires_at {
            // "Expired" is told apart from "incorrect" (without revealing anything of the code).
            self.set_stage(call, Stage::Done);
            self.finish(id, State::Expired, Some(Reason::Expired), "the code expired before it was entered", now, actions);
            return self.bye(call, "code_expired");
        }
        let ok = !a.code.is_empty() && a.code.len() == entered.len() && bool::from(a.code.as_bytes().ct_eq(entered.as_bytes()));
        let (pbx, ext, tenant, account) = (a.view.pbx.clone(), a.view.extension.clone(), a.view.tenant.clone(), a.view.account.clone());
        // Charged to whoever asked: the account, and the account on this extension.
        let keys = CounterKey::charged(&tenant, &account, &pbx, &ext);
        if ok {
            self.set_stage(call, Stage::Done);
            let from = self.ivr_calls.get(call).map(|c| c.from.clone()).filter(|f| !f.is_empty());
            let did_verified = self.policies.get(&pbx).and_then(|p| p.did_prefix.as_ref()).is_some_and(|p| from.as_deref() == Some(format!("{p}{ext}").as_str()));
            let binding = Binding { tenant, account, pbx: pbx.clone(), extension: ext.clone(), did: from, did_verified, bound_at: now };
            // A proof of presence resets the account's failure counters (only that does).
            for key in keys {
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
            self.finish(id, State::Bound, None, "the code matched on the proof call: extension bound", now, actions);
            let (account, tenant) = self.assocs.get(id).map(|a| (a.view.account.to_string(), a.view.tenant.to_string())).unwrap_or_default();
            return self.words(call, "bound", &[("account", &account), ("tenant", &tenant)], None);
        }
        for key in keys {
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
        let mut locked = false;
        if let Some(a) = self.assocs.get(id) {
            actions.push(audit(&a.view, now, "code_entered", "wrong_code"));
            locked = self.locked_out(&a.view.pbx, &a.view.extension, &a.view.tenant, &a.view.account);
        }
        if locked {
            self.set_stage(call, Stage::Done);
            self.fail_attempt(id, Reason::LockedOut, "too many wrong codes for this account", now, actions);
            return self.bye(call, "locked_out");
        }
        if entries >= MAX_CODE_ENTRIES {
            self.set_stage(call, Stage::Done);
            self.fail_attempt(id, Reason::AttemptsExhausted, "the code was entered wrongly too often", now, actions);
            return self.bye(call, "attempts_exhausted");
        }
        if tries + 1 >= MAX_ENTRIES_PER_CALL {
            self.set_stage(call, Stage::Done);
            self.fail_attempt(id, Reason::WrongCode, "three wrong codes on this call", now, actions);
            return self.bye(call, "wrong_code_bye");
        }
        self.set_stage(call, Stage::AwaitCode { association: id.to_owned(), tries: tries + 1 });
        let n = self.assocs.get(id).map_or(6, |a| a.code.len());
        self.prompt(call, "wrong_code", n)
    }

    pub(crate) fn ivr_call_ended(&mut self, call: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(c) = self.ivr_calls.remove(call) else { return };
        match c.stage {
            Stage::AwaitConfirm { association } | Stage::AwaitCode { association, .. } => {
                if self.claimed(call, &association) {
                    self.fail_attempt(&association, Reason::CallCleared, "the caller hung up in the IVR", now, actions);
                }
            }
            Stage::AwaitAnswer { association } => {
                // It presented an attempt's context and waited: that attempt is over (a proof
                // call that left the IVR, or a caller who gave up), never free for the next call.
                let waiting = self.assocs.get_mut(association.as_str()).filter(|a| a.attempt.waiting.as_ref().is_some_and(|(w, _)| w == call));
                if let Some(a) = waiting {
                    a.attempt.waiting = None;
                    self.fail_attempt(&association, Reason::CallCleared, "the IVR call that presented the context hung up before the PBX reported the answer", now, actions);
                }
            }
            Stage::AwaitContext { .. } | Stage::Done => {}
        }
    }
}
