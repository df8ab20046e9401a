//! The store's contract, written once and run against every backend (`store_sqlite.rs`,
//! `store_postgres.rs` instantiate it with [`contract_tests!`]): reopened as after a restart,
//! nothing is lost; the engine rebuilt from it keeps bindings and counters and ends associations
//! in flight with a reason; the audit log refuses changes even from raw SQL and reads back newest
//! last within its limit; a batch with a failing write leaves nothing; owner blocks and charged
//! proof calls survive, retired counters are skipped, proof calls older than a day are pruned.

use std::collections::HashMap;

use cstagate::association::harness::{handle, Input, Output};
use cstagate::association::*;
use cstagate::store::{AccountClaim, AssociationFilter, AuditFilter, Store, StoreError};

/// What the suite needs of a backend besides [`Store`]: a fresh database, opening it again, and
/// raw SQL past the store.
pub trait Backend {
    /// A database: a file, or a database on the private PostgreSQL server.
    type Db;
    /// A fresh, empty database; `None` when the backend is not installed (skipped, announced).
    fn fresh(name: &str) -> Option<Self::Db>;
    /// Open the store on it, as a (re)started gateway does.
    fn open(db: &Self::Db) -> Box<dyn Store>;
    /// Raw SQL past the store; the database's error text on failure.
    fn exec(db: &Self::Db, sql: &str) -> Result<(), String>;
    /// Raw query: each row's columns joined by `|`.
    fn rows(db: &Self::Db, sql: &str) -> Vec<String>;
    /// Whether `e` is the refusal of a duplicate primary key.
    fn duplicate_key(e: &StoreError) -> bool;
    /// Whether several gateways share it (the account-wide rules are the store's then).
    const SHARED: bool;
}

pub fn policy() -> HashMap<String, Policy> {
    let mut p = Policy::new("acme", "0800100200");
    p.directory.insert("2005".into(), Some("Alice".into()));
    p.directory.insert("2006".into(), None);
    HashMap::from([("paris".to_owned(), p)])
}

/// The id of the CSTA request `out` asked for.
fn request(out: &Output) -> RequestId {
    out.actions.iter().find_map(|a| match a {
        Action::Csta { id, .. } => Some(*id),
        _ => None,
    }).expect("a CSTA request")
}

fn writes(actions: &[Action]) -> Vec<StoreWrite> {
    actions.iter().filter_map(|a| match a {
        Action::Store(w) => Some(w.clone()),
        _ => None,
    }).collect()
}

/// Run the engine through a binding of 2005 (with one wrong code) and a pending 2006,
/// committing every write to `store`.
pub fn drive(store: &mut dyn Store) -> (String, String) {
    let mut e = Engine::new(policy());
    let mut now = 10_000;
    let mut run = |e: &mut Engine, i: Input| {
        let o = handle(e, i);
        store.apply(&writes(&o.actions)).unwrap();
        o
    };
    let created = run(&mut e, Input::Create { principal: Principal::Tenant("acme".into()), account: "alice".into(), account_name: None, pbx: None, extension: "2005".into(), id: "a1".into(), random: "1234567800000000".into(), code: "111222333".into(), now });
    let v = created.view.clone().unwrap();
    now += 10;
    let monitored = run(&mut e, Input::CstaDone { id: request(&created), outcome: Ok(Default::default()), now });
    run(&mut e, Input::CstaDone { id: request(&monitored), outcome: Ok(CstaResultInfo { call: Some(CallId::from(vec![1])) }), now });
    run(&mut e, Input::CstaEvent { pbx: "paris".into(), extension: "2005".into(), event: CallEvent::Established { call: CallId::from(vec![1]) }, now });
    // The context id as the PBX dialled it after the IVR number.
    for d in ["12345678", "1", "000000", "111222"] {
        run(&mut e, Input::Ivr { call: "c".into(), from: "+3312345".into(), to: String::new(), digits: Some(d.into()), now });
    }
    let p = run(&mut e, Input::Create { principal: Principal::Tenant("acme".into()), account: "bob".into(), account_name: None, pbx: None, extension: "2006".into(), id: "a2".into(), random: "8765432100000000".into(), code: "999888777".into(), now }).view.unwrap();
    (v.id.into_string(), p.id.into_string())
}

pub fn nothing_is_lost_across_a_restart<B: Backend>() {
    let Some(db) = B::fresh("restart") else { return };
    let (bound, pending) = drive(B::open(&db).as_mut());
    // Open it again, as a restarted gateway does.
    let mut s = B::open(&db);
    let snap = s.snapshot(20_000).unwrap();
    assert_eq!(snap.bindings.len(), 1);
    let b = &snap.bindings[0];
    assert_eq!((b.account.as_str(), b.extension.as_str(), b.did.as_deref(), b.did_verified), ("alice", "2005", Some("+3312345"), false));
    // The wrong code counted, then success reset to 0: both persisted.
    assert!(snap.counters.contains(&(CounterKey::AccountExtension { tenant: "acme".into(), account: "alice".into(), pbx: "paris".into(), extension: "2005".into() }, 0)));
    assert!(snap.counters.contains(&(CounterKey::Account { tenant: "acme".into(), account: "alice".into() }, 0)));
    assert!(snap.proof_calls.iter().all(|c| c.tenant == "acme"), "charged to the requesting account");
    assert_eq!(snap.proof_calls.len(), 2);
    assert_eq!(snap.in_flight.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), [pending.as_str()]);
    assert_eq!(s.association(&bound).unwrap().unwrap().state, State::Bound);
    assert!(s.association("no-such-association").unwrap().is_none());

    let (engine, actions) = Engine::restore(policy(), snap, 20_000);
    assert!(engine.binding("paris", "2005").is_some());
    s.apply(&writes(&actions)).unwrap();
    let v = s.association(&pending).unwrap().unwrap();
    assert_eq!((v.state, v.reason, v.retryable), (State::Failed, Some(Reason::GatewayRestarted), false));
    assert!(s.snapshot(20_000).unwrap().in_flight.is_empty());

    // The audit log tells the story, in order, without any code.
    let log = s.audit(&AuditFilter { extension: Some("2005".into()), ..Default::default() }).unwrap();
    let steps: Vec<&str> = log.iter().map(|r| r.step.as_str()).collect();
    assert_eq!(steps.first(), Some(&"code_issued"));
    assert!(steps.contains(&"code_entered") && steps.last() == Some(&"bound"), "{steps:?}");
    let all = format!("{:?}", s.audit(&AuditFilter::default()).unwrap());
    assert!(!all.contains("111222") && !all.contains("999888"));
}

pub fn associations_are_listed_newest_first_by_tenant_state_extension_and_account<B: Backend>() {
    let Some(db) = B::fresh("list") else { return };
    let (bound, pending) = drive(B::open(&db).as_mut());
    let s = B::open(&db);
    let ids = |f: AssociationFilter| s.list_associations(&f).unwrap().into_iter().map(|v| v.id.into_string()).collect::<Vec<_>>();
    // Created in this order: the bound one first; an update (the binding came later) keeps it.
    assert_eq!(ids(AssociationFilter::default()), [pending.clone(), bound.clone()]);
    assert_eq!(ids(AssociationFilter { limit: 1, ..Default::default() }), [pending.clone()]);
    assert_eq!(ids(AssociationFilter { state: Some("bound".into()), ..Default::default() }), [bound.clone()]);
    assert_eq!(ids(AssociationFilter { extension: Some("2006".into()), ..Default::default() }), [pending.clone()]);
    assert_eq!(ids(AssociationFilter { account: Some("alice".into()), tenant: Some("acme".into()), ..Default::default() }), [bound]);
    assert!(ids(AssociationFilter { tenant: Some("globex".into()), ..Default::default() }).is_empty(), "a tenant sees its own only");
}

const AUDIT_ROWS: &str = "SELECT seq, at, tenant, account, pbx, extension, association, step, result FROM audit ORDER BY seq";

pub fn the_audit_log_refuses_changes_even_from_raw_sql<B: Backend>(statements: &[&str]) {
    let Some(db) = B::fresh("audit") else { return };
    drive(B::open(&db).as_mut());
    let before = B::rows(&db, AUDIT_ROWS);
    assert!(before.len() >= 5, "{before:?}");
    for sql in statements {
        match B::exec(&db, sql) {
            Err(e) => assert!(e.contains("the audit log is append-only"), "{sql}: refused, but not by the append-only trigger: {e}"),
            Ok(()) => panic!("{sql}: the append-only trigger must refuse it"),
        }
        assert_eq!(B::rows(&db, AUDIT_ROWS), before, "{sql}: the audit rows are unchanged");
    }
}

pub fn a_batch_with_a_failing_write_leaves_nothing<B: Backend>() {
    let Some(db) = B::fresh("atomic") else { return };
    let mut s = B::open(&db);
    drive(s.as_mut());
    let audit = B::rows(&db, AUDIT_ROWS);
    let counters = B::rows(&db, "SELECT key, value FROM counters ORDER BY key");
    // A batch that fails half-way (binding an extension twice) writes nothing: neither the
    // audit record and counter before the failing write nor the block after it.
    let b = Binding { tenant: "acme".into(), account: "eve".into(), pbx: "paris".into(), extension: "2005".into(), did: None, did_verified: false, bound_at: 1 };
    let record = StoreWrite::Audit(AuditRecord { at: 1, tenant: "acme".into(), account: "eve".into(), pbx: "paris".into(), extension: "2005".into(), association: "z".into(), step: "bound".into(), result: "ok".into() });
    let counter = StoreWrite::Counter { key: CounterKey::Account { tenant: "acme".into(), account: "eve".into() }, value: 3 };
    let block = StoreWrite::Block(OwnerBlock { tenant: "acme".into(), account: "eve".into(), pbx: "paris".into(), extension: "2005".into(), until: 99_000 });
    match s.apply(&[record, counter, StoreWrite::Bind(b), block]) {
        Err(e) => assert!(B::duplicate_key(&e), "the second binding of paris/2005 must be refused by the key, got {e:?}"),
        Ok(()) => panic!("the second binding of paris/2005 was accepted"),
    }
    assert_eq!(B::rows(&db, AUDIT_ROWS), audit, "nothing of a failed batch is written");
    assert_eq!(B::rows(&db, "SELECT key, value FROM counters ORDER BY key"), counters);
    assert!(B::rows(&db, "SELECT account FROM owner_blocks").is_empty());
    assert_eq!(B::rows(&db, "SELECT extension, account FROM bindings"), ["2005|alice"], "the binding is still alice's");
    // And the store takes the next batch.
    s.apply(&[StoreWrite::Unbind { pbx: "paris".into(), extension: "2005".into() }]).unwrap();
    assert!(s.snapshot(20_000).unwrap().bindings.is_empty());
}

/// Owner blocks and the account each proof call was charged to survive a restart; counters of
/// the retired per-extension kind (which let anyone lock an owner out) are no longer counted;
/// proof calls older than a day are pruned at the next one.
pub fn blocks_and_charged_proof_calls_survive_and_extension_counters_are_retired<B: Backend>() {
    let Some(db) = B::fresh("blocks") else { return };
    let block = OwnerBlock { tenant: "acme".into(), account: "mallory".into(), pbx: "paris".into(), extension: "2005".into(), until: 90_000_000 };
    let old = ProofCall { pbx: "paris".into(), extension: "2005".into(), tenant: "acme".into(), account: "mallory".into(), at: 1_000 };
    let call = ProofCall { at: 86_402_000, ..old.clone() };
    {
        let mut s = B::open(&db);
        s.apply(&[StoreWrite::Block(block.clone()), StoreWrite::ProofCall(old)]).unwrap();
        s.apply(&[StoreWrite::ProofCall(call.clone())]).unwrap();
        let lifted = OwnerBlock { account: "bob".into(), ..block.clone() };
        s.apply(&[StoreWrite::Block(lifted), StoreWrite::Unblock { tenant: "acme".into(), account: "bob".into(), pbx: "paris".into(), extension: "2005".into() }]).unwrap();
    }
    assert_eq!(B::rows(&db, "SELECT at FROM proof_calls"), ["86402000"], "the call older than a day is pruned");
    // A counter written by an earlier release, keyed by extension.
    B::exec(&db, "INSERT INTO counters (key, value) VALUES ('ext\u{1f}paris\u{1f}2005', 99)").unwrap();
    let s = B::open(&db);
    let snap = s.snapshot(86_403_000).unwrap();
    assert_eq!(snap.blocks, vec![block.clone()]);
    assert_eq!(snap.proof_calls, vec![call]);
    assert!(snap.counters.is_empty(), "{:?}", snap.counters);
    assert!(s.snapshot(86_403_000 + 3_600_000).unwrap().proof_calls.is_empty(), "an hour later the call no longer counts");
    assert!(s.snapshot(95_000_000).unwrap().blocks.is_empty(), "an ended block is not restored");
    let (e, _) = Engine::restore(policy(), snap, 86_403_000);
    let scope = cstagate::association::AdminScope::Extension { pbx: "paris".into(), extension: "2005".into() };
    assert_eq!(e.blocks(&scope, 86_403_000), vec![block]);
}

/// The audit log reads back newest last: the newest `limit` records (1000 when 0), filtered.
pub fn the_audit_log_reads_the_newest_within_its_limit<B: Backend>() {
    let Some(db) = B::fresh("auditread") else { return };
    let mut s = B::open(&db);
    let rec = |i: u64, account: &str| StoreWrite::Audit(AuditRecord { at: i, tenant: "acme".into(), account: account.into(), pbx: "paris".into(), extension: format!("20{:02}", i % 3).into(), association: format!("a{i}").into(), step: "code_issued".into(), result: "ok".into() });
    let batch: Vec<StoreWrite> = (0..1005).map(|i| rec(i, if i % 2 == 0 { "alice" } else { "bob" })).collect();
    s.apply(&batch).unwrap();
    let ats = |f: AuditFilter| s.audit(&f).unwrap().iter().map(|r| r.at).collect::<Vec<_>>();
    assert_eq!(ats(AuditFilter { limit: 3, ..Default::default() }), [1002, 1003, 1004]);
    assert_eq!(ats(AuditFilter::default()), (5..1005).collect::<Vec<_>>(), "1000 by default, newest last");
    // bob's records are the odd ones, extension 2000 every third: 3, 9, … 993, 999.
    assert_eq!(ats(AuditFilter { account: Some("bob".into()), extension: Some("2000".into()), limit: 2, ..Default::default() }), [993, 999]);
    assert!(ats(AuditFilter { tenant: Some("globex".into()), ..Default::default() }).is_empty());
}

/// Counters written as the engine writes them (one failure more, or a reset) read back as
/// counted. On a store several gateways share, the account-wide rules are the store's: an
/// account's claim holds until released, its counters and bindings read back; on one process
/// (SQLite) the engine's memory is the truth and these are no-ops.
pub fn account_rules_are_the_stores_where_gateways_share_it<B: Backend>() {
    let Some(db) = B::fresh("accounts") else { return };
    let mut s = B::open(&db);
    drive(s.as_mut());
    let key = CounterKey::Account { tenant: "acme".into(), account: "eve".into() };
    for value in [1, 2, 0, 1] {
        s.apply(&[StoreWrite::Counter { key: key.clone(), value }]).unwrap();
    }
    assert!(s.snapshot(20_000).unwrap().counters.contains(&(key.clone(), 1)));
    let claim = |id: &str| AccountClaim { tenant: "acme".into(), account: "eve".into(), association: id.into(), pbx: Some("paris".into()) };
    let accounts = [("acme".into(), "eve".into()), ("acme".into(), "nobody".into())];
    if B::SHARED {
        assert_eq!(s.account_counters(&accounts).unwrap(), [(key, 1)], "the stored counter; none for an account never counted");
        assert!(s.claim_account(&claim("x1")).unwrap());
        assert!(!s.claim_account(&claim("x2")).unwrap(), "the account is claimed for x1");
        s.release_account(&claim("x2")).unwrap();
        assert!(!s.claim_account(&claim("x2")).unwrap(), "only x1's release frees it");
        s.release_account(&claim("x1")).unwrap();
        assert!(s.claim_account(&claim("x2")).unwrap(), "released");
        let bound = s.bindings_of("acme", "alice").unwrap().expect("read from the store");
        assert_eq!(bound.iter().map(|b| (b.pbx.as_str(), b.extension.as_str())).collect::<Vec<_>>(), [("paris", "2005")]);
        assert_eq!(s.bindings_of("acme", "bob").unwrap(), Some(Vec::new()));
    } else {
        assert!(s.account_counters(&accounts).unwrap().is_empty());
        assert!(s.claim_account(&claim("x1")).unwrap() && s.claim_account(&claim("x2")).unwrap());
        assert_eq!(s.bindings_of("acme", "alice").unwrap(), None);
    }
}

/// One `#[test]` per contract function, for backend `$backend`.
#[macro_export]
macro_rules! contract_tests {
    ($backend:ty, audit_refusals = $refusals:expr) => {
        #[test]
        fn nothing_is_lost_across_a_restart() {
            super::store_contract::nothing_is_lost_across_a_restart::<$backend>();
        }
        #[test]
        fn the_audit_log_refuses_changes_even_from_raw_sql() {
            super::store_contract::the_audit_log_refuses_changes_even_from_raw_sql::<$backend>($refusals);
        }
        #[test]
        fn a_batch_with_a_failing_write_leaves_nothing() {
            super::store_contract::a_batch_with_a_failing_write_leaves_nothing::<$backend>();
        }
        #[test]
        fn blocks_and_charged_proof_calls_survive_and_extension_counters_are_retired() {
            super::store_contract::blocks_and_charged_proof_calls_survive_and_extension_counters_are_retired::<$backend>();
        }
        #[test]
        fn associations_are_listed_newest_first_by_tenant_state_extension_and_account() {
            super::store_contract::associations_are_listed_newest_first_by_tenant_state_extension_and_account::<$backend>();
        }
        #[test]
        fn account_rules_are_the_stores_where_gateways_share_it() {
            super::store_contract::account_rules_are_the_stores_where_gateways_share_it::<$backend>();
        }
        #[test]
        fn the_audit_log_reads_the_newest_within_its_limit() {
            super::store_contract::the_audit_log_reads_the_newest_within_its_limit::<$backend>();
        }
    };
}
