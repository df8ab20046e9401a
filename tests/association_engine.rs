//! The association engine driven in memory, input by input: the whole flow and each way it
//! fails, with the security rules (codes never stored, attempt limits, lock-out, tenant
//! isolation, ring-flood limits).

use std::collections::HashMap;

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
}

impl T {
    fn new(p: Policy) -> T {
        let mut other = Policy::new("globex", IVR);
        other.directory.insert("2005".into(), None);
        T { e: Engine::new(HashMap::from([("paris".to_owned(), p), ("ny".to_owned(), other)])), now: T0, all: Vec::new() }
    }
    fn run(&mut self, i: Input) -> Output {
        let out = self.e.handle(i);
        self.all.extend(out.actions.clone());
        out
    }
    fn create(&mut self, account: &str, ext: &str) -> Output {
        let id = format!("a-{account}-{ext}-{}", self.now);
        self.run(Input::Create {
            principal: Principal::Tenant("acme".into()),
            account: account.into(),
            account_name: Some(format!("{account} name")),
            pbx: None,
            extension: ext.into(),
            id,
            context_id: "1234567812345679".into(),
            code: format!("{CODE}000000"),
            now: self.now,
        })
    }
    fn done(&mut self, id: &str, request: CstaRequest, outcome: Result<CstaResultInfo, CstaFailure>) -> Output {
        self.run(Input::CstaDone { association: id.into(), request, outcome, now: self.now })
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
        let v = out.view.expect("created");
        assert_eq!(out.code.as_deref(), Some(CODE));
        self.through_call(&v.id, ext);
        (v.id, v.context_id)
    }
    fn through_call(&mut self, id: &str, ext: &str) {
        let call = vec![0x2B, self.now as u8];
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
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2005".into(), to: format!("{IVR}*{}#", v.context_id) }), "context id as dial suffix");

    let r = t.ivr("c1", None);
    assert!(r.gather.is_some() && !r.hangup);
    let r = t.ivr("c1", Some(&format!("*{}#", v.context_id)));
    assert!(r.say.contains("alice name") && r.say.contains("press 1"), "the IVR names the account: {}", r.say);
    let r = t.ivr("c1", Some("1"));
    assert_eq!(r.gather.as_ref().unwrap().max_digits, 6);
    let r = t.ivr("c1", Some(&format!("{CODE}#")));
    assert!(r.hangup && r.say.contains("linked"), "{}", r.say);
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
    let (_, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx));
    t.ivr("c1", Some("1"));
    t.ivr("c1", Some("111111"));
    t.ivr("c1", Some(CODE));
    let written = format!("{:?}", t.all);
    assert!(!written.contains(CODE), "a code leaked into actions");
    assert!(written.contains("wrong_code"));
}

#[test]
fn wrong_then_right_code_and_failure_counters_reset_only_on_success() {
    let mut t = T::new(policy());
    let (id, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx));
    t.ivr("c1", Some("1"));
    let r = t.ivr("c1", Some("000000"));
    assert!(!r.hangup && r.say.contains("not correct"));
    let ext = CounterKey::Extension { pbx: "paris".into(), extension: "2005".into() };
    assert!(t.all.contains(&Action::Store(StoreWrite::Counter { key: ext.clone(), value: 1 })));
    t.ivr("c1", Some(CODE));
    assert_eq!(t.state(&id).0, State::Bound);
    assert!(t.all.contains(&Action::Store(StoreWrite::Counter { key: ext, value: 0 })));
}

#[test]
fn three_entries_per_call_five_per_code() {
    let mut t = T::new(policy());
    let (id, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx));
    t.ivr("c1", Some("1"));
    t.ivr("c1", Some("000001"));
    t.ivr("c1", Some("000002"));
    let r = t.ivr("c1", Some("000003"));
    assert!(r.hangup);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::WrongCode), true));
    assert!(t.csta().iter().any(|c| matches!(c, CstaRequest::ClearConnection { .. })), "no call left up");
    // Retry from step 3 while the code is valid: two more wrong entries use up the code.
    t.now += 1000;
    t.run(Input::Complete { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    t.through_call(&id, "2005");
    t.ivr("c2", Some(&ctx));
    t.ivr("c2", Some("1"));
    t.ivr("c2", Some("000004"));
    let r = t.ivr("c2", Some("000005"));
    assert!(r.hangup && r.say.contains("new code"));
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::AttemptsExhausted), false));
    // The right code after that is never accepted: the association is over.
    let again = t.run(Input::Complete { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    assert_eq!(again.error, Some(ApiError::WrongState(State::Failed)));
    assert!(t.e.binding("paris", "2005").is_none());
}

#[test]
fn expiry_is_told_apart_from_a_wrong_code() {
    let mut t = T::new(policy());
    let (id, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx));
    t.ivr("c1", Some("1"));
    t.now += 601_000;
    let r = t.ivr("c1", Some(CODE));
    assert!(r.hangup && r.say.contains("expired"), "{}", r.say);
    assert_eq!(t.state(&id), (State::Expired, Some(Reason::Expired), false));
    assert!(t.e.binding("paris", "2005").is_none());
    // A tick expires associations nobody touches.
    t.now += 1;
    let id2 = t.create("bob", "2006").view.unwrap().id;
    t.now += 600_001;
    t.run(Input::Tick { now: t.now });
    assert_eq!(t.state(&id2).0, State::Expired);
}

#[test]
fn no_answer_busy_locked_phone_link_down_and_hangup_each_end_the_attempt_with_their_reason() {
    // No answer within the ring timeout.
    let mut t = T::new(policy());
    let id = t.create("alice", "2005").view.unwrap().id;
    t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Ok(Default::default()));
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: String::new() }, Ok(CstaResultInfo { call: Some(vec![1]) }));
    t.ev("2005", CallEvent::Initiated { call: vec![1] });
    t.now += 46_000;
    t.run(Input::Tick { now: t.now });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::NoAnswer), true));
    assert!(t.csta().contains(&CstaRequest::ClearConnection { call: vec![1], extension: "2005".into() }));

    // Busy: the PBX refuses the call.
    t.now += 1000;
    t.run(Input::Complete { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: String::new() }, Err(CstaFailure::Busy));
    assert_eq!(t.state(&id).1, Some(Reason::Busy));

    // The third proof call this hour is allowed; the monitor is still running.
    t.now += 1000;
    t.run(Input::Complete { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
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
    let clear = CstaRequest::ClearConnection { call: hex::decode(&call).unwrap(), extension: "2005".into() };
    assert!(out.actions.iter().any(|a| matches!(a, Action::Csta { request, .. } if *request == clear)), "{:?}", out.actions);
    assert_eq!(t.e.view(&Principal::Admin, &id).unwrap().call, None);

    let mut t = T::new(policy());
    let (id, ctx2) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx2));
    t.ivr("c1", Some("1"));
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
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: "*66".into() }, Ok(CstaResultInfo { call: Some(vec![9]) }));
    t.ev("2005", CallEvent::Cleared { call: vec![9] });
    assert_eq!(t.state(&id).0, State::Calling);
    t.done(&id, CstaRequest::MakeCall { from: "2005".into(), to: String::new() }, Ok(CstaResultInfo { call: Some(vec![10]) }));
    t.ev("2005", CallEvent::Initiated { call: vec![10] });
    // Wrong local PIN: the PBX fails the call with cause blocked.
    t.ev("2005", CallEvent::Failed { call: vec![10], cause: Some(35) });
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::PhoneLocked), true));
}

#[test]
fn dtmf_delivery_and_calling_number_lookup() {
    let mut p = policy();
    p.context_delivery = ContextDelivery::Dtmf;
    p.did_prefix = Some("+3314400".into());
    let mut t = T::new(p);
    let (id, _) = t.to_ivr("alice", "2005");
    assert!(t.csta().iter().any(|c| matches!(c, CstaRequest::SendDigits { digits, .. } if digits.starts_with('*'))));
    assert!(t.csta().contains(&CstaRequest::MakeCall { from: "2005".into(), to: IVR.into() }));
    // The calling number presents the extension's DID: straight to the confirm prompt.
    let r = t.ivr("c1", None);
    assert!(r.say.contains("press 1"), "{}", r.say);
    t.ivr("c1", Some("1"));
    t.ivr("c1", Some(CODE));
    assert_eq!(t.state(&id).0, State::Bound);
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
        context_id: "1111111122222222".into(),
        code: "123456".into(),
        now: t.now,
    });
    assert_eq!(other.error, Some(ApiError::UnknownExtension("2005".into())), "another tenant's PBX");
    assert_eq!(t.create("alice", "9999").error, Some(ApiError::UnknownExtension("9999".into())));
    let id = t.create("alice", "2005").view.unwrap().id;
    assert!(t.e.view(&Principal::Tenant("globex".into()), &id).is_none());
    let cancel = t.run(Input::Cancel { principal: Principal::Tenant("globex".into()), id: id.clone(), now: t.now });
    assert_eq!(cancel.error, Some(ApiError::NotFound));
    assert_eq!(t.create("bob", "2005").error, Some(ApiError::ExtensionBusy));
    assert_eq!(t.create("alice", "2006").error, Some(ApiError::AccountBusy));
    // Cancel frees both.
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    assert_eq!(t.state(&id), (State::Cancelled, Some(Reason::CancelledByUser), false));
    assert!(t.create("bob", "2005").error.is_none());
}

#[test]
fn an_extension_bound_to_someone_else_is_refused_until_unbound() {
    let mut t = T::new(policy());
    let (_, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx));
    t.ivr("c1", Some("1"));
    t.ivr("c1", Some(CODE));
    assert_eq!(t.create("bob", "2005").error, Some(ApiError::AlreadyBound));
    let not_owner = t.run(Input::Unbind { principal: Principal::Tenant("acme".into()), account: Some("bob".into()), pbx: "paris".into(), extension: "2005".into(), now: t.now });
    assert_eq!(not_owner.error, Some(ApiError::NotFound));
    let owner = t.run(Input::Unbind { principal: Principal::Tenant("acme".into()), account: Some("alice".into()), pbx: "paris".into(), extension: "2005".into(), now: t.now });
    assert!(owner.error.is_none());
    assert!(t.create("bob", "2005").error.is_none());
}

#[test]
fn proof_calls_are_limited_per_extension_per_hour() {
    let mut p = policy();
    p.require_completion = true;
    let mut t = T::new(p);
    let id = t.create("alice", "2005").view.unwrap().id;
    assert_eq!(t.state(&id).0, State::CodeIssued, "waits for 'I am at my phone'");
    for _ in 0..3 {
        let o = t.run(Input::Complete { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
        assert!(o.error.is_none());
        t.done(&id, CstaRequest::MonitorStart { extension: "2005".into() }, Err(CstaFailure::Rejected));
        assert_eq!(t.state(&id).1, Some(Reason::RejectedByPbx));
        t.now += 1000;
    }
    let o = t.run(Input::Complete { principal: Principal::Tenant("acme".into()), id: id.clone(), now: t.now });
    assert_eq!(o.error, Some(ApiError::RateLimited));
    t.now += 3_600_000;
    // Fresh hour, but the code has expired by now.
    let o = t.run(Input::Complete { principal: Principal::Tenant("acme".into()), id, now: t.now });
    assert_eq!(o.error, Some(ApiError::Expired));
}

#[test]
fn lock_out_after_the_configured_failures_survives_new_codes() {
    let mut p = policy();
    p.lockout_after = 4;
    let mut t = T::new(p);
    let (id, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx));
    t.ivr("c1", Some("1"));
    for _ in 0..3 {
        t.ivr("c1", Some("000000"));
    }
    t.now += 1000;
    t.run(Input::Cancel { principal: Principal::Tenant("acme".into()), id, now: t.now });
    // A new code does not reset the count: one more failure locks the extension out.
    let (id, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c2", Some(&ctx));
    t.ivr("c2", Some("1"));
    let r = t.ivr("c2", Some("000000"));
    assert!(r.hangup);
    assert_eq!(t.state(&id), (State::Failed, Some(Reason::LockedOut), false));
    assert_eq!(t.create("alice", "2005").error, Some(ApiError::LockedOut));
    t.run(Input::ResetCounters { key: CounterKey::Extension { pbx: "paris".into(), extension: "2005".into() }, now: t.now });
    t.run(Input::ResetCounters { key: CounterKey::Account { tenant: "acme".into(), account: "alice".into() }, now: t.now });
    t.now += 1;
    let again = t.create("alice", "2005");
    assert!(again.error.is_none(), "{:?}", again.error);
}

#[test]
fn a_restart_keeps_bindings_and_counters_and_ends_associations_in_flight() {
    let mut t = T::new(policy());
    let (_, ctx) = t.to_ivr("alice", "2005");
    t.ivr("c1", Some(&ctx));
    t.ivr("c1", Some("1"));
    t.ivr("c1", Some(CODE));
    let pending = t.create("bob", "2006").view.unwrap();
    t.through_call(&pending.id, "2006");
    let pending = t.e.view(&Principal::Admin, &pending.id).unwrap().clone();
    let call = pending.call.clone().expect("the stored view names the call");
    let snap = cstagate::association::Snapshot {
        bindings: vec![t.e.binding("paris", "2005").unwrap().clone()],
        counters: vec![(CounterKey::Account { tenant: "acme".into(), account: "bob".into() }, 7)],
        proof_calls: vec![],
        in_flight: vec![pending.clone()],
    };
    let (e, actions) = Engine::restore(HashMap::from([("paris".to_owned(), policy())]), snap, t.now + 10);
    assert!(e.binding("paris", "2005").is_some());
    let restored = actions.iter().find_map(|a| match a {
        Action::Store(StoreWrite::Association(v)) => Some(v.clone()),
        _ => None,
    }).unwrap();
    assert_eq!((restored.id.as_str(), restored.state, restored.reason, restored.call), (pending.id.as_str(), State::Failed, Some(Reason::GatewayRestarted), None));
    // The call the previous run left up is cleared, and the account told.
    let clear = CstaRequest::ClearConnection { call: hex::decode(&call).unwrap(), extension: "2006".into() };
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
    t.run(Input::Tick { now: t.now });
    assert_eq!(t.state(&id).0, State::InIvr, "the platform spoke 20 s ago");
    t.now += 10_000;
    let out = t.run(Input::Tick { now: t.now });
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
    t.run(Input::Tick { now: t.now });
    let z = t.e.sizes();
    assert_eq!((z.associations, z.live), (1, 1), "{z:?}");
    assert!(t.e.view(&Principal::Admin, &live.id).is_some());
    t.now += 3_600_000;
    t.run(Input::Tick { now: t.now });
    assert_eq!(t.e.sizes(), Sizes { associations: 1, live: 0, ivr_calls: 0, proof_call_extensions: 0, bindings: 0 }, "expired, kept 10 minutes");
    t.now += 600_000;
    t.run(Input::Tick { now: t.now });
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
    t.run(Input::Tick { now: t.now });
    assert_eq!(t.e.sizes().ivr_calls, 1);
    assert!(!t.ivr("a-new-call", None).hangup, "room again");
}
