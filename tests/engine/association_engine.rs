//! The association engine driven in memory, input by input: the whole flow and each way it
//! fails, with the security rules (codes never stored, attempt limits, lock-out, tenant
//! isolation, ring-flood limits).

use std::collections::HashMap;

use cstagate::association::harness::{handle, Input, Output};
use cstagate::association::*;

const T0: Millis = 1_000;
const CODE: &str = "987654";
const IVR: &str = "0800100200";

fn policy() -> Policy {
    let mut p = Policy::new("acme", IVR);
    p.directory.insert("2005".into(), Some("Alice Martin".into()));
    p.directory.insert("2006".into(), None);
    p
}

struct T {
    e: Engine,
    now: Millis,
    all: Vec<Action>,
    /// Draws of "randomness" handed to the engine so far.
    draws: u64,
}

impl T {
    fn new(p: Policy) -> T {
        let mut other = Policy::new("globex", IVR);
        other.directory.insert("2005".into(), None);
        T { e: Engine::new(HashMap::from([("paris".to_owned(), p), ("ny".to_owned(), other)])), now: T0, all: Vec::new(), draws: 0 }
    }
    /// Digits as the shell's CSPRNG would give them: different at every draw.
    fn random(&mut self) -> String {
        self.draws += 1;
        format!("{:016}{:016}", 1_234_567_812_345_679u64.wrapping_mul(self.draws) % 10_000_000_000_000_000, self.draws * 7_777_777)
    }
    fn complete(&mut self, id: &str) -> Output {
        let random = self.random();
        self.run(Input::Complete { principal: Principal::Tenant("acme".into()), id: id.into(), random, now: self.now })
    }
    /// The context id of the extension's latest proof call, as the PBX dialled or sent it: the
    /// only place it ever appears.
    fn ctx(&self, ext: &str) -> String {
        self.all.iter().rev().find_map(|a| match a {
            Action::Csta { request: CstaRequest::MakeCall { from, to }, .. } if from == ext && to.starts_with(IVR) && to.len() > IVR.len() => Some(to[IVR.len()..].trim_matches(['*', '#']).to_owned()),
            Action::Csta { request: CstaRequest::SendDigits { extension, digits, .. }, .. } if extension == ext => Some(digits.trim_matches(['*', '#']).to_owned()),
            _ => None,
        }).expect("a proof call was placed")
    }
    fn run(&mut self, i: Input) -> Output {
        let out = handle(&mut self.e, i);
        self.all.extend(out.actions.clone());
        out
    }
    fn create(&mut self, account: &str, ext: &str) -> Output {
        let id = format!("a-{account}-{ext}-{}", self.now);
        let random = self.random();
        self.run(Input::Create {
            principal: Principal::Tenant("acme".into()),
            account: account.into(),
            account_name: Some(format!("{account} name")),
            pbx: None,
            extension: ext.into(),
            id: id.into(),
            random,
            code: format!("{CODE}000000"),
            now: self.now,
        })
    }
    /// The id of the latest request like `request` (a MakeCall without `to`: the latest from
    /// its extension).
    fn request_id(&self, request: &CstaRequest) -> RequestId {
        self.all.iter().rev().find_map(|a| match (a, request) {
            (Action::Csta { id, request: CstaRequest::MakeCall { from, to }, .. }, CstaRequest::MakeCall { from: f, to: t }) if from == f && (t.is_empty() || to == t) => Some(*id),
            (Action::Csta { id, request: r, .. }, _) if r == request => Some(*id),
            _ => None,
        }).expect("the engine asked for this request")
    }
    fn done(&mut self, _association: &str, request: CstaRequest, outcome: Result<CstaResultInfo, CstaFailure>) -> Output {
        let id = self.request_id(&request);
        self.run(Input::CstaDone { id, outcome, now: self.now })
    }
    fn ev(&mut self, ext: &str, event: CallEvent) -> Output {
        self.run(Input::CstaEvent { pbx: "paris".into(), extension: ext.into(), event, now: self.now })
    }
    fn ivr(&mut self, call: &str, digits: Option<&str>) -> IvrReply {
        self.run(Input::Ivr { call: call.into(), from: "+33144002005".into(), to: IVR.into(), digits: digits.map(str::to_owned), now: self.now }).ivr.expect("ivr reply")
    }
    fn state(&self, id: &str) -> (State, Option<Reason>, bool) {
        let v = self.e.view(&Principal::Admin, id).expect("exists");
        (v.state, v.reason, v.retryable)
    }
    /// Drive a fresh association to the IVR: returns its id and context id.
    fn to_ivr(&mut self, account: &str, ext: &str) -> (String, String) {
        let out = self.create(account, ext);
        let v = out.view.unwrap_or_else(|| panic!("{account} on {ext} refused: {:?}", out.error));
        assert_eq!(out.code.as_deref(), Some(CODE));
        self.through_call(&v.id, ext);
        (v.id.to_string(), self.ctx(ext))
    }
    fn through_call(&mut self, id: &str, ext: &str) {
        let call = CallId::from(vec![0x2B, self.now as u8]);
        let out = self.done(id, CstaRequest::MonitorStart { extension: ext.into() }, Ok(CstaResultInfo::default()));
        let to = out.actions.iter().find_map(|a| match a {
            Action::Csta { request: CstaRequest::MakeCall { to, .. }, .. } => Some(to.clone()),
            _ => None,
        });
        if to.is_some() || self.state(id).0 == State::Calling {
            let to = to.unwrap_or_default();
            self.done(id, CstaRequest::MakeCall { from: ext.into(), to }, Ok(CstaResultInfo { call: Some(call.clone()) }));
        }
        for e in [CallEvent::Initiated { call: call.clone() }, CallEvent::Originated { call: call.clone() }, CallEvent::Delivered { call: call.clone() }, CallEvent::Established { call }] {
            self.ev(ext, e);
        }
        assert_eq!(self.state(id).0, State::InIvr);
    }
    fn csta(&self) -> Vec<CstaRequest> {
        self.all.iter().filter_map(|a| match a {
            Action::Csta { request, .. } => Some(request.clone()),
            _ => None,
        }).collect()
    }
}

#[test]
fn the_whole_flow_binds_the_extension_with_the_calling_number_as_unverified_did() {
    let mut t = T::new(policy());
    let out = t.create("alice", "2005");
    let v = out.view.unwrap();
    assert_eq!(v.state, State::Monitoring, "no completion required by this policy");
    assert_eq!(t.csta(), [CstaRequest::MonitorStart { extension: "2005".into() }]);
    t.through_call(&v.id, "2005");
    let ctx = t.ctx("2005");
    assert_eq!(ctx.len(), 8, "context_digits defaults to 8");
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2005".into(), to: format!("{IVR}*{ctx}#") }), "context id as dial suffix");
    assert!(!format!("{:?}", t.e.view(&Principal::Admin, &v.id)).contains(&ctx), "the view never holds the context id");

    let r = t.ivr("c1", None);
    assert!(r.gather.is_some() && !r.hangup);
    let r = t.ivr("c1", Some(&format!("*{ctx}#")));
    assert!(r.say.contains("account alice of acme") && r.say.contains("acme gives its name as: alice name") && r.say.contains("press 1") && r.say.contains("press 9"), "the IVR names the account, its tenant, and the tenant's words as theirs: {}", r.say);
    let r = t.ivr("c1", Some("1"));
    assert_eq!(r.gather.as_ref().unwrap().max_digits, 6);
    let r = t.ivr("c1", Some(&format!("{CODE}#")));
    assert!(r.hangup && r.say.contains("now linked"), "{}", r.say);
    assert_eq!(t.state(&v.id), (State::Bound, None, false));
    let b = t.e.binding("paris", "2005").unwrap();
    assert_eq!((b.account.as_str(), b.did.as_deref(), b.did_verified), ("alice", Some("+33144002005"), false));
    assert!(t.all.contains(&Action::Store(StoreWrite::Bind(b.clone()))));
    assert!(t.all.iter().any(|a| matches!(a, Action::Notify { event, .. } if event == "bound")));
    assert!(t.csta().contains(&CstaRequest::MonitorStop { extension: "2005".into() }));
    let steps: Vec<&str> = t.e.view(&Principal::Admin, &v.id).unwrap().history.iter().map(|s| s.step.as_str()).collect();
    assert_eq!(steps, ["code_issued", "monitoring", "calling", "ringing", "answered", "reaching_ivr", "in_ivr", "ivr_identified", "confirmed", "bound"]);
}

#[test]
fn codes_never_reach_the_store_or_the_audit_log() {
    let mut t = T::new(policy());
    t.at_code_prompt("alice", "2005", "c1");
    t.ivr("c1", Some("111111"));
    t.ivr("c1", Some(CODE));
    let written = format!("{:?}", t.all);
    assert!(!written.contains(CODE), "a code leaked into actions");
    assert!(written.contains("wrong_code"));
}

#[test]
fn wrong_then_right_code_and_failure_counters_reset_only_on_success() {
    let mut t = T::new(policy());
    let (id, _) = t.at_code_prompt("alice", "2005", "c1");
    let r = t.ivr("c1", Some("000000"));
    assert!(!r.hangup && r.say.contains("not correct"));
    let ext = CounterKey::AccountExtension { tenant: "acme".into(), account: "alice".into(), pbx: "paris".into(), extension: "2005".into() };
    assert!(t.all.contains(&Action::Store(StoreWrite::Counter { key: ext.clone(), value: 1 })));
    t.ivr("c1", Some(CODE));
    assert_eq!(t.state(&id).0, State::Bound);
    assert!(t.all.contains(&Action::Store(StoreWrite::Counter { key: ext, value: 0 })));
}

#[test]
fn three_entries_per_call_five_per_code() {
    let mut t = T::new(policy());
    let (id, ctx) = t.at_code_prompt("alice", "2005", "c1");
    t.ivr("c1", Some("000001"));
    t.ivr("c1", Some("000002"));
    let r = t.ivr("c1", Some("000003"));
    assert!(r.hangup);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::WrongCode), true));
    assert!(t.csta().iter().any(|c| matches!(c, CstaRequest::ClearConnection { .. })), "no call left up");
    // Retry from step 3 while the code is valid: two more wrong entries use up the code.
    t.now += 1000;
    t.complete(&id);
    t.through_call(&id, "2005");
    let ctx2 = t.ctx("2005");
    assert_ne!(ctx, ctx2, "a new context id for every proof call");
    let stale = t.ivr("c-stale", Some(&ctx));
    assert!(stale.hangup && stale.prompt == "no_longer_valid", "the first attempt's context is dead (and is not counted as a guess): {}", stale.say);
    t.ivr("c2", Some(&ctx2));
    t.ivr("c2", Some("1"));
    t.ivr("c2", Some("000004"));
    let r = t.ivr("c2", Some("000005"));
    assert!(r.hangup && r.say.contains("new code"));
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::AttemptsExhausted), false));
    // The right code after that is never accepted: the association is over.
    let again = t.complete(&id);
    assert_eq!(again.error, Some(Refusal::WrongState(State::Failed)));
    assert!(t.e.binding("paris", "2005").is_none());
}

#[test]
fn expiry_is_told_apart_from_a_wrong_code() {
    let mut t = T::new(policy());
    let (id, _) = t.at_code_prompt("alice", "2005", "c1");
    t.now += 601_000;
    let r = t.ivr("c1", Some(CODE));
    assert!(r.hangup && r.say.contains("expired"), "{}", r.say);
    assert_eq!(t.state(&id), (State::Expired, Some(Reason::Expired), false));
    assert!(t.e.binding("paris", "2005").is_none());
    // A tick expires associations nobody touches.
    t.now += 1;
    let id2 = t.create("bob", "2006").view.unwrap().id;
    t.now += 600_001;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.state(&id2).0, State::Expired);
}

#[test]
fn no_answer_busy_locked_phone_link_down_and_hangup_each_end_the_attempt_with_their_reason() {
    // No answer within the ring timeout.
    let mut p = policy();
    p.proof_calls_per_hour = 6;
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: String::new() }, Ok(CstaResultInfo { call: Some(CallId::from(vec![1])) }));
    t.ev("2005", CallEvent::Initiated { call: CallId::from(vec![1]) });
    t.now += 46_000;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::NoAnswer), true));
    assert!(t.csta().contains(&CstaRequest::ClearConnection { call: CallId::from(vec![1]), extension: "2005".into() }));

    // Busy: the PBX refuses the call.
    t.now += 1000;
    t.complete(&id);
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: String::new() }, Err(CstaFailure::Busy));
    assert_eq!(t.state(&id).1, Some(Reason::Busy));

    // The third proof call this hour is allowed; the monitor is still running.
    t.now += 1000;
    t.complete(&id);
    assert_eq!(t.state(&id).0, State::Calling);
}

#[test]
fn link_down_and_ivr_hangup_and_not_confirmed() {
    let mut t = T::new(policy());
    let (id, _) = t.to_ivr("alice", "2005");
    let call = t.e.view(&Principal::Admin, &id).unwrap().call.clone().expect("the call id is kept");
    let out = t.run(Input::LinkDown { pbx: "paris".into(), now: t.now });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::LinkDown), true));
    // The PBX keeps its calls when the CTI link drops: the engine asks to clear it (the shell
    // does so once the link is back) and forgets it.
    let clear = CstaRequest::ClearConnection { call: call.clone(), extension: "2005".into() };
    assert!(out.actions.iter().any(|a| matches!(a, Action::Csta { request, .. } if *request == clear)), "{:?}", out.actions);
    assert_eq!(t.e.view(&Principal::Admin, &id).unwrap().call, None);

    let mut t = T::new(policy());
    let (id, _) = t.at_code_prompt("alice", "2005", "c1");
    t.run(Input::IvrHangup { call: "c1".into(), now: t.now });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::CallCleared), true));

    let mut t = T::new(policy());
    let (id, ctx3) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx3));
    let r = t.ivr("c1", Some("2"));
    assert!(r.hangup);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::NotConfirmed), true));
}

#[test]
fn the_lock_step_and_a_locked_phone() {
    let mut p = policy();
    p.lock_prefix = Some("*66".into());
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    assert_eq!(t.state(&id).0, State::Locking);
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2005".into(), to: "*66".into() }));
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: "*66".into() }, Ok(CstaResultInfo { call: Some(CallId::from(vec![9])) }));
    t.ev("2005", CallEvent::Cleared { call: CallId::from(vec![9]) });
    assert_eq!(t.state(&id).0, State::Calling);
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: String::new() }, Ok(CstaResultInfo { call: Some(CallId::from(vec![10])) }));
    t.ev("2005", CallEvent::Initiated { call: CallId::from(vec![10]) });
    // Wrong local PIN: the PBX fails the call with cause blocked.
    t.ev("2005", CallEvent::Failed { call: CallId::from(vec![10]), cause: Some(35) });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::PhoneLocked), true));
}

#[test]
fn dtmf_delivery_and_the_calling_number_never_identifies_alone() {
    let mut p = policy();
    p.context_delivery = ContextDelivery::Dtmf;
    p.did_prefix = Some("+3314400".into());
    let mut t = T::new(p);
    let (id, ctx) = t.to_ivr("alice", "2005");
    assert!(t.csta().iter().any(|c| matches!(c, CstaRequest::SendDigits { digits, .. } if digits.starts_with('*'))));
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2005".into(), to: IVR.into() }));
    // The platform's first request, as it answers: the calling number presents the extension's
    // DID, but caller ID can be spoofed: the context id is still required.
    let r = t.ivr("c1", None);
    assert!(r.say.contains("enter the number"), "{}", r.say);
    let r = t.ivr("c1", Some(&ctx));
    assert!(r.say.contains("press 1"), "{}", r.say);
    t.ivr("c1", Some("1"));
    t.ivr("c1", Some(CODE));
    assert_eq!(t.state(&id).0, State::Bound);
    assert!(t.e.binding("paris", "2005").unwrap().did_verified, "the DID matched the extension's");
}

#[test]
fn without_a_context_id_the_did_and_the_timing_name_the_proof_call_and_a_second_caller_fails_it() {
    let mut p = policy();
    p.context_delivery = ContextDelivery::None;
    p.did_prefix = Some("+3314400".into());
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    t.through_call(&id, "2005");
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2005".into(), to: IVR.into() }));
    let r = t.ivr("c1", None);
    assert!(r.say.contains("press 1"), "the DID names the one proof call in the IVR: {}", r.say);
    // Someone else presenting the same calling number (spoofed) while the proof call is there.
    let r = t.ivr("c-spoof", None);
    assert!(r.hangup, "{}", r.say);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::IvrCallMismatch), true));
    assert!(t.e.binding("paris", "2005").is_none());
}

#[test]
fn tenants_are_isolated_and_one_live_association_per_extension_and_account() {
    let mut t = T::new(policy());
    let other = t.run(Input::Create {
        principal: Principal::Tenant("acme".into()),
        account: "mallory".into(),
        account_name: None,
        pbx: Some("ny".into()),
        extension: "2005".into(),
        id: "x".into(),
        random: "1111111122222222".into(),
        code: "123456".into(),
        now: t.now,
    });
    assert_eq!(other.error, Some(Refusal::UnknownExtension("2005".into())), "another tenant's PBX");
    assert_eq!(t.create("alice", "9999").error, Some(Refusal::UnknownExtension("9999".into())));
    let id = t.create("alice", "2005").view.unwrap().id;
    assert!(t.e.view(&Principal::Tenant("globex".into()), &id).is_none());
    let cancel = t.run(Input::Cancel { principal: Principal::Tenant("globex".into()), id: id.clone(), now: t.now });
    assert_eq!(cancel.error, Some(Refusal::NotFound));
    assert_eq!(t.create("bob", "2005").error, Some(Refusal::ExtensionBusy));
    assert_eq!(t.create("alice", "2006").error, Some(Refusal::AccountBusy));
    // Cancel frees both.
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    assert_eq!(t.state(&id), (State::Cancelled, Some(Reason::CancelledByUser), false));
    assert!(t.create("bob", "2005").error.is_none());
}

#[test]
fn an_extension_bound_to_someone_else_is_refused_until_unbound() {
    let mut t = T::new(policy());
    t.at_code_prompt("alice", "2005", "c1");
    t.ivr("c1", Some(CODE));
    assert_eq!(t.create("bob", "2005").error, Some(Refusal::AlreadyBound));
    let not_owner = t.run(Input::Unbind { principal: Principal::Tenant("acme".into()), account: Some("bob".into()), pbx: "paris".into(), extension: "2005".into(), now: t.now });
    assert_eq!(not_owner.error, Some(Refusal::NotFound));
    let owner = t.run(Input::Unbind { principal: Principal::Tenant("acme".into()), account: Some("alice".into()), pbx: "paris".into(), extension: "2005".into(), now: t.now });
    assert!(owner.error.is_none());
    assert!(t.create("bob", "2005").error.is_none());
}

#[test]
fn proof_calls_are_limited_per_extension_per_hour_and_one_account_gets_half() {
    let mut p = policy();
    p.require_completion = true;
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    assert_eq!(t.state(&id).0, State::CodeIssued, "waits for 'I am at my phone'");
    // Of the extension's 3 proof calls an hour, one account gets 2 (half, rounded up).
    for _ in 0..2 {
        let o = t.complete(&id);
        assert!(o.error.is_none());
        t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Err(CstaFailure::Rejected));
        assert_eq!(t.state(&id).1, Some(Reason::RejectedByPbx));
        t.now += 1000;
    }
    assert_eq!(t.complete(&id).error, Some(Refusal::RateLimited));
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    // Alice's share is spent, and a create refused by a limit issues no code and holds nothing.
    let live = t.e.sizes().live;
    let refused = t.create("alice", "2005");
    assert_eq!((refused.error, refused.code, refused.view.is_none()), (Some(Refusal::RateLimited), None, true));
    assert_eq!(t.e.sizes().live, live, "nothing live after a refused create");
    // Another account may have the third; then the extension's hour is spent for everyone.
    let bob = t.create("bob", "2005").view.unwrap().id;
    assert!(t.complete(&bob).error.is_none());
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: bob, now: t.now });
    assert_eq!(t.create("carol", "2005").error, Some(Refusal::RateLimited));
    assert_eq!(t.e.sizes().live, live);
    t.now += 3_600_000;
    // Fresh hour, but alice's first code has expired by now.
    let o = t.complete(&id);
    assert_eq!(o.error, Some(Refusal::WrongState(State::Cancelled)));
    assert!(t.create("alice", "2005").error.is_none(), "a new hour");
}

#[test]
fn lock_out_after_the_configured_failures_survives_new_codes() {
    let mut p = policy();
    p.lockout_after = 4;
    p.proof_calls_per_hour = 6;
    let mut t = T::new(p);
    let (id, _) = t.at_code_prompt("alice", "2005", "c1");
    for _ in 0..3 {
        t.ivr("c1", Some("000000"));
    }
    t.now += 1000;
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.into(), now: t.now });
    // A new code does not reset the count: one more failure locks the extension out.
    let (id, _) = t.at_code_prompt("alice", "2005", "c2");
    let r = t.ivr("c2", Some("000000"));
    assert!(r.hangup);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::LockedOut), false));
    assert_eq!(t.create("alice", "2005").error, Some(Refusal::LockedOut));
    t.run(Input::ResetCounters { scope: AdminScope::Extension { pbx: "paris".into(), extension: "2005".into() }, now: t.now });
    assert_eq!(t.create("alice", "2005").error, Some(Refusal::LockedOut), "the account's own counter still counts");
    t.run(Input::ResetCounters { scope: AdminScope::Account { tenant: Some("acme".into()), account: "alice".into() }, now: t.now });
    t.now += 1;
    let again = t.create("alice", "2005");
    assert!(again.error.is_none(), "{:?}", again.error);
}

#[test]
fn a_restart_keeps_bindings_and_counters_and_ends_associations_in_flight() {
    let mut t = T::new(policy());
    t.at_code_prompt("alice", "2005", "c1");
    t.ivr("c1", Some(CODE));
    let pending = t.create("bob", "2006").view.unwrap();
    t.through_call(&pending.id, "2006");
    let pending = t.e.view(&Principal::Admin, &pending.id).unwrap().clone();
    let call = pending.call.clone().expect("the stored view names the call");
    let snap = cstagate::association::Snapshot {
        bindings: vec![t.e.binding("paris", "2005").unwrap().clone()],
        counters: vec![(CounterKey::Account { tenant: "acme".into(), account: "bob".into() }, 7)],
        proof_calls: vec![],
        blocks: vec![],
        in_flight: vec![pending.clone()],
    };
    // As the gateway does: the running engine's policies carry over.
    let (e, actions) = Engine::restore(t.e.policies().clone(), snap, t.now + 10);
    let mut pbxs: Vec<String> = e.policies().keys().map(|k| k.to_string()).collect();
    pbxs.sort();
    assert_eq!(pbxs, ["ny", "paris"]);
    assert!(e.binding("paris", "2005").is_some());
    let restored = actions.iter().find_map(|a| match a {
        Action::Store(StoreWrite::Association(v)) => Some(v.clone()),
        _ => None,
    }).unwrap();
    assert_eq!((restored.id.as_str(), restored.state, restored.reason, restored.call), (pending.id.as_str(), State::Failed, Some(Reason::GatewayRestarted), None));
    // The call the previous run left up is cleared, and the account told.
    let clear = CstaRequest::ClearConnection { call: call.clone(), extension: "2006".into() };
    assert!(actions.iter().any(|a| matches!(a, Action::Csta { request, pbx, .. } if *request == clear && pbx == "paris")), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Notify { event, account, .. } if event == "failed" && account == "bob")));
}

#[test]
fn an_ivr_platform_that_goes_silent_ends_the_attempt_and_clears_the_call() {
    let mut p = policy();
    p.ivr_timeout = std::time::Duration::from_secs(30);
    let mut t = T::new(p);
    let (id, ctx) = t.to_ivr("alice", "2005");
    // Each request of the platform restarts the timeout.
    t.now += 20_000;
    t.ivr("c1", Some(&ctx));
    t.now += 20_000;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.state(&id).0, State::InIvr, "the platform spoke 20 s ago");
    t.now += 10_000;
    let out = t.run(Input::Timeout { now: t.now });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::IvrTimeout), true));
    assert!(out.actions.iter().any(|a| matches!(a, Action::Csta { request: CstaRequest::ClearConnection { .. }, .. })));
    // A late request of the platform gets nothing.
    let r = t.ivr("c1", Some("1"));
    assert!(r.hangup);
}

#[test]
fn memory_holds_live_work_not_history() {
    let mut p = policy();
    p.proof_calls_per_hour = 1000;
    let mut t = T::new(p);
    // 50 associations that end (cancelled), one after the other on the same extension.
    for i in 0..50 {
        let v = t.create(&format!("user{i}"), "2006").view.unwrap();
        t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: v.id, now: t.now });
        t.now += 1_000;
    }
    t.now += 300_000;
    let live = t.create("alice", "2005").view.unwrap();
    let z = t.e.sizes();
    assert_eq!((z.associations, z.live, z.proof_call_extensions), (51, 1, 2));
    // Ten minutes after they ended, the ended ones leave memory (the store keeps them); the
    // live one stays until it expires; proof calls leave after their hour.
    t.now += 310_000;
    t.run(Input::Timeout { now: t.now });
    let z = t.e.sizes();
    assert_eq!((z.associations, z.live), (1, 1), "{z:?}");
    assert!(t.e.view(&Principal::Admin, &live.id).is_some());
    t.now += 3_600_000;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.e.sizes(), Sizes { associations: 1, live: 0, ivr_calls: 0, proof_call_extensions: 0, bindings: 0 }, "expired, kept 10 minutes");
    t.now += 600_000;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.e.sizes().associations, 0);
}

#[test]
fn ivr_calls_are_capped_and_silent_ones_forgotten() {
    let mut t = T::new(policy());
    for i in 0..10_000 {
        let r = t.ivr(&format!("flood{i}"), None);
        assert!(!r.hangup, "call {i} is followed");
    }
    assert_eq!(t.e.sizes().ivr_calls, 10_000);
    let r = t.ivr("one-too-many", None);
    assert!(r.hangup && r.say.contains("busy"), "{}", r.say);
    assert_eq!(t.e.sizes().ivr_calls, 10_000, "nothing more is kept");
    // A call that keeps talking stays; silent ones go after 10 minutes.
    t.now += 300_000;
    t.ivr("flood7", Some("12345678"));
    t.now += 300_000;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.e.sizes().ivr_calls, 1);
    assert!(!t.ivr("a-new-call", None).hangup, "room again");
}

// --- Only the proof call binds (issue 9) -------------------------------------------------------

/// An attacker's IVR call (from a mobile) that knows the context id, and the code — it is the
/// attacker's own association on a colleague's extension, or it read both somewhere.
const MOBILE: &str = "+33612345678";

impl T {
    fn ivr_from(&mut self, call: &str, from: &str, digits: Option<&str>) -> Output {
        self.run(Input::Ivr { call: call.into(), from: from.into(), to: IVR.into(), digits: digits.map(str::to_owned), now: self.now })
    }
    /// Up to the phone ringing (the proof call placed, not answered).
    fn ringing(&mut self, account: &str, ext: &str) -> (String, CallId) {
        let id = self.create(account, ext).view.unwrap().id;
        let call = CallId::from(vec![0x2C, self.now as u8]);
        let out = self.done(&id, CstaRequest::MonitorStart { extension: ext.into() }, Ok(CstaResultInfo::default()));
        let to = out.actions.iter().find_map(|a| match a {
            Action::Csta { request: CstaRequest::MakeCall { to, .. }, .. } => Some(to.clone()),
            _ => None,
        }).unwrap();
        self.done(&id, CstaRequest::MakeCall { from: ext.into(), to }, Ok(CstaResultInfo { call: Some(call.clone()) }));
        self.ev(ext, CallEvent::Initiated { call: call.clone() });
        assert_eq!(self.state(&id).0, State::Ringing);
        (id.into_string(), call)
    }
    fn suspected(&self) -> usize {
        self.all.iter().filter(|a| matches!(a, Action::Store(StoreWrite::Audit(r)) if r.step == "suspected_attack")).count()
    }
    fn ivr_reply_for(out: &Output, call: &str) -> Option<IvrReply> {
        out.actions.iter().find_map(|a| match a {
            Action::IvrReply { call: c, reply } if c == call => Some(reply.clone()),
            _ => None,
        })
    }
    /// The owner's own retry, answered at the phone: it must bind.
    fn owner_retry_binds(&mut self, id: &str, ext: &str) {
        self.now += 1000;
        assert!(self.complete(id).error.is_none());
        self.through_call(id, ext);
        let ctx = self.ctx(ext);
        let call = format!("owner-{}", self.now);
        self.ivr(&call, Some(&ctx));
        self.ivr(&call, Some("1"));
        let r = self.ivr(&call, Some(CODE));
        assert!(r.say.contains("now linked"), "{}", r.say);
        assert_eq!(self.state(id).0, State::Bound);
    }
}

#[test]
fn an_ivr_call_presenting_the_context_while_the_phone_rings_fails_the_attempt_after_the_wait() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    let ctx = t.ctx("2005");
    // The attacker calls the IVR from a mobile while the phone rings and keys the context id.
    let out = t.ivr_from("evil", MOBILE, Some(&ctx));
    assert!(out.ivr.is_none() && out.ivr_wait, "the request may have overtaken the PBX's report: it waits");
    t.now += 1_000;
    let out = t.run(Input::Timeout { now: t.now });
    assert!(T::ivr_reply_for(&out, "evil").is_none(), "still within the wait");
    t.now += 1_000;
    let out = t.run(Input::Timeout { now: t.now });
    let reply = T::ivr_reply_for(&out, "evil").expect("answered after the wait");
    assert!(reply.hangup, "{}", reply.say);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::IvrCallMismatch), true));
    assert!(t.csta().contains(&CstaRequest::ClearConnection { call, extension: "2005".into() }), "the proof call is cleared");
    assert_eq!(t.suspected(), 1);
    assert!(t.all.iter().any(|a| matches!(a, Action::Notify { event, .. } if event == "suspected_attack")));
    // Whatever the attacker keys next is not heard.
    assert!(t.ivr_from("evil", MOBILE, Some("1")).ivr.unwrap().hangup);
    assert!(t.ivr_from("evil", MOBILE, Some(CODE)).ivr.unwrap().hangup);
    assert!(t.e.binding("paris", "2005").is_none());
    t.owner_retry_binds(&id, "2005");
}

#[test]
fn a_request_just_ahead_of_the_pbx_report_waits_for_it_and_claims_the_attempt() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    let ctx = t.ctx("2005");
    let out = t.ivr_from("ivr-1", "+33144002005", Some(&ctx));
    assert!(out.ivr_wait);
    t.now += 300;
    let out = t.ev("2005", CallEvent::Established { call });
    let reply = T::ivr_reply_for(&out, "ivr-1").expect("answered as the PBX reports the answer");
    assert!(reply.say.contains("press 1"), "{}", reply.say);
    t.ivr("ivr-1", Some("1"));
    assert!(t.ivr("ivr-1", Some(CODE)).say.contains("now linked"));
    assert_eq!(t.state(&id).0, State::Bound);
}

#[test]
fn a_second_ivr_call_with_the_context_fails_the_attempt_whichever_came_first() {
    // The proof call claims first; the attacker's call comes second.
    let mut t = T::new(policy());
    let (id, ctx) = t.to_ivr("alice", "2005");
    assert!(t.ivr("proof", Some(&ctx)).say.contains("press 1"));
    t.now += 2_000;
    assert!(t.ivr_from("evil", MOBILE, Some(&ctx)).ivr.unwrap().hangup);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::IvrCallMismatch), true));
    assert!(t.ivr("proof", Some("1")).hangup, "the attempt is over for the proof call too");
    assert!(t.e.binding("paris", "2005").is_none());
    t.owner_retry_binds(&id, "2005");

    // The attacker races the proof call's first request after the answer and keys fast: the
    // proof call's own request still fails the attempt before any code is taken.
    let mut t = T::new(policy());
    let (id, ctx) = t.to_ivr("bob", "2006");
    assert!(t.ivr_from("evil", MOBILE, Some(&ctx)).ivr.unwrap().say.contains("press 1"));
    t.ivr_from("evil", MOBILE, Some("1"));
    assert!(t.ivr("proof", Some(&ctx)).hangup);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::IvrCallMismatch), true));
    let r = t.ivr_from("evil", MOBILE, Some(CODE)).ivr.unwrap();
    assert!(r.hangup && !r.say.contains("now linked"), "{}", r.say);
    assert!(t.e.binding("paris", "2006").is_none());
}

#[test]
fn an_ivr_call_that_began_while_the_phone_rang_or_long_after_the_answer_is_not_the_proof_call() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    let ctx = t.ctx("2005");
    // The attacker's call starts while the phone rings, without digits, and waits.
    assert!(!t.ivr_from("evil", MOBILE, None).ivr.unwrap().hangup);
    t.now += 10_000;
    t.ev("2005", CallEvent::Established { call });
    assert!(t.ivr_from("evil", MOBILE, Some(&ctx)).ivr.unwrap().hangup);
    assert_eq!(t.state(&id).1, Some(Reason::IvrCallMismatch));

    // A call starting more than the claim window after the answer.
    let mut t = T::new(policy());
    let (id, ctx) = t.to_ivr("alice", "2005");
    t.now += 31_000;
    assert!(t.ivr_from("late", MOBILE, Some(&ctx)).ivr.unwrap().hangup);
    assert_eq!(t.state(&id).1, Some(Reason::IvrCallMismatch));
}

#[test]
fn a_calling_number_that_contradicts_the_extensions_did_fails_the_attempt() {
    let mut p = policy();
    p.did_prefix = Some("+3314400".into());
    let mut t = T::new(p);
    let (id, ctx) = t.to_ivr("alice", "2005");
    assert!(t.ivr_from("evil", MOBILE, Some(&ctx)).ivr.unwrap().hangup);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::IvrCallMismatch), true));
    // A withheld number contradicts nothing.
    t.now += 1000;
    t.complete(&id);
    t.through_call(&id, "2005");
    let ctx = t.ctx("2005");
    assert!(t.ivr_from("withheld", "", Some(&ctx)).ivr.unwrap().say.contains("press 1"));
}

#[test]
fn another_accounts_wrong_entries_never_lock_out_the_extensions_owner() {
    let mut p = policy();
    p.lockout_after = 3;
    p.proof_calls_per_hour = 20;
    let mut t = T::new(p);
    // Mallory asks for 2005 and keys wrong codes at the phone until she is locked out.
    t.at_code_prompt("mallory", "2005", "m1");
    for _ in 0..3 {
        t.ivr("m1", Some("000000"));
    }
    assert_eq!(t.create("mallory", "2006").error, Some(Refusal::LockedOut), "charged to mallory's account");
    // The owner is not locked out and binds.
    let (id, _) = t.at_code_prompt("alice", "2005", "a1");
    assert!(t.ivr("a1", Some(CODE)).say.contains("now linked"));
    assert_eq!(t.state(&id).0, State::Bound);
    // The admin sees and resets mallory's counters.
    let scope = AdminScope::Account { tenant: None, account: "mallory".into() };
    assert_eq!(t.e.counters(&scope).len(), 2, "{:?}", t.e.counters(&scope));
    t.run(Input::ResetCounters { scope: scope.clone(), now: t.now });
    assert!(t.e.counters(&scope).is_empty());
    assert!(t.all.iter().any(|a| matches!(a, Action::Store(StoreWrite::Audit(r)) if r.step == "counter_reset" && r.account == "mallory")));
    assert!(t.create("mallory", "2006").error.is_none());
}

#[test]
fn the_phone_owner_pressing_9_blocks_the_account_from_the_extension() {
    let mut t = T::new(policy());
    let (id, ctx) = t.to_ivr("mallory", "2005");
    t.ivr("c1", Some(&ctx));
    let r = t.ivr("c1", Some("9"));
    assert!(r.hangup && r.say.contains("Nothing was linked"), "{}", r.say);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::RefusedByPhoneOwner), false));
    assert!(t.csta().iter().any(|c| matches!(c, CstaRequest::ClearConnection { .. })));
    assert!(t.all.iter().any(|a| matches!(a, Action::Notify { event, .. } if event == "refused_by_phone_owner")));
    assert!(t.all.iter().any(|a| matches!(a, Action::Store(StoreWrite::Block(b)) if b.account == "mallory" && b.until == t.now + 86_400_000)));
    t.now += 1;
    assert_eq!(t.create("mallory", "2005").error, Some(Refusal::BlockedByPhoneOwner(t.now - 1 + 86_400_000)));
    assert!(t.create("mallory", "2006").error.is_none(), "only that extension");
    let scope = AdminScope::Extension { pbx: "paris".into(), extension: "2005".into() };
    assert_eq!(t.e.blocks(&scope, t.now).len(), 1);
    t.run(Input::LiftBlocks { scope: scope.clone(), now: t.now });
    assert!(t.e.blocks(&scope, t.now).is_empty());
    assert_eq!(t.create("mallory", "2005").error, Some(Refusal::AccountBusy), "no longer blocked (busy with 2006)");
}

#[test]
fn a_pbx_flooding_events_fails_the_attempt_and_histories_stay_capped() {
    let mut p = policy();
    p.proof_calls_per_hour = 20;
    let mut t = T::new(p);
    let (id, call) = t.ringing("alice", "2005");
    let mut writes = 0;
    for _ in 0..10_000 {
        let out = t.ev("2005", CallEvent::Delivered { call: call.clone() });
        writes += out.actions.iter().filter(|a| matches!(a, Action::Store(StoreWrite::Association(_)))).count();
        if t.state(&id).0 != State::Ringing {
            break;
        }
    }
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::PbxFlood), true));
    assert!(writes <= 3, "a repeated event writes the view once: {writes}");
    // Whatever happens to one association, its history holds at most 64 steps and a marker: ten
    // more attempts of eight steps each (the caller hangs up after confirming).
    for i in 0..9 {
        t.now += 1;
        assert!(t.complete(&id).error.is_none());
        t.through_call(&id, "2005");
        let (ctx, call) = (t.ctx("2005"), format!("c{i}"));
        t.ivr(&call, Some(&ctx));
        t.ivr(&call, Some("1"));
        t.run(Input::IvrHangup { call, now: t.now });
        assert_eq!(t.state(&id).1, Some(Reason::CallCleared));
    }
    // Refusals repeated by the app are recorded once.
    for _ in 0..5 {
        assert_eq!(t.complete(&id).error, Some(Refusal::RateLimited));
    }
    let limited = t.all.iter().filter(|a| matches!(a, Action::Store(StoreWrite::Audit(r)) if r.step == "rate_limited")).count();
    assert_eq!(limited, 1, "one rate_limited record however often the app asks");
    let h = &t.e.view(&Principal::Admin, &id).unwrap().history;
    assert!(h.len() <= 65 && h.iter().any(|s| s.step == "truncated"), "{} {:?}", h.len(), h);
}

#[test]
fn context_ids_appear_only_in_the_proof_call() {
    let mut t = T::new(policy());
    let (id, ctx) = t.at_code_prompt("alice", "2005", "c1");
    t.ivr("c1", Some(CODE));
    assert_eq!(t.state(&id).0, State::Bound);
    for a in &t.all {
        if !matches!(a, Action::Csta { request: CstaRequest::MakeCall { .. } | CstaRequest::SendDigits { .. }, .. }) {
            assert!(!format!("{a:?}").contains(&ctx), "context id in {a:?}");
        }
    }
}

#[test]
fn empty_short_long_and_prefixed_codes_are_wrong() {
    let mut p = policy();
    p.proof_calls_per_hour = 20;
    let mut t = T::new(p);
    let (id, _) = t.at_code_prompt("alice", "2005", "c1");
    for (i, entry) in ["#", &CODE[..5], &format!("{CODE}0")].into_iter().enumerate() {
        let r = t.ivr("c1", Some(entry));
        assert!(!r.say.contains("now linked"), "{entry:?} must not bind: {}", r.say);
        assert!(t.e.binding("paris", "2005").is_none());
        if i < 2 {
            assert!(r.say.contains("not correct"), "{entry:?}: {}", r.say);
        }
    }
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::WrongCode), true), "three wrong entries on the call");
}

#[test]
fn an_account_locked_out_on_one_extension_is_locked_out_on_every_extension() {
    let mut p = policy();
    p.lockout_after = 3;
    p.proof_calls_per_hour = 20;
    let mut t = T::new(p);
    t.at_code_prompt("mallory", "2005", "c1");
    for wrong in ["000001", "000002", "000003"] {
        t.ivr("c1", Some(wrong));
    }
    t.now += 1;
    assert_eq!(t.create("mallory", "2006").error, Some(Refusal::LockedOut), "the account's counter, not the extension's");
    assert!(t.create("alice", "2006").error.is_none(), "other accounts are not affected");
}

#[test]
fn a_waiting_ivr_call_that_hangs_up_ends_the_attempt_instead_of_leaving_it_to_the_next_call() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    let ctx = t.ctx("2005");
    assert!(t.ivr_from("first", "+33144002005", Some(&ctx)).ivr_wait);
    t.run(Input::IvrHangup { call: "first".into(), now: t.now });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::CallCleared), true));
    t.ev("2005", CallEvent::Established { call });
    let r = t.ivr_from("second", MOBILE, Some(&ctx)).ivr.unwrap();
    assert!(r.hangup && r.prompt == "no_longer_valid", "the attempt and its context are over: {}", r.say);
    assert!(t.e.binding("paris", "2005").is_none());
}

#[test]
fn a_proof_call_diverted_transferred_or_conferenced_away_from_the_extension_proves_nothing() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    // Call forwarding sends the prompt to another phone.
    t.ev("2005", CallEvent::Diverted { call: call.clone() });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::CallDiverted), true));
    assert!(t.csta().contains(&CstaRequest::ClearConnection { call, extension: "2005".into() }));
    // In the IVR: someone transfers the call elsewhere before the code.
    t.now += 1;
    t.complete(&id);
    t.through_call(&id, "2005");
    let ctx = t.ctx("2005");
    t.ivr("c2", Some(&ctx));
    let call = t.e.view(&Principal::Admin, &id).unwrap().call.clone().unwrap();
    t.ev("2005", CallEvent::Diverted { call });
    assert_eq!(t.state(&id).1, Some(Reason::CallDiverted));
    assert!(t.ivr("c2", Some("1")).hangup);
    assert!(t.e.binding("paris", "2005").is_none());
}

#[test]
fn a_context_never_issued_is_unknown_and_one_whose_attempt_ended_is_no_longer_valid() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    let ctx = t.ctx("2005");
    t.ev("2005", CallEvent::Failed { call, cause: Some(3) });
    assert_eq!(t.state(&id).1, Some(Reason::Busy));
    // The proof call reaches the IVR after its attempt failed: no guess (adapters count guesses).
    assert_eq!(t.ivr("late", Some(&ctx)).prompt, "no_longer_valid");
    assert_eq!(t.ivr("guess", Some("99999999")).prompt, "unknown_context");
    // After ten minutes the ended context is forgotten like any other.
    t.now += 600_001;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.ivr("later", Some(&ctx)).prompt, "unknown_context");
}

/// The ids of the requests like `pred` the engine asked for, in order.
fn ids_of(actions: &[Action], pred: impl Fn(&CstaRequest) -> bool) -> Vec<RequestId> {
    actions.iter().filter_map(|a| match a {
        Action::Csta { id, request, .. } if pred(request) => Some(*id),
        _ => None,
    }).collect()
}

#[test]
fn an_answer_to_a_request_the_engine_did_not_issue_or_already_had_is_ignored() {
    let mut t = T::new(policy());
    let out = t.create("alice", "2005");
    let id = out.view.unwrap().id;
    let monitor = ids_of(&out.actions, |r| matches!(r, CstaRequest::MonitorStart { .. }))[0];
    // An id this engine never issued (another engine's, as after a rebuild): ignored.
    let mut other = T::new(policy());
    let first = other.create("bob", "2006").view.unwrap().id;
    other.done(&first, CstaRequest::MonitorStart { extension: "2006".into() }, Ok(Default::default()));
    let foreign = *ids_of(&other.all, |r| matches!(r, CstaRequest::MakeCall { .. })).last().unwrap();
    assert!(!t.e.awaits(foreign) && foreign != monitor);
    let before = t.e.view(&Principal::Admin, &id).cloned();
    let out = t.run(Input::CstaDone { id: foreign, outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![7])) }), now: t.now });
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    assert_eq!(t.e.view(&Principal::Admin, &id).cloned(), before);
    // The real answer moves the association on; the same answer again changes nothing.
    assert!(t.e.awaits(monitor));
    let out = t.run(Input::CstaDone { id: monitor, outcome: Ok(CstaResultInfo::default()), now: t.now });
    assert_eq!(ids_of(&out.actions, |r| matches!(r, CstaRequest::MakeCall { .. })).len(), 1, "the proof call");
    assert_eq!(t.state(&id).0, State::Calling);
    assert!(!t.e.awaits(monitor));
    let again = t.run(Input::CstaDone { id: monitor, outcome: Ok(CstaResultInfo::default()), now: t.now });
    assert!(again.actions.is_empty(), "a second answer places no second call: {:?}", again.actions);
    // A failure for an id already answered does not fail the attempt either.
    let again = t.run(Input::CstaDone { id: monitor, outcome: Err(CstaFailure::Rejected), now: t.now });
    assert!(again.actions.is_empty());
    assert_eq!(t.state(&id).0, State::Calling);
}

#[test]
fn the_lock_call_and_the_proof_call_are_told_apart_by_their_request_ids_not_by_what_they_dial() {
    let mut p = policy();
    // The lock prefix is the IVR number itself: only the ids can tell the two calls apart.
    p.lock_prefix = Some(IVR.into());
    p.context_delivery = ContextDelivery::Dtmf;
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    let out = t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    assert_eq!(t.state(&id).0, State::Locking);
    let lock = ids_of(&out.actions, |r| matches!(r, CstaRequest::MakeCall { .. }))[0];
    t.ev("2005", CallEvent::Cleared { call: CallId::from(vec![9]) });
    assert_eq!(t.state(&id).0, State::Calling);
    let proof = *ids_of(&t.all, |r| matches!(r, CstaRequest::MakeCall { .. })).last().unwrap();
    assert_ne!(lock, proof);
    // The lock call's result comes late: it is not taken for the proof call (nor cleared as a
    // stray one: the PBX ends feature calls itself).
    let out = t.run(Input::CstaDone { id: lock, outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![9])) }), now: t.now });
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    assert_eq!(t.e.view(&Principal::Admin, &id).unwrap().call, None);
    // The proof call's result names the call the association follows from now on.
    t.run(Input::CstaDone { id: proof, outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![10])) }), now: t.now });
    assert_eq!(t.e.view(&Principal::Admin, &id).unwrap().call, Some(CallId::from(vec![10])));
    // A refused lock call fails only while locking: its late failure leaves the proof call be.
    let out = t.run(Input::CstaDone { id: lock, outcome: Err(CstaFailure::Rejected), now: t.now });
    assert!(out.actions.is_empty());
    assert_eq!(t.state(&id).0, State::Calling);
}

#[test]
fn the_lock_calls_events_are_never_taken_for_the_proof_call() {
    let mut p = policy();
    p.lock_prefix = Some("*66".into());
    p.context_delivery = ContextDelivery::Dtmf;
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    let out = t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    let lock = ids_of(&out.actions, |r| matches!(r, CstaRequest::MakeCall { .. }))[0];
    // The PBX reports a call cleared before the lock MakeCall's result: the lock is taken as done.
    t.ev("2005", CallEvent::Cleared { call: CallId::from(vec![8]) });
    assert_eq!(t.state(&id).0, State::Calling);
    let proof = *ids_of(&t.all, |r| matches!(r, CstaRequest::MakeCall { .. })).last().unwrap();
    // While the lock call has no id, no event names the proof call: not the lock call's
    // Established, whatever its id.
    t.ev("2005", CallEvent::Established { call: CallId::from(vec![9]) });
    assert_eq!((t.state(&id).0, t.e.view(&Principal::Admin, &id).unwrap().call.clone()), (State::Calling, None));
    // The lock MakeCall's result comes late and names call 9: its events stay ignored.
    t.run(Input::CstaDone { id: lock, outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![9])) }), now: t.now });
    t.ev("2005", CallEvent::Established { call: CallId::from(vec![9]) });
    assert_eq!((t.state(&id).0, t.e.view(&Principal::Admin, &id).unwrap().call.clone()), (State::Calling, None));
    // The proof call's own events name it once the lock call is known (events before its result).
    t.ev("2005", CallEvent::Initiated { call: CallId::from(vec![10]) });
    assert_eq!((t.state(&id).0, t.e.view(&Principal::Admin, &id).unwrap().call.clone()), (State::Ringing, Some(CallId::from(vec![10]))));
    let out = t.run(Input::CstaDone { id: proof, outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![10])) }), now: t.now });
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    // Only the proof call's Established takes the association into the IVR, and the context
    // digits go on that call.
    let out = t.ev("2005", CallEvent::Established { call: CallId::from(vec![10]) });
    assert_eq!(t.state(&id).0, State::InIvr);
    assert!(out.actions.iter().any(|a| matches!(a, Action::Csta { request: CstaRequest::SendDigits { call, .. }, .. } if *call == CallId::from(vec![10]))), "{:?}", out.actions);
}

#[test]
fn a_proof_call_placed_after_its_attempt_ended_is_cleared_by_its_id() {
    let mut t = T::new(policy());
    let id = t.create("alice", "2005").view.unwrap().id;
    let out = t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    let proof = ids_of(&out.actions, |r| matches!(r, CstaRequest::MakeCall { .. }))[0];
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    let out = t.run(Input::CstaDone { id: proof, outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![5])) }), now: t.now });
    let clear = CstaRequest::ClearConnection { call: CallId::from(vec![5]), extension: "2005".into() };
    assert!(out.actions.iter().any(|a| matches!(a, Action::Csta { request, .. } if *request == clear)), "{:?}", out.actions);
}

/// The first attempt of `alice` on 2005 failed while its MakeCall (returned) was unanswered; the
/// retry is placed. Returns the association, the first MakeCall's id and the retry's.
fn failed_then_retried(t: &mut T) -> (String, RequestId, RequestId) {
    let id = t.create("alice", "2005").view.unwrap().id.to_string();
    let out = t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    let first = ids_of(&out.actions, |r| matches!(r, CstaRequest::MakeCall { .. }))[0];
    t.run(Input::CstaEvent { pbx: "paris".into(), extension: "2005".into(), event: CallEvent::Failed { call: CallId::from(vec![7]), cause: Some(3) }, now: t.now });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::Busy), true));
    let out = t.complete(&id);
    let retry = ids_of(&out.actions, |r| matches!(r, CstaRequest::MakeCall { .. }))[0];
    assert_eq!(t.state(&id).0, State::Calling);
    (id, first, retry)
}

#[test]
fn an_earlier_attempts_late_call_never_becomes_the_retrys_proof_call() {
    let c1 = CallId::from(vec![1]);
    let follows = |t: &T, id: &str| (t.state(id).0, t.e.view(&Principal::Admin, id).unwrap().call.clone());
    // The first attempt's MakeCall answers after the retry was placed: its call is cleared, and
    // the PBX's later reports about it (ringing, answered at the IVR) name nothing.
    let mut t = T::new(policy());
    let (id, first, retry) = failed_then_retried(&mut t);
    let out = t.run(Input::CstaDone { id: first, outcome: Ok(CstaResultInfo { call: Some(c1.clone()) }), now: t.now });
    assert!(out.actions.iter().any(|a| matches!(a, Action::Csta { request: CstaRequest::ClearConnection { call, .. }, .. } if *call == c1)), "{:?}", out.actions);
    for e in [CallEvent::Initiated { call: c1.clone() }, CallEvent::Delivered { call: c1.clone() }, CallEvent::Established { call: c1.clone() }] {
        t.ev("2005", e);
    }
    assert_eq!(follows(&t, &id), (State::Calling, None));
    // The retry's own call is named by its MakeCall and takes it into the IVR.
    t.run(Input::CstaDone { id: retry, outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![2])) }), now: t.now });
    t.ev("2005", CallEvent::Established { call: CallId::from(vec![2]) });
    assert_eq!(follows(&t, &id), (State::InIvr, Some(CallId::from(vec![2]))));

    // The reports come before the first MakeCall's late answer: while it is unanswered no event
    // names the retry's call (it could be the first attempt's).
    let mut t = T::new(policy());
    let (id, first, _) = failed_then_retried(&mut t);
    t.ev("2005", CallEvent::Established { call: c1.clone() });
    assert_eq!(follows(&t, &id), (State::Calling, None));
    t.run(Input::CstaDone { id: first, outcome: Ok(CstaResultInfo { call: Some(c1.clone()) }), now: t.now });
    t.ev("2005", CallEvent::Established { call: c1.clone() });
    assert_eq!(follows(&t, &id), (State::Calling, None));
    // The first MakeCall failing late does not fail the retry either.
    let mut t = T::new(policy());
    let (id, first, _) = failed_then_retried(&mut t);
    t.run(Input::CstaDone { id: first, outcome: Err(CstaFailure::Rejected), now: t.now });
    assert_eq!(follows(&t, &id), (State::Calling, None));
    // Once it answered, the retry's own events name its call again (before its MakeCall answers).
    t.ev("2005", CallEvent::Initiated { call: CallId::from(vec![3]) });
    assert_eq!(follows(&t, &id), (State::Ringing, Some(CallId::from(vec![3]))));
}

#[test]
fn poll_timeout_names_the_earliest_deadline_and_nothing_happens_before_it() {
    let mut p = policy();
    p.ring_timeout = std::time::Duration::from_secs(45);
    p.code_ttl = std::time::Duration::from_secs(600);
    let mut t = T::new(p);
    assert_eq!(t.e.poll_timeout(), None, "an idle engine has nothing due");
    let (id, _call) = t.ringing("alice", "2005");
    let calling_at = t.now;
    // The phone rings: the ring timeout comes before the code's expiry.
    assert_eq!(t.e.poll_timeout(), Some(calling_at + 45_000));
    // Just before it, nothing happens.
    let out = t.run(Input::Timeout { now: calling_at + 44_999 });
    assert!(out.actions.is_empty(), "{:?}", out.actions);
    assert_eq!(t.state(&id).0, State::Ringing);
    assert_eq!(t.e.poll_timeout(), Some(calling_at + 45_000));
    // At it, the attempt fails as no_answer; the next deadline is the code's expiry (and the
    // memory sweep, which comes earlier).
    t.now = calling_at + 45_000;
    let out = t.run(Input::Timeout { now: t.now });
    assert!(!out.actions.is_empty());
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::NoAnswer), true));
    let next = t.e.poll_timeout().expect("the code still expires");
    assert!(next > t.now && next <= T0 + 600_000, "{next}");
    // Waking at each deadline in turn expires the association at its code's expiry, not before.
    let mut wakes = 0;
    while let Some(at) = t.e.poll_timeout() {
        if t.state(&id).0 == State::Expired || wakes > 100 {
            break;
        }
        assert!(at > t.now, "a deadline that was due was handled");
        t.now = at;
        t.run(Input::Timeout { now: at });
        wakes += 1;
        if at < T0 + 600_000 {
            assert_eq!(t.state(&id).0, State::Failed, "expired early at {at}");
        }
    }
    assert_eq!(t.state(&id), (State::Expired, Some(Reason::Expired), false));
}

#[test]
fn a_waiting_ivr_request_is_answered_at_its_deadline() {
    let mut t = T::new(policy());
    let (_id, _call) = t.ringing("alice", "2005");
    let ctx = t.ctx("2005");
    let out = t.run(Input::Ivr { call: "c1".into(), from: String::new(), to: IVR.into(), digits: Some(ctx), now: t.now });
    assert!(out.ivr_wait);
    assert_eq!(t.e.poll_timeout(), Some(t.now + CLAIM_WAIT.as_millis() as Millis), "the wait is the earliest deadline");
    let at = t.now + CLAIM_WAIT.as_millis() as Millis;
    let out = t.run(Input::Timeout { now: at });
    assert!(out.actions.iter().any(|a| matches!(a, Action::IvrReply { call, .. } if call == "c1")), "{:?}", out.actions);
}

/// Admin scopes read, reset and lift exactly what they name: an extension's scope only that
/// extension's counters and blocks, an account's scope only that account's (in its tenant, or in
/// every tenant), never a neighbour's.
#[test]
fn admin_scopes_read_reset_and_lift_exactly_what_they_name() {
    let mut p = policy();
    p.lockout_after = 100;
    p.proof_calls_per_hour = 20;
    let mut t = T::new(p);
    // Three wrong entries each: mallory on 2005 and on 2006, eve on 2005.
    for (account, ext, call) in [("mallory", "2005", "m1"), ("mallory", "2006", "m2"), ("eve", "2005", "e1")] {
        let (id, _) = t.at_code_prompt(account, ext, call);
        for _ in 0..3 {
            t.ivr(call, Some("000000"));
        }
        assert_eq!(t.state(&id), (State::Failed, Some(Reason::WrongCode), true));
        // Retryable, so still the account's live association until cancelled.
        t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.as_str().into(), now: t.now });
        t.now += 1;
    }
    let account = |a: &str| CounterKey::Account { tenant: "acme".into(), account: a.into() };
    let on = |a: &str, ext: &str| CounterKey::AccountExtension { tenant: "acme".into(), account: a.into(), pbx: "paris".into(), extension: ext.into() };
    let ext = |e: &str| AdminScope::Extension { pbx: "paris".into(), extension: e.into() };
    let of = |tenant: Option<&str>, a: &str| AdminScope::Account { tenant: tenant.map(Into::into), account: a.into() };
    assert_eq!(t.e.counters(&ext("2005")), vec![(on("eve", "2005"), 3), (on("mallory", "2005"), 3)]);
    assert_eq!(t.e.counters(&ext("2006")), vec![(on("mallory", "2006"), 3)]);
    assert_eq!(t.e.counters(&of(Some("acme"), "mallory")), vec![(account("mallory"), 6), (on("mallory", "2005"), 3), (on("mallory", "2006"), 3)]);
    assert_eq!(t.e.counters(&of(None, "eve")), vec![(account("eve"), 3), (on("eve", "2005"), 3)]);
    assert_eq!(t.e.counters(&of(Some("globex"), "mallory")), vec![], "another tenant's account of the same name");
    // The phone's owners refuse: mallory on 2005, eve on 2006.
    for (account, ext, call) in [("mallory", "2005", "m3"), ("eve", "2006", "e2")] {
        let (_, ctx) = t.to_ivr(account, ext);
        t.ivr(call, Some(&ctx));
        assert!(t.ivr(call, Some("9")).hangup);
        t.now += 1;
    }
    let names = |bs: Vec<OwnerBlock>| bs.into_iter().map(|b| format!("{}/{}@{}/{}", b.tenant, b.account, b.pbx, b.extension)).collect::<Vec<_>>();
    assert_eq!(names(t.e.blocks(&ext("2005"), t.now)), ["acme/mallory@paris/2005"]);
    assert_eq!(names(t.e.blocks(&ext("2006"), t.now)), ["acme/eve@paris/2006"]);
    assert_eq!(names(t.e.blocks(&of(Some("acme"), "eve"), t.now)), ["acme/eve@paris/2006"]);
    assert_eq!(names(t.e.blocks(&of(None, "mallory"), t.now)), ["acme/mallory@paris/2005"]);
    assert!(t.e.blocks(&of(Some("globex"), "eve"), t.now).is_empty());
    // An extension's reset leaves the other extension and the accounts' own counters.
    t.run(Input::ResetCounters { scope: ext("2005"), now: t.now });
    assert_eq!(t.e.counters(&of(None, "mallory")), vec![(account("mallory"), 6), (on("mallory", "2006"), 3)]);
    assert_eq!(t.e.counters(&of(None, "eve")), vec![(account("eve"), 3)]);
    // An account's reset in another tenant touches nothing; in its own, only that account.
    t.run(Input::ResetCounters { scope: of(Some("globex"), "mallory"), now: t.now });
    assert_eq!(t.e.counters(&of(None, "mallory")).len(), 2);
    t.run(Input::ResetCounters { scope: of(Some("acme"), "mallory"), now: t.now });
    assert_eq!(t.e.counters(&of(None, "mallory")), vec![]);
    assert_eq!(t.e.counters(&of(None, "eve")), vec![(account("eve"), 3)]);
    // Lifting blocks: another tenant's scope lifts nothing; an account's lifts only its own.
    t.run(Input::LiftBlocks { scope: of(Some("globex"), "eve"), now: t.now });
    t.run(Input::LiftBlocks { scope: of(Some("acme"), "eve"), now: t.now });
    assert!(t.e.blocks(&ext("2006"), t.now).is_empty());
    assert_eq!(names(t.e.blocks(&ext("2005"), t.now)), ["acme/mallory@paris/2005"]);
    assert_eq!(t.create("mallory", "2005").error, Some(Refusal::BlockedByPhoneOwner(t.e.blocks(&ext("2005"), t.now)[0].until)));
}

impl T {
    /// Drive `account` on `ext` to a binding.
    fn bind(&mut self, account: &str, ext: &str, call: &str) -> String {
        let (id, _) = self.at_code_prompt(account, ext, call);
        assert!(self.ivr(call, Some(CODE)).say.contains("now linked"));
        self.now += 1;
        id
    }
    /// What the account was told of association `id`, in order.
    fn notified(&self, id: &str) -> Vec<String> {
        self.all.iter().filter_map(|a| match a {
            Action::Notify { event, association, .. } if association.as_str() == id => Some(event.clone()),
            _ => None,
        }).collect()
    }
    /// The audit trail's (step, result) of association `id` (or of no association: ""), in order.
    fn audited(&self, id: &str) -> Vec<(String, String)> {
        self.all.iter().filter_map(|a| match a {
            Action::Store(StoreWrite::Audit(r)) if r.association.as_str() == id => Some((r.step.clone(), r.result.clone())),
            _ => None,
        }).collect()
    }
}

#[test]
fn an_accounts_bindings_are_its_own_and_no_one_elses() {
    let mut t = T::new(policy());
    t.bind("alice", "2005", "c1");
    t.bind("bob", "2006", "c2");
    let exts = |bs: Vec<&Binding>| bs.iter().map(|b| format!("{}/{}", b.pbx, b.extension)).collect::<Vec<_>>();
    assert_eq!(exts(t.e.bindings_of("acme", "alice")), ["paris/2005"]);
    assert_eq!(exts(t.e.bindings_of("acme", "bob")), ["paris/2006"]);
    assert!(t.e.bindings_of("globex", "alice").is_empty(), "another tenant's account of that name");
    assert!(t.e.bindings_of("acme", "carol").is_empty());
}

#[test]
fn the_audit_says_who_unbound_an_extension() {
    let mut t = T::new(policy());
    t.bind("alice", "2005", "c1");
    t.bind("bob", "2006", "c2");
    let by_account = t.run(Input::Unbind { principal: Principal::Tenant("acme".into()), account: Some("alice".into()), pbx: "paris".into(), extension: "2005".into(), now: t.now });
    assert_eq!(by_account.error, None);
    let by_admin = t.run(Input::Unbind { principal: Principal::Admin, account: None, pbx: "paris".into(), extension: "2006".into(), now: t.now });
    assert_eq!(by_admin.error, None);
    let unbound: Vec<(String, String)> = t.audited("").into_iter().filter(|(s, _)| s == "unbound").collect();
    assert_eq!(unbound, [("unbound".to_owned(), "by the account".to_owned()), ("unbound".to_owned(), "by admin".to_owned())]);
    assert!(t.e.binding("paris", "2005").is_none() && t.e.binding("paris", "2006").is_none());
}

#[test]
fn an_empty_account_or_extension_is_a_bad_request_and_holds_nothing() {
    let mut t = T::new(policy());
    for (account, ext) in [("", "2005"), ("alice", ""), ("", "")] {
        let out = t.create(account, ext);
        assert!(matches!(out.error, Some(Refusal::BadRequest(_))), "{account:?} on {ext:?}: {:?}", out.error);
        assert!(out.actions.is_empty(), "a refused create writes and asks nothing: {:?}", out.actions);
    }
    assert_eq!(t.e.sizes().associations, 0);
}

#[test]
fn the_account_is_told_how_each_association_ended_and_the_audit_agrees() {
    let mut p = policy();
    p.proof_calls_per_hour = 20;
    let mut t = T::new(p);
    // Cancelled.
    let id = t.create("alice", "2005").view.expect("created").id.to_string();
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.as_str().into(), now: t.now });
    assert_eq!(t.notified(&id).last().map(String::as_str), Some("cancelled"));
    assert_eq!(t.audited(&id).last().map(|(s, _)| s.as_str()), Some("cancelled"), "{:?}", t.audited(&id));
    t.now += 1;
    // Expired: the code's time runs out while the monitor is still starting.
    let id = t.create("alice", "2005").view.expect("created").id.to_string();
    t.now += 600_000;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.state(&id).0, State::Expired);
    assert_eq!(t.notified(&id).last().map(String::as_str), Some("expired"));
    assert_eq!(t.audited(&id).last().map(|(s, _)| s.as_str()), Some("expired"), "{:?}", t.audited(&id));
    t.now += 1;
    // Bound.
    let id = t.bind("alice", "2005", "c1");
    assert_eq!(t.notified(&id).last().map(String::as_str), Some("bound"));
    assert_eq!(t.audited(&id).last().map(|(s, _)| s.as_str()), Some("bound"), "{:?}", t.audited(&id));
}

#[test]
fn an_attempt_failing_at_the_millisecond_the_code_expires_cannot_be_retried() {
    let mut t = T::new(policy());
    let (id, _) = t.to_ivr("alice", "2005");
    let expires_at = t.e.view(&Principal::Admin, &id).expect("exists").expires_at;
    // The PBX reports the link gone at the very millisecond the code expires.
    t.now = expires_at;
    t.run(Input::LinkDown { pbx: "paris".into(), now: t.now });
    let (state, _, retryable) = t.state(&id);
    assert!(!retryable, "{state:?}: a code at its expiry cannot be retried");
    assert_eq!(t.complete(&id).error, Some(Refusal::WrongState(state)));
}

#[test]
fn an_ivr_call_gets_three_tries_at_the_context_id_then_is_hung_up() {
    let mut t = T::new(policy());
    let prompts: Vec<(String, bool)> = ["11111111", "22222222", "33333333"].iter().map(|g| {
        let r = t.ivr("guess", Some(g));
        (r.prompt.to_string(), r.hangup)
    }).collect();
    assert_eq!(prompts, [("unknown_context".to_owned(), false), ("unknown_context".to_owned(), false), ("unknown_context_bye".to_owned(), true)]);
    assert_eq!(t.audited("").iter().filter(|(s, _)| s == "ivr_unknown_context").count(), 3, "each guess audited");
}

/// The proof call's IVR leg is the IVR call that began no earlier than `CLAIM_WAIT` before the
/// PBX reported the answer and no later than the claim window after it: both ends included,
/// one millisecond beyond either is another call.
#[test]
fn the_proof_calls_ivr_leg_began_within_the_claim_wait_before_and_the_claim_window_after_the_answer() {
    let wait = CLAIM_WAIT.as_millis() as Millis;
    for (before, claims) in [(wait, true), (wait + 1, false)] {
        let mut t = T::new(policy());
        let (id, call) = t.ringing("alice", "2005");
        let ctx = t.ctx("2005");
        assert!(!t.ivr("leg", None).hangup, "asked for the context");
        t.now += before;
        t.ev("2005", CallEvent::Established { call });
        let r = t.ivr("leg", Some(&ctx));
        assert_eq!((r.say.contains("press 1"), r.hangup), (claims, !claims), "began {before} ms before the answer: {}", r.say);
        assert_eq!(t.state(&id).1, (!claims).then_some(Reason::IvrCallMismatch));
    }
    for (after, claims) in [(30_000, true), (30_001, false)] {
        let mut t = T::new(policy());
        let (id, ctx) = t.to_ivr("alice", "2005");
        t.now += after;
        let r = t.ivr("leg", Some(&ctx));
        assert_eq!((r.say.contains("press 1"), r.hangup), (claims, !claims), "began {after} ms after the answer: {}", r.say);
        assert_eq!(t.state(&id).1, (!claims).then_some(Reason::IvrCallMismatch));
    }
}

#[test]
fn a_second_ivr_call_presenting_the_context_while_the_first_waits_for_the_answer_fails_the_attempt() {
    let mut t = T::new(policy());
    let (id, _call) = t.ringing("alice", "2005");
    let ctx = t.ctx("2005");
    let first = t.run(Input::Ivr { call: "first".into(), from: "+33144002005".into(), to: IVR.into(), digits: Some(ctx.clone()), now: t.now });
    assert!(first.ivr_wait, "the first waits for the PBX's report of the answer");
    let second = t.ivr_from("evil", MOBILE, Some(&ctx)).ivr.expect("answered at once");
    assert!(second.hangup, "{}", second.say);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::IvrCallMismatch), true));
}

/// Owner blocks and the hourly proof-call budget end at the exact millisecond they are set to.
#[test]
fn blocks_and_the_proof_call_budget_end_at_their_exact_millisecond() {
    let mut t = T::new(policy());
    let (_, ctx) = t.to_ivr("mallory", "2005");
    t.ivr("c1", Some(&ctx));
    assert!(t.ivr("c1", Some("9")).hangup);
    let scope = AdminScope::Extension { pbx: "paris".into(), extension: "2005".into() };
    let until = t.e.blocks(&scope, t.now)[0].until;
    t.now = until - 1;
    assert_eq!(t.e.blocks(&scope, t.now).len(), 1);
    assert_eq!(t.create("mallory", "2005").error, Some(Refusal::BlockedByPhoneOwner(until)));
    t.now = until;
    assert!(t.e.blocks(&scope, t.now).is_empty(), "over at its `until`");
    assert_eq!(t.create("mallory", "2005").error, None);

    // One proof call an hour: the next one an hour later to the millisecond.
    let mut p = policy();
    p.proof_calls_per_hour = 1;
    let mut t = T::new(p);
    let placed = t.now;
    let (id, _) = t.to_ivr("alice", "2005");
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.as_str().into(), now: t.now });
    t.now = placed + 3_600_000 - 1;
    assert_eq!(t.create("alice", "2005").error, Some(Refusal::RateLimited));
    t.now = placed + 3_600_000;
    assert_eq!(t.create("alice", "2005").error, None);
}

impl T {
    fn call_of(&self, id: &str) -> Option<CallId> {
        self.e.view(&Principal::Admin, id).expect("exists").call.clone()
    }
    fn history(&self, id: &str) -> Vec<String> {
        self.e.view(&Principal::Admin, id).expect("exists").history.iter().map(|s| s.step.clone()).collect()
    }
    fn clears(actions: &[Action]) -> Vec<CallId> {
        actions.iter().filter_map(|a| match a {
            Action::Csta { request: CstaRequest::ClearConnection { call, .. }, .. } => Some(call.clone()),
            _ => None,
        }).collect()
    }
}

/// Answers to requests of an attempt that has ended (cancelled while the PBX worked) change
/// nothing: a MonitorStart result does not go on to call, a refusal does not turn a cancelled
/// association into a failed one.
#[test]
fn late_answers_to_an_ended_attempts_requests_change_nothing() {
    // With a lock prefix, a MonitorStart result taken for a live attempt's would lock the phone.
    let mut locking = policy();
    locking.lock_prefix = Some("*66".into());
    for (p, outcome) in [(policy(), Ok(CstaResultInfo::default())), (locking, Ok(CstaResultInfo::default())), (policy(), Err(CstaFailure::Rejected))] {
        let mut t = T::new(p);
        let id = t.create("alice", "2005").view.unwrap().id;
        let monitor = t.request_id(&CstaRequest::MonitorStart { extension: "2005".into() });
        t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
        let out = t.run(Input::CstaDone { id: monitor, outcome: outcome.clone(), now: t.now });
        assert!(!out.actions.iter().any(|a| matches!(a, Action::Csta { request: CstaRequest::MakeCall { .. }, .. })), "{outcome:?}: {:?}", out.actions);
        assert_eq!(t.state(&id), (State::Cancelled, Some(Reason::CancelledByUser), false), "{outcome:?}");
    }
    // The proof call refused after the user cancelled.
    let mut t = T::new(policy());
    let id = t.create("alice", "2005").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    let proof = t.request_id(&CstaRequest::MakeCall { from: "2005".into(), to: String::new() });
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    t.run(Input::CstaDone { id: proof, outcome: Err(CstaFailure::Busy), now: t.now });
    assert_eq!(t.state(&id), (State::Cancelled, Some(Reason::CancelledByUser), false));
}

#[test]
fn the_lock_call_refused_fails_the_attempt_and_a_late_refusal_changes_nothing() {
    let mut p = policy();
    p.lock_prefix = Some("*66".into());
    let mut t = T::new(p.clone());
    let id = t.create("alice", "2005").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: "*66".into() }, Err(CstaFailure::Rejected));
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::RejectedByPbx), true));

    // The lock is seen done (its call cleared) before the PBX answers the lock MakeCall with a
    // refusal: the attempt goes on with the proof call.
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    let lock = t.request_id(&CstaRequest::MakeCall { from: "2005".into(), to: "*66".into() });
    t.ev("2005", CallEvent::Cleared { call: CallId::from(vec![8]) });
    assert_eq!(t.state(&id).0, State::Calling);
    t.run(Input::CstaDone { id: lock, outcome: Err(CstaFailure::Rejected), now: t.now });
    assert_eq!(t.state(&id).0, State::Calling);
}

/// While the phone is being locked, only the lock call's own end moves the attempt on: another
/// call on the phone clearing or failing is not the lock.
#[test]
fn only_the_lock_calls_own_end_or_failure_counts_while_locking() {
    let (mut t, id) = lock_prompting();
    t.ev("2005", CallEvent::Cleared { call: CallId::from(vec![7]) });
    t.ev("2005", CallEvent::Failed { call: CallId::from(vec![7]), cause: None });
    assert_eq!(t.state(&id).0, State::Locking, "another call's end is not the lock's");
    t.ev("2005", CallEvent::Cleared { call: CallId::from(vec![9]) });
    assert_eq!(t.state(&id).0, State::Calling);
    assert!(t.history(&id).contains(&"locked".to_owned()));

    let (mut t, id) = lock_prompting();
    t.ev("2005", CallEvent::Failed { call: CallId::from(vec![9]), cause: None });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::RejectedByPbx), true));
}

#[test]
fn a_proof_call_result_naming_another_call_than_its_events_is_cleared() {
    let mut t = T::new(policy());
    let id = t.create("alice", "2005").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    // The events come first and name call 10.
    t.ev("2005", CallEvent::Initiated { call: CallId::from(vec![10]) });
    assert_eq!(t.call_of(&id), Some(CallId::from(vec![10])));
    let out = t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: String::new() }, Ok(CstaResultInfo { call: Some(CallId::from(vec![11])) }));
    assert_eq!(T::clears(&out.actions), [CallId::from(vec![11])], "the call nobody follows is cleared");
    assert_eq!(t.call_of(&id), Some(CallId::from(vec![10])));
    // The same call named by both: nothing to clear.
    let mut t = T::new(policy());
    let id = t.create("bob", "2006").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2006".into() }, Ok(Default::default()));
    t.ev("2006", CallEvent::Initiated { call: CallId::from(vec![12]) });
    let out = t.done(&id, CstaRequest::MakeCall { from: "2006".into(), to: String::new() }, Ok(CstaResultInfo { call: Some(CallId::from(vec![12])) }));
    assert!(T::clears(&out.actions).is_empty(), "{:?}", out.actions);
}

#[test]
fn events_about_other_calls_on_the_phone_never_move_the_proof_call() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    assert_eq!(t.call_of(&id), Some(call.clone()));
    t.ev("2005", CallEvent::Established { call: CallId::from(vec![0x77]) });
    assert_eq!(t.state(&id).0, State::Ringing, "another call's answer");
    t.ev("2005", CallEvent::Established { call });
    assert_eq!(t.state(&id).0, State::InIvr);
    // A late or repeated Initiated of the proof call does not take it back to ringing.
    let call = t.call_of(&id).unwrap();
    t.ev("2005", CallEvent::Initiated { call });
    assert_eq!(t.state(&id).0, State::InIvr);
}

/// A PBX may send up to `MAX_ATTEMPT_EVENTS` (200) events about one proof call; the one after
/// that fails the attempt as a flood.
#[test]
fn the_two_hundred_and_first_event_about_the_proof_call_is_a_flood() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    // ringing() delivered one event (Initiated) already.
    let mut sent = 1;
    while sent < 200 {
        t.ev("2005", CallEvent::Delivered { call: call.clone() });
        sent += 1;
    }
    assert_eq!(t.state(&id).0, State::Ringing, "200 events are allowed");
    t.ev("2005", CallEvent::Delivered { call });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::PbxFlood), true));
}

#[test]
fn the_pbx_refusing_the_context_digits_is_in_the_history() {
    let mut p = policy();
    p.context_delivery = ContextDelivery::Dtmf;
    let mut t = T::new(p);
    let (id, _) = t.to_ivr("alice", "2005");
    let digits = *ids_of(&t.all, |r| matches!(r, CstaRequest::SendDigits { .. })).last().expect("digits sent");
    t.run(Input::CstaDone { id: digits, outcome: Err(CstaFailure::Rejected), now: t.now });
    assert_eq!(t.history(&id).last().map(String::as_str), Some("dtmf_failed"));
}

/// The PBX's failure cause names the reason the user is given (ECMA-269 cause codes as the
/// PBXs send them: busy 3/7, blocked 18/35, no answer 10/60, anything else a refusal).
#[test]
fn a_failed_proof_call_is_told_by_its_cause() {
    for (cause, reason) in [(Some(3), Reason::Busy), (Some(7), Reason::Busy), (Some(18), Reason::PhoneLocked), (Some(35), Reason::PhoneLocked), (Some(10), Reason::NoAnswer), (Some(60), Reason::NoAnswer), (Some(22), Reason::RejectedByPbx), (None, Reason::RejectedByPbx)] {
        let mut t = T::new(policy());
        let (id, call) = t.ringing("alice", "2005");
        t.ev("2005", CallEvent::Failed { call, cause });
        assert_eq!(t.state(&id), (State::Failed, Some(reason), true), "cause {cause:?}");
    }
}

#[test]
fn a_proof_call_cleared_while_ringing_is_unanswered_and_in_the_ivr_is_cleared() {
    let mut t = T::new(policy());
    let (id, call) = t.ringing("alice", "2005");
    t.ev("2005", CallEvent::Cleared { call });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::NoAnswer), true));
    let mut t = T::new(policy());
    let (id, _) = t.to_ivr("alice", "2005");
    let call = t.call_of(&id).unwrap();
    t.ev("2005", CallEvent::Cleared { call });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::CallCleared), true));
}

/// A restart keeps the proof calls of the last hour, to the millisecond, and forgets older ones.
#[test]
fn a_restart_keeps_the_last_hours_proof_calls_and_no_older_ones() {
    let now: Millis = 10 * 3_600_000;
    let call = |ext: &str, age: Millis| ProofCall { pbx: "paris".into(), extension: ext.into(), tenant: "acme".into(), account: "alice".into(), at: now - age };
    let restore = |calls: Vec<ProofCall>| {
        let snap = cstagate::association::Snapshot { bindings: vec![], counters: vec![], proof_calls: calls, blocks: vec![], in_flight: vec![] };
        let mut p = policy();
        p.proof_calls_per_hour = 1;
        Engine::restore(HashMap::from([("paris".to_owned(), p)]), snap, now).0
    };
    // Kept: placed now, and an hour less a millisecond ago; forgotten: an hour ago and older.
    let e = restore(vec![call("2005", 0), call("2006", 3_599_999), call("2007", 3_600_000), call("2008", 7_200_000)]);
    assert_eq!(e.sizes().proof_call_extensions, 2, "2005 and 2006 only");
    let mut t = T { e, now, all: Vec::new(), draws: 0 };
    assert_eq!(t.create("alice", "2005").error, Some(Refusal::RateLimited));
}

/// The calls a restart clears each get a request id of their own, and the restored engine's own
/// requests never reuse one (an answer must name exactly one request).
#[test]
fn the_calls_a_restart_clears_have_distinct_request_ids() {
    let mut t = T::new(policy());
    let (a, _) = t.ringing("alice", "2005");
    let (b, _) = t.ringing("bob", "2006");
    let in_flight = [a, b].iter().map(|id| t.e.view(&Principal::Admin, id).unwrap().clone()).collect();
    let snap = cstagate::association::Snapshot { bindings: vec![], counters: vec![], proof_calls: vec![], blocks: vec![], in_flight };
    let (e, actions) = Engine::restore(t.e.policies().clone(), snap, t.now + 10);
    let mut ids: Vec<RequestId> = actions.iter().filter_map(|a| match a {
        Action::Csta { id, request: CstaRequest::ClearConnection { .. }, .. } => Some(*id),
        _ => None,
    }).collect();
    assert_eq!(ids.len(), 2, "{actions:?}");
    let mut t = T { e, now: t.now + 20, all: Vec::new(), draws: 100 };
    t.create("carol", "2005");
    ids.extend(ids_of(&t.all, |_| true));
    assert_eq!(ids.len(), 3, "carol's MonitorStart");
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "{ids:?}");
}

/// What a stopping gateway clears: the proof calls of the live associations, and no other.
#[test]
fn live_calls_are_the_live_associations_proof_calls() {
    let mut t = T::new(policy());
    let (a, call_a) = t.ringing("alice", "2005");
    let (b, call_b) = t.ringing("bob", "2006");
    let mut live = t.e.live_calls();
    live.sort_by(|x, y| x.2.cmp(&y.2));
    let want = |id: &str, ext: &str, call: &CallId| (AssociationId::from(id), PbxId::from("paris"), Extension::from(ext), call.clone());
    assert_eq!(live, vec![want(&a, "2005", &call_a), want(&b, "2006", &call_b)]);
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: a.as_str().into(), now: t.now });
    assert_eq!(t.e.live_calls(), vec![want(&b, "2006", &call_b)]);
}

/// A stopping gateway ends every live association (failed, `gateway_restarted`, stored, audited,
/// the account told; its monitor stopped, its call cleared before), except those whose call may
/// still be up: they stay in flight for the next start to end and clear.
#[test]
fn a_stopping_gateway_ends_the_live_associations_except_those_whose_call_may_be_up() {
    let mut t = T::new(policy());
    let (a, _) = t.ringing("alice", "2005");
    let (b, _) = t.ringing("bob", "2006");
    let actions = t.e.shutdown(t.now, &[AssociationId::from(b.as_str())]);
    t.all.extend(actions.clone());
    assert_eq!(t.state(&a), (State::Failed, Some(Reason::GatewayRestarted), false));
    assert_eq!(t.state(&b).0, State::Ringing, "left in flight");
    assert!(!actions.iter().any(|x| matches!(x, Action::Csta { request: CstaRequest::ClearConnection { .. } | CstaRequest::MakeCall { .. }, .. })), "its call is cleared already: {actions:?}");
    assert!(actions.iter().any(|x| matches!(x, Action::Store(StoreWrite::Association(v)) if v.id.as_str() == a && v.state == State::Failed)));
    assert_eq!(t.notified(&a).last().map(String::as_str), Some("failed"));
    assert!(t.notified(&b).iter().all(|e| e != "failed"));
    assert_eq!(t.audited(&a).last().map(|(s, _)| s.as_str()), Some("failed"));
}

/// The engine asks to be woken while any of its small maps holds something to forget (IVR calls,
/// the last hour's proof calls, owner blocks), each alone enough, and not once they are empty.
#[test]
fn the_engine_wakes_to_forget_whatever_small_map_holds_something() {
    let snap = |proof_calls: Vec<ProofCall>, blocks: Vec<OwnerBlock>| cstagate::association::Snapshot { bindings: vec![], counters: vec![], proof_calls, blocks, in_flight: vec![] };
    let now: Millis = 5_000_000;
    let policies = || HashMap::from([("paris".to_owned(), policy())]);
    // Nothing held (a block ending at the restart is over): nothing due.
    let over = OwnerBlock { tenant: "acme".into(), account: "mallory".into(), pbx: "paris".into(), extension: "2005".into(), until: now };
    let (e, _) = Engine::restore(policies(), snap(vec![], vec![over]), now);
    assert_eq!(e.poll_timeout(), None);
    // Only a proof call of the last hour.
    let call = ProofCall { pbx: "paris".into(), extension: "2005".into(), tenant: "acme".into(), account: "alice".into(), at: now };
    let (mut e, _) = Engine::restore(policies(), snap(vec![call], vec![]), now);
    assert!(e.poll_timeout().is_some(), "a proof call to forget in an hour");
    e.handle_timeout(now + 3_600_000 - 1);
    assert_eq!(e.sizes().proof_call_extensions, 1, "still within its hour");
    e.handle_timeout(now + 3_600_000);
    assert_eq!((e.sizes().proof_call_extensions, e.poll_timeout()), (0, None));
    // Only an owner block.
    let block = OwnerBlock { tenant: "acme".into(), account: "mallory".into(), pbx: "paris".into(), extension: "2005".into(), until: now + 1_000 };
    let (mut e, _) = Engine::restore(policies(), snap(vec![], vec![block]), now);
    assert!(e.poll_timeout().is_some(), "a block to forget");
    e.handle_timeout(now + 1_000);
    assert_eq!(e.poll_timeout(), None);
    // Only an IVR call (a guess at a context id).
    let mut t = T::new(policy());
    assert_eq!(t.e.poll_timeout(), None);
    t.ivr("guess", Some("12345678"));
    assert_eq!(t.e.sizes().ivr_calls, 1);
    let at = t.e.poll_timeout().expect("an IVR call to forget");
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.e.poll_timeout(), Some(t.now + 60_000), "swept at least every minute while it holds anything");
    let mut later = at;
    while t.e.sizes().ivr_calls > 0 {
        later = later.max(t.now + 1) + 60_000;
        t.now = later;
        t.run(Input::Timeout { now: later });
        assert!(later < T0 + 3_600_000, "the silent IVR call is never forgotten");
    }
    assert_eq!(t.e.poll_timeout(), None);
}

/// An ended attempt's context id is "no longer valid" (not a guess) for ten minutes to the
/// millisecond, then unknown like any other; the sweep in between keeps it.
#[test]
fn an_ended_context_is_remembered_for_ten_minutes_to_the_millisecond() {
    let mut t = T::new(policy());
    let (_, call) = t.ringing("alice", "2005");
    let ctx = t.ctx("2005");
    t.ev("2005", CallEvent::Failed { call, cause: Some(3) });
    let ended = t.now;
    t.now = ended + 600_000 - 1;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.ivr("late", Some(&ctx)).prompt, "no_longer_valid");
    t.now = ended + 600_000;
    t.run(Input::Timeout { now: t.now });
    assert_eq!(t.ivr("later", Some(&ctx)).prompt, "unknown_context");
}

/// Forgetting an ended association (ten minutes after its end) forgets the requests it awaited,
/// and only those: another association's request in flight is still answered.
#[test]
fn forgetting_an_ended_association_keeps_the_others_requests() {
    let mut p = policy();
    p.code_ttl = std::time::Duration::from_secs(3_600);
    let mut t = T::new(p);
    let a = t.create("alice", "2005").view.unwrap().id;
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: a.clone(), now: t.now });
    let ended = t.now;
    let b = t.create("bob", "2006").view.unwrap().id;
    let monitor = t.request_id(&CstaRequest::MonitorStart { extension: "2006".into() });
    t.now = ended + 600_000;
    t.run(Input::Timeout { now: t.now });
    assert!(t.e.view(&Principal::Admin, &a).is_none(), "forgotten");
    t.run(Input::CstaDone { id: monitor, outcome: Ok(CstaResultInfo::default()), now: t.now });
    assert_eq!(t.state(&b).0, State::Calling, "bob's MonitorStart answer still counts");
}

/// A lock call still prompting when its attempt fails is cleared like the proof call; once the
/// lock is done (the PBX ended the lock call) only the proof call is.
#[test]
fn a_failing_attempt_clears_the_lock_call_only_while_it_prompts() {
    let (mut t, id) = lock_prompting();
    let out = t.run(Input::LinkDown { pbx: "paris".into(), now: t.now });
    assert_eq!(T::clears(&out.actions), [CallId::from(vec![9])]);
    assert_eq!(t.state(&id).1, Some(Reason::LinkDown));

    let (mut t, id) = lock_prompting();
    t.ev("2005", CallEvent::Cleared { call: CallId::from(vec![9]) });
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: String::new() }, Ok(CstaResultInfo { call: Some(CallId::from(vec![10])) }));
    let out = t.run(Input::LinkDown { pbx: "paris".into(), now: t.now });
    assert_eq!(T::clears(&out.actions), [CallId::from(vec![10])], "the lock call ended already");
}

/// A retry (`complete`) is charged against the proof calls of the last hour too, to the
/// millisecond.
#[test]
fn a_retry_an_hour_after_the_last_proof_call_is_allowed_to_the_millisecond() {
    let mut p = policy();
    p.proof_calls_per_hour = 1;
    p.code_ttl = std::time::Duration::from_secs(7_200);
    let mut t = T::new(p);
    let placed = t.now;
    let (id, call) = t.ringing("alice", "2005");
    t.ev("2005", CallEvent::Failed { call, cause: Some(3) });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::Busy), true));
    t.now = placed + 3_600_000 - 1;
    assert_eq!(t.complete(&id).error, Some(Refusal::RateLimited));
    t.now = placed + 3_600_000;
    assert_eq!(t.complete(&id).error, None);
}

/// A stopping gateway also clears a lock call that still prompts (the gateway placed it), and
/// not one the PBX already ended.
#[test]
fn live_calls_include_a_prompting_lock_call_and_no_ended_one() {
    let (mut t, a) = lock_prompting();
    let calls = |t: &T| t.e.live_calls().into_iter().map(|(id, _, ext, call)| (id.to_string(), ext.to_string(), call)).collect::<Vec<_>>();
    assert_eq!(calls(&t), [(a.to_string(), "2005".to_owned(), CallId::from(vec![9]))]);
    t.ev("2005", CallEvent::Cleared { call: CallId::from(vec![9]) });
    assert_eq!(t.state(&a).0, State::Calling);
    assert_eq!(calls(&t), [], "the lock call ended; the proof call is not named yet");
}

/// Alice's association on 2005 under a policy with the lock prefix `*66`, its lock call (call 9)
/// prompting the phone.
fn lock_prompting() -> (T, AssociationId) {
    let mut p = policy();
    p.lock_prefix = Some("*66".into());
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: "*66".into() }, Ok(CstaResultInfo { call: Some(CallId::from(vec![9])) }));
    (t, id)
}

impl T {
    /// Drive a fresh association to the IVR and through the dialogue up to the code prompt
    /// (context id presented on IVR call `call`, the account confirmed with 1): its id and
    /// context id.
    fn at_code_prompt(&mut self, account: &str, ext: &str, call: &str) -> (String, String) {
        let (id, ctx) = self.to_ivr(account, ext);
        self.ivr(call, Some(&ctx));
        self.ivr(call, Some("1"));
        (id, ctx)
    }
}

/// `code_delivery = "notify"`: the answer has no code, one `DeliverCode` action carries it (its
/// `Debug` hides it) before the proof call; the flow binds with it; a code given up fails its
/// association at once and for good, and a late give-up changes nothing.
#[test]
fn a_code_out_of_band_is_only_in_its_delivery_and_an_undelivered_one_fails_the_association() {
    let mut p = policy();
    p.code_delivery = CodeDelivery::Notify;
    let mut t = T::new(p);
    let out = t.create("alice", "2005");
    let v = out.view.expect("created");
    assert_eq!(out.code, None, "the API answer holds no code");
    let delivered: Vec<&Action> = out.actions.iter().filter(|a| matches!(a, Action::DeliverCode { .. })).collect();
    assert_eq!(delivered.len(), 1, "{:?}", out.actions);
    let Action::DeliverCode { tenant, account, association, pbx, extension, code, expires_at } = delivered[0] else { unreachable!() };
    assert_eq!((tenant.as_str(), account.as_str(), association, pbx.as_str(), extension.as_str(), code.0.as_str(), *expires_at), ("acme", "alice", &v.id, "paris", "2005", CODE, v.expires_at));
    assert!(!format!("{:?}", out.actions).contains(CODE), "an action printed shows no code");
    assert!(format!("{:?}", delivered[0]).contains("code: <redacted>"), "it says where the code was withheld: {:?}", delivered[0]);
    let first_csta = out.actions.iter().position(|a| matches!(a, Action::Csta { .. })).expect("the proof call starts");
    assert!(out.actions.iter().position(|a| matches!(a, Action::DeliverCode { .. })) < Some(first_csta), "the code is sent before the phone rings");

    // The code delivered, the user keys it: bound.
    let id = v.id.to_string();
    t.through_call(&id, "2005");
    let ctx = t.ctx("2005");
    t.ivr("call-1", None);
    t.ivr("call-1", Some(&ctx));
    t.ivr("call-1", Some("1"));
    t.ivr("call-1", Some(CODE));
    assert_eq!(t.state(&id).0, State::Bound);
    assert!(t.e.code_undelivered(&id, t.now).is_empty(), "a late give-up leaves a bound association alone");
    assert_eq!(t.state(&id).0, State::Bound);

    // Not delivered: failed for good, its call cleared, the account told.
    let out = t.create("bob", "2006");
    let id = out.view.expect("created").id.to_string();
    t.through_call(&id, "2006");
    let actions = t.e.code_undelivered(&id, t.now);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::CodeNotDelivered), false));
    assert!(actions.iter().any(|a| matches!(a, Action::Notify { event, .. } if event == "failed")), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Csta { request: CstaRequest::ClearConnection { .. }, .. })), "the proof call is cleared: {actions:?}");
    let again = t.complete(&id);
    assert!(again.error.is_some(), "no retry: the code never reached its user");
}

/// Languages: a call speaks the default until it presents an attempt when the PBXs it may
/// belong to disagree (here `paris` in French and `ny` in English share the IVR number), then
/// the language of the attempt's PBX, to its end.
#[test]
fn a_call_speaks_its_pbxs_language_from_the_claim_on() {
    let mut p = policy();
    p.language = "fr-FR".into();
    let mut t = T::new(p);
    let (id, ctx) = t.to_ivr("alice", "2005");
    let r = t.ivr("ivr-1", None);
    assert_eq!((r.prompt, r.language.as_str(), r.say.as_str()), ("enter_context", "en-US", "Please enter the number shown in your app, then the hash key."));
    let r = t.ivr("ivr-1", Some(&ctx));
    assert_eq!((r.prompt, r.language.as_str()), ("confirm_account", "fr-FR"), "{}", r.say);
    assert_eq!(r.say, "Le compte alice de acme demande à relier ce téléphone. Selon acme, il s'agit de : alice name. Si vous êtes à l'origine de cette demande, appuyez sur 1. Sinon, appuyez sur 9.");
    assert_eq!(t.ivr("ivr-1", Some("1")).language, "fr-FR");
    let r = t.ivr("ivr-1", Some(CODE));
    assert_eq!((r.language.as_str(), r.say.as_str()), ("fr-FR", "Merci. Ce téléphone est désormais relié au compte alice. Au revoir."));
    assert_eq!(t.state(&id).0, State::Bound);
    // Where the PBXs' IVR numbers differ, a call speaks the language of the PBX whose number it
    // dialled from its first request.
    let mut paris = policy();
    paris.language = "fr-FR".into();
    let mut t = T { e: Engine::new(HashMap::from([("paris".to_owned(), paris), ("ny".to_owned(), Policy::new("globex", "0800999999"))])), now: T0, all: Vec::new(), draws: 0 };
    assert_eq!(ivr_to(&mut t, "ivr-2", IVR, "+33144002005", None).language, "fr-FR");
    assert_eq!(ivr_to(&mut t, "ivr-3", "0800999999", "+12125550100", None).language, "en-US");
}

const POOL: [&str; 2] = ["0800100201", "0800100202"];

fn pool_policy() -> Policy {
    let mut p = policy();
    p.context_delivery = ContextDelivery::NumberPool;
    p.ivr_numbers = POOL.iter().map(|n| (*n).to_owned()).collect();
    p.directory.insert("2007".into(), None);
    p
}

/// An IVR request of call `call` that reached `to` from `from`.
fn ivr_to(t: &mut T, call: &str, to: &str, from: &str, digits: Option<&str>) -> IvrReply {
    t.run(Input::Ivr { call: call.into(), from: from.into(), to: to.into(), digits: digits.map(str::to_owned), now: t.now }).ivr.expect("ivr reply")
}

#[test]
fn pool_numbers_are_told_apart_liberally_but_never_by_fewer_than_six_digits() {
    for (number, to, same) in [
        ("0800100201", "0800100201", true),
        ("0800100201", "+33800100201", true),
        ("0800100201", "0033 800 100 201", true),
        ("0800100201", "100201", true),
        ("0800100201", "0800100202", false),
        ("0800100201", "00201", false),
        ("0800100201", "", false),
        ("12345", "12345", true),
        ("12345", "012345", false),
    ] {
        assert_eq!(pool_number_matches(number, to), same, "{number} / {to}");
    }
}

#[test]
fn a_pool_number_names_the_attempt_holding_it_and_is_handed_out_once_at_a_time() {
    let mut t = T::new(pool_policy());
    let alice = t.create("alice", "2005").view.unwrap().id.to_string();
    t.through_call(&alice, "2005");
    t.now += 1_000;
    let bob = t.create("bob", "2006").view.unwrap().id.to_string();
    t.through_call(&bob, "2006");
    // Each proof call dials its own number of the pool, and nothing after it: no context id.
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2005".into(), to: POOL[0].into() }), "{:?}", t.csta());
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2006".into(), to: POOL[1].into() }), "{:?}", t.csta());
    // Every number is held: one more association is refused, and nothing of it stays.
    let live = t.e.sizes().live;
    assert!(matches!(t.create("carol", "2007").error, Some(Refusal::PoolExhausted)));
    assert_eq!(t.e.sizes().live, live, "the refused association left nothing live");
    // A pool number's IVR call (To as the platform reports it, international) names the attempt
    // holding that number, bob's, and no other.
    let r = ivr_to(&mut t, "ivr-b", "+33800100202", "+33144002006", None);
    assert!(r.say.contains("account bob of acme") && r.say.contains("press 1"), "{}", r.say);
    ivr_to(&mut t, "ivr-b", "+33800100202", "+33144002006", Some("1"));
    let r = ivr_to(&mut t, "ivr-b", "+33800100202", "+33144002006", Some(CODE));
    assert!(r.hangup && r.say.contains("now linked"), "{}", r.say);
    assert_eq!(t.state(&bob).0, State::Bound);
    assert_eq!(t.state(&alice).0, State::InIvr, "alice's attempt is untouched");
    // bob's number came back with the end of his attempt: carol gets it.
    let carol = t.create("carol", "2007").view.unwrap().id.to_string();
    t.now += 1_000;
    t.through_call(&carol, "2007");
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2007".into(), to: POOL[1].into() }), "{:?}", t.csta());
}

#[test]
fn a_pool_number_no_attempt_holds_links_nothing() {
    let mut t = T::new(pool_policy());
    let alice = t.create("alice", "2005").view.unwrap().id.to_string();
    t.through_call(&alice, "2005");
    // The other number of the pool, which no attempt holds: goodbye, whatever is keyed.
    let r = ivr_to(&mut t, "ivr-x", POOL[1], "+33144002005", None);
    assert!(r.hangup && r.gather.is_none(), "{}", r.say);
    let r = ivr_to(&mut t, "ivr-x", POOL[1], "+33144002005", Some(CODE));
    assert!(r.hangup, "{}", r.say);
    assert_eq!(t.state(&alice).0, State::InIvr);
    assert!(t.e.binding("paris", "2005").is_none());
    // A failed attempt gives its number back (no answer here), and its retry takes one again.
    t.run(Input::CstaEvent { pbx: "paris".into(), extension: "2005".into(), event: CallEvent::Cleared { call: CallId::from(vec![0x2B, t.now as u8]) }, now: t.now });
    assert_eq!(t.state(&alice).0, State::Failed);
    assert!(t.create("bob", "2006").view.is_some());
    let carol = t.create("carol", "2007");
    assert!(carol.view.is_some(), "both numbers are free again: {:?}", carol.error);
    assert!(matches!(t.complete(&alice).error, Some(Refusal::PoolExhausted)), "the retry waits for a number like anyone");
}

#[test]
fn a_removed_pbx_ends_its_live_associations_and_keeps_its_bindings_and_new_policies_apply_to_new_associations() {
    let mut t = T::new(policy());
    let (bound, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&format!("*{ctx}#")));
    t.ivr("c1", Some("1"));
    t.ivr("c1", Some(CODE));
    assert_eq!(t.state(&bound).0, State::Bound);
    t.now += 1_000;
    let (live, _) = t.to_ivr("bob", "2006");
    let call = t.e.view(&Principal::Admin, &live).unwrap().call.clone().expect("a proof call");
    let random = t.random();
    let other = t.run(Input::Create { principal: Principal::Tenant("globex".into()), account: "carol".into(), account_name: None, pbx: Some("ny".into()), extension: "2005".into(), id: "ny-1".into(), random, code: format!("{CODE}000000"), now: t.now }).view.unwrap().id;
    let actions = t.e.pbx_removed("paris", t.now);
    assert_eq!(t.state(&live), (State::Failed, Some(Reason::PbxRemoved), false));
    assert!(actions.iter().any(|a| matches!(a, Action::Csta { request: CstaRequest::ClearConnection { call: c, .. }, .. } if *c == call)), "{actions:?}");
    assert!(actions.iter().any(|a| matches!(a, Action::Csta { request: CstaRequest::MonitorStop { extension }, .. } if extension == "2006")), "{actions:?}");
    assert_eq!(t.state(&other).0, State::Monitoring, "another PBX's association is untouched");
    assert!(t.e.binding("paris", "2005").is_some(), "bindings stay: they come back with the PBX");
    // New policies: a new association dials the new IVR number.
    let mut p = policy();
    p.ivr_number = "0800999999".into();
    t.e.set_policies(HashMap::from([("paris".to_owned(), p)]));
    t.now += 1_000;
    let id = t.create("dave", "2006").view.unwrap().id;
    let out = t.done(&id, CstaRequest::MonitorStart { extension: "2006".into() }, Ok(Default::default()));
    assert!(out.actions.iter().any(|a| matches!(a, Action::Csta { request: CstaRequest::MakeCall { to, .. }, .. } if to.starts_with("0800999999*"))), "{:?}", out.actions);
}

#[test]
fn a_link_lost_during_monitor_start_is_the_link_failing_not_a_refusal() {
    let step = |t: &T, id: &str| t.e.view(&Principal::Admin, id).unwrap().history.last().unwrap().detail.clone();
    let cancel = |t: &mut T, id: &str| t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.into(), now: t.now });
    let mut t = T::new(policy());
    let alice = t.create("alice", "2005").view.unwrap().id.to_string();
    t.done(&alice, CstaRequest::MonitorStart { extension: "2005".into() }, Err(CstaFailure::LinkDown));
    assert_eq!(t.state(&alice), (State::Failed, Some(Reason::LinkDown), true));
    assert_eq!(step(&t, &alice), "PBX link lost during MonitorStart");
    // The PBX refusing is told apart.
    let bob = t.create("bob", "2006").view.unwrap().id.to_string();
    t.done(&bob, CstaRequest::MonitorStart { extension: "2006".into() }, Err(CstaFailure::Rejected));
    assert_eq!((t.state(&bob).1, step(&t, &bob)), (Some(Reason::RejectedByPbx), "MonitorStart refused".to_owned()));
    // A MonitorStart answer that comes after the association ended changes nothing.
    cancel(&mut t, &alice);
    t.now += 1_000;
    let carol = t.create("carol", "2005").view.unwrap().id.to_string();
    cancel(&mut t, &carol);
    let before = (t.state(&carol), step(&t, &carol));
    t.done(&carol, CstaRequest::MonitorStart { extension: "2005".into() }, Err(CstaFailure::LinkDown));
    assert_eq!((t.state(&carol), step(&t, &carol)), before);
}

#[test]
fn after_a_makecall_answered_link_down_only_a_makecalls_own_answer_names_the_proof_call() {
    let follows = |t: &T, id: &str| (t.state(id).0, t.e.view(&Principal::Admin, id).unwrap().call.clone());
    let mut t = T::new(policy());
    let id = t.create("alice", "2005").view.unwrap().id.to_string();
    let out = t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    let first = ids_of(&out.actions, |r| matches!(r, CstaRequest::MakeCall { .. }))[0];
    // The link went down with the MakeCall unanswered: the PBX may have placed the call anyway,
    // and the gateway never learns its id.
    t.run(Input::CstaDone { id: first, outcome: Err(CstaFailure::LinkDown), now: t.now });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::LinkDown), true));
    let out = t.complete(&id);
    let retry = ids_of(&out.actions, |r| matches!(r, CstaRequest::MakeCall { .. }))[0];
    // An event about a call the gateway has no id for could be that first call: it names nothing.
    t.ev("2005", CallEvent::Established { call: CallId::from(vec![1]) });
    assert_eq!(follows(&t, &id), (State::Calling, None));
    // The retry's own answer names its call, and that call's events are followed.
    t.run(Input::CstaDone { id: retry, outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![2])) }), now: t.now });
    t.ev("2005", CallEvent::Established { call: CallId::from(vec![2]) });
    assert_eq!(follows(&t, &id), (State::InIvr, Some(CallId::from(vec![2]))));
}

/// `[cluster]`: the engine acts only for the PBXs it serves. A create, a complete, a cancel
/// or an unbind for another PBX is refused `NotServed` with no action at all — no write the
/// database would fence (which used to fail the whole batch), no call, no notification.
#[test]
fn an_engine_of_a_cluster_refuses_without_a_write_what_is_for_a_pbx_it_does_not_serve() {
    let mut t = T::new(policy());
    t.at_code_prompt("alice", "2005", "c1");
    t.ivr("c1", Some(CODE));
    assert!(t.e.binding("paris", "2005").is_some());
    let (pending, _) = t.to_ivr("bob", "2006");
    // paris is another instance's now (its associations were handed over by the gate).
    t.e.set_served(Some(std::collections::HashSet::from(["ny".into()])));
    let refused = |out: Output| {
        assert_eq!(out.error, Some(Refusal::NotServed("paris".into())));
        assert!(out.actions.is_empty(), "{:?}", out.actions);
    };
    refused(t.create("carol", "2006"));
    refused(t.complete(&pending));
    refused(t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: pending.as_str().into(), now: t.now }));
    refused(t.run(Input::Unbind { principal: Principal::Admin, account: None, pbx: "paris".into(), extension: "2005".into(), now: t.now }));
    assert!(t.e.binding("paris", "2005").is_some());
    // Served again: the same requests are decided as usual.
    t.e.set_served(Some(std::collections::HashSet::from(["ny".into(), "paris".into()])));
    let out = t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: pending.as_str().into(), now: t.now });
    assert_eq!(out.view.map(|v| v.state), Some(State::Cancelled));
    assert!(t.run(Input::Unbind { principal: Principal::Admin, account: None, pbx: "paris".into(), extension: "2005".into(), now: t.now }).error.is_none());
}

/// `[cluster]`: a PBX taken over is adopted from the store: its bindings as stored replace the
/// ones memory held (another instance bound and unbound meanwhile), and only its own orphans
/// end (`gateway_restarted`); another PBX's bindings and associations in flight are untouched.
/// A fenced PBX is dropped without a write.
#[test]
fn adopting_a_pbx_reads_its_bindings_back_and_ends_only_its_orphans() {
    let mut t = T::new(policy());
    t.at_code_prompt("alice", "2005", "c1");
    t.ivr("c1", Some(CODE));
    let alice = t.e.binding("paris", "2005").unwrap().clone();
    let (paris_orphan, _) = t.to_ivr("bob", "2006");
    let paris_orphan = t.e.view(&Principal::Admin, &paris_orphan).unwrap().clone();
    let mut ny_orphan = paris_orphan.clone();
    ny_orphan.id = "ny-orphan".into();
    ny_orphan.pbx = "ny".into();
    let mut ny_binding = alice.clone();
    ny_binding.pbx = "ny".into();
    let mut dave = alice.clone();
    dave.extension = "2006".into();
    dave.account = "dave".into();
    // This instance's memory: alice bound on paris. The store: alice unbound there, dave bound
    // on paris's 2006, and another owner's binding and association in flight on ny.
    let (mut e, _) = Engine::restore(t.e.policies().clone(), Snapshot { bindings: vec![alice.clone()], ..Snapshot::default() }, t.now);
    e.set_served(Some(std::collections::HashSet::from(["ny".into()])));
    let snap = Snapshot { bindings: vec![dave.clone(), ny_binding.clone()], in_flight: vec![paris_orphan.clone(), ny_orphan.clone()], ..Snapshot::default() };
    let actions = e.adopt_pbx("paris", snap, t.now + 10);
    assert!(e.binding("paris", "2005").is_none(), "alice's binding, ended meanwhile, is gone");
    assert_eq!(e.binding("paris", "2006"), Some(&dave));
    assert!(e.binding("ny", "2005").is_none(), "another PBX's bindings are not adopted");
    let ended: Vec<String> = actions.iter().filter_map(|a| match a {
        Action::Store(StoreWrite::Association(v)) => Some(format!("{}:{:?}", v.id, v.reason)),
        _ => None,
    }).collect();
    assert_eq!(ended, [format!("{}:Some(GatewayRestarted)", paris_orphan.id)]);
    assert!(actions.iter().all(|a| !matches!(a, Action::Csta { pbx, .. } if pbx == "ny")));
    // Dropped after a fenced batch: no longer served, and nothing to write.
    let mut t2 = T::new(policy());
    let (live, _) = t2.to_ivr("erin", "2005");
    t2.e.set_served(Some(std::collections::HashSet::from(["paris".into()])));
    t2.e.drop_pbx("paris", t2.now);
    assert_eq!(t2.e.served().map(|s| s.len()), Some(0));
    assert_eq!(t2.e.sizes().live, 0, "{live} still live");
    let out = t2.create("frank", "2006");
    assert_eq!(out.error, Some(Refusal::NotServed("paris".into())));
}
