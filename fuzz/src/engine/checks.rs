//! The oracle's checks: what each input's outputs must respect given the model (limits, claims,
//! codes, proof calls, counters, blocks, bindings, IVR replies, no secret shown), and the
//! invariants checked after every step.

use super::*;

impl Fz {
    /// The codes issued and the contexts drawn: what nothing shown may hold.
    pub(super) fn secrets(&self) -> HashSet<String> {
        self.codes.values().chain(self.contexts.iter()).cloned().collect()
    }

    /// Invariant 6 for a Create: a success passed every limit; a refusal leaves nothing.
    pub(super) fn check_create(&self, id: &str, pbx: Option<&str>, out: &Output, pre: &Store) {
        if out.error.is_some() {
            if out.code.is_some() {
                self.fail(format!("a refused create ({:?}) gave a code", out.error));
            }
            let was_live = pre.assocs.get(id).is_some_and(|v| !is_final(v));
            if !was_live && self.store.assocs.get(id).is_some_and(|v| !is_final(v)) {
                self.fail(format!("a refused create ({:?}) left association {id} live", out.error));
            }
            if out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::ProofCall(_))) || matches!(a, Action::Csta { association, request, .. } if association == id && !matches!(request, CstaRequest::ClearConnection { .. } | CstaRequest::MonitorStop { .. }))) {
                self.fail(format!("a refused create ({:?}) placed a proof call or asked the PBX for work", out.error));
            }
            if matches!(out.error, Some(Refusal::BlockedByPhoneOwner(_))) {
                count(10);
            }
            // The pool is exhausted only when every number of the PBX named is held.
            if let (Some(Refusal::PoolExhausted), Some(pbx)) = (&out.error, pbx) {
                if let Some(n) = self.free_pool_number(pbx) {
                    self.fail(format!("a create on {pbx} refused for an exhausted pool, though {n} is free"));
                }
            }
            return;
        }
        let Some(v) = &out.view else { return };
        let p = self.policy(&v.pbx);
        if pre.bindings.contains_key(&(v.pbx.to_string(), v.extension.to_string())) {
            self.fail(format!("create of {id} on a bound extension"));
        }
        if pre.blocked(&v.tenant, &v.account, &v.pbx, &v.extension, self.now) {
            self.fail(format!("create of {id}: {}/{} is blocked from {}/{} by its owner", v.tenant, v.account, v.pbx, v.extension));
        }
        let acc = CounterKey::Account { tenant: v.tenant.clone(), account: v.account.clone() };
        let acc_ext = CounterKey::AccountExtension { tenant: v.tenant.clone(), account: v.account.clone(), pbx: v.pbx.clone(), extension: v.extension.clone() };
        if pre.counter(&acc) >= p.lockout_after || pre.counter(&acc_ext) >= p.lockout_after {
            self.fail(format!("create of {id} for a locked-out account"));
        }
        let (all, mine) = self.proof_calls_within_hour(pre, &v.pbx, &v.extension, &v.tenant, &v.account, self.now);
        if all >= p.proof_calls_per_hour || mine >= p.proof_calls_per_hour.div_ceil(2) {
            self.fail(format!("create of {id} past the proof-call limit ({all} calls to the extension, {mine} of the account)"));
        }
    }

    /// Proof calls to (pbx, ext) in the hour before `now`, and those of one account.
    fn proof_calls_within_hour(&self, store: &Store, pbx: &str, ext: &str, tenant: &str, account: &str, now: Millis) -> (usize, usize) {
        let calls: Vec<&ProofCall> = store.proof_calls.iter().filter(|c| c.pbx == pbx && c.extension == ext && now.saturating_sub(c.at) < HOUR).collect();
        let mine = calls.iter().filter(|c| c.tenant == tenant && c.account == account).count();
        (calls.len(), mine)
    }

    /// Invariant 3 for an IVR request: the claim rules both ways, and what the platform is asked
    /// for next.
    pub(super) fn check_ivr(&mut self, call: &str, out: &Output, presented: Option<(String, Claim)>) {
        let before = self.ivr_before.clone().map(|(_, e)| e).unwrap_or(Expect::New);
        let prompt = out.ivr.as_ref().map(|r| r.prompt);
        if out.ivr_wait != out.ivr.is_none() {
            self.fail(format!("IVR call {call}: ivr_wait {} with reply {:?}", out.ivr_wait, out.ivr));
        }
        let next = match presented {
            Some((id, rule)) => {
                if let Some(a) = self.attempts.get_mut(&id) {
                    a.presenters.push(call.to_owned());
                }
                let failed_as_mismatch = out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::Association(v)) if v.id == id && v.reason == Some(Reason::IvrCallMismatch)))
                    && out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::Audit(r)) if r.association == id && r.step == "suspected_attack"))
                    && out.actions.iter().any(|a| matches!(a, Action::Notify { event, association, .. } if *association == id && event == "suspected_attack"));
                match rule {
                    Claim::Claimed if prompt == Some("confirm_account") => {
                        count(6);
                        if let Some(a) = self.attempts.get_mut(&id) {
                            a.claimed = Some(call.to_owned());
                        }
                        Expect::Confirm(id)
                    }
                    Claim::Wait if out.ivr_wait => {
                        count(7);
                        let until = self.now + claim_wait();
                        if let Some(a) = self.attempts.get_mut(&id) {
                            a.waiting = Some(call.to_owned());
                        }
                        self.waits.insert(call.to_owned(), (id.clone(), until));
                        Expect::Waiting(id)
                    }
                    Claim::Mismatch if prompt == Some("not_linked") && failed_as_mismatch => {
                        count(8);
                        Expect::Over
                    }
                    _ => self.fail(format!("IVR call {call} presented association {id}: the rules say {rule:?}, the engine answered {:?} (wait {}, failed as a mismatch {failed_as_mismatch})", out.ivr, out.ivr_wait)),
                }
            }
            None => {
                if let Expect::Waiting(id) = &before {
                    // The platform asked again before the answer: it still waits.
                    if !out.ivr_wait {
                        self.fail(format!("IVR call {call} waiting on {id} asked again and got {:?}", out.ivr));
                    }
                    before.clone()
                } else if out.ivr_wait || prompt == Some("confirm_account") {
                    self.fail(format!("IVR call {call} presented no live attempt (it was asked for {before:?}) and the engine answered {:?} (wait {})", out.ivr, out.ivr_wait));
                } else {
                    match (&before, prompt) {
                        (Expect::Confirm(id) | Expect::Code(id), Some("enter_code" | "wrong_code")) => Expect::Code(id.clone()),
                        (_, Some("enter_code" | "wrong_code")) => self.fail(format!("IVR call {call} asked for a code, but it was asked for {before:?}")),
                        (_, Some("enter_context" | "unknown_context")) => Expect::Context,
                        _ => Expect::Over,
                    }
                }
            }
        };
        if let Some(m) = self.ivr.get_mut(call) {
            m.expect = next;
        }
    }

    /// Apply the actions of one output to the models, checking each.
    pub(super) fn actions(&mut self, actions: &[Action], cause: Option<(&Input, &Output)>, pre: &Store) {
        let secrets = self.secrets();
        let secrets: HashSet<&str> = secrets.iter().map(String::as_str).collect();
        let now = self.now;
        let mut binds = Vec::new();
        for a in actions {
            match a {
                Action::Store(StoreWrite::Association(v)) => {
                    let old = self.store.assocs.get(v.id.as_str()).cloned();
                    if let Some(old) = &old {
                        if is_final(old) && (old.state, old.reason, old.retryable) != (v.state, v.reason, v.retryable) {
                            self.fail(format!("final association {} changed from {:?}/{:?} to {:?}/{:?}", v.id, old.state, old.reason, v.state, v.reason));
                        }
                    }
                    if view_leaks(v, &secrets) {
                        self.fail(format!("a stored association holds a code or a context id: {v:?}"));
                    }
                    // At most MAX_HISTORY steps and the "truncated" marker before the newest.
                    if v.history.len() > MAX_HISTORY + 1 || (v.history.len() == MAX_HISTORY + 1 && v.history[MAX_HISTORY - 1].step != "truncated") {
                        self.fail(format!("association {} has a history of {} steps", v.id, v.history.len()));
                    }
                    let old_state = old.as_ref().map(|o| o.state);
                    if old_state != Some(v.state) {
                        match v.state {
                            State::CodeIssued => count(0),
                            State::InIvr => count(1),
                            State::Bound => count(2),
                            State::Failed if v.reason == Some(Reason::AttemptsExhausted) => count(3),
                            State::Failed if v.reason == Some(Reason::RefusedByPhoneOwner) => count(9),
                            State::Expired => count(4),
                            _ => {}
                        }
                    }
                    if v.state == State::InIvr && matches!(old_state, Some(State::Calling | State::Ringing)) {
                        // The attempt's call was answered at the IVR: only the PBX says so.
                        let Some((Input::CstaEvent { event: CallEvent::Established { call }, .. }, _)) = cause else {
                            self.fail(format!("association {} in_ivr without the PBX reporting its call established", v.id));
                        };
                        if let Some(att) = self.attempts.get_mut(v.id.as_str()) {
                            att.established = Some((now, call.as_bytes().to_vec()));
                        }
                    }
                    if !in_attempt(v.state) {
                        // The attempt is over: its context id is free again.
                        if let Some(ctx) = self.attempts.get_mut(v.id.as_str()).and_then(|a| a.ctx.take()) {
                            if self.ctx_live.get(&ctx) == Some(&v.id.to_string()) {
                                self.ctx_live.remove(&ctx);
                            }
                        }
                        // And its pool number.
                        if let Some(n) = self.attempts.get_mut(v.id.as_str()).and_then(|a| a.pool.take()) {
                            let key = (v.pbx.to_string(), n);
                            if self.pool_held.get(&key) == Some(&v.id.to_string()) {
                                self.pool_held.remove(&key);
                            }
                            self.pool_released.insert(key, now);
                        }
                    }
                    if v.state == State::Bound && old.as_ref().is_none_or(|o| o.state != State::Bound) {
                        // The IVR hangs up the proof call of a bound association.
                        for c in self.calls.iter_mut().filter(|c| c.association == v.id) {
                            c.down = true;
                        }
                    }
                    self.store.assocs.insert(v.id.to_string(), v.clone());
                }
                Action::Store(StoreWrite::Bind(b)) => {
                    let key = (b.pbx.to_string(), b.extension.to_string());
                    if self.store.bindings.contains_key(&key) {
                        self.fail(format!("a second binding for {key:?}: {b:?}"));
                    }
                    self.store.bindings.insert(key, b.clone());
                    binds.push(b.clone());
                }
                Action::Store(StoreWrite::Unbind { pbx, extension }) => {
                    if self.store.bindings.remove(&(pbx.to_string(), extension.to_string())).is_none() {
                        self.fail(format!("unbind of {pbx}/{extension}, which is not bound"));
                    }
                }
                Action::Store(StoreWrite::Counter { key, value }) => {
                    self.check_counter(key, *value, cause);
                    self.store.counters.insert(key.clone(), *value);
                }
                Action::Store(StoreWrite::ProofCall(c)) => {
                    self.proof_call(c, cause);
                    self.store.proof_calls.push(c.clone());
                }
                Action::Store(StoreWrite::Block(b)) => {
                    self.check_block(b, cause);
                    self.store.blocks.insert((b.tenant.to_string(), b.account.to_string(), b.pbx.to_string(), b.extension.to_string()), b.clone());
                }
                Action::Store(StoreWrite::Unblock { tenant, account, pbx, extension }) => {
                    let key = (tenant.to_string(), account.to_string(), pbx.to_string(), extension.to_string());
                    let Some((Input::LiftBlocks { scope, .. }, _)) = cause else {
                        self.fail(format!("block {key:?} lifted by something other than the admin"));
                    };
                    match self.store.blocks.get(&key) {
                        Some(b) if b.until > now && scope_block(scope, b) => {}
                        b => self.fail(format!("lifting {scope:?} lifted {key:?}, which is {b:?}")),
                    }
                    self.store.blocks.remove(&key);
                }
                Action::Store(StoreWrite::Audit(r)) => {
                    if [r.step.as_str(), r.result.as_str(), r.association.as_str(), r.account.as_str(), r.tenant.as_str(), r.pbx.as_str(), r.extension.as_str()].iter().any(|s| leaks(s, &secrets)) {
                        self.fail(format!("an audit record holds a code or a context id: {r:?}"));
                    }
                    if r.step == "code_entered" && r.result == "wrong_code" {
                        let n = self.wrong.entry(r.association.to_string()).or_insert(0);
                        *n += 1;
                        if *n > MAX_CODE_ENTRIES {
                            let n = *n;
                            self.fail(format!("{n} wrong entries of the code of {}", r.association));
                        }
                    }
                }
                Action::Notify { tenant, account, event, association } => {
                    if [tenant.as_str(), account.as_str(), event.as_str(), association.as_str()].iter().any(|s| leaks(s, &secrets)) {
                        self.fail(format!("a notification holds a code or a context id: {a:?}"));
                    }
                }
                // The code out of band: only the fields other than the code may not leak one.
                Action::DeliverCode { tenant, account, association, pbx, extension, .. } => {
                    if [tenant.as_str(), account.as_str(), association.as_str(), pbx.as_str(), extension.as_str()].iter().any(|s| leaks(s, &secrets)) {
                        self.fail(format!("a code delivery holds a code or a context id outside its code: {a:?}"));
                    }
                }
                Action::IvrReply { call, reply } => self.ivr_reply(call, reply, &secrets),
                Action::Csta { id: request_id, association, pbx, request } => {
                    let mut call = None;
                    match request {
                        CstaRequest::MakeCall { from, to } => {
                            self.next_call += 1;
                            let id = vec![0xC0, (self.next_call >> 8) as u8, self.next_call as u8];
                            let lock = to == LOCK_PREFIX;
                            let attempt = self.attempts.get(association.as_str()).map_or(0, |a| a.n);
                            if !lock {
                                self.check_dial(association, pbx, to);
                            }
                            self.calls.push(Call { pbx: pbx.to_string(), extension: from.to_string(), id: id.clone(), association: association.to_string(), attempt, lock, exists: false, down: false });
                            call = Some(id);
                        }
                        CstaRequest::SendDigits { digits, .. } => {
                            let ctx = self.attempts.get(association.as_str()).and_then(|a| a.ctx.clone());
                            if self.policy(pbx).context_delivery != ContextDelivery::Dtmf || ctx.as_ref().is_none_or(|c| *digits != format!("*{c}#")) {
                                self.fail(format!("SendDigits {digits:?} for {association}, whose attempt's context is {ctx:?} ({:?} delivery)", self.policy(pbx).context_delivery));
                            }
                            if let Some(c) = ctx {
                                self.seen.push(c);
                            }
                        }
                        CstaRequest::ClearConnection { call, .. } => {
                            for c in self.calls.iter_mut().filter(|c| c.pbx == *pbx && c.id == call.as_bytes()) {
                                c.down = true;
                            }
                        }
                        _ => {}
                    }
                    self.pending.push(Pending { id: *request_id, association: association.to_string(), pbx: pbx.to_string(), request: request.clone(), call, link_lost: false, sent: self.now });
                }
            }
        }
        for b in binds {
            self.check_bind(&b, actions, cause, pre);
        }
    }

    /// A MakeCall to the IVR: the number, with the attempt's context only for `dial_suffix`.
    fn check_dial(&mut self, association: &str, pbx: &str, to: &str) {
        let p = self.policy(pbx);
        let ctx = self.attempts.get(association).and_then(|a| a.ctx.clone());
        let Some(ctx) = ctx else { self.fail(format!("a proof call for {association}, which has no live attempt")) };
        let want = match p.context_delivery {
            ContextDelivery::DialSuffix => format!("{}*{ctx}#", p.ivr_number),
            // The pool number the attempt holds, and nothing else: no context leaves.
            ContextDelivery::NumberPool => match self.attempts.get(association).and_then(|a| a.pool.clone()) {
                Some(n) => n,
                None => self.fail(format!("a proof call for {association}, whose attempt holds no pool number")),
            },
            _ => p.ivr_number.clone(),
        };
        if to != want {
            self.fail(format!("the proof call of {association} dials {to:?}, not {want:?} ({:?} delivery)", p.context_delivery));
        }
        if p.context_delivery == ContextDelivery::DialSuffix {
            self.seen.push(ctx);
        }
    }

    /// A proof call is charged: a new attempt of the association the Create or Complete named,
    /// within every limit; the model draws its context id as the engine must.
    fn proof_call(&mut self, c: &ProofCall, cause: Option<(&Input, &Output)>) {
        let (id, random) = match cause {
            Some((Input::Create { id, random, .. } | Input::Complete { id, random, .. }, _)) => (id.to_string(), random.clone()),
            _ => self.fail(format!("a proof call charged by something other than a Create or Complete: {c:?}")),
        };
        let Some(v) = self.store.assocs.get(&id) else { self.fail(format!("a proof call for {id}, which the store does not hold")) };
        if (&c.pbx, &c.extension, &c.tenant, &c.account, c.at) != (&v.pbx, &v.extension, &v.tenant, &v.account, self.now) {
            self.fail(format!("proof call {c:?} charged for association {v:?}"));
        }
        let p = self.policy(&c.pbx);
        let (all, mine) = self.proof_calls_within_hour(&self.store, &c.pbx, &c.extension, &c.tenant, &c.account, self.now);
        if all + 1 > p.proof_calls_per_hour || mine + 1 > p.proof_calls_per_hour.div_ceil(2) {
            self.fail(format!("proof call {c:?}: {} to the extension within an hour, {} of the account (limit {})", all + 1, mine + 1, p.proof_calls_per_hour));
        }
        let acc = CounterKey::Account { tenant: c.tenant.clone(), account: c.account.clone() };
        let acc_ext = CounterKey::AccountExtension { tenant: c.tenant.clone(), account: c.account.clone(), pbx: c.pbx.clone(), extension: c.extension.clone() };
        if self.store.counter(&acc) >= p.lockout_after || self.store.counter(&acc_ext) >= p.lockout_after {
            self.fail(format!("proof call {c:?} for a locked-out account"));
        }
        if self.store.blocked(&c.tenant, &c.account, &c.pbx, &c.extension, self.now) {
            self.fail(format!("proof call {c:?} for an account the phone's owner blocked"));
        }
        // The first full chunk of the pool's digits not held by a live attempt.
        let n = p.context_digits;
        let digits: Vec<u8> = random.bytes().filter(u8::is_ascii_digit).collect();
        let ctx = digits.chunks(n).filter(|c| c.len() == n).map(|c| c.iter().map(|b| char::from(*b)).collect::<String>()).find(|c| !self.ctx_live.contains_key(c));
        let Some(ctx) = ctx else { self.fail(format!("proof call for {id} though its randomness {random:?} holds no free context id")) };
        if let Some(old) = self.attempts.get(&id).and_then(|a| a.ctx.clone()) {
            self.fail(format!("a new attempt of {id} while its attempt with context {old} is live"));
        }
        let n = self.attempts.get(&id).map_or(0, |a| a.n) + 1;
        // `number_pool`: the attempt holds a free number from its start.
        let pool = if p.context_delivery == ContextDelivery::NumberPool {
            match self.free_pool_number(&c.pbx) {
                Some(number) => Some(number),
                None => self.fail(format!("an attempt of {id} started while every number of {}'s pool is held", c.pbx)),
            }
        } else {
            None
        };
        // The held number names the attempt; a pool attempt's context never leaves the gateway
        // and names nothing.
        match &pool {
            Some(number) => self.pool_held.insert((c.pbx.to_string(), number.clone()), id.clone()),
            None => self.ctx_live.insert(ctx.clone(), id.clone()),
        };
        self.contexts.insert(ctx.clone());
        self.attempts.insert(id, Attempt { n, ctx: Some(ctx), pool, ..Attempt::default() });
    }

    /// Counters are charged to the account that asked (+1 on its wrong code) and reset only by
    /// its binding or an admin reset in scope.
    fn check_counter(&self, key: &CounterKey, value: u32, cause: Option<(&Input, &Output)>) {
        let old = self.store.counter(key);
        match (cause, value) {
            (Some((Input::ResetCounters { scope, .. }, _)), 0) if scope_counter(scope, key) => {}
            (Some((Input::Ivr { .. }, _)), _) => {
                let Some((_, Expect::Code(id))) = &self.ivr_before else {
                    self.fail(format!("counter {key:?} set to {value} by an IVR request that entered no code"));
                };
                let Some(v) = self.store.assocs.get(id) else { self.fail(format!("counter {key:?} charged for {id}, which the store does not hold")) };
                let ours = match key {
                    CounterKey::Account { tenant, account } => (tenant, account) == (&v.tenant, &v.account),
                    CounterKey::AccountExtension { tenant, account, pbx, extension } => (tenant, account, pbx, extension) == (&v.tenant, &v.account, &v.pbx, &v.extension),
                };
                if !ours || (value != 0 && value != old.saturating_add(1)) {
                    self.fail(format!("counter {key:?} set from {old} to {value} by a code entry of association {id} ({}/{})", v.tenant, v.account));
                }
            }
            _ => self.fail(format!("counter {key:?} set from {old} to {value} by {:?}", cause.map(|c| c.0))),
        }
    }

    /// An owner block comes only from a 9 on the call that claimed the attempt, after the account
    /// was named.
    fn check_block(&self, b: &OwnerBlock, cause: Option<(&Input, &Output)>) {
        let Some((Input::Ivr { call, digits, now, .. }, _)) = cause else { self.fail(format!("block {b:?} not from an IVR request")) };
        let Some((_, Expect::Confirm(id))) = &self.ivr_before else { self.fail(format!("block {b:?} from IVR call {call}, which was not asked to confirm")) };
        let Some(v) = self.store.assocs.get(id) else { self.fail(format!("block {b:?} for {id}, which the store does not hold")) };
        let owner_block = self.policy(&v.pbx).owner_block.as_millis() as Millis;
        let claimed = self.attempts.get(id).and_then(|a| a.claimed.as_deref()) == Some(call.as_str());
        if entered(digits.as_deref()) != "9" || !claimed || (&b.tenant, &b.account, &b.pbx, &b.extension, b.until) != (&v.tenant, &v.account, &v.pbx, &v.extension, now + owner_block) {
            self.fail(format!("block {b:?} from IVR call {call} (claimed {claimed}) with digits {digits:?} for association {v:?}"));
        }
    }

    /// The answer to a waiting IVR request: only to a waiting call, and naming the account only
    /// to a call the claim rules let claim.
    fn ivr_reply(&mut self, call: &str, reply: &IvrReply, secrets: &HashSet<&str>) {
        if leaks(&reply.say, secrets) {
            self.fail(format!("an IVR prompt holds a code or a context id: {}", reply.say));
        }
        let Some((id, _)) = self.waits.remove(call) else { self.fail(format!("an IvrReply for IVR call {call}, which is not waiting: {reply:?}")) };
        count(12);
        if let Some(a) = self.attempts.get_mut(&id) {
            if a.waiting.as_deref() == Some(call) {
                a.waiting = None;
            }
        }
        let next = if reply.prompt == "confirm_account" {
            let m = self.ivr.get(call).cloned();
            let ok = match (m, self.attempts.get(&id), self.store.assocs.get(&id)) {
                (Some(m), Some(a), Some(v)) => {
                    let p = self.policy(&v.pbx);
                    v.state == State::InIvr
                        && a.presenters.first().map(String::as_str) == Some(call)
                        && a.established.as_ref().is_some_and(|(at, _)| m.first + claim_wait() >= *at && m.first <= at + p.ivr_claim_window.as_millis() as Millis)
                        && p.did_prefix.as_ref().is_none_or(|d| m.from.is_empty() || m.from == format!("{d}{}", v.extension))
                }
                _ => false,
            };
            if !ok {
                self.fail(format!("IVR call {call} claimed association {id} after waiting, against the rules (model call {:?}, attempt {:?})", self.ivr.get(call), self.attempts.get(&id)));
            }
            count(6);
            if let Some(a) = self.attempts.get_mut(&id) {
                a.claimed = Some(call.to_owned());
            }
            Expect::Confirm(id)
        } else if reply.hangup {
            Expect::Over
        } else {
            self.fail(format!("IVR call {call} waiting on {id} got {reply:?}"));
        };
        if let Some(m) = self.ivr.get_mut(call) {
            m.expect = next;
        }
    }

    /// Invariant 2: how a binding may come about.
    fn check_bind(&self, b: &Binding, actions: &[Action], cause: Option<(&Input, &Output)>, pre: &Store) {
        let Some((Input::Ivr { call, digits, now, .. }, out)) = cause else {
            self.fail(format!("a binding made by something other than an IVR input: {b:?}"));
        };
        let bound: Vec<&AssociationView> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Store(StoreWrite::Association(v)) if v.state == State::Bound && v.pbx == b.pbx && v.extension == b.extension => Some(v),
                _ => None,
            })
            .collect();
        let [v] = bound.as_slice() else {
            self.fail(format!("binding {b:?} without exactly one association bound with it ({} found)", bound.len()));
        };
        let id = v.id.as_str();
        let Some(before) = pre.assocs.get(id) else { self.fail(format!("binding for association {id} the store never held")) };
        if (b.tenant.as_str(), b.account.as_str(), b.bound_at) != (v.tenant.as_str(), v.account.as_str(), *now) {
            self.fail(format!("binding {b:?} does not match its association {v:?}"));
        }
        if before.state != State::InIvr {
            self.fail(format!("association {id} bound from state {:?}", before.state));
        }
        if self.ivr_before.as_ref().map(|(_, e)| e) != Some(&Expect::Code(id.to_owned())) {
            self.fail(format!("IVR call {call} bound association {id} but had been asked for {:?}", self.ivr_before));
        }
        let Some(att) = self.attempts.get(id) else { self.fail(format!("association {id} bound without an attempt")) };
        if att.claimed.as_deref() != Some(call.as_str()) || att.presenters.first() != Some(call) {
            self.fail(format!("IVR call {call} bound association {id}, whose attempt was claimed by {:?} (presented by {:?})", att.claimed, att.presenters));
        }
        let Some((at, est_call)) = &att.established else { self.fail(format!("association {id} bound before the PBX reported its proof call established")) };
        if !self.calls.iter().any(|c| c.association == *id && c.attempt == att.n && !c.lock && c.id == *est_call) {
            self.fail(format!("association {id} bound, but the call the PBX reported established ({est_call:02x?} at {at}) is not the MakeCall of its attempt {}", att.n));
        }
        let entered = entered(digits.as_deref());
        let Some(code) = self.codes.get(id) else { self.fail(format!("association {id} bound but no code was issued for it")) };
        if entered != *code {
            self.fail(format!("association {id} bound with digits {digits:?}, not its code"));
        }
        if *now >= before.expires_at {
            self.fail(format!("association {id} bound at {now}, its code expired at {}", before.expires_at));
        }
        let wrong = self.wrong.get(id).copied().unwrap_or(0);
        if wrong >= MAX_CODE_ENTRIES {
            self.fail(format!("association {id} bound after {wrong} wrong entries of its code"));
        }
        let limit = self.policy(&b.pbx).lockout_after;
        let acc = CounterKey::Account { tenant: b.tenant.clone(), account: b.account.clone() };
        let acc_ext = CounterKey::AccountExtension { tenant: b.tenant.clone(), account: b.account.clone(), pbx: b.pbx.clone(), extension: b.extension.clone() };
        if pre.counter(&acc) >= limit || pre.counter(&acc_ext) >= limit {
            self.fail(format!("association {id} bound while locked out"));
        }
        if pre.blocked(&b.tenant, &b.account, &b.pbx, &b.extension, *now) {
            self.fail(format!("association {id} bound while the phone's owner blocks {}/{} from {}/{}", b.tenant, b.account, b.pbx, b.extension));
        }
        if !out.ivr.as_ref().is_some_and(|r| r.hangup) {
            self.fail(format!("association {id} bound but the IVR does not hang up"));
        }
    }

    /// The invariants on the whole state, after every step.
    pub(super) fn check(&self, input: Option<&Input>) {
        for pbx in PBXS {
            for ext in EXTS {
                let key = (pbx.to_owned(), ext.to_owned());
                if self.engine.binding(pbx, ext) != self.store.bindings.get(&key) {
                    self.fail(format!("binding of {pbx}/{ext}: engine {:?}, store {:?}", self.engine.binding(pbx, ext), self.store.bindings.get(&key)));
                }
            }
        }
        for id in &self.live {
            let e = self.engine.view(&Principal::Admin, id);
            // An association ended 10 minutes ago may have left memory (the API then reads the
            // store); until then the engine shows exactly what the store holds.
            let forgotten = e.is_none() && self.store.assocs.get(id).is_some_and(|v| is_final(v) && v.history.last().is_some_and(|s| self.now.saturating_sub(s.at) >= 600_000));
            if e != self.store.assocs.get(id) && !forgotten {
                self.fail(format!("association {id}: the engine shows {e:?}, the store holds {:?}", self.store.assocs.get(id)));
            }
        }
        let mut by_ext = HashSet::new();
        let mut by_account = HashSet::new();
        for v in self.store.assocs.values() {
            if self.wrong.get(v.id.as_str()).copied().unwrap_or(0) >= MAX_CODE_ENTRIES && !is_final(v) {
                self.fail(format!("association {} still {:?} after {MAX_CODE_ENTRIES} wrong entries of its code", v.id, v.state));
            }
            if is_final(v) {
                if v.call.is_some() {
                    self.fail(format!("final association {} still names a call in the store: {:?}", v.id, v.call));
                }
                continue;
            }
            if !by_ext.insert((&v.pbx, &v.extension)) {
                self.fail(format!("two live associations for {}/{}", v.pbx, v.extension));
            }
            if !by_account.insert((&v.tenant, &v.account)) {
                self.fail(format!("two live associations for account {}/{}", v.tenant, v.account));
            }
        }
        for c in &self.calls {
            if c.lock || !c.exists || c.down {
                continue;
            }
            if let Some(v) = self.store.assocs.get(&c.association) {
                if is_final(v) {
                    self.fail(format!("association {} is {:?} ({:?}) but its proof call {:02x?} on {}/{} is still up", v.id, v.state, v.reason, c.id, c.pbx, c.extension));
                }
            }
        }
        // A waiting request's attempt still rings; a timeout past its deadline answered it.
        for (call, (id, until)) in &self.waits {
            let state = self.store.assocs.get(id).map(|v| v.state);
            if !matches!(state, Some(State::Calling | State::Ringing)) {
                self.fail(format!("IVR call {call} still waits on association {id}, which is {state:?}"));
            }
            if matches!(input, Some(Input::Timeout { .. })) && self.now >= *until {
                self.fail(format!("IVR call {call} waiting on {id} got no answer by its deadline {until} (tick at {})", self.now));
            }
        }
    }
}
