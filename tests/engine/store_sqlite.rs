//! The SQLite store: a real database file, reopened as after a restart; the audit log refuses
//! changes; the engine rebuilt from it keeps bindings and counters and ends associations in
//! flight with a reason.

use std::collections::HashMap;

use cstagate::association::harness::{handle, Input, Output};
use cstagate::association::*;
use cstagate::store::{AuditFilter, SqliteStore, Store, StoreError};

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cstagate-store-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("gateway.db")
}

fn policy() -> HashMap<String, Policy> {
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

fn writes(out: &Output) -> Vec<StoreWrite> {
    out.actions.iter().filter_map(|a| match a {
        Action::Store(w) => Some(w.clone()),
        _ => None,
    }).collect()
}

/// Run the engine through a binding of 2005 (with one wrong code) and a pending 2006,
/// committing every write to `store`.
fn drive(store: &mut SqliteStore) -> (String, String) {
    let mut e = Engine::new(policy());
    let mut now = 10_000;
    let mut run = |e: &mut Engine, i: Input| {
        let o = handle(e, i);
        store.apply(&writes(&o)).unwrap();
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

#[test]
fn nothing_is_lost_across_a_restart() {
    let path = tmp("restart");
    let (bound, pending) = {
        let mut s = SqliteStore::open(&path).unwrap();
        drive(&mut s)
    };
    // Reopen the file, as a restarted gateway does.
    let s = SqliteStore::open(&path).unwrap();
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

    let (engine, actions) = Engine::restore(policy(), snap, 20_000);
    assert!(engine.binding("paris", "2005").is_some());
    let mut s = s;
    let ws: Vec<StoreWrite> = actions.iter().filter_map(|a| match a {
        Action::Store(w) => Some(w.clone()),
        _ => None,
    }).collect();
    s.apply(&ws).unwrap();
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

#[test]
fn the_audit_log_is_append_only_and_a_batch_is_atomic() {
    let path = tmp("audit");
    let mut s = SqliteStore::open(&path).unwrap();
    drive(&mut s);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let before = audit_rows(&raw);
    assert!(before.len() >= 5, "{before:?}");
    // Refused by the schema's append-only triggers themselves, whatever the statement touches.
    for sql in ["UPDATE audit SET result = 'x'", "UPDATE audit SET step = 'bound' WHERE seq = 1", "DELETE FROM audit", "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)"] {
        match raw.execute(sql, []) {
            Err(rusqlite::Error::SqliteFailure(e, Some(msg))) => {
                assert_eq!((e.code, e.extended_code), (rusqlite::ErrorCode::ConstraintViolation, rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER), "{sql}: {e}");
                assert_eq!(msg, "the audit log is append-only", "{sql}");
            }
            other => panic!("{sql}: the append-only trigger must refuse it, got {other:?}"),
        }
        assert_eq!(audit_rows(&raw), before, "{sql}: the audit rows are unchanged");
    }
    // A batch that fails half-way (binding an extension twice) writes nothing.
    let b = Binding { tenant: "acme".into(), account: "eve".into(), pbx: "paris".into(), extension: "2005".into(), did: None, did_verified: false, bound_at: 1 };
    let audit = StoreWrite::Audit(AuditRecord { at: 1, tenant: "acme".into(), account: "eve".into(), pbx: "paris".into(), extension: "2005".into(), association: "z".into(), step: "bound".into(), result: "ok".into() });
    match s.apply(&[audit, StoreWrite::Bind(b)]) {
        Err(StoreError::Db(rusqlite::Error::SqliteFailure(e, Some(msg)))) => {
            assert_eq!(e.extended_code, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY, "{e}: {msg}");
            assert!(msg.contains("bindings.pbx, bindings.extension"), "{msg}");
        }
        other => panic!("the second binding of paris/2005 must be refused by the key, got {other:?}"),
    }
    assert_eq!(audit_rows(&raw), before, "nothing of a failed batch is written");
    let bound: Vec<(String, String)> = raw.prepare("SELECT extension, account FROM bindings").unwrap().query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap();
    assert_eq!(bound, [("2005".to_owned(), "alice".to_owned())], "the binding is still alice's");
    let journal: String = raw.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(journal, "wal");
}

/// Every audit row, every column, in order.
fn audit_rows(db: &rusqlite::Connection) -> Vec<(i64, i64, String, String, String, String, String, String, String)> {
    let mut q = db.prepare("SELECT seq, at, tenant, account, pbx, extension, association, step, result FROM audit ORDER BY seq").unwrap();
    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

/// The mode bits of a file the store made (or was given).
#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
fn with_suffix(path: &std::path::Path, suffix: &str) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

#[cfg(unix)]
#[test]
fn the_database_and_its_wal_are_readable_by_the_gateway_alone() {
    // A new database: the file, its WAL and its shared-memory index, all 0600 while in use.
    let path = tmp("modes");
    let mut s = SqliteStore::open(&path).unwrap();
    drive(&mut s);
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(format!("{:o}", mode(&with_suffix(&path, suffix))), "600", "gateway.db{suffix}");
    }
    drop(s);

    // A database an older version left world-readable, in use (WAL and index present): tightened.
    let path = tmp("modes-loose");
    let raw = rusqlite::Connection::open(&path).unwrap();
    let _: String = raw.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
    raw.execute_batch("CREATE TABLE old (x); INSERT INTO old VALUES (1);").unwrap();
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(with_suffix(&path, suffix), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut s = SqliteStore::open(&path).unwrap();
    drive(&mut s);
    for suffix in ["", "-wal", "-shm"] {
        assert_eq!(format!("{:o}", mode(&with_suffix(&path, suffix))), "600", "gateway.db{suffix}");
    }
    let n: i64 = raw.query_row("SELECT count(*) FROM old", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "tightening the modes keeps the data");
}

/// Owner blocks and the account each proof call was charged to survive a restart; counters of
/// the retired per-extension kind (which let anyone lock an owner out) are no longer counted.
#[test]
fn blocks_and_charged_proof_calls_survive_a_reopen_and_extension_counters_are_retired() {
    use cstagate::association::{OwnerBlock, ProofCall};
    let path = tmp("blocks");
    let block = OwnerBlock { tenant: "acme".into(), account: "mallory".into(), pbx: "paris".into(), extension: "2005".into(), until: 90_000 };
    let call = ProofCall { pbx: "paris".into(), extension: "2005".into(), tenant: "acme".into(), account: "mallory".into(), at: 10_000 };
    {
        let mut s = SqliteStore::open(&path).unwrap();
        s.apply(&[StoreWrite::Block(block.clone()), StoreWrite::ProofCall(call.clone())]).unwrap();
        let lifted = OwnerBlock { account: "bob".into(), ..block.clone() };
        s.apply(&[StoreWrite::Block(lifted), StoreWrite::Unblock { tenant: "acme".into(), account: "bob".into(), pbx: "paris".into(), extension: "2005".into() }]).unwrap();
    }
    // A counter written by an earlier release, keyed by extension.
    rusqlite::Connection::open(&path).unwrap().execute("INSERT INTO counters (key, value) VALUES ('ext\u{1f}paris\u{1f}2005', 99)", []).unwrap();
    let s = SqliteStore::open(&path).unwrap();
    let snap = s.snapshot(20_000).unwrap();
    assert_eq!(snap.blocks, vec![block.clone()]);
    assert_eq!(snap.proof_calls, vec![call]);
    assert!(snap.counters.is_empty(), "{:?}", snap.counters);
    assert!(s.snapshot(95_000).unwrap().blocks.is_empty(), "an ended block is not restored");
    let (e, _) = Engine::restore(policy(), snap, 20_000);
    let scope = cstagate::association::AdminScope::Extension { pbx: "paris".into(), extension: "2005".into() };
    assert_eq!(e.blocks(&scope, 20_000), vec![block]);
}
