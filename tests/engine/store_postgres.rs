//! The PostgreSQL store on a private server (`cstagate::testkit::postgres`, one per test binary,
//! a database per test): the store contract (`store_contract.rs`), and what is PostgreSQL's
//! own: versioned migrations (twice is a no-op, two gateways at once both succeed), the audit
//! trigger's SQLSTATE and TRUNCATE, `synchronous_commit` forced on, the password kept out of the
//! URL and out of errors, TLS never downgraded, and a server that goes away and comes back.
//! Skipped with a notice where PostgreSQL is not installed (mandatory with
//! `CSTAGATE_REQUIRE_POSTGRES=1`, as in CI).

use std::time::{Duration, Instant};

use cstagate::association::StoreWrite;
use cstagate::store::postgres::PgTarget;
use cstagate::store::{PostgresStore, Store, StoreError};
use cstagate::testkit::postgres::{self as pg, PgServer};

use super::store_contract::{drive, Backend};

/// A database of its own on the shared server.
pub struct Postgres;

fn open_on(server: &PgServer, db: &str) -> Result<PostgresStore, StoreError> {
    PostgresStore::open(&PgTarget::parse(&server.url(db), None).unwrap(), Some(server.password().to_owned()))
}

impl Backend for Postgres {
    const SHARED: bool = true;
    type Db = String;
    fn fresh(name: &str) -> Option<Self::Db> {
        pg::shared().map(|s| s.database(name))
    }
    fn open(db: &Self::Db) -> Box<dyn Store> {
        Box::new(open_on(server(), db).unwrap())
    }
    fn exec(db: &Self::Db, sql: &str) -> Result<(), String> {
        server().psql(db, sql).map(drop)
    }
    fn rows(db: &Self::Db, sql: &str) -> Vec<String> {
        let out = server().psql(db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        out.lines().map(str::to_owned).collect()
    }
    fn duplicate_key(e: &StoreError) -> bool {
        matches!(e, StoreError::Postgres { sqlstate: Some(code), message } if code == "23505" && message.contains("bindings_pkey"))
    }
}

fn server() -> &'static PgServer {
    pg::shared().expect("PostgreSQL")
}

crate::contract_tests!(Postgres, audit_refusals = &["UPDATE audit SET result = 'x'", "UPDATE audit SET step = 'bound' WHERE seq = 1", "UPDATE audit SET result = 'x' WHERE false", "DELETE FROM audit", "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)", "TRUNCATE audit", "TRUNCATE audit RESTART IDENTITY CASCADE"]);

/// The trigger's refusal is SQLSTATE 23001 (restrict_violation), through the store's driver too.
#[test]
fn the_audit_trigger_refuses_with_sqlstate_23001() {
    let Some(s) = pg::shared() else { return };
    let db = s.database("trigger");
    drive(&mut open_on(s, &db).unwrap());
    let e = s.psql(&db, "TRUNCATE audit").unwrap_err();
    assert!(e.contains("23001") && e.contains("the audit log is append-only"), "{e}");
    assert_ne!(s.psql(&db, "SELECT count(*) FROM audit").unwrap(), "0");
}

/// Opening a migrated database again applies nothing; the version and the time it was applied
/// stay as they were.
#[test]
fn migrations_run_twice_are_a_no_op() {
    let Some(s) = pg::shared() else { return };
    let db = s.database("twice");
    drop(open_on(s, &db).unwrap());
    let first = s.psql(&db, "SELECT version, applied_at FROM schema_migrations ORDER BY version").unwrap();
    let mut store = open_on(s, &db).unwrap();
    assert_eq!(s.psql(&db, "SELECT version, applied_at FROM schema_migrations ORDER BY version").unwrap(), first);
    assert_eq!(first.lines().count(), 4, "every migration (0001 to 0004), once each: {first}");
    drive(&mut store);
}

/// Two gateways starting at once on an empty database: both open (the advisory lock serialises
/// the migration), each version is applied once, and both can write.
#[test]
fn two_stores_migrating_the_same_empty_database_at_once_both_succeed() {
    let Some(s) = pg::shared() else { return };
    let db = s.database("race");
    let barrier = std::sync::Barrier::new(4);
    let opened: Vec<Result<PostgresStore, StoreError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4).map(|_| scope.spawn(|| {
            barrier.wait();
            open_on(s, &db)
        })).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, o) in opened.into_iter().enumerate() {
        let mut store = o.unwrap_or_else(|e| panic!("store {i}: {e}"));
        store.apply(&[StoreWrite::Counter { key: cstagate::association::CounterKey::Account { tenant: "acme".into(), account: format!("a{i}").into() }, value: 1 }]).unwrap();
    }
    assert_eq!(s.psql(&db, "SELECT count(*) FROM schema_migrations").unwrap(), "4");
    assert_eq!(s.psql(&db, "SELECT count(*) FROM counters").unwrap(), "4");
}

/// `synchronous_commit` is on in the store's sessions even when the database says otherwise: a
/// commit is on disk before the gateway answers.
#[test]
fn synchronous_commit_is_forced_on() {
    let Some(s) = pg::shared() else { return };
    let db = s.database("sync");
    s.psql("postgres", &format!("ALTER DATABASE {db} SET synchronous_commit = off")).unwrap();
    assert_eq!(s.psql(&db, "SHOW synchronous_commit").unwrap(), "off", "the database's own default");
    let store = open_on(s, &db).unwrap();
    assert_eq!(store.setting("synchronous_commit").unwrap(), "on");
}

/// A wrong password is refused with the server's SQLSTATE (28P01) and a message that says so,
/// and neither the error nor its text holds the password.
#[test]
fn a_wrong_password_is_a_clear_error_without_the_password() {
    let Some(s) = pg::shared() else { return };
    let db = s.database("auth");
    let wrong = format!("not-{}", s.password());
    let e = match PostgresStore::open(&PgTarget::parse(&s.url(&db), None).unwrap(), Some(wrong.clone())) {
        Err(e) => e,
        Ok(_) => panic!("a wrong password was accepted"),
    };
    let text = format!("{e} {e:?}");
    assert!(matches!(&e, StoreError::Postgres { sqlstate: Some(c), .. } if c == "28P01"), "{text}");
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains(&wrong) && !text.contains(s.password()), "the password leaked: {text}");
}

/// `sslmode=verify-full` against a server without TLS fails: never a silent fall-back to clear.
#[test]
fn an_explicit_verify_full_is_never_downgraded_to_clear_text() {
    let Some(s) = pg::shared() else { return };
    let db = s.database("tls");
    let target = PgTarget::parse(&format!("{}?sslmode=verify-full", s.url(&db)), None).unwrap();
    match PostgresStore::open(&target, Some(s.password().to_owned())) {
        Err(StoreError::Connection(m)) => assert!(m.to_lowercase().contains("tls") || m.to_lowercase().contains("ssl"), "{m}"),
        Err(e) => panic!("the wrong error: {e:?}"),
        Ok(_) => panic!("connected in clear text although verify-full was asked"),
    }
}

/// A server stopped under the store: the next commit fails within a bound (no panic, no hang),
/// what was committed before is still there once the server is back, and the store works again
/// without being reopened.
#[test]
fn a_server_stopped_under_the_store_is_an_error_and_the_store_recovers() {
    if !pg::available() {
        return;
    }
    let mut s = PgServer::start().unwrap();
    let db = s.database("restart");
    let mut store = open_on(&s, &db).unwrap();
    let counter = |account: &str| StoreWrite::Counter { key: cstagate::association::CounterKey::Account { tenant: "acme".into(), account: account.into() }, value: 1 };
    store.apply(&[counter("before")]).unwrap();
    s.stop();
    let t = Instant::now();
    match store.apply(&[counter("while-down")]) {
        Err(StoreError::Connection(_) | StoreError::Postgres { .. }) => {}
        other => panic!("a commit to a stopped server: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(30), "the failure took {:?}", t.elapsed());
    assert!(store.snapshot(0).is_err(), "a read fails too");
    s.run().unwrap();
    store.apply(&[counter("after")]).unwrap();
    let accounts: Vec<String> = store.snapshot(0).unwrap().counters.iter().map(|(k, _)| format!("{k:?}")).collect();
    assert_eq!(accounts.len(), 2, "{accounts:?}");
    assert!(accounts[0].contains("before") || accounts[1].contains("before"), "{accounts:?}");
    assert!(!accounts.iter().any(|a| a.contains("while-down")), "{accounts:?}");
}

/// The README's configuration with its PostgreSQL lines in place of the SQLite file: a
/// PostgreSQL backend checked by default with TLS, and its `database_ca` read at load (not on
/// this machine: refused, naming the key and the file).
#[test]
fn the_readme_postgresql_lines_are_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("the configuration block");
    let mut lines: Vec<String> = Vec::new();
    for l in block.lines() {
        if l.starts_with("database = ") {
            continue;
        }
        lines.push(l.strip_prefix("# ").filter(|l| l.starts_with("database")).unwrap_or(l).to_owned());
    }
    let text = lines.join("\n");
    assert!(text.contains("database = \"postgres://"), "{text}");
    let e = cstagate::config::Config::parse(&text).expect_err("the README's CA file is not on this machine").to_string();
    assert!(e.contains("database_ca") && e.contains("/etc/cstagate/db-ca.pem"), "{e}");
    let c = cstagate::config::Config::parse(&text.replace("database_ca = ", "# database_ca = ")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.gateway.database_password_env.as_deref(), Some("CSTAGATE_DB_PASSWORD"));
    match c.gateway.database_backend().unwrap() {
        cstagate::store::Backend::Postgres(t) => assert_eq!(t.ssl_mode(), cstagate::store::postgres::SslMode::VerifyFull),
        other => panic!("{other:?}"),
    }
}

/// Two gateways (two store handles) racing to claim one account for two associations, released
/// at one barrier, round after round: exactly one wins each time.
#[test]
fn two_stores_racing_for_one_accounts_claim_exactly_one_wins() {
    use cstagate::store::AccountClaim;
    let Some(s) = pg::shared() else { return };
    let db = s.database("claimrace");
    let stores: Vec<PostgresStore> = (0..2).map(|_| open_on(s, &db).unwrap()).collect();
    const ROUNDS: usize = 100;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let racers: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(i, mut store)| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                (0..ROUNDS)
                    .map(|round| {
                        let claim = AccountClaim { tenant: "acme".into(), account: format!("acct{round}").into(), association: format!("r{round}-{i}").into(), pbx: Some(format!("pbx{i}")) };
                        barrier.wait();
                        store.claim_account(&claim).unwrap()
                    })
                    .collect::<Vec<bool>>()
            })
        })
        .collect();
    let won: Vec<Vec<bool>> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    for (round, (first, second)) in won[0].iter().zip(&won[1]).enumerate() {
        assert!(first ^ second, "round {round}: {first} and {second} won");
        let holder = if *first { 0 } else { 1 };
        assert_eq!(s.psql(&db, &format!("SELECT association FROM account_claims WHERE account = 'acct{round}'")).unwrap(), format!("r{round}-{holder}"));
    }
}

/// An account's claim ends in the transaction that makes its association final (whoever writes
/// it), and a claim whose association was never stored frees the account only once a minute
/// old (its gateway crashed between the claim and the commit).
#[test]
fn a_claim_ends_with_its_association_or_when_found_orphaned() {
    use cstagate::association::State;
    use cstagate::store::AccountClaim;
    let Some(s) = pg::shared() else { return };
    let db = s.database("claimend");
    let mut store = open_on(s, &db).unwrap();
    let (_, pending) = drive(&mut store);
    let mut view = store.association(&pending).unwrap().unwrap();
    let claim = |account: &str, id: &str| AccountClaim { tenant: "acme".into(), account: account.into(), association: id.into(), pbx: None };
    assert!(store.claim_account(&claim(view.account.as_str(), &pending)).unwrap());
    let mut other = open_on(s, &db).unwrap();
    assert!(!other.claim_account(&claim(view.account.as_str(), "next")).unwrap(), "held by the association in flight");
    // Retryable failure: still live, still held.
    view.state = State::Failed;
    view.retryable = true;
    store.apply(&[StoreWrite::Association(view.clone())]).unwrap();
    assert!(!other.claim_account(&claim(view.account.as_str(), "next")).unwrap(), "held while it may be retried");
    view.state = State::Cancelled;
    view.retryable = false;
    store.apply(&[StoreWrite::Association(view.clone())]).unwrap();
    assert_eq!(s.psql(&db, "SELECT count(*) FROM account_claims").unwrap(), "0", "released by the final write's transaction");
    assert!(other.claim_account(&claim(view.account.as_str(), "next")).unwrap());
    // Never stored: held for a minute, then free.
    assert!(store.claim_account(&claim("zed", "ghost")).unwrap());
    assert!(!other.claim_account(&claim("zed", "z2")).unwrap(), "a fresh claim whose commit may still come");
    s.psql(&db, "UPDATE account_claims SET at = at - interval '61 seconds' WHERE association = 'ghost'").unwrap();
    assert!(other.claim_account(&claim("zed", "z2")).unwrap(), "an orphaned claim frees the account");
}

/// Two gateways counting one account's failures at once: every failure counts (atomic
/// increments, not one's count written over the other's), and a reset still resets.
#[test]
fn two_stores_counting_one_accounts_failures_add_up() {
    use cstagate::association::CounterKey;
    let Some(s) = pg::shared() else { return };
    let db = s.database("counters");
    let key = CounterKey::Account { tenant: "acme".into(), account: "mallory".into() };
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (mut store, barrier, key) = (open_on(s, &db).unwrap(), barrier.clone(), key.clone());
            std::thread::spawn(move || {
                // Each gateway's own count, as its engine writes it: 1, 2, ... 25.
                for value in 1..=25 {
                    barrier.wait();
                    store.apply(&[StoreWrite::Counter { key: key.clone(), value }]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let store = open_on(s, &db).unwrap();
    assert_eq!(store.account_counters(&[("acme".into(), "mallory".into())]).unwrap(), [(key.clone(), 50)]);
    let mut store = store;
    store.apply(&[StoreWrite::Counter { key: key.clone(), value: 0 }]).unwrap();
    assert_eq!(store.account_counters(&[("acme".into(), "mallory".into())]).unwrap(), [(key, 0)]);
}
