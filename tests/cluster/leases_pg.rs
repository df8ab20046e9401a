//! The leases and the fence on a real PostgreSQL (the test kit's private server, a database per
//! test): a live lease is never taken, an expired one is with a higher epoch, a renewal or a
//! release with a stale epoch does nothing, instances count each other by heartbeat; a write
//! batch fenced with a stale epoch is refused whole. Skipped with a notice where PostgreSQL is
//! not installed (mandatory with `CSTAGATE_REQUIRE_POSTGRES=1`, as in CI).

use std::time::Duration;

use cstagate::association::{AuditRecord, Binding, CounterKey, StoreWrite};
use cstagate::cluster::pg::LeaseDb;
use cstagate::cluster::Fence;
use cstagate::store::postgres::PgTarget;
use cstagate::store::{PostgresStore, Store, StoreError};
use cstagate::testkit::postgres::{self as pg, PgServer};

/// A fresh database with the schema (the store applies the migrations) and the store on it.
fn fresh(s: &PgServer, name: &str) -> (String, PostgresStore) {
    let db = s.database(name);
    let store = PostgresStore::open(&target(s, &db), Some(s.password().to_owned())).unwrap();
    (db, store)
}

fn target(s: &PgServer, db: &str) -> PgTarget {
    PgTarget::parse(&s.url(db), None).unwrap()
}

fn lease_db(s: &PgServer, db: &str, me: &str, ttl: Duration) -> LeaseDb {
    LeaseDb::new(&target(s, db), Some(s.password().to_owned()), me, &format!("http://{me}.internal:8080"), ttl, Duration::from_secs(5)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lease_is_never_taken_an_expired_one_is_with_a_higher_epoch() {
    let Some(s) = pg::shared() else { return };
    let (db, _store) = fresh(s, "leases");
    let ttl = Duration::from_secs(30);
    let (a, b) = (lease_db(s, &db, "gw-a", ttl), lease_db(s, &db, "gw-b", ttl));
    assert_eq!(a.acquire("paris").await.unwrap(), Some(1));
    // Alive and a's: b cannot take it, nor renew or release it.
    assert_eq!(b.acquire("paris").await.unwrap(), None);
    assert!(!b.renew("paris", 1).await.unwrap());
    b.release("paris", 1).await.unwrap();
    assert!(a.renew("paris", 1).await.unwrap(), "b's release of a's lease must do nothing");
    // a restarted under its own id takes its lease back at once, with a new epoch: the old
    // process's epoch is stale from then on.
    assert_eq!(a.acquire("paris").await.unwrap(), Some(2));
    assert!(!a.renew("paris", 1).await.unwrap());
    assert!(a.renew("paris", 2).await.unwrap());
    // Released: b takes it, epoch 3; a's epoch 2 is stale.
    a.release("paris", 2).await.unwrap();
    assert_eq!(b.acquire("paris").await.unwrap(), Some(3));
    assert!(!a.renew("paris", 2).await.unwrap());
    assert_eq!(s.psql(&db, "SELECT owner, epoch FROM pbx_leases").unwrap(), "gw-b|3");
    // Expired on the database's clock (as if b had died a ttl ago): a takes it, epoch 4.
    s.psql(&db, "UPDATE pbx_leases SET expires_at = now() - interval '1 second'").unwrap();
    assert!(!b.renew("paris", 3).await.unwrap(), "an expired lease is not renewed");
    assert_eq!(a.acquire("paris").await.unwrap(), Some(4));
    let rows = a.leases().await.unwrap();
    assert_eq!((rows.len(), rows[0].owner.as_str(), rows[0].epoch, rows[0].live), (1, "gw-a", 4, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_count_each_other_by_heartbeat_and_leave_on_a_clean_stop() {
    let Some(s) = pg::shared() else { return };
    let (db, _store) = fresh(s, "heartbeats");
    let ttl = Duration::from_secs(30);
    let (a, b, c) = (lease_db(s, &db, "gw-a", ttl), lease_db(s, &db, "gw-b", ttl), lease_db(s, &db, "gw-c", ttl));
    assert_eq!(a.heartbeat().await.unwrap(), 1);
    assert_eq!(b.heartbeat().await.unwrap(), 2);
    assert_eq!(c.heartbeat().await.unwrap(), 3);
    // c's heartbeat older than the ttl: dead to the others.
    s.psql(&db, "UPDATE instances SET heartbeat_at = now() - interval '31 seconds' WHERE id = 'gw-c'").unwrap();
    assert_eq!(a.heartbeat().await.unwrap(), 2);
    b.leave().await.unwrap();
    assert_eq!(a.heartbeat().await.unwrap(), 1);
    assert_eq!(s.psql(&db, "SELECT advertise FROM instances WHERE id = 'gw-a'").unwrap(), "http://gw-a.internal:8080");
}

fn batch(pbx: &str, extension: &str, account: &str) -> Vec<StoreWrite> {
    let b = Binding { tenant: "acme".into(), account: account.into(), pbx: pbx.into(), extension: extension.into(), did: None, did_verified: false, bound_at: 1 };
    let audit = StoreWrite::Audit(AuditRecord { at: 1, tenant: "acme".into(), account: account.into(), pbx: pbx.into(), extension: extension.into(), association: "a1".into(), step: "bound".into(), result: "ok".into() });
    // An account-wide counter (no PBX: not fenced) in the same batch: refused with the rest.
    let counter = StoreWrite::Counter { key: CounterKey::Account { tenant: "acme".into(), account: account.into() }, value: 2 };
    vec![audit, counter, StoreWrite::Bind(b)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_fenced_with_a_stale_epoch_is_refused_whole_and_the_pbx_dropped() {
    let Some(s) = pg::shared() else { return };
    let (db, store) = fresh(s, "fence");
    let ttl = Duration::from_secs(30);
    let (a, b) = (lease_db(s, &db, "gw-a", ttl), lease_db(s, &db, "gw-b", ttl));
    let (fence, mut refused) = Fence::new("gw-a");
    let mut store = store.fenced(fence.clone());
    let epoch = a.acquire("paris").await.unwrap().unwrap();
    fence.set("paris", Some(epoch));
    // Owned with the live epoch: written.
    let mut st = tokio::task::spawn_blocking(move || {
        store.apply(&batch("paris", "2005", "alice")).unwrap();
        store
    })
    .await
    .unwrap();
    assert_eq!(s.psql(&db, "SELECT account FROM bindings").unwrap(), "alice");
    // A write for a PBX this instance never owned: refused before it is sent.
    let (st2, e) = tokio::task::spawn_blocking(move || {
        let e = st.apply(&batch("lyon", "3001", "bob"));
        (st, e)
    })
    .await
    .unwrap();
    st = st2;
    assert!(matches!(&e, Err(StoreError::Fenced { pbx }) if pbx == "lyon"), "{e:?}");
    // The lease expires and b takes the PBX (epoch + 1) while a still believes it owns it (a
    // paused process): a's next batch, with the old epoch, is refused by the database, whole.
    s.psql(&db, "UPDATE pbx_leases SET expires_at = now() - interval '1 second'").unwrap();
    assert_eq!(b.acquire("paris").await.unwrap(), Some(epoch + 1));
    let audit_before = s.psql(&db, "SELECT count(*) FROM audit").unwrap();
    let (_st, e) = tokio::task::spawn_blocking(move || {
        let e = st.apply(&batch("paris", "2006", "carol"));
        (st, e)
    })
    .await
    .unwrap();
    assert!(matches!(&e, Err(StoreError::Fenced { pbx }) if pbx == "paris"), "{e:?}");
    assert_eq!(s.psql(&db, "SELECT account FROM bindings ORDER BY extension").unwrap(), "alice", "nothing of the stale batch is written");
    assert_eq!(s.psql(&db, "SELECT count(*) FROM audit").unwrap(), audit_before);
    assert_eq!(s.psql(&db, "SELECT value FROM counters WHERE key LIKE '%carol%'").unwrap(), "", "not even its account-wide counter");
    // The refusal reaches the lease shell's channel, and the fence forgets the epoch.
    assert_eq!(refused.try_recv().ok(), Some(("paris".to_owned(), epoch)));
    assert!(fence.epochs(["paris"]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_fences_even_before_anyone_takes_it() {
    let Some(s) = pg::shared() else { return };
    let (db, store) = fresh(s, "fence-expired");
    let a = lease_db(s, &db, "gw-a", Duration::from_secs(30));
    let (fence, _refused) = Fence::new("gw-a");
    let mut store = store.fenced(fence.clone());
    fence.set("paris", a.acquire("paris").await.unwrap());
    s.psql(&db, "UPDATE pbx_leases SET expires_at = now() - interval '1 millisecond'").unwrap();
    let e = tokio::task::spawn_blocking(move || store.apply(&batch("paris", "2005", "alice"))).await.unwrap();
    assert!(matches!(&e, Err(StoreError::Fenced { pbx }) if pbx == "paris"), "{e:?}");
    assert_eq!(s.psql(&db, "SELECT count(*) FROM bindings").unwrap(), "0");
}
