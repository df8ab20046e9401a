//! The engine's state and its transitions (see the module docs in `mod.rs`).

use std::collections::{BTreeSet, HashMap};

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
/// How often the memory of IVR calls, ended context ids, proof calls and owner blocks is swept
/// (while there is any): none of them is a deadline anyone waits for.
const SWEEP_EVERY: Millis = 60_000;

/// What a CSTA request the engine issued is for: its answer is read by this, never by comparing
/// what the request said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    Monitor,
    LockCall,
    ProofCall,
    Digits,
}

/// A request whose answer the engine acts on. ClearConnection and MonitorStop are not kept: their
/// answers change nothing.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub(crate) association: String,
    pub(crate) purpose: Purpose,
}

pub(crate) struct Assoc {
    pub(crate) view: AssociationView,
    pub(crate) account_name: Option<String>,
    /// Kept in memory only, never stored or logged; compared in constant time.
    pub(crate) code: String,
    pub(crate) code_entries: u32,
    pub(crate) lock_call: Option<CallId>,
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
    /// When this association next needs the engine's attention without any input: the answer
    /// of a waiting IVR request, the code's expiry, the ring or IVR timeout. `None` once final.
    fn next_deadline(&self) -> Option<Millis> {
        if self.view.state.is_final(self.view.retryable) {
            return None;
        }
        let waiting = self.attempt.waiting.as_ref().map(|(_, until)| *until);
        [waiting, Some(self.view.expires_at), self.deadline].into_iter().flatten().min()
    }
}

/// The association engine. See the module docs.
pub struct Engine {
    pub(crate) policies: HashMap<PbxId, Policy>,
    pub(crate) assocs: HashMap<AssociationId, Assoc>,
    /// Live (not final) associations by (pbx, extension), (tenant, account) and context id.
    pub(crate) by_ext: HashMap<(PbxId, Extension), AssociationId>,
    pub(crate) by_account: HashMap<(TenantId, AccountId), AssociationId>,
    pub(crate) by_context: HashMap<String, AssociationId>,
    /// Context ids of attempts that ended in the last [`FORGET_AFTER`], with when: a proof call
    /// that reaches the IVR after its attempt failed presents one. It is told "no longer valid",
    /// not "unknown", so the adapters do not count it as a guess (a guess hits one of these as
    /// rarely as a live one). Bounded by the proof calls of ten minutes.
    pub(crate) ended_contexts: HashMap<String, Millis>,
    pub(crate) bindings: HashMap<(PbxId, Extension), Binding>,
    pub(crate) counters: HashMap<CounterKey, u32>,
    /// Proof calls of the last hour by extension, with the account each was charged to.
    pub(crate) proof_calls: HashMap<(PbxId, Extension), Vec<ProofCall>>,
    /// Owner blocks by (tenant, account, pbx, extension).
    pub(crate) blocks: HashMap<BlockKey, OwnerBlock>,
    pub(crate) ivr_calls: HashMap<String, super::ivr::IvrCall>,
    /// The CSTA requests whose answers the engine awaits, by id. Only requests of associations
    /// in memory: dropped with their association, so bounded like `assocs`.
    pub(crate) pending: HashMap<RequestId, Pending>,
    pub(crate) next_request: u64,
    /// Deadlines of live associations, ordered (`armed` holds each one's entry): the timer
    /// interface reads the first without scanning the associations.
    pub(crate) timers: BTreeSet<(Millis, String)>,
    pub(crate) armed: HashMap<String, Millis>,
    /// When ended associations leave memory (their last step plus [`FORGET_AFTER`]).
    pub(crate) forget: BTreeSet<(Millis, String)>,
    /// The next sweep of the other memory (see [`SWEEP_EVERY`]).
    pub(crate) next_sweep: Millis,
    /// Associations an input changed: their deadlines are re-armed before the input returns.
    pub(crate) touched: Vec<String>,
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
            pending: HashMap::new(),
            next_request: 0,
            timers: BTreeSet::new(),
            armed: HashMap::new(),
            forget: BTreeSet::new(),
            next_sweep: 0,
            touched: Vec::new(),
        }
    }

    /// Name a new CSTA request for the association `id` (see [`RequestId`]); `purpose` is what
    /// its answer is read as (`None`: its answer changes nothing and is not awaited).
    pub(crate) fn request(&mut self, id: &str, pbx: &str, request: CstaRequest, purpose: Option<Purpose>, actions: &mut Vec<Action>) {
        let rid = RequestId(self.next_request);
        self.next_request += 1;
        if let Some(purpose) = purpose {
            self.pending.insert(rid, Pending { association: id.to_owned(), purpose });
        }
        actions.push(Action::Csta { id: rid, association: id.into(), pbx: pbx.into(), request });
    }

    /// Whether the engine awaits the answer to `id`. The shell clears a call that a MakeCall it no
    /// longer awaits placed (nothing else would).
    pub fn awaits(&self, id: RequestId) -> bool {
        self.pending.contains_key(&id)
    }

    /// Forget the association's proof call and ask the shell to clear it, if there is one.
    pub(crate) fn clear_call(&mut self, id: &str, actions: &mut Vec<Action>) {
        let Some(a) = self.assocs.get_mut(id) else { return };
        if let Some(call) = a.view.call.take() {
            let (pbx, extension) = (a.view.pbx.clone(), a.view.extension.clone());
            self.request(id, &pbx, CstaRequest::ClearConnection { call, extension }, None, actions);
        }
    }

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

    /// Rebuild from the store after a restart. Associations in flight cannot go on (their code
    /// was never stored and their call is gone): they end as failed with `gateway_restarted`.
    pub fn restore<K: Into<PbxId>>(policies: HashMap<K, Policy>, snap: Snapshot, now: Millis) -> (Engine, Vec<Action>) {
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
            if let Some(call) = v.call.take() {
                let rid = RequestId(e.next_request);
                e.next_request += 1;
                actions.push(Action::Csta { id: rid, association: v.id.clone(), pbx: v.pbx.clone(), request: CstaRequest::ClearConnection { call, extension: v.extension.clone() } });
            }
            actions.push(Action::Notify { tenant: v.tenant.clone(), account: v.account.clone(), event: "failed".into(), association: v.id.clone() });
            actions.push(Action::Store(StoreWrite::Association(v)));
        }
        (e, actions)
    }

    /// The proof calls of the live associations, as `(association, pbx, extension, call)`: the
    /// calls a stopping gateway clears before it ends their associations.
    pub fn live_calls(&self) -> Vec<(AssociationId, PbxId, Extension, CallId)> {
        self.by_ext.values().filter_map(|id| self.assocs.get(id)).filter_map(|a| Some((a.view.id.clone(), a.view.pbx.clone(), a.view.extension.clone(), a.view.call.clone()?))).collect()
    }

    /// The gateway stops: every live association ends as a restart would end it (failed,
    /// `gateway_restarted`, audited, the account told), except those in `left_up`, whose proof
    /// call may still be up (its ClearConnection did not get through): they stay in flight in the
    /// store, so that the next start ends them and clears their call. The calls of the others
    /// are cleared already (see [`Engine::live_calls`]).
    pub fn shutdown(&mut self, now: Millis, left_up: &[AssociationId]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut ids: Vec<AssociationId> = self.by_ext.values().filter(|id| !left_up.contains(id)).cloned().collect();
        ids.sort();
        for id in ids {
            if let Some(a) = self.assocs.get_mut(id.as_str()) {
                a.view.call = None;
            }
            self.finish(&id, State::Failed, Some(Reason::GatewayRestarted), "the gateway stopped while the association was in flight", now, &mut actions);
        }
        self.rearm();
        actions
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
                self.start_attempt(&id, &random, now, actions)?;
                self.assocs.get(id.as_str()).map(|a| ApiReply::Association(a.view.clone())).ok_or(Refusal::NotFound)
            }
            ApiInput::Cancel { principal, id, now } => {
                self.visible_id(&principal, &id).ok_or(Refusal::NotFound)?;
                let a = self.assocs.get(id.as_str()).ok_or(Refusal::NotFound)?;
                if a.view.state.is_final(a.view.retryable) {
                    return Err(Refusal::WrongState(a.view.state));
                }
                self.finish(&id, State::Cancelled, Some(Reason::CancelledByUser), "cancelled", now, actions);
                self.assocs.get(id.as_str()).map(|a| ApiReply::Association(a.view.clone())).ok_or(Refusal::NotFound)
            }
            ApiInput::Unbind { principal, account, pbx, extension, now } => {
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

    fn visible_id(&self, principal: &Principal, id: &str) -> Option<()> {
        self.view(principal, id).map(|_| ())
    }

    #[allow(clippy::too_many_arguments)]
    fn create(&mut self, principal: &Principal, account: AccountId, account_name: Option<String>, pbx: Option<PbxId>, extension: Extension, id: AssociationId, random: &str, code_random: &str, now: Millis, actions: &mut Vec<Action>) -> Result<(AssociationView, String), Refusal> {
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
            .filter(|(id, p)| p.tenant == tenant && p.directory.contains_key(extension.as_str()) && pbx.as_ref().is_none_or(|want| want == *id))
            .map(|(id, _)| id)
            .collect();
        let pbx = match candidates.as_slice() {
            [one] => (*one).clone(),
            [] => return Err(Refusal::UnknownExtension(extension.into_string())),
            _ => return Err(Refusal::BadRequest("the extension exists on several PBXs of this tenant: give `pbx`".into())),
        };
        let (code_digits, code_ttl, require_completion) = {
            let p = &self.policies[&pbx];
            (p.code_digits, p.code_ttl, p.require_completion)
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
            history: vec![Step { at: now, step: "code_issued".into(), detail: format!("code of {} digits valid until {expires_at}", code.len()) }],
        };
        self.by_ext.insert(ext_key, id.clone());
        self.by_account.insert((tenant.clone(), account.clone()), id.clone());
        self.assocs.insert(id.clone(), Assoc { view: view.clone(), account_name, code: code.clone(), code_entries: 0, lock_call: None, monitored: false, deadline: None, attempt: Attempt::default() });
        self.touch(&id);
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
        self.blocks.get(&(tenant.into(), account.into(), pbx.into(), extension.into())).map(|b| b.until).filter(|u| *u > now)
    }

    /// Another proof call to the extension is allowed: under the extension's hourly limit, and
    /// under the requesting account's share of it (half, rounded up), so that no other account
    /// can spend all of an owner's proof calls.
    fn proof_call_budget(&mut self, pbx: &str, ext: &str, tenant: &str, account: &str, now: Millis) -> Result<(), Refusal> {
        let limit = self.policies.get(pbx).map_or(3, |p| p.proof_calls_per_hour);
        let calls = self.proof_calls.entry((pbx.into(), ext.into())).or_default();
        calls.retain(|c| now.saturating_sub(c.at) < HOUR);
        let mine = calls.iter().filter(|c| c.tenant == tenant && c.account == account).count();
        if calls.len() >= limit || mine >= limit.div_ceil(2) {
            return Err(Refusal::RateLimited);
        }
        Ok(())
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
        self.by_context.insert(context.clone(), id.into());
        let a = self.assocs.get_mut(id).ok_or(Refusal::NotFound)?;
        a.view.reason = None;
        a.view.retryable = true;
        a.view.call = None;
        a.lock_call = None;
        a.attempt = Attempt { context: Some(context), ..Attempt::default() };
        if a.monitored {
            self.after_monitor(id, now, actions);
        } else {
            self.set_state(id, State::Monitoring, now, "monitoring", "MonitorStart on the extension", actions);
            self.request(id, &pbx, CstaRequest::MonitorStart { extension: ext }, Some(Purpose::Monitor), actions);
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
                self.request(id, &pbx, CstaRequest::MakeCall { from: ext, to: prefix }, Some(Purpose::LockCall), actions);
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
        self.request(id, &pbx, CstaRequest::MakeCall { from: ext, to }, Some(Purpose::ProofCall), actions);
    }

    fn csta_done(&mut self, rid: RequestId, outcome: Result<CstaResultInfo, CstaFailure>, now: Millis, actions: &mut Vec<Action>) {
        // Unknown (never issued, or its association forgotten) or answered already: ignored.
        let Some(Pending { association, purpose }) = self.pending.remove(&rid) else { return };
        let id = association.as_str();
        let Some(a) = self.assocs.get(id) else { return };
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
            (Purpose::Monitor, Err(f)) if state == State::Monitoring => self.fail_attempt(id, failure_reason(f), "MonitorStart refused", now, actions),
            // The lock feature call: the PBX ends it itself.
            (Purpose::LockCall, Ok(info)) => {
                if let Some(a) = self.assocs.get_mut(id).filter(|a| a.view.state == State::Locking) {
                    a.lock_call = info.call;
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
            let is_lock_call = a.lock_call.as_ref().is_none_or(|c| c == event.call());
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
        match &a.view.call {
            Some(c) if c != event.call() => return,
            None => a.view.call = Some(event.call().clone()),
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
                self.fail_attempt(&id, reason, &format!("the call failed (cause {})", cause.map_or("unknown".into(), |c| c.to_string())), now, actions);
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

    fn set_state(&mut self, id: &str, state: State, now: Millis, step: &str, detail: &str, actions: &mut Vec<Action>) {
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
