//! The PostgreSQL store over TLS, against a private server that really serves it (its own
//! certificate, drawn with rcgen at test time): `sslmode=verify-full` with `database_ca`
//! connects, and the server itself reports the store's sessions encrypted; a CA that signed
//! nothing the server presents, and an expired server certificate, are refused before anything
//! is written. Skipped with a notice where PostgreSQL is not installed (mandatory with
//! `CSTAGATE_REQUIRE_POSTGRES=1`, as in CI).

use cstagate::association::{CounterKey, StoreWrite};
use cstagate::store::postgres::PgTarget;
use cstagate::store::{PostgresStore, Store, StoreError};
use cstagate::testkit::postgres::{self as pg, PgServer};

use crate::csta_tls_pki::Pki;

/// `db` on `s` by the name its certificate carries, verify-full, trusting `ca`.
fn open(s: &PgServer, db: &str, ca: &std::path::Path) -> Result<PostgresStore, StoreError> {
    let url = format!("postgres://cstagate@localhost:{}/{db}?sslmode=verify-full", s.port());
    PostgresStore::open(&PgTarget::parse(&url, Some(ca)).unwrap(), Some(s.password().to_owned()))
}

/// The store's sessions on `db` as the server sees them: (encrypted, not encrypted).
fn sessions(s: &PgServer, db: &str) -> (usize, usize) {
    let rows = s.psql("postgres", &format!("SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}' AND a.client_addr IS NOT NULL")).unwrap();
    let (on, off): (Vec<&str>, Vec<&str>) = rows.lines().partition(|l| *l == "t");
    (on.len(), off.len())
}

fn refused_for_its_certificate(r: Result<PostgresStore, StoreError>, what: &str) {
    match r {
        Err(StoreError::Connection(m)) => assert!(m.to_lowercase().contains("certificate") || m.to_lowercase().contains("tls"), "{what}: {m}"),
        Err(e) => panic!("{what}: the wrong error: {e:?}"),
        Ok(_) => panic!("{what}: connected"),
    }
}

#[test]
fn verify_full_connects_encrypted_and_refuses_a_certificate_it_cannot_trust() {
    if !pg::available() {
        return;
    }
    let pki = Pki::new("pg");
    let s = PgServer::start().unwrap();
    s.enable_tls(&pki.pbx_cert, &pki.pbx_key).unwrap();
    let db = s.database("tls");

    let mut store = open(&s, &db, &pki.ca).unwrap_or_else(|e| panic!("verify-full with the server's CA: {e:?}\n{}", s.log()));
    let key = CounterKey::Account { tenant: "acme".into(), account: "alice".into() };
    store.apply(&[StoreWrite::Counter { key: key.clone(), value: 3 }]).unwrap();
    assert_eq!(s.psql(&db, "SELECT value FROM counters").unwrap().trim(), "3", "the write went through the TLS session");
    let (encrypted, clear) = sessions(&s, &db);
    assert!(encrypted >= 1 && clear == 0, "the server sees the store's sessions encrypted: {encrypted} encrypted, {clear} in clear");
    drop(store);

    // A CA that signed nothing this server presents.
    let other = s.database("tls_other_ca");
    refused_for_its_certificate(open(&s, &other, &pki.other_ca), "a server certificate of another CA");
    assert_eq!(s.psql(&other, "SELECT count(*) FROM pg_tables WHERE tablename = 'counters'").unwrap().trim(), "0", "nothing was migrated through a session it could not trust");

    // `sslmode=require` is libpq's: encrypted, whoever the certificate names (no CA given).
    let url = format!("postgres://cstagate@127.0.0.1:{}/{other}?sslmode=require", s.port());
    let store = PostgresStore::open(&PgTarget::parse(&url, None).unwrap(), Some(s.password().to_owned())).unwrap_or_else(|e| panic!("require: {e:?}"));
    let (encrypted, clear) = sessions(&s, &other);
    assert!(encrypted >= 1 && clear == 0, "require: {encrypted} encrypted, {clear} in clear");
    drop(store);

    // The server now presents an expired certificate of the right CA.
    s.enable_tls(&pki.expired_cert, &pki.expired_key).unwrap();
    refused_for_its_certificate(open(&s, &db, &pki.ca), "an expired server certificate");
}
