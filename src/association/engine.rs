//! The engine's entry points for the API and the IVR, its reads, and the life of an association:
//! created with its code, an attempt started, failed or finished, each step recorded (see the
//! module docs in `mod.rs`). The CSTA side, the timers, the limits and the restart are in the
//! sibling files; the data in `model.rs`.

use std::collections::{BTreeSet, HashMap};

use super::model::*;
use super::*;

impl Engine {
    pub fn new<K: Into<PbxId>>(policies: HashMap<K, Policy>) -> Engine {
        Engine {
            policies: policies.into_iter().map(|(k, p)| (k.into(), p)).collect(),
            assocs: HashMap::new(),
            by_ext: HashMap::new(),
            by_account: HashMap::new(),
            by_context: HashMap::new(),
            ended_contexts: HashMap::new(),
            bindings: HashMap::new(),
            counters: HashMap::new(),
            proof_calls: HashMap::new(),
            blocks: HashMap::new(),
            ivr_calls: HashMap::new(),
            pool_held: HashMap::new(),
            pool_released: HashMap::new(),
            pending: HashMap::new(),
            next_request: 0,
            timers: BTreeSet::new(),
            armed: HashMap::new(),
            forget: BTreeSet::new(),
            next_sweep: 0,
            touched: Vec::new(),
            served: None,
        }
    }

    pub fn binding(&self, pbx: &str, extension: &str) -> Option<&Binding> {
        self.bindings.get(&(pbx.into(), extension.into()))
    }

    pub fn bindings_of(&self, tenant: &str, account: &str) -> Vec<&Binding> {
        self.bindings.values().filter(|b| b.tenant == tenant && b.account == account).collect()
    }

    /// The association as `principal` may see it (another tenant's is not found).
    pub fn view(&self, principal: &Principal, id: &str) -> Option<&AssociationView> {
        self.assocs.get(id).map(|a| &a.view).filter(|v| visible(principal, &v.tenant))
    }

    /// Every PBX's policy (to rebuild the engine from the store).
    pub fn policies(&self) -> &HashMap<PbxId, Policy> {
        &self.policies
    }

    /// A configuration reload: new associations see these policies. An association in flight
    /// reads its PBX's policy at each step, so a deadline already set keeps its time and later
    /// steps use the new values. A PBX no longer listed must first have its associations ended
    /// ([`Engine::pbx_removed`]).
    pub fn set_policies<K: Into<PbxId>>(&mut self, policies: HashMap<K, Policy>) {
        self.policies = policies.into_iter().map(|(k, p)| (k.into(), p)).collect();
    }

    /// The PBX left the configuration (a reload): each live association on it ends for good,
    /// failed with [`Reason::PbxRemoved`], its calls cleared and its monitor stopped (the shell
    /// sends those before it releases the link). Its bindings stay: they come back with the PBX.
    pub fn pbx_removed(&mut self, pbx: &str, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut ids: Vec<AssociationId> = self.by_ext.iter().filter(|((p, _), _)| p.as_str() == pbx).map(|(_, id)| id.clone()).collect();
        ids.sort();
        for id in ids {
            self.finish(&id, State::Failed, Some(Reason::PbxRemoved), "the PBX was removed from the configuration", now, &mut actions);
        }
        self.rearm();
        actions
    }

    pub fn sizes(&self) -> Sizes {
        Sizes { associations: self.assocs.len(), live: self.by_ext.len(), ivr_calls: self.ivr_calls.len(), proof_call_extensions: self.proof_calls.len(), bindings: self.bindings.len() }
    }

    /// An API request: the reply for the caller, or why it was refused.
    pub fn api(&mut self, input: ApiInput) -> Handled<Result<ApiReply, Refusal>> {
        let mut actions = Vec::new();
        let reply = self.api_into(input, &mut actions);
        self.rearm();
        Handled { reply, actions }
    }

    fn api_into(&mut self, input: ApiInput, actions: &mut Vec<Action>) -> Result<ApiReply, Refusal> {
        match input {
            ApiInput::Create { principal, account, account_name, pbx, extension, id, random, code, now } => {
                self.create(&principal, account, account_name, pbx, extension, id, &random, &code, now, actions).map(|(view, code)| ApiReply::Created { view, code })
            }
            ApiInput::Complete { principal, id, random, now } => {
                self.visible_id(&principal, &id).ok_or(Refusal::NotFound)?;
                self.check_served(self.assocs.get(id.as_str()).map(|a| &a.view.pbx))?;
                self.start_attempt(&id, &random, now, actions)?;
                self.assocs.get(id.as_str()).map(|a| ApiReply::Association(a.view.clone())).ok_or(Refusal::NotFound)
            }
            ApiInput::Cancel { principal, id, now } => {
                self.visible_id(&principal, &id).ok_or(Refusal::NotFound)?;
                self.check_served(self.assocs.get(id.as_str()).map(|a| &a.view.pbx))?;
                let a = self.assocs.get(id.as_str()).ok_or(Refusal::NotFound)?;
                if a.view.state.is_final(a.view.retryable) {
                    return Err(Refusal::WrongState(a.view.state));
                }
                self.finish(&id, State::Cancelled, Some(Reason::CancelledByUser), "cancelled", now, actions);
                self.assocs.get(id.as_str()).map(|a| ApiReply::Association(a.view.clone())).ok_or(Refusal::NotFound)
            }
            ApiInput::Unbind { principal, account, pbx, extension, now } => {
                self.check_served(Some(&pbx))?;
                let key = (pbx.clone(), extension.clone());
                match self.bindings.get(&key) {
                    Some(b) if principal == Principal::Admin || (visible(&principal, &b.tenant) && account.as_deref() == Some(b.account.as_str())) => {
                        let b = b.clone();
                        self.bindings.remove(&key);
                        actions.push(Action::Store(StoreWrite::Unbind { pbx, extension }));
                        actions.push(Action::Store(StoreWrite::Audit(AuditRecord {
                            at: now,
                            tenant: b.tenant.clone(),
                            account: b.account.clone(),
                            pbx: b.pbx.clone(),
                            extension: b.extension.clone(),
                            association: AssociationId::default(),
                            step: "unbound".into(),
                            result: if principal == Principal::Admin { "by admin".into() } else { "by the account".into() },
                        })));
                        actions.push(Action::Notify { tenant: b.tenant, account: b.account, event: "unbound".into(), association: AssociationId::default() });
                        Ok(ApiReply::Done)
                    }
                    _ => Err(Refusal::NotFound),
                }
            }
            ApiInput::ResetCounters { scope, now } => {
                for (key, _) in self.counters(&scope) {
                    self.counters.insert(key.clone(), 0);
                    let (tenant, account) = key.tenant_account();
                    let (pbx, extension) = key.extension().unwrap_or_default();
                    let record = AuditRecord { at: now, tenant: tenant.into(), account: account.into(), pbx: pbx.into(), extension: extension.into(), association: AssociationId::default(), step: "counter_reset".into(), result: "by admin".into() };
                    actions.push(Action::Store(StoreWrite::Counter { key: key.clone(), value: 0 }));
                    actions.push(Action::Store(StoreWrite::Audit(record)));
                }
                Ok(ApiReply::Done)
            }
            ApiInput::LiftBlocks { scope, now } => {
                for b in self.blocks(&scope, now) {
                    self.blocks.remove(&b.key());
                    let record = AuditRecord { at: now, tenant: b.tenant.clone(), account: b.account.clone(), pbx: b.pbx.clone(), extension: b.extension.clone(), association: AssociationId::default(), step: "owner_block_lifted".into(), result: "by admin".into() };
                    actions.push(Action::Store(StoreWrite::Unblock { tenant: b.tenant, account: b.account, pbx: b.pbx, extension: b.extension }));
                    actions.push(Action::Store(StoreWrite::Audit(record)));
                }
                Ok(ApiReply::Done)
            }
        }
    }

    /// A request of the IVR platform on one of its calls.
    pub fn ivr(&mut self, input: IvrInput) -> Handled<IvrAnswer> {
        let mut actions = Vec::new();
        let IvrInput { call, from, to, digits, now } = input;
        let reply = match self.ivr_request(&call, &from, &to, digits.as_deref(), now, &mut actions) {
            Some(r) => IvrAnswer::Reply(r),
            None => IvrAnswer::Wait,
        };
        self.rearm();
        Handled { reply, actions }
    }

    /// The IVR call ended (hang-up).
    pub fn ivr_hangup(&mut self, call: &str, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        self.ivr_call_ended(call, now, &mut actions);
        self.rearm();
        actions
    }

    /// [`Refusal::NotServed`] when `pbx` is one this engine does not act for (`[cluster]`: owned
    /// by another instance, or by none): checked before anything is decided, so such a request
    /// writes nothing — a write for another owner's PBX would be fenced by the database.
    fn check_served(&self, pbx: Option<&PbxId>) -> Result<(), Refusal> {
        match (pbx, &self.served) {
            (Some(p), Some(served)) if !served.contains(p) => Err(Refusal::NotServed(p.to_string())),
            _ => Ok(()),
        }
    }

    fn visible_id(&self, principal: &Principal, id: &str) -> Option<()> {
        self.view(principal, id).map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    fn create(&mut self, principal: &Principal, account: AccountId, account_name: Option<String>, pbx: Option<PbxId>, extension: Extension, id: AssociationId, random: &str, code_random: &str, now: Millis, actions: &mut Vec<Action>) -> Result<(AssociationView, Option<String>), Refusal> {
        let tenant = match principal {
            Principal::Tenant(t) => t.clone(),
            Principal::Admin => return Err(Refusal::BadRequest("associations are requested by a tenant for one of its accounts".into())),
        };
        if account.is_empty() || extension.is_empty() {
            return Err(Refusal::BadRequest("account and extension are required".into()));
        }
        // The extension must be in the directory of a PBX of this tenant.
        let candidates: Vec<&PbxId> = self
            .policies
            .iter()
            .filter(|(id, p)| p.lists(&tenant, &extension) && pbx.as_ref().is_none_or(|want| want == *id))
            .map(|(id, _)| id)
            .collect();
        let pbx = match candidates.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(Refusal::UnknownExtension(extension.into_string())),
            _ => return Err(Refusal::BadRequest("the extension exists on several PBXs of this tenant: give `pbx`".into())),
        };
        self.check_served(Some(&pbx))?;
        let (code_digits, code_ttl, require_completion, code_delivery) = {
            let p = &self.policies[&pbx];
            (p.code_digits, p.code_ttl, p.require_completion, p.code_delivery)
        };
        let ext_key = (pbx.clone(), extension.clone());
        if self.bindings.contains_key(&ext_key) {
            return Err(Refusal::AlreadyBound);
        }
        // Expired associations free their extension and account.
        self.timeouts(now, actions);
        if let Some(until) = self.blocked_until(&tenant, &account, &pbx, &extension, now) {
            return Err(Refusal::BlockedByPhoneOwner(until));
        }
        if self.by_ext.contains_key(&ext_key) {
            return Err(Refusal::ExtensionBusy);
        }
        if self.by_account.contains_key(&(tenant.clone(), account.clone())) {
            return Err(Refusal::AccountBusy);
        }
        if self.locked_out(&pbx, &extension, &tenant, &account) {
            return Err(Refusal::LockedOut);
        }
        // Refused by a limit: no code, nothing live (the first attempt would be refused anyway).
        self.proof_call_budget(&pbx, &extension, &tenant, &account, now)?;
        if !require_completion && self.free_pool_number(&pbx).is_none() {
            return Err(Refusal::PoolExhausted);
        }
        let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
        let code: String = digits(code_random).chars().take(code_digits).collect();
        if code.len() != code_digits {
            return Err(Refusal::BadRequest("not enough randomness for the code".into()));
        }
        if self.assocs.contains_key(id.as_str()) {
            return Err(Refusal::BadRequest("association id already used".into()));
        }
        let expires_at = now + code_ttl.as_millis() as Millis;
        let view = AssociationView {
            id: id.clone(),
            tenant: tenant.clone(),
            account: account.clone(),
            pbx: pbx.clone(),
            extension: extension.clone(),
            state: State::CodeIssued,
            reason: None,
            retryable: true,
            expires_at,
            call: None,
            history: vec![Step { at: now, step: "code_issued".into(), detail: format!("code of {} digits valid until {}", code.len(), humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(expires_at))) }],
        };
        self.by_ext.insert(ext_key, id.clone());
        self.by_account.insert((tenant.clone(), account.clone()), id.clone());
        self.assocs.insert(id.clone(), Assoc { view: view.clone(), account_name, code: code.clone(), code_entries: 0, lock_call: None, lock_unknown: false, earlier_make_calls: Vec::new(), ended_calls: Vec::new(), calls_unknown: false, monitored: false, deadline: None, attempt: Attempt::default() });
        self.touch(&id);
        actions.push(audit(&view, now, "code_issued", "ok"));
        // Out of band: the code leaves only in the tenant's notification, before the proof call
        // is placed (the actions are carried out in order).
        let code = match code_delivery {
            CodeDelivery::Api => Some(code),
            CodeDelivery::Notify => {
                actions.push(Action::DeliverCode { tenant: tenant.clone(), account: account.clone(), association: id.clone(), pbx: pbx.clone(), extension: extension.clone(), code: SecretCode(code), expires_at });
                None
            }
        };
        actions.push(Action::Store(StoreWrite::Association(view)));
        if !require_completion {
            if let Err(e) = self.start_attempt(&id, random, now, actions) {
                // Checked above, so only a lack of randomness: undo, nothing stays live.
                self.finish(&id, State::Failed, None, "the first attempt could not start", now, actions);
                return Err(e);
            }
        }
        Ok((self.assocs[&id].view.clone(), code))
    }

    /// The `code_issued` notification of `id` was given up ([`Action::DeliverCode`]): its user
    /// never got the code, so the association fails now with [`Reason::CodeNotDelivered`]
    /// (final: a retry would not bring the code either) rather than at the code's expiry.
    /// Nothing if it has ended already.
    pub fn code_undelivered(&mut self, id: &str, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        let live = self.assocs.get(id).is_some_and(|a| !a.view.state.is_final(a.view.retryable));
        if live {
            self.finish(id, State::Failed, Some(Reason::CodeNotDelivered), "the code could not be delivered to the tenant's notification endpoint", now, &mut actions);
        }
        self.rearm();
        actions
    }

    /// Steps 3–6: (re)start a proof attempt, with a new context id drawn from `random`.
    fn start_attempt(&mut self, id: &str, random: &str, now: Millis, actions: &mut Vec<Action>) -> Result<(), Refusal> {
        let Some(a) = self.assocs.get(id) else { return Err(Refusal::NotFound) };
        let v = &a.view;
        match v.state {
            State::CodeIssued => {}
            State::Failed if v.retryable => {}
            s => return Err(Refusal::WrongState(s)),
        }
        if now >= v.expires_at {
            self.finish(id, State::Expired, Some(Reason::Expired), "expired", now, actions);
            return Err(Refusal::Expired);
        }
        let (pbx, ext, tenant, account) = (v.pbx.clone(), v.extension.clone(), v.tenant.clone(), v.account.clone());
        if self.locked_out(&pbx, &ext, &tenant, &account) {
            self.finish(id, State::Failed, Some(Reason::LockedOut), "locked_out", now, actions);
            return Err(Refusal::LockedOut);
        }
        if let Err(e) = self.proof_call_budget(&pbx, &ext, &tenant, &account, now) {
            // Recorded once however often the app asks again: refusals must not grow the store.
            if self.assocs.get(id).and_then(|a| a.view.history.last()).is_none_or(|s| s.step != "rate_limited") {
                self.step(id, now, "rate_limited", "proof-call limit of this extension or account reached", actions);
            }
            return Err(e);
        }
        let pool = self.policies.get(&pbx).is_some_and(|p| p.context_delivery == ContextDelivery::NumberPool);
        let pool_number = if pool { Some(self.free_pool_number(&pbx).ok_or(Refusal::PoolExhausted)?) } else { None };
        // A context id unique among live attempts, new for this proof call.
        let n = self.policies.get(&pbx).map_or(8, |p| p.context_digits);
        let pool: Vec<u8> = random.bytes().filter(u8::is_ascii_digit).collect();
        let context = pool
            .chunks(n)
            .filter(|c| c.len() == n)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .find(|c| !self.by_context.contains_key(*c))
            .map(str::to_owned)
            .ok_or_else(|| Refusal::BadRequest("not enough randomness for the context id".into()))?;
        let call = ProofCall { pbx: pbx.clone(), extension: ext.clone(), tenant, account, at: now };
        self.proof_calls.entry((pbx.clone(), ext.clone())).or_default().push(call.clone());
        actions.push(Action::Store(StoreWrite::ProofCall(call)));
        // With a pool the context never leaves the gateway: the held number names the attempt.
        if let Some(n) = &pool_number {
            self.pool_held.insert((pbx.clone(), n.clone()), id.into());
        } else {
            self.by_context.insert(context.clone(), id.into());
        }
        self.retire_attempt(id);
        let a = self.assocs.get_mut(id).ok_or(Refusal::NotFound)?;
        a.view.reason = None;
        a.view.retryable = true;
        a.attempt = Attempt { context: Some(context), pool_number, ..Attempt::default() };
        if a.monitored {
            self.after_monitor(id, now, actions);
        } else {
            self.set_state(id, State::Monitoring, now, "monitoring", "MonitorStart on the extension", actions);
            self.request(id, &pbx, CstaRequest::MonitorStart { extension: ext }, Some(Purpose::Monitor), actions);
        }
        Ok(())
    }

    /// A number of `pbx`'s IVR pool that no live attempt holds, the one released longest ago
    /// first; `None` when all are held. Always `Some("")` for a PBX without a pool.
    pub(crate) fn free_pool_number(&self, pbx: &PbxId) -> Option<String> {
        let Some(p) = self.policies.get(pbx).filter(|p| p.context_delivery == ContextDelivery::NumberPool) else { return Some(String::new()) };
        p.ivr_numbers
            .iter()
            .filter(|n| !self.pool_held.contains_key(&(pbx.clone(), (*n).clone())))
            .min_by_key(|n| self.pool_released.get(&(pbx.clone(), (*n).clone())).copied().unwrap_or(0))
            .cloned()
    }

    /// The attempt failed: clear any call, tell the account; the user may retry while the code
    /// is valid and its entries are not used up.
    pub(crate) fn fail_attempt(&mut self, id: &str, reason: Reason, detail: &str, now: Millis, actions: &mut Vec<Action>) {
        self.end_attempt(id, now, actions);
        let Some(a) = self.assocs.get_mut(id) else { return };
        a.deadline = None;
        let retryable = now < a.view.expires_at && a.code_entries < MAX_CODE_ENTRIES && !matches!(reason, Reason::LockedOut | Reason::AttemptsExhausted);
        a.view.reason = Some(reason);
        a.view.retryable = retryable;
        self.clear_call(id, actions);
        if retryable {
            self.set_state(id, State::Failed, now, "failed", detail, actions);
            if let Some(a) = self.assocs.get(id) {
                actions.push(Action::Notify { tenant: a.view.tenant.clone(), account: a.view.account.clone(), event: "attempt_failed".into(), association: id.into() });
            }
        } else {
            self.finish(id, State::Failed, Some(reason), detail, now, actions);
        }
    }

    /// End an association for good: free its extension, account and context id, clear its
    /// call and stop its monitor.
    pub(crate) fn finish(&mut self, id: &str, state: State, reason: Option<Reason>, detail: &str, now: Millis, actions: &mut Vec<Action>) {
        self.end_attempt(id, now, actions);
        let Some(a) = self.assocs.get_mut(id) else { return };
        a.view.reason = reason;
        a.view.retryable = false;
        a.deadline = None;
        // The code is of no use any more.
        a.code.clear();
        let monitored = std::mem::take(&mut a.monitored);
        let (pbx, ext) = (a.view.pbx.clone(), a.view.extension.clone());
        let (tenant, account) = (a.view.tenant.clone(), a.view.account.clone());
        self.clear_call(id, actions);
        if monitored {
            self.request(id, &pbx, CstaRequest::MonitorStop { extension: ext.clone() }, None, actions);
        }
        self.forget.insert((now + FORGET_AFTER, id.to_owned()));
        self.by_ext.remove(&(pbx, ext));
        self.by_account.remove(&(tenant.clone(), account.clone()));
        let step = match state {
            State::Bound => "bound",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            _ => "failed",
        };
        self.set_state(id, state, now, step, detail, actions);
        let event = if state == State::Bound { "bound" } else { step };
        actions.push(Action::Notify { tenant, account, event: event.into(), association: id.into() });
    }

    pub(super) fn set_state(&mut self, id: &str, state: State, now: Millis, step: &str, detail: &str, actions: &mut Vec<Action>) {
        self.touch(id);
        let Some(a) = self.assocs.get_mut(id) else { return };
        a.view.state = state;
        push_history(&mut a.view.history, Step { at: now, step: step.to_owned(), detail: detail.to_owned() });
        let result = a.view.reason.map_or_else(|| "ok".to_owned(), |r| serde_json::to_value(r).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default());
        actions.push(audit(&a.view, now, step, &result));
        actions.push(Action::Store(StoreWrite::Association(a.view.clone())));
    }

    /// A history step without a state change.
    pub(crate) fn step(&mut self, id: &str, now: Millis, step: &str, detail: &str, actions: &mut Vec<Action>) {
        self.touch(id);
        let Some(a) = self.assocs.get_mut(id) else { return };
        push_history(&mut a.view.history, Step { at: now, step: step.to_owned(), detail: detail.to_owned() });
        actions.push(audit(&a.view, now, step, "ok"));
        actions.push(Action::Store(StoreWrite::Association(a.view.clone())));
    }
}
