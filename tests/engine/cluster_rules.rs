//! The engine's side of the account-wide rules with several gateways (`[cluster]`): which
//! accounts' failure counts an input judges (the shell reads them from the store first), the
//! counts taken from the store, and a PBX's state read back on takeover and forgotten on loss.

use std::collections::HashMap;

use cstagate::association::harness::{handle, Input, Output};
use cstagate::association::*;

const NOW: Millis = 10_000_000;
const HOUR: Millis = 3_600_000;

fn policies() -> HashMap<String, Policy> {
    let mut paris = Policy::new("acme", "0800100200");
    paris.directory.insert("2005".into(), None);
    paris.directory.insert("2006".into(), None);
    paris.lockout_after = 3;
    let mut lyon = Policy::new("acme", "0800100200");
    lyon.directory.insert("3005".into(), None);
    let mut ny = Policy::new("globex", "0800100200");
    ny.directory.insert("4005".into(), None);
    HashMap::from([("paris".to_owned(), paris), ("lyon".to_owned(), lyon), ("ny".to_owned(), ny)])
}

fn create(account: &str, ext: &str, id: &str) -> ApiInput {
    ApiInput::Create { principal: Principal::Tenant("acme".into()), account: account.into(), account_name: None, pbx: None, extension: ext.into(), id: id.into(), random: "1234567800000000".into(), code: "111222333".into(), now: NOW }
}

fn request(out: &Output) -> RequestId {
    out.actions.iter().find_map(|a| match a {
        Action::Csta { id, .. } => Some(*id),
        _ => None,
    }).expect("a CSTA request")
}

fn acme(account: &str) -> (TenantId, AccountId) {
    ("acme".into(), account.into())
}

/// Creates, completions, IVR requests at the confirm and code prompts and an admin's counters
/// name the accounts whose counts they judge; nothing else does.
#[test]
fn the_accounts_an_input_judges_are_named_before_it_runs() {
    let mut e = Engine::new(policies());
    let judged = |e: &Engine, i: &ApiInput| e.accounts_judged(Judged::Api(i));
    assert_eq!(judged(&e, &create("alice", "2005", "a1")), [acme("alice")]);
    let by_admin = ApiInput::Create { principal: Principal::Admin, account: "alice".into(), account_name: None, pbx: None, extension: "2005".into(), id: "a1".into(), random: String::new(), code: String::new(), now: NOW };
    assert!(judged(&e, &by_admin).is_empty(), "an admin creates nothing");
    let complete = |id: &str| ApiInput::Complete { principal: Principal::Tenant("acme".into()), id: id.into(), random: String::new(), now: NOW };
    assert!(judged(&e, &complete("a1")).is_empty(), "no such association yet");
    let scope = |tenant: Option<&str>| AdminScope::Account { tenant: tenant.map(TenantId::from), account: "alice".into() };
    assert_eq!(judged(&e, &ApiInput::ResetCounters { scope: scope(Some("acme")), now: NOW }), [acme("alice")]);
    assert_eq!(e.accounts_judged(Judged::Limits(&scope(None))), [acme("alice"), ("globex".into(), "alice".into())], "every configured tenant's");
    let extension = AdminScope::Extension { pbx: "paris".into(), extension: "2005".into() };
    assert!(e.accounts_judged(Judged::Limits(&extension)).is_empty());
    assert!(judged(&e, &ApiInput::LiftBlocks { scope: scope(Some("acme")), now: NOW }).is_empty());

    // An association through its proof call to the IVR (as store_contract.rs drives it).
    let created = handle(&mut e, Input::Create { principal: Principal::Tenant("acme".into()), account: "alice".into(), account_name: None, pbx: None, extension: "2005".into(), id: "a1".into(), random: "1234567800000000".into(), code: "111222333".into(), now: NOW });
    assert!(created.view.is_some(), "{created:?}");
    assert_eq!(judged(&e, &complete("a1")), [acme("alice")]);
    assert!(judged(&e, &ApiInput::Cancel { principal: Principal::Tenant("acme".into()), id: "a1".into(), now: NOW }).is_empty());
    let monitored = handle(&mut e, Input::CstaDone { id: request(&created), outcome: Ok(Default::default()), now: NOW });
    handle(&mut e, Input::CstaDone { id: request(&monitored), outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![1])) }), now: NOW });
    handle(&mut e, Input::CstaEvent { pbx: "paris".into(), extension: "2005".into(), event: CallEvent::Established { call: CallId::from(vec![1]) }, now: NOW });
    assert!(e.accounts_judged(Judged::IvrCall("c")).is_empty(), "a call the IVR has not presented");
    handle(&mut e, Input::Ivr { call: "c".into(), from: String::new(), to: String::new(), digits: Some("12345678".into()), now: NOW });
    assert_eq!(e.accounts_judged(Judged::IvrCall("c")), [acme("alice")], "at the confirmation");
    handle(&mut e, Input::Ivr { call: "c".into(), from: String::new(), to: String::new(), digits: Some("1".into()), now: NOW });
    assert_eq!(e.accounts_judged(Judged::IvrCall("c")), [acme("alice")], "at the code prompt");
    handle(&mut e, Input::Ivr { call: "d".into(), from: String::new(), to: String::new(), digits: None, now: NOW });
    assert!(e.accounts_judged(Judged::IvrCall("d")).is_empty(), "a call that named no attempt");
}

/// Counts taken from the store are the engine's: at the limit the account is locked out, and a
/// count reset elsewhere frees it.
#[test]
fn counts_taken_from_the_store_lock_out_and_free_the_account() {
    let mut e = Engine::new(policies());
    let key = CounterKey::Account { tenant: "acme".into(), account: "mallory".into() };
    e.set_counters(vec![(key.clone(), 3)]);
    assert_eq!(e.api(create("mallory", "2005", "m1")).reply, Err(Refusal::LockedOut));
    e.set_counters(vec![(key, 0)]);
    assert!(e.api(create("mallory", "2005", "m2")).reply.is_ok());
}

fn snapshot() -> Snapshot {
    let binding = |pbx: &str, ext: &str| Binding { tenant: "acme".into(), account: "carol".into(), pbx: pbx.into(), extension: ext.into(), did: None, did_verified: false, bound_at: 1 };
    let acx = |pbx: &str, ext: &str| CounterKey::AccountExtension { tenant: "acme".into(), account: "eve".into(), pbx: pbx.into(), extension: ext.into() };
    let call = |pbx: &str, ext: &str, at: Millis| ProofCall { pbx: pbx.into(), extension: ext.into(), tenant: "acme".into(), account: "eve".into(), at };
    let block = |pbx: &str, ext: &str| OwnerBlock { tenant: "acme".into(), account: "eve".into(), pbx: pbx.into(), extension: ext.into(), until: NOW + HOUR };
    let flight = |pbx: &str, ext: &str, id: &str| AssociationView {
        id: id.into(),
        tenant: "acme".into(),
        account: "zoe".into(),
        pbx: pbx.into(),
        extension: ext.into(),
        state: State::Ringing,
        reason: None,
        retryable: true,
        expires_at: NOW + HOUR,
        call: None,
        history: Vec::new(),
    };
    Snapshot {
        bindings: vec![binding("paris", "2005"), binding("lyon", "3005")],
        counters: vec![(acx("paris", "2005"), 2), (acx("lyon", "3005"), 1), (CounterKey::Account { tenant: "acme".into(), account: "eve".into() }, 9)],
        // paris/2006's call is an hour old: no longer counted.
        proof_calls: vec![call("paris", "2005", NOW - 10), call("paris", "2006", NOW - HOUR), call("lyon", "3005", NOW - 10)],
        blocks: vec![block("paris", "2005"), block("lyon", "3005")],
        in_flight: vec![flight("paris", "2006", "f1"), flight("lyon", "3005", "f2")],
    }
}

fn ended(actions: &[Action]) -> Vec<(String, Option<Reason>)> {
    actions.iter().filter_map(|a| match a {
        Action::Store(StoreWrite::Association(v)) => Some((v.id.to_string(), v.reason)),
        _ => None,
    }).collect()
}

/// A PBX taken over: its bindings, blocks, proof calls of the last hour and counters on its
/// extensions are read from the store (what the engine held of it before is dropped), not
/// another PBX's, nor the accounts' own counters (read before each judgement); its associations
/// left in flight end `gateway_restarted`. A PBX lost: all of that forgotten, the others kept.
#[test]
fn a_pbx_taken_over_is_read_back_and_a_pbx_lost_is_forgotten() {
    // What it remembered of paris from before (a binding since ended elsewhere).
    let stale = Binding { tenant: "acme".into(), account: "old".into(), pbx: "paris".into(), extension: "2006".into(), did: None, did_verified: false, bound_at: 1 };
    let (mut e, _) = Engine::restore(policies(), Snapshot { bindings: vec![stale], ..Snapshot::default() }, NOW);
    let paris = AdminScope::Extension { pbx: "paris".into(), extension: "2005".into() };
    let lyon = AdminScope::Extension { pbx: "lyon".into(), extension: "3005".into() };
    let eve = AdminScope::Account { tenant: Some("acme".into()), account: "eve".into() };

    let actions = e.adopt_pbx("paris", snapshot(), NOW);
    assert_eq!(ended(&actions), [("f1".to_owned(), Some(Reason::GatewayRestarted))], "only the taken PBX's");
    assert_eq!(e.binding("paris", "2005").map(|b| b.account.as_str()), Some("carol"));
    assert!(e.binding("paris", "2006").is_none(), "what it remembered of the PBX is dropped");
    assert!(e.binding("lyon", "3005").is_none(), "another PBX's is not read");
    assert_eq!(e.counters(&eve), [(CounterKey::AccountExtension { tenant: "acme".into(), account: "eve".into(), pbx: "paris".into(), extension: "2005".into() }, 2)]);
    assert_eq!(e.blocks(&paris, NOW).len(), 1);
    assert!(e.blocks(&lyon, NOW).is_empty());
    assert_eq!(e.sizes().proof_call_extensions, 1, "paris/2005's call; paris/2006's is an hour old");

    let actions = e.adopt_pbx("lyon", snapshot(), NOW);
    assert_eq!(ended(&actions), [("f2".to_owned(), Some(Reason::GatewayRestarted))]);
    e.set_counters(vec![(CounterKey::Account { tenant: "acme".into(), account: "eve".into() }, 4)]);
    assert_eq!(e.sizes().proof_call_extensions, 2);

    e.forget_pbx("paris");
    assert!(e.binding("paris", "2005").is_none());
    assert!(e.blocks(&paris, NOW).is_empty());
    assert_eq!(e.sizes().proof_call_extensions, 1);
    let kept: Vec<String> = e.counters(&eve).iter().map(|(k, n)| format!("{:?}={n}", k.extension())).collect();
    assert_eq!(kept, ["None=4", "Some((\"lyon\", \"3005\"))=1"], "the account's own and lyon's kept");
    assert_eq!(e.binding("lyon", "3005").map(|b| b.account.as_str()), Some("carol"));
    assert_eq!(e.blocks(&lyon, NOW).len(), 1);
}

/// The PBX each write is for, which the store's fence checks with `[cluster]`: the PBX's own
/// records name it; an account's counter and an audit record of no PBX (an unknown context id,
/// an admin's reset of an account's counter) name none, so that they are never fenced as a PBX
/// `""` that nobody owns.
#[test]
fn each_write_names_the_pbx_it_is_fenced_by() {
    let (tenant, account) = acme("alice");
    let audit = |pbx: &str| AuditRecord { at: NOW, tenant: tenant.clone(), account: account.clone(), pbx: pbx.into(), extension: "2005".into(), association: AssociationId::default(), step: "counter_reset".into(), result: "by admin".into() };
    let binding = Binding { tenant: tenant.clone(), account: account.clone(), pbx: "paris".into(), extension: "2005".into(), did: None, did_verified: false, bound_at: NOW };
    let cases: Vec<(StoreWrite, Option<&str>)> = vec![
        (StoreWrite::Bind(binding), Some("paris")),
        (StoreWrite::Unbind { pbx: "lyon".into(), extension: "3005".into() }, Some("lyon")),
        (StoreWrite::Counter { key: CounterKey::AccountExtension { tenant: tenant.clone(), account: account.clone(), pbx: "paris".into(), extension: "2005".into() }, value: 1 }, Some("paris")),
        (StoreWrite::Counter { key: CounterKey::Account { tenant: tenant.clone(), account: account.clone() }, value: 1 }, None),
        (StoreWrite::ProofCall(ProofCall { pbx: "ny".into(), extension: "4005".into(), tenant: tenant.clone(), account: account.clone(), at: NOW }), Some("ny")),
        (StoreWrite::Audit(audit("paris")), Some("paris")),
        (StoreWrite::Audit(audit("")), None),
    ];
    for (w, pbx) in cases {
        assert_eq!(w.pbx(), pbx, "{w:?}");
    }
}
