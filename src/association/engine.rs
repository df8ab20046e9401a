//! The engine's state and its transitions (see the module docs in `mod.rs`).

use std::collections::HashMap;

use super::*;

/// Milliseconds in an hour, for the proof-call limit.
const HOUR: Millis = 3_600_000;
/// Per-code limit of code entries (all calls together).
pub(crate) const MAX_CODE_ENTRIES: u32 = 5;
/// Per-call limit of code entries.
pub(crate) const MAX_ENTRIES_PER_CALL: u32 = 3;
/// CSTA events about one attempt's calls beyond which the PBX is flooding us (a real proof call
/// has about ten).
pub(crate) const MAX_ATTEMPT_EVENTS: u32 = 200;
/// Steps kept in an association's history; later ones replace the last entry after a
/// "truncated" marker (the audit log keeps every step).
pub(crate) const MAX_HISTORY: usize = 64;
/// How long an ended association stays in memory (late IVR requests and API reads find it
/// there; afterwards the API reads it from the store). Memory holds the live associations and
/// those of the last few minutes, not the whole history.
pub(crate) const FORGET_AFTER: Millis = 600_000;

pub(crate) struct Assoc {
    pub(crate) view: AssociationView,
    pub(crate) account_name: Option<String>,
    /// Kept in memory only, never stored or logged; compared in constant time.
    pub(crate) code: String,
    pub(crate) code_entries: u32,
    pub(crate) lock_call: Option<Vec<u8>>,
    pub(crate) monitored: bool,
    /// Ringing (until the IVR answers: `no_answer`) or in the IVR (until the IVR platform's
    /// next request: `ivr_timeout`).
    pub(crate) deadline: Option<Millis>,
    /// The current attempt's proof call: its secret context id and what the IVR may know of it.
    pub(crate) attempt: Attempt,
}

/// One proof call attempt. A new one (new context id) for every attempt.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempt {
    /// Kept in memory only, never stored, logged or shown; `None` once the attempt is over.
    pub(crate) context: Option<String>,
    /// When the PBX reported the proof call answered at the IVR.
    pub(crate) in_ivr_at: Option<Millis>,
    /// The IVR call that claimed the attempt (the first to present its context in time).
    pub(crate) claimed_by: Option<String>,
    /// An IVR call that presented the context before the PBX reported the answer, and until when
    /// it may wait for that report.
    pub(crate) waiting: Option<(String, Millis)>,
    /// CSTA events about the attempt's call (flood guard).
    pub(crate) events: u32,
    /// Steps recorded once per attempt however often the PBX repeats the event.
    pub(crate) answered: bool,
    pub(crate) reaching_ivr: bool,
}

impl Assoc {
    /// The proof call's id, when the gateway knows it (`view.call` is its only copy).
    pub(crate) fn call(&self) -> Option<Vec<u8>> {
        self.view.call.as_deref().and_then(|h| hex::decode(h).ok())
    }
}

/// Forget the association's proof call and ask the shell to clear it, if there is one.
fn clear_call(v: &mut AssociationView, actions: &mut Vec<Action>) {
    if let Some(call) = v.call.take().and_then(|h| hex::decode(h).ok()) {
        actions.push(Action::Csta { association: v.id.clone(), pbx: v.pbx.clone(), request: CstaRequest::ClearConnection { call, extension: v.extension.clone() } });
    }
}

/// The association engine. See the module docs.
pub struct Engine {
    pub(crate) policies: HashMap<String, Policy>,
    pub(crate) assocs: HashMap<String, Assoc>,
    /// Live (not final) associations by (pbx, extension), (tenant, account) and context id.
    pub(crate) by_ext: HashMap<(String, String), String>,
    pub(crate) by_account: HashMap<(String, String), String>,
    pub(crate) by_context: HashMap<String, String>,
    /// Context ids of attempts that ended in the last [`FORGET_AFTER`], with when: a proof call
    /// that reaches the IVR after its attempt failed presents one. It is told "no longer valid",
    /// not "unknown", so the adapters do not count it as a guess (a guess hits one of these as
    /// rarely as a live one). Bounded by the proof calls of ten minutes.
    pub(crate) ended_contexts: HashMap<String, Millis>,
    pub(crate) bindings: HashMap<(String, String), Binding>,
    pub(crate) counters: HashMap<CounterKey, u32>,
    /// Proof calls of the last hour by extension, with the account each was charged to.
    pub(crate) proof_calls: HashMap<(String, String), Vec<ProofCall>>,
    /// Owner blocks by (tenant, account, pbx, extension).
    pub(crate) blocks: HashMap<BlockKey, OwnerBlock>,
    pub(crate) ivr_calls: HashMap<String, super::ivr::IvrCall>,
}

/// How much the engine holds in memory (`/metrics`; bounded by live work, not by history).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sizes {
    /// Associations in memory: live ones and those ended in the last [`FORGET_AFTER`].
    pub associations: usize,
    /// Live (not final) associations.
    pub live: usize,
    pub ivr_calls: usize,
    /// Extensions with proof calls in the last hour.
    pub proof_call_extensions: usize,
    pub bindings: usize,
}

/// What the store holds, to rebuild the engine after a restart.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub bindings: Vec<Binding>,
    pub counters: Vec<(CounterKey, u32)>,
    pub proof_calls: Vec<ProofCall>,
    pub blocks: Vec<OwnerBlock>,
    /// Associations that were not final when the gateway stopped.
    pub in_flight: Vec<AssociationView>,
}

impl Engine {
    pub fn new(policies: HashMap<String, Policy>) -> Engine {
        Engine {
            policies,
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
        }
    }

    /// Rebuild from the store after a restart. Associations in flight cannot go on (their code
    /// was never stored and their call is gone): they end as failed with `gateway_restarted`.
    pub fn restore(policies: HashMap<String, Policy>, snap: Snapshot, now: Millis) -> (Engine, Vec<Action>) {
        let mut e = Engine::new(policies);
        for b in snap.bindings {
            e.bindings.insert((b.pbx.clone(), b.extension.clone()), b);
        }
        e.counters.extend(snap.counters);
        for c in snap.proof_calls {
            if now.saturating_sub(c.at) < HOUR {
                e.proof_calls.entry((c.pbx.clone(), c.extension.clone())).or_default().push(c);
            }
        }
        for b in snap.blocks {
            if b.until > now {
                e.blocks.insert(b.key(), b);
            }
        }
        let mut actions = Vec::new();
        for mut v in snap.in_flight {
            if v.state.is_final(v.retryable) {
                continue;
            }
            v.state = State::Failed;
            v.reason = Some(Reason::GatewayRestarted);
            v.retryable = false;
            push_history(&mut v.history, Step { at: now, step: "failed".into(), detail: "gateway restarted while the association was in flight".into() });
            actions.push(audit(&v, now, "failed", "gateway_restarted"));
            // The call the previous run placed may still be up (ringing, or in the IVR).
            clear_call(&mut v, &mut actions);
            actions.push(Action::Notify { tenant: v.tenant.clone(), account: v.account.clone(), event: "failed".into(), association: v.id.clone() });
            actions.push(Action::Store(StoreWrite::Association(v)));
        }
        (e, actions)
    }

    pub fn binding(&self, pbx: &str, extension: &str) -> Option<&Binding> {
        self.bindings.get(&(pbx.to_owned(), extension.to_owned()))
    }

    pub fn bindings_of(&self, tenant: &str, account: &str) -> Vec<&Binding> {
        self.bindings.values().filter(|b| b.tenant == tenant && b.account == account).collect()
    }

    /// The association as `principal` may see it (another tenant's is not found).
    pub fn view(&self, principal: &Principal, id: &str) -> Option<&AssociationView> {
        self.assocs.get(id).map(|a| &a.view).filter(|v| visible(principal, &v.tenant))
    }

    /// Every PBX's policy (to rebuild the engine from the store).
    pub fn policies(&self) -> &HashMap<String, Policy> {
        &self.policies
    }

    pub fn policy(&self, pbx: &str) -> Option<&Policy> {
        self.policies.get(pbx)
    }

    /// When the IVR platform, silent from `now` on, has lost a call of `pbx`'s association.
    pub(crate) fn ivr_deadline(&self, pbx: &str, now: Millis) -> Millis {
        now + self.policies.get(pbx).map_or(60_000, |p| p.ivr_timeout.as_millis() as Millis)
    }

    /// Failure counters in scope (admin), non-zero ones only.
    pub fn counters(&self, scope: &AdminScope) -> Vec<(CounterKey, u32)> {
        let mut v: Vec<(CounterKey, u32)> = self.counters.iter().filter(|(k, n)| **n > 0 && scope.counter(k)).map(|(k, n)| (k.clone(), *n)).collect();
        v.sort();
        v
    }

    /// Owner blocks in scope still in force at `now` (admin).
    pub fn blocks(&self, scope: &AdminScope, now: Millis) -> Vec<OwnerBlock> {
        let mut v: Vec<OwnerBlock> = self.blocks.values().filter(|b| b.until > now && scope.block(b)).cloned().collect();
        v.sort_by(|a, b| (&a.pbx, &a.extension, &a.tenant, &a.account).cmp(&(&b.pbx, &b.extension, &b.tenant, &b.account)));
        v
    }

    pub fn sizes(&self) -> Sizes {
        Sizes { associations: self.assocs.len(), live: self.by_ext.len(), ivr_calls: self.ivr_calls.len(), proof_call_extensions: self.proof_calls.len(), bindings: self.bindings.len() }
    }

    /// Feed one input.
    pub fn handle(&mut self, input: Input) -> Output {
        let mut out = Output::default();
        match input {
            Input::Create { principal, account, account_name, pbx, extension, id, random, code, now } => {
                match self.create(&principal, account, account_name, pbx, extension, id, &random, &code, now, &mut out.actions) {
                    Ok((view, code)) => {
                        out.view = Some(view);
                        out.code = Some(code);
                    }
                    Err(e) => out.error = Some(e),
                }
            }
            Input::Complete { principal, id, random, now } => match self.visible_id(&principal, &id) {
                None => out.error = Some(ApiError::NotFound),
                Some(()) => {
                    if let Err(e) = self.start_attempt(&id, &random, now, &mut out.actions) {
                        out.error = Some(e);
                    }
                    out.view = self.assocs.get(&id).map(|a| a.view.clone());
                }
            },
            Input::Cancel { principal, id, now } => match self.visible_id(&principal, &id) {
                None => out.error = Some(ApiError::NotFound),
                Some(()) => {
                    let a = &self.assocs[&id];
                    if a.view.state.is_final(a.view.retryable) {
                        out.error = Some(ApiError::WrongState(a.view.state));
                    } else {
                        self.finish(&id, State::Cancelled, Some(Reason::CancelledByUser), "cancelled", now, &mut out.actions);
                    }
                    out.view = self.assocs.get(&id).map(|a| a.view.clone());
                }
            },
            Input::CstaDone { association, request, outcome, now } => self.csta_done(&association, request, outcome, now, &mut out.actions),
            Input::CstaEvent { pbx, extension, event, now } => self.csta_event(&pbx, &extension, event, now, &mut out.actions),
            Input::LinkDown { pbx, now } => {
                let ids: Vec<String> = self.by_ext.iter().filter(|((p, _), _)| *p == pbx).map(|(_, id)| id.clone()).collect();
                for id in ids {
                    if let Some(a) = self.assocs.get_mut(&id) {
                        a.monitored = false;
                        if matches!(a.view.state, State::Monitoring | State::Locking | State::Calling | State::Ringing | State::InIvr) {
                            // A lost CTI link does not end the PBX's calls: the attempt fails
                            // closed and its call is cleared once the link is back (the shell
                            // retries the ClearConnection).
                            self.fail_attempt(&id, Reason::LinkDown, "PBX link lost", now, &mut out.actions);
                        }
                    }
                }
            }
            Input::Ivr { call, from, to, digits, now } => match self.ivr(&call, &from, &to, digits.as_deref(), now, &mut out.actions) {
                Some(reply) => out.ivr = Some(reply),
                None => out.ivr_wait = true,
            },
            Input::IvrHangup { call, now } => self.ivr_hangup(&call, now, &mut out.actions),
            Input::Tick { now } => self.tick(now, &mut out.actions),
            Input::Unbind { principal, account, pbx, extension, now } => {
                let key = (pbx.clone(), extension.clone());
                match self.bindings.get(&key) {
                    Some(b) if principal == Principal::Admin || (visible(&principal, &b.tenant) && account.as_deref() == Some(b.account.as_str())) => {
                        let b = b.clone();
                        self.bindings.remove(&key);
                        out.actions.push(Action::Store(StoreWrite::Unbind { pbx, extension }));
                        out.actions.push(Action::Store(StoreWrite::Audit(AuditRecord {
                            at: now,
                            tenant: b.tenant.clone(),
                            account: b.account.clone(),
                            pbx: b.pbx.clone(),
                            extension: b.extension.clone(),
                            association: String::new(),
                            step: "unbound".into(),
                            result: if principal == Principal::Admin { "by admin".into() } else { "by the account".into() },
                        })));
                        out.actions.push(Action::Notify { tenant: b.tenant, account: b.account, event: "unbound".into(), association: String::new() });
                    }
                    _ => out.error = Some(ApiError::NotFound),
                }
            }
            Input::ResetCounters { scope, now } => {
                for (key, _) in self.counters(&scope) {
                    self.counters.insert(key.clone(), 0);
                    let (tenant, account) = key.tenant_account();
                    let (pbx, extension) = key.extension().unwrap_or_default();
                    let record = AuditRecord { at: now, tenant: tenant.into(), account: account.into(), pbx: pbx.into(), extension: extension.into(), association: String::new(), step: "counter_reset".into(), result: "by admin".into() };
                    out.actions.push(Action::Store(StoreWrite::Counter { key: key.clone(), value: 0 }));
                    out.actions.push(Action::Store(StoreWrite::Audit(record)));
                }
            }
            Input::LiftBlocks { scope, now } => {
                for b in self.blocks(&scope, now) {
                    self.blocks.remove(&b.key());
                    let record = AuditRecord { at: now, tenant: b.tenant.clone(), account: b.account.clone(), pbx: b.pbx.clone(), extension: b.extension.clone(), association: String::new(), step: "owner_block_lifted".into(), result: "by admin".into() };
                    out.actions.push(Action::Store(StoreWrite::Unblock { tenant: b.tenant, account: b.account, pbx: b.pbx, extension: b.extension }));
                    out.actions.push(Action::Store(StoreWrite::Audit(record)));
                }
            }
        }
        out
    }

    fn visible_id(&self, principal: &Principal, id: &str) -> Option<()> {
        self.view(principal, id).map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    fn create(&mut self, principal: &Principal, account: String, account_name: Option<String>, pbx: Option<String>, extension: String, id: String, random: &str, code_random: &str, now: Millis, actions: &mut Vec<Action>) -> Result<(AssociationView, String), ApiError> {
        let tenant = match principal {
            Principal::Tenant(t) => t.clone(),
            Principal::Admin => return Err(ApiError::BadRequest("associations are requested by a tenant for one of its accounts".into())),
        };
        if account.is_empty() || extension.is_empty() {
            return Err(ApiError::BadRequest("account and extension are required".into()));
        }
        // The extension must be in the directory of a PBX of this tenant.
        let candidates: Vec<&String> = self
            .policies
            .iter()
            .filter(|(id, p)| p.tenant == tenant && p.directory.contains_key(&extension) && pbx.as_ref().is_none_or(|want| want == *id))
            .map(|(id, _)| id)
            .collect();
        let pbx = match candidates.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(ApiError::UnknownExtension(extension)),
            _ => return Err(ApiError::BadRequest("the extension exists on several PBXs of this tenant: give `pbx`".into())),
        };
        let (code_digits, code_ttl, require_completion) = {
            let p = &self.policies[&pbx];
            (p.code_digits, p.code_ttl, p.require_completion)
        };
        let ext_key = (pbx.clone(), extension.clone());
        if self.bindings.contains_key(&ext_key) {
            return Err(ApiError::AlreadyBound);
        }
        // Expired associations free their extension and account.
        self.tick(now, actions);
        if let Some(until) = self.blocked_until(&tenant, &account, &pbx, &extension, now) {
            return Err(ApiError::BlockedByPhoneOwner(until));
        }
        if self.by_ext.contains_key(&ext_key) {
            return Err(ApiError::ExtensionBusy);
        }
        if self.by_account.contains_key(&(tenant.clone(), account.clone())) {
            return Err(ApiError::AccountBusy);
        }
        if self.locked_out(&pbx, &extension, &tenant, &account) {
            return Err(ApiError::LockedOut);
        }
        // Refused by a limit: no code, nothing live (the first attempt would be refused anyway).
        self.proof_call_budget(&pbx, &extension, &tenant, &account, now)?;
        let digits = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
        let code: String = digits(code_random).chars().take(code_digits).collect();
        if code.len() != code_digits {
            return Err(ApiError::BadRequest("not enough randomness for the code".into()));
        }
        if self.assocs.contains_key(&id) {
            return Err(ApiError::BadRequest("association id already used".into()));
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
            history: vec![Step { at: now, step: "code_issued".into(), detail: format!("code of {} digits valid until {expires_at}", code.len()) }],
        };
        self.by_ext.insert(ext_key, id.clone());
        self.by_account.insert((tenant.clone(), account.clone()), id.clone());
        self.assocs.insert(id.clone(), Assoc { view: view.clone(), account_name, code: code.clone(), code_entries: 0, lock_call: None, monitored: false, deadline: None, attempt: Attempt::default() });
        actions.push(audit(&view, now, "code_issued", "ok"));
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

    /// The failure limits of whoever asked: the account, and the account on this extension.
    /// Another account's failures never lock out an extension's owner.
    pub(crate) fn locked_out(&self, pbx: &str, extension: &str, tenant: &str, account: &str) -> bool {
        let limit = self.policies.get(pbx).map_or(100, |p| p.lockout_after);
        CounterKey::charged(tenant, account, pbx, extension).iter().any(|k| self.counters.get(k).copied().unwrap_or(0) >= limit)
    }

    /// Until when the phone's owner has blocked `account` from `extension`, if they have.
    fn blocked_until(&self, tenant: &str, account: &str, pbx: &str, extension: &str, now: Millis) -> Option<Millis> {
        self.blocks.get(&(tenant.to_owned(), account.to_owned(), pbx.to_owned(), extension.to_owned())).map(|b| b.until).filter(|u| *u > now)
    }

    /// Another proof call to the extension is allowed: under the extension's hourly limit, and
    /// under the requesting account's share of it (half, rounded up), so that no other account
    /// can spend all of an owner's proof calls.
    fn proof_call_budget(&mut self, pbx: &str, ext: &str, tenant: &str, account: &str, now: Millis) -> Result<(), ApiError> {
        let limit = self.policies.get(pbx).map_or(3, |p| p.proof_calls_per_hour);
        let calls = self.proof_calls.entry((pbx.to_owned(), ext.to_owned())).or_default();
        calls.retain(|c| now.saturating_sub(c.at) < HOUR);
        let mine = calls.iter().filter(|c| c.tenant == tenant && c.account == account).count();
        if calls.len() >= limit || mine >= limit.div_ceil(2) {
            return Err(ApiError::RateLimited);
        }
        Ok(())
    }

    /// Steps 3–6: (re)start a proof attempt, with a new context id drawn from `random`.
    fn start_attempt(&mut self, id: &str, random: &str, now: Millis, actions: &mut Vec<Action>) -> Result<(), ApiError> {
        let Some(a) = self.assocs.get(id) else { return Err(ApiError::NotFound) };
        let v = &a.view;
        match v.state {
            State::CodeIssued => {}
            State::Failed if v.retryable => {}
            s => return Err(ApiError::WrongState(s)),
        }
        if now >= v.expires_at {
            self.finish(id, State::Expired, Some(Reason::Expired), "expired", now, actions);
            return Err(ApiError::Expired);
        }
        let (pbx, ext, tenant, account) = (v.pbx.clone(), v.extension.clone(), v.tenant.clone(), v.account.clone());
        if self.locked_out(&pbx, &ext, &tenant, &account) {
            self.finish(id, State::Failed, Some(Reason::LockedOut), "locked_out", now, actions);
            return Err(ApiError::LockedOut);
        }
        if let Err(e) = self.proof_call_budget(&pbx, &ext, &tenant, &account, now) {
            // Recorded once however often the app asks again: refusals must not grow the store.
            if self.assocs.get(id).and_then(|a| a.view.history.last()).is_none_or(|s| s.step != "rate_limited") {
                self.step(id, now, "rate_limited", "proof-call limit of this extension or account reached", actions);
            }
            return Err(e);
        }
        // A context id unique among live attempts, new for this proof call.
        let n = self.policies.get(&pbx).map_or(8, |p| p.context_digits);
        let pool: Vec<u8> = random.bytes().filter(u8::is_ascii_digit).collect();
        let context = pool
            .chunks(n)
            .filter(|c| c.len() == n)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .find(|c| !self.by_context.contains_key(*c))
            .map(str::to_owned)
            .ok_or_else(|| ApiError::BadRequest("not enough randomness for the context id".into()))?;
        let call = ProofCall { pbx: pbx.clone(), extension: ext.clone(), tenant, account, at: now };
        self.proof_calls.entry((pbx.clone(), ext.clone())).or_default().push(call.clone());
        actions.push(Action::Store(StoreWrite::ProofCall(call)));
        self.by_context.insert(context.clone(), id.to_owned());
        let a = self.assocs.get_mut(id).ok_or(ApiError::NotFound)?;
        a.view.reason = None;
        a.view.retryable = true;
        a.view.call = None;
        a.lock_call = None;
        a.attempt = Attempt { context: Some(context), ..Attempt::default() };
        if a.monitored {
            self.after_monitor(id, now, actions);
        } else {
            self.set_state(id, State::Monitoring, now, "monitoring", "MonitorStart on the extension", actions);
            actions.push(Action::Csta { association: id.to_owned(), pbx, request: CstaRequest::MonitorStart { extension: ext } });
        }
        Ok(())
    }

    /// Monitor running: lock first if the policy says so, else place the proof call.
    fn after_monitor(&mut self, id: &str, now: Millis, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get(id) else { return };
        let (pbx, ext) = (a.view.pbx.clone(), a.view.extension.clone());
        match self.policies.get(&pbx).and_then(|p| p.lock_prefix.clone()) {
            Some(prefix) => {
                self.set_state(id, State::Locking, now, "locking", "MakeCall to the lock prefix", actions);
                actions.push(Action::Csta { association: id.to_owned(), pbx, request: CstaRequest::MakeCall { from: ext, to: prefix } });
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
        };
        let deadline = now + policy.ring_timeout.as_millis() as Millis;
        if let Some(a) = self.assocs.get_mut(id) {
            a.deadline = Some(deadline);
        }
        self.set_state(id, State::Calling, now, "calling", "MakeCall from the extension to the IVR", actions);
        actions.push(Action::Csta { association: id.to_owned(), pbx, request: CstaRequest::MakeCall { from: ext, to } });
    }

    fn csta_done(&mut self, id: &str, request: CstaRequest, outcome: Result<CstaResultInfo, CstaFailure>, now: Millis, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get(id) else { return };
        let state = a.view.state;
        let failure_reason = |f: CstaFailure| match f {
            CstaFailure::LinkDown => Reason::LinkDown,
            CstaFailure::Busy => Reason::Busy,
            CstaFailure::Rejected => Reason::RejectedByPbx,
        };
        match (request, outcome) {
            (CstaRequest::MonitorStart { .. }, Ok(_)) if state == State::Monitoring => {
                if let Some(a) = self.assocs.get_mut(id) {
                    a.monitored = true;
                }
                self.after_monitor(id, now, actions);
            }
            (CstaRequest::MonitorStart { .. }, Err(f)) if state == State::Monitoring => self.fail_attempt(id, failure_reason(f), "MonitorStart refused", now, actions),
            (CstaRequest::MakeCall { to, .. }, Ok(info)) => self.make_call_placed(id, &to, info.call, actions),
            (CstaRequest::MakeCall { .. }, Err(f)) if matches!(state, State::Locking | State::Calling) => {
                let detail = if state == State::Locking { "the PBX refused the lock call" } else { "the PBX refused the proof call" };
                self.fail_attempt(id, failure_reason(f), detail, now, actions)
            }
            (CstaRequest::SendDigits { .. }, Err(_)) => self.step(id, now, "dtmf_failed", "the PBX refused to send the context digits", actions),
            _ => {}
        }
    }

    /// A MakeCall succeeded: the lock call, or a proof call, which the association follows if it
    /// is waiting for one. A proof call it does not follow — its result came after the attempt
    /// failed or the association ended, or it follows another call — is cleared at once: nothing
    /// else would ever clear it, and the phone would ring for nothing.
    fn make_call_placed(&mut self, id: &str, to: &str, call: Option<Vec<u8>>, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get_mut(id) else { return };
        let state = a.view.state;
        if self.policies.get(&a.view.pbx).and_then(|p| p.lock_prefix.as_deref()) == Some(to) {
            // The lock feature call: the PBX ends it itself.
            if state == State::Locking {
                a.lock_call = call;
            }
            return;
        }
        let Some(call) = call else { return };
        let this = hex::encode(&call);
        match (state, a.view.call.as_deref()) {
            (State::Calling | State::Ringing, None) => {
                a.view.call = Some(this);
                // Durable before anything else happens: a restarted gateway clears it.
                actions.push(Action::Store(StoreWrite::Association(a.view.clone())));
            }
            // Events came first and named it already.
            (State::Calling | State::Ringing | State::InIvr, Some(c)) if c == this => {}
            _ => actions.push(Action::Csta { association: id.to_owned(), pbx: a.view.pbx.clone(), request: CstaRequest::ClearConnection { call, extension: a.view.extension.clone() } }),
        }
    }

    fn csta_event(&mut self, pbx: &str, extension: &str, event: CallEvent, now: Millis, actions: &mut Vec<Action>) {
        let Some(id) = self.by_ext.get(&(pbx.to_owned(), extension.to_owned())).cloned() else { return };
        let Some(a) = self.assocs.get_mut(&id) else { return };
        let state = a.view.state;
        if state == State::Locking {
            let is_lock_call = a.lock_call.as_deref().is_none_or(|c| c == event.call());
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
        // Follow our call only; the first event names it if the MakeCall result is late.
        let this = hex::encode(event.call());
        match &a.view.call {
            Some(c) if *c != this => return,
            None => a.view.call = Some(this),
            _ => {}
        }
        // A PBX that repeats events without end must not hold the engine (each step is written).
        a.attempt.events += 1;
        if a.attempt.events > MAX_ATTEMPT_EVENTS {
            self.fail_attempt(&id, Reason::PbxFlood, "the PBX sent more events about the proof call than a call has", now, actions);
            return;
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
                if let Some(a) = self.assocs.get_mut(&id) {
                    a.deadline = Some(deadline);
                    a.attempt.in_ivr_at = Some(now);
                }
                self.set_state(&id, State::InIvr, now, "in_ivr", "the user is connected to the IVR", actions);
                let dtmf = self.policies.get(pbx).is_some_and(|p| p.context_delivery == ContextDelivery::Dtmf);
                if let (true, Some(a)) = (dtmf, self.assocs.get(&id)) {
                    if let (Some(call), Some(ctx)) = (a.call(), a.attempt.context.as_ref()) {
                        let digits = format!("*{ctx}#");
                        actions.push(Action::Csta { association: id.clone(), pbx: pbx.to_owned(), request: CstaRequest::SendDigits { call, extension: extension.to_owned(), digits } });
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
                self.fail_attempt(&id, reason, &format!("the call failed (cause {})", cause.map_or("unknown".into(), |c| c.to_string())), now, actions);
            }
            CallEvent::Diverted { .. } => self.fail_attempt(&id, Reason::CallDiverted, "the proof call left the extension (diverted, transferred or conferenced)", now, actions),
            CallEvent::Cleared { .. } => {
                let reason = if state == State::InIvr { Reason::CallCleared } else { Reason::NoAnswer };
                if let Some(a) = self.assocs.get_mut(&id) {
                    a.view.call = None; // nothing to clear any more
                }
                self.fail_attempt(&id, reason, "the call ended before the code was accepted", now, actions);
            }
        }
    }

    fn tick(&mut self, now: Millis, actions: &mut Vec<Action>) {
        let ids: Vec<String> = self.by_ext.values().cloned().collect();
        for id in ids {
            let Some(a) = self.assocs.get(&id) else { continue };
            if a.attempt.waiting.as_ref().is_some_and(|(_, until)| now >= *until) {
                self.claim_waiting(&id, now, actions);
            } else if now >= a.view.expires_at {
                self.finish(&id, State::Expired, Some(Reason::Expired), "expired", now, actions);
            } else if a.deadline.is_some_and(|d| now >= d) {
                match a.view.state {
                    State::Calling | State::Ringing => self.fail_attempt(&id, Reason::NoAnswer, "nobody answered in time", now, actions),
                    State::InIvr => self.fail_attempt(&id, Reason::IvrTimeout, "the IVR platform stopped sending requests for the call", now, actions),
                    _ => {}
                }
            }
        }
        // Forget silent IVR calls, proof calls older than the hour they count in, and ended
        // associations after a while (the store keeps them).
        self.ivr_calls.retain(|_, c| now.saturating_sub(c.last) < FORGET_AFTER);
        self.blocks.retain(|_, b| b.until > now);
        self.ended_contexts.retain(|_, at| now.saturating_sub(*at) < FORGET_AFTER);
        self.proof_calls.retain(|_, calls| {
            calls.retain(|c| now.saturating_sub(c.at) < HOUR);
            !calls.is_empty()
        });
        self.assocs.retain(|_, a| !a.view.state.is_final(a.view.retryable) || a.view.history.last().is_none_or(|s| now.saturating_sub(s.at) < FORGET_AFTER));
    }

    /// The attempt failed: clear any call, tell the account; the user may retry while the code
    /// is valid and its entries are not used up.
    pub(crate) fn fail_attempt(&mut self, id: &str, reason: Reason, detail: &str, now: Millis, actions: &mut Vec<Action>) {
        self.end_attempt(id, now, actions);
        let Some(a) = self.assocs.get_mut(id) else { return };
        a.deadline = None;
        let retryable = now < a.view.expires_at && a.code_entries < MAX_CODE_ENTRIES && !matches!(reason, Reason::LockedOut | Reason::AttemptsExhausted);
        clear_call(&mut a.view, actions);
        a.view.reason = Some(reason);
        a.view.retryable = retryable;
        if retryable {
            self.set_state(id, State::Failed, now, "failed", detail, actions);
            if let Some(a) = self.assocs.get(id) {
                actions.push(Action::Notify { tenant: a.view.tenant.clone(), account: a.view.account.clone(), event: "attempt_failed".into(), association: id.to_owned() });
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
        clear_call(&mut a.view, actions);
        let (pbx, ext) = (a.view.pbx.clone(), a.view.extension.clone());
        if std::mem::take(&mut a.monitored) {
            actions.push(Action::Csta { association: id.to_owned(), pbx: pbx.clone(), request: CstaRequest::MonitorStop { extension: ext.clone() } });
        }
        let (tenant, account) = (a.view.tenant.clone(), a.view.account.clone());
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
        actions.push(Action::Notify { tenant, account, event: event.into(), association: id.to_owned() });
    }

    fn set_state(&mut self, id: &str, state: State, now: Millis, step: &str, detail: &str, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get_mut(id) else { return };
        a.view.state = state;
        push_history(&mut a.view.history, Step { at: now, step: step.to_owned(), detail: detail.to_owned() });
        let result = a.view.reason.map_or_else(|| "ok".to_owned(), |r| serde_json::to_value(r).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default());
        actions.push(audit(&a.view, now, step, &result));
        actions.push(Action::Store(StoreWrite::Association(a.view.clone())));
    }

    /// A history step without a state change.
    pub(crate) fn step(&mut self, id: &str, now: Millis, step: &str, detail: &str, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get_mut(id) else { return };
        push_history(&mut a.view.history, Step { at: now, step: step.to_owned(), detail: detail.to_owned() });
        actions.push(audit(&a.view, now, step, "ok"));
        actions.push(Action::Store(StoreWrite::Association(a.view.clone())));
    }
}

/// Append a step, keeping at most [`MAX_HISTORY`] entries and a "truncated" marker, after which
/// the newest step replaces the last one: a PBX or IVR that repeats itself cannot grow a view.
pub(crate) fn push_history(h: &mut Vec<Step>, s: Step) {
    if h.len() < MAX_HISTORY - 1 {
        h.push(s);
    } else if h.len() == MAX_HISTORY - 1 {
        h.push(Step { at: s.at, step: "truncated".into(), detail: "later steps are in the audit log; the newest follows".into() });
        h.push(s);
    } else if let Some(last) = h.last_mut() {
        *last = s;
    }
}

pub(crate) fn visible(p: &Principal, tenant: &str) -> bool {
    match p {
        Principal::Admin => true,
        Principal::Tenant(t) => t == tenant,
    }
}

pub(crate) fn audit(v: &AssociationView, at: Millis, step: &str, result: &str) -> Action {
    Action::Store(StoreWrite::Audit(AuditRecord {
        at,
        tenant: v.tenant.clone(),
        account: v.account.clone(),
        pbx: v.pbx.clone(),
        extension: v.extension.clone(),
        association: v.id.clone(),
        step: step.to_owned(),
        result: result.to_owned(),
    }))
}
