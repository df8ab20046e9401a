//! Driving the engine: the time steps, one arbitrary input per step (API, CSTA, IVR, admin,
//! timer, restart) chosen against the model, and feeding it to the engine with the model updated
//! and checked after each input.

use super::*;

impl Fz {
    fn time_step(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        let dt: Millis = match u.int_in_range(0..=15u8)? {
            0..=5 => 0,
            6..=9 => u.int_in_range(1..=3_000)?,
            10 => claim_wait(),
            11..=12 => u.int_in_range(3_000..=50_000)?,
            13 => *u.choose(&[11_000, 31_000, 46_000, 61_000])?, // past the claim windows, the ring timeout, the IVR timeout
            14 => u.int_in_range(590_000..=610_000)?,           // around the code TTL
            _ => HOUR + 1,
        };
        self.now += dt;
        Ok(())
    }

    /// The current platform call id of an IVR slot (renewed when the engine may have forgotten
    /// the call: the platform never reuses an id).
    fn ivr_call(&mut self, slot: usize) -> String {
        let mut call = format!("ivr-{slot}.{}", self.slots[slot]);
        if self.ivr.get(&call).is_some_and(|m| self.now.saturating_sub(m.last) >= IVR_RENEW_AFTER) {
            self.ivr.remove(&call);
            self.slots[slot] += 1;
            call = format!("ivr-{slot}.{}", self.slots[slot]);
        }
        call
    }

    /// One step: an input built from `u`, fed to the engine, then every check.
    pub(super) fn step(&mut self, u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
        self.time_step(u)?;
        let now = self.now;
        let input = match u.int_in_range(0..=31u8)? {
            0..=2 => {
                let principal = if u.ratio(1, 12)? { Principal::Admin } else { self.principal(u)? };
                let account = if u.ratio(1, 32)? { String::new() } else { (*u.choose(&ACCOUNTS)?).to_owned() };
                let pbx = match u.int_in_range(0..=7u8)? {
                    0 => Some(PBXS[0].to_owned()),
                    1 => Some(PBXS[1].to_owned()),
                    2 => Some("px".to_owned()),
                    _ => None,
                };
                let extension = if u.ratio(1, 32)? { "9999".to_owned() } else { (*u.choose(&EXTS)?).to_owned() };
                // Now and then the id of a live association (the shell draws ids at random: the id
                // of an association of a run before a restart, or of one the engine forgot 10
                // minutes after it ended, never comes back).
                let mut held: Vec<&String> = self.live.iter().filter(|id| self.store.assocs.get(*id).is_some_and(|v| !is_final(v))).collect();
                held.sort();
                let id = if !held.is_empty() && u.ratio(1, 32)? { (*u.choose(&held)?).clone() } else { format!("as{}", self.next_id) };
                self.next_id += 1;
                let code = (*u.choose(&CODES)?).to_owned();
                let random = self.pool(u)?;
                Input::Create { principal, account_name: u.arbitrary::<bool>()?.then(|| format!("Name of {account}")), account: account.into(), pbx: pbx.map(Into::into), extension: extension.into(), id: id.into(), random, code, now }
            }
            3..=4 => Input::Complete { principal: self.principal(u)?, id: self.some_id(u)?.into(), random: self.pool(u)?, now },
            5 => Input::Cancel { principal: self.principal(u)?, id: self.some_id(u)?.into(), now },
            6..=10 => {
                if self.pending.is_empty() {
                    Input::Timeout { now }
                } else {
                    let i = u.choose_index(self.pending.len())?;
                    let p = if u.ratio(1, 16)? { self.pending[i].clone() } else { self.pending.swap_remove(i) };
                    let fail = |u: &mut Unstructured<'_>| -> arbitrary::Result<CstaFailure> { Ok(*u.choose(&[CstaFailure::LinkDown, CstaFailure::Busy, CstaFailure::Rejected])?) };
                    let outcome = if p.link_lost || now.saturating_sub(p.sent) > ANSWER_WITHIN {
                        Err(CstaFailure::LinkDown)
                    } else if u.ratio(1, 4)? {
                        Err(fail(u)?)
                    } else {
                        match &p.call {
                            Some(c) => {
                                let lock = self.calls.iter().any(|k| k.pbx == p.pbx && k.id == *c && k.lock);
                                // A lock call's result may lack the connection; a proof call's
                                // always names it.
                                let named = !lock || u.arbitrary::<bool>()?;
                                for k in self.calls.iter_mut().filter(|k| k.pbx == p.pbx && k.id == *c) {
                                    k.exists = true;
                                }
                                Ok(CstaResultInfo { call: named.then(|| CallId::from(c.clone())) })
                            }
                            None => Ok(CstaResultInfo::default()),
                        }
                    };
                    Input::CstaDone { id: p.id, outcome, now }
                }
            }
            11..=15 => {
                // On a call the PBX placed for the engine (most often), or a foreign one.
                let (pbx, extension, call) = if !self.calls.is_empty() && u.ratio(3, 4)? {
                    let n = self.calls.len();
                    let k = &self.calls[n - 1 - usize::from(u.int_in_range(0..=3u8)?).min(n - 1)];
                    (k.pbx.clone(), k.extension.clone(), k.id.clone())
                } else {
                    ((*u.choose(&PBXS)?).to_owned(), (*u.choose(&EXTS)?).to_owned(), vec![0xF0 | u.int_in_range(0..=1u8)?])
                };
                let event = match u.int_in_range(0..=7u8)? {
                    0 => CallEvent::Initiated { call: call.into() },
                    1 => CallEvent::Originated { call: call.into() },
                    2 => CallEvent::Delivered { call: call.into() },
                    3..=5 => CallEvent::Established { call: call.into() },
                    6 => CallEvent::Failed { call: call.into(), cause: *u.choose(&[None, Some(3), Some(18), Some(10), Some(99)])? },
                    _ => CallEvent::Cleared { call: call.into() },
                };
                Input::CstaEvent { pbx: pbx.into(), extension: extension.into(), event, now }
            }
            16..=22 => {
                let slot = usize::from(u.int_in_range(0..=(IVR_SLOTS as u8 - 1))?);
                if u.ratio(1, 16)? {
                    // A new platform call in this slot.
                    self.slots[slot] += 1;
                }
                let call = self.ivr_call(slot);
                let latest_ext = self.ids.last().and_then(|id| self.store.assocs.get(id)).map(|v| v.extension.clone());
                let from = match u.int_in_range(0..=4u8)? {
                    0 => String::new(),
                    1 => "anonymous".to_owned(),
                    2..=3 => format!("{DID_PREFIX}{}", latest_ext.unwrap_or_else(|| EXTS[0].into())),
                    _ => format!("{DID_PREFIX}{}", u.choose(&EXTS)?),
                };
                let code = |fz: &Fz, u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
                    // Mostly the latest association's code.
                    if let Some(c) = fz.ids.last().and_then(|id| fz.codes.get(id)).filter(|_| u.ratio(3, 4).unwrap_or(true)) {
                        return Ok(c.clone());
                    }
                    let mut v: Vec<&String> = fz.codes.values().collect();
                    v.sort();
                    Ok(if v.is_empty() { "135791".to_owned() } else { (*u.choose(&v)?).clone() })
                };
                let ctx = |fz: &Fz, u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
                    let n = fz.seen.len();
                    Ok(if n == 0 { MADE_UP_CONTEXT.to_owned() } else { fz.seen[n - 1 - usize::from(u.int_in_range(0..=3u8)?).min(n - 1)].clone() })
                };
                let digits = match u.int_in_range(0..=15u8)? {
                    0 => None,
                    1..=3 => Some(code(self, u)?),
                    4 => Some(format!("{}#", code(self, u)?)),
                    5 => Some("000000".to_owned()),
                    6..=7 => Some("1".to_owned()),
                    8 => Some("9".to_owned()),
                    9 => Some(String::new()),
                    10..=12 => Some(format!("*{}#", ctx(self, u)?)),
                    13 => Some(ctx(self, u)?),
                    14 => Some(format!("*{MADE_UP_CONTEXT}#")),
                    _ => Some(format!("{}", u.int_in_range(0..=99u8)?)),
                };
                // Any number an IVR call may reach, or (half the time) the one the latest
                // association's proof call dials: its pool number while its attempt holds one.
                // One byte either way, as the older inputs read it.
                let latest = self.ids.last().and_then(|id| self.store.assocs.get(id).map(|v| (v.pbx.to_string(), self.attempts.get(id).and_then(|a| a.pool.clone()))));
                let to = match (usize::from(u.int_in_range(0..=11u8)?), latest) {
                    (k, _) if k < CALLED.len() => CALLED[k].to_owned(),
                    (_, Some((_, Some(pool)))) => pool,
                    (_, Some((pbx, None))) => self.policy(&pbx).ivr_number.clone(),
                    (_, None) => IVR_NUMBERS[0].to_owned(),
                };
                Input::Ivr { call, from, to, digits, now }
            }
            23 => {
                let slot = usize::from(u.int_in_range(0..=(IVR_SLOTS as u8 - 1))?);
                let call = self.ivr_call(slot);
                // The platform never reuses the id of a call that ended.
                self.slots[slot] += 1;
                Input::IvrHangup { call, now }
            }
            24 => Input::LinkDown { pbx: (*u.choose(&PBXS)?).into(), now },
            25 => {
                let principal = self.principal(u)?;
                let account = if u.ratio(1, 4)? { None } else { Some((*u.choose(&ACCOUNTS)?).to_owned()) };
                Input::Unbind { principal, account: account.map(Into::into), pbx: (*u.choose(&PBXS)?).into(), extension: (*u.choose(&EXTS)?).into(), now }
            }
            26 => {
                let scope = if u.arbitrary::<bool>()? {
                    AdminScope::Extension { pbx: (*u.choose(&PBXS)?).into(), extension: (*u.choose(&EXTS)?).into() }
                } else {
                    let tenant = if u.ratio(1, 3)? { None } else { Some((*u.choose(&TENANTS)?).to_owned()) };
                    AdminScope::Account { tenant: tenant.map(Into::into), account: (*u.choose(&ACCOUNTS)?).into() }
                };
                if u.arbitrary::<bool>()? {
                    Input::ResetCounters { scope, now }
                } else {
                    Input::LiftBlocks { scope, now }
                }
            }
            27 => {
                self.restart();
                return Ok(());
            }
            28 => {
                // A PBX repeating events about an attempt's call.
                let target = self.store.assocs.values().filter(|v| !is_final(v) && matches!(v.state, State::Calling | State::Ringing | State::InIvr)).filter_map(|v| Some((v.pbx.clone(), v.extension.clone(), v.call.clone()?))).last();
                let n = u.int_in_range(1..=250u16)?;
                let kind = u.int_in_range(0..=2u8)?;
                match target.and_then(|(p, e, c)| Some((p, e, c.as_bytes().to_vec()))) {
                    Some((pbx, extension, call)) => {
                        for _ in 0..n {
                            let event = match kind {
                                0 => CallEvent::Initiated { call: call.clone().into() },
                                1 => CallEvent::Originated { call: call.clone().into() },
                                _ => CallEvent::Delivered { call: call.clone().into() },
                            };
                            self.feed(Input::CstaEvent { pbx: pbx.clone(), extension: extension.clone(), event, now });
                        }
                        return Ok(());
                    }
                    None => Input::Timeout { now },
                }
            }
            29 => {
                // Right at the deadline of a waiting IVR request (the shell's timer).
                if let Some(until) = self.waits.values().map(|(_, t)| *t).min() {
                    self.now = self.now.max(until + u.int_in_range(0..=1u64)?);
                }
                Input::Timeout { now: self.now }
            }
            _ => Input::Timeout { now },
        };
        self.feed(input);
        Ok(())
    }

    /// The gateway restarts: a new engine from what the store holds.
    fn restart(&mut self) {
        self.trace.push(format!("RESTART at {}", self.now));
        count(5);
        let (engine, actions) = Engine::restore(self.policies.clone(), self.store.snapshot(), self.now);
        self.engine = engine;
        // Links restart with the gateway: no answer comes for what was in flight (the calls stay
        // up: the new engine must clear what the store names). The IVR platform's pending
        // requests died with the process; its calls are new to the new engine.
        self.pending.clear();
        self.live.clear();
        self.ivr_before = None;
        self.ivr.clear();
        self.waits.clear();
        let pre = self.store.clone();
        self.actions(&actions, None, &pre);
        // Nothing in memory survives: no context is live, no pool number held.
        self.ctx_live.clear();
        self.pool_held.clear();
        self.pool_released.clear();
        for a in self.attempts.values_mut() {
            a.ctx = None;
            a.pool = None;
            a.waiting = None;
        }
        for v in self.store.assocs.values() {
            if !is_final(v) {
                self.fail(format!("association {} still {:?} after a restart", v.id, v.state));
            }
        }
        self.check(None);
    }

    /// The claim rules (see the module docs of `ivr.rs`): how a request of `call` presenting the
    /// current attempt of association `id` must end.
    fn claim_rule(&self, call: &str, first: Millis, from: &str, id: &str) -> Claim {
        let (Some(v), Some(a)) = (self.store.assocs.get(id), self.attempts.get(id)) else {
            self.fail(format!("a context of association {id}, which the model does not hold"));
        };
        // Only the first call to present the attempt may claim it: a second one is not the proof
        // call, whatever became of the first (claimed, waiting, or hung up while it waited).
        if a.claimed.as_deref().is_some_and(|c| c != call) || a.waiting.as_deref().is_some_and(|c| c != call) || a.presenters.first().is_some_and(|c| c != call) {
            return Claim::Mismatch;
        }
        let p = self.policy(&v.pbx);
        if let Some(prefix) = &p.did_prefix {
            if !from.is_empty() && from != format!("{prefix}{}", v.extension) {
                return Claim::Mismatch;
            }
        }
        match v.state {
            State::InIvr => match &a.established {
                Some((at, _)) => {
                    if first + claim_wait() < *at || first > at + p.ivr_claim_window.as_millis() as Millis {
                        Claim::Mismatch
                    } else {
                        Claim::Claimed
                    }
                }
                None => self.fail(format!("association {id} in_ivr but the PBX never reported its call established")),
            },
            State::Calling | State::Ringing => Claim::Wait,
            _ => Claim::Mismatch,
        }
    }

    /// With `context_delivery = none`: the one live proof call whose extension's DID is `from`.
    fn by_calling_number(&self, from: &str) -> Option<String> {
        let found: Vec<&AssociationView> = self
            .store
            .assocs
            .values()
            .filter(|v| !is_final(v) && matches!(v.state, State::Calling | State::Ringing | State::InIvr))
            .filter(|v| {
                let p = self.policy(&v.pbx);
                p.context_delivery == ContextDelivery::None && p.did_prefix.as_ref().is_some_and(|d| from == format!("{d}{}", v.extension))
            })
            .collect();
        match found.as_slice() {
            [one] => Some(one.id.to_string()),
            _ => None,
        }
    }

    fn feed(&mut self, input: Input) {
        self.trace.push(format!("{input:?}"));
        let pre = self.store.clone();
        let now = self.now;
        // What the model expects of an IVR request that presents an attempt.
        let mut presented: Option<(String, Claim)> = None;
        self.ivr_before = None;
        match &input {
            Input::LinkDown { pbx, .. } => {
                for p in self.pending.iter_mut().filter(|p| p.pbx == *pbx) {
                    p.link_lost = true;
                }
            }
            Input::CstaEvent { pbx, extension, event, .. } => {
                if let CallEvent::Cleared { call } = event {
                    let call = &call.as_bytes().to_vec();
                    for c in self.calls.iter_mut().filter(|c| c.pbx == *pbx && c.id == *call) {
                        c.down = true;
                    }
                }
                // The engine counts the events about the call an attempt follows.
                if let Some(v) = pre.live_on(pbx, extension) {
                    if matches!(v.state, State::Calling | State::Ringing | State::InIvr) && v.call.as_ref().is_none_or(|c| c == event.call()) {
                        if let Some(a) = self.attempts.get_mut(v.id.as_str()) {
                            a.events += 1;
                        }
                    }
                }
            }
            Input::Ivr { call, from, to, digits, .. } => {
                let m = self.ivr.get(call).cloned().unwrap_or(IvrCallModel { first: now, last: now, from: from.clone(), expect: Expect::New });
                let d = entered(digits.as_deref());
                let target = match &m.expect {
                    // A pool number names the attempt holding it, whatever the digits; a free one
                    // names none (the call is told it is not linked).
                    Expect::New if self.pool_holder(to).is_some() => self.pool_holder(to).flatten(),
                    Expect::New if !d.is_empty() => self.ctx_live.get(&d).cloned(),
                    Expect::New => self.by_calling_number(from),
                    Expect::Context => self.ctx_live.get(&d).cloned(),
                    _ => None,
                };
                if let Some(id) = target {
                    let rule = self.claim_rule(call, m.first, &m.from, &id);
                    if rule == Claim::Claimed && m.expect == Expect::New && self.pool_holder(to).is_some() {
                        count(13);
                    }
                    presented = Some((id, rule));
                }
                self.ivr_before = Some((call.clone(), m.expect.clone()));
                self.ivr.insert(call.clone(), IvrCallModel { last: now, ..m });
            }
            // The shell clears a call that a MakeCall placed when the engine no longer awaits that
            // MakeCall's answer (the gateway's `links.rs`): nothing else would.
            Input::CstaDone { id, outcome: Ok(CstaResultInfo { call: Some(call) }), .. } if !self.engine.awaits(*id) => {
                let call = call.as_bytes().to_vec();
                for c in self.calls.iter_mut().filter(|c| c.id == call) {
                    c.down = true;
                }
            }
            Input::IvrHangup { call, .. } => {
                self.ivr.remove(call);
                // A waiting call that hangs up ends its attempt (call_cleared): nobody waits any
                // more, and the attempt is not left to a later call.
                self.waits.remove(call);
            }
            _ => {}
        }
        let out = handle(&mut self.engine, input.clone());
        self.trace.push(format!("  -> {:?} code={:?} error={:?} ivr={:?} wait={}", out.actions, out.code, out.error, out.ivr, out.ivr_wait));
        if let (Some(code), Some(v)) = (&out.code, &out.view) {
            if self.codes.contains_key(v.id.as_str()) || !self.live.insert(v.id.to_string()) {
                self.fail(format!("a code issued twice for {}", v.id));
            }
            self.codes.insert(v.id.to_string(), code.clone());
            self.ids.push(v.id.to_string());
        }
        self.actions(&out.actions, Some((&input, &out)), &pre);
        // Nothing the API or the IVR shows holds a code or a context id (but the creation's
        // `code` field).
        let secrets = self.secrets();
        let secrets: HashSet<&str> = secrets.iter().map(String::as_str).collect();
        if let Some(v) = &out.view {
            if view_leaks(v, &secrets) {
                self.fail(format!("a view holds a code or a context id: {v:?}"));
            }
        }
        if let Some(r) = &out.ivr {
            if leaks(&r.say, &secrets) {
                self.fail(format!("an IVR prompt holds a code or a context id: {}", r.say));
            }
        }
        match &input {
            Input::Create { id, pbx, .. } => self.check_create(id, pbx.as_ref().map(|p| p.as_str()), &out, &pre),
            Input::Ivr { call, .. } => self.check_ivr(call, &out, presented),
            Input::CstaEvent { pbx, extension, .. } => {
                if let Some(v) = pre.live_on(pbx, extension) {
                    let events = self.attempts.get(v.id.as_str()).map_or(0, |a| a.events);
                    let flood = out.actions.iter().any(|a| matches!(a, Action::Store(StoreWrite::Association(w)) if w.id == v.id && w.reason == Some(Reason::PbxFlood)));
                    if events == MAX_ATTEMPT_EVENTS + 1 && matches!(v.state, State::Calling | State::Ringing | State::InIvr) && !flood {
                        self.fail(format!("association {} got {events} events about its call and goes on", v.id));
                    }
                    if flood {
                        count(11);
                        if events <= MAX_ATTEMPT_EVENTS {
                            self.fail(format!("association {} failed as pbx_flood after {events} events", v.id));
                        }
                    }
                }
            }
            Input::ResetCounters { scope, .. } => {
                if let Some((k, n)) = self.store.counters.iter().find(|(k, n)| **n > 0 && scope_counter(scope, k)) {
                    self.fail(format!("counter {k:?} still {n} after a reset of {scope:?}"));
                }
            }
            Input::LiftBlocks { scope, .. } => {
                if let Some(b) = self.store.blocks.values().find(|b| b.until > now && scope_block(scope, b)) {
                    self.fail(format!("block {b:?} still in force after lifting {scope:?}"));
                }
            }
            _ => {}
        }
        self.check(Some(&input));
    }
}
