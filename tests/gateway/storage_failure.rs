//! A store that refuses every commit: the API answers 503 `unavailable` (retry later), never a
//! 400 that blames the client, no code is handed out for an association that was not stored, and
//! the engine does not keep in memory what the store refused.

use std::collections::HashMap;

use cstagate::association::{AssociationView, AuditRecord, Engine, Millis, Policy, Snapshot, StoreWrite};
use cstagate::testkit::Tokens;
use cstagate::gateway::Gateway;
use cstagate::http_client::Http;
use cstagate::store::{AssociationFilter, AuditFilter, Store, StoreError};
use serde_json::json;

/// A database that has gone away: every commit of something fails (like SQLite, nothing to
/// write is no transaction); with `reads_fail`, every read fails too.
struct Broken {
    reads_fail: bool,
}

impl Broken {
    fn read<T>(&self, ok: T) -> Result<T, StoreError> {
        if self.reads_fail { Err(StoreError::Corrupt("disk I/O error (simulated)".into())) } else { Ok(ok) }
    }
}

impl Store for Broken {
    fn apply(&mut self, writes: &[StoreWrite]) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        Err(StoreError::Corrupt("disk I/O error (simulated)".into()))
    }
    fn snapshot(&self, _: Millis) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }
    fn association(&self, _: &str) -> Result<Option<AssociationView>, StoreError> {
        self.read(None)
    }
    fn audit(&self, _: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        self.read(Vec::new())
    }
    fn list_associations(&self, _: &AssociationFilter) -> Result<Vec<AssociationView>, StoreError> {
        self.read(Vec::new())
    }
}

#[tokio::test]
async fn a_failed_commit_is_a_503_and_hands_out_no_code() {
    let mut p = Policy::new("acme", "0800100200");
    p.directory.insert("2005".into(), None);
    let gw = Gateway::start(Engine::new(HashMap::from([("paris".to_owned(), p)])), Box::new(Broken { reads_fail: false }), HashMap::new(), None, Vec::new());
    let tokens = Tokens::random();
    let http = serve(gw, &tokens).await;
    let (s, v) = http.json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!((s, v["code"].as_str()), (503, Some("unavailable")), "{v}");
    assert!(v.get("id").is_none(), "no association, no code: {v}");
    // The engine went back to what the store holds: the association that was never stored does
    // not hold the extension (it would answer 409 extension_busy from memory alone).
    let (s, v) = http.json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "bob", "extension": "2005" }))).await.unwrap();
    assert_eq!((s, v["code"].as_str()), (503, Some("unavailable")), "{v}");
}

async fn serve(gw: Gateway, tokens: &Tokens) -> Http {
    let app = cstagate::api::router(gw, tokens.secrets());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Http::new(&format!("http://{addr}"))
}

/// A read the store fails (an association no longer in memory, the audit log) is a 503
/// `unavailable` too, never a 404 or a 400.
#[tokio::test]
async fn a_failed_read_is_a_503() {
    let gw = Gateway::start(Engine::new(HashMap::<String, Policy>::new()), Box::new(Broken { reads_fail: true }), HashMap::new(), None, Vec::new());
    let tokens = Tokens::random();
    let http = serve(gw, &tokens).await;
    for (path, token) in [("/v1/associations/abc123", &tokens.tenant), ("/v1/audit", &tokens.tenant), ("/v1/audit?extension=2005", &tokens.admin)] {
        let (s, v) = http.json("GET", path, token, None).await.unwrap();
        assert_eq!((s, v["code"].as_str()), (503, Some("unavailable")), "{path}: {v}");
    }
}

/// A stopped gateway answers every request that needs it with 503 `unavailable`.
#[tokio::test]
async fn a_stopped_gateway_is_a_503() {
    let mut p = Policy::new("acme", "0800100200");
    p.directory.insert("2005".into(), None);
    let gw = Gateway::start(Engine::new(HashMap::from([("paris".to_owned(), p)])), Box::new(Broken { reads_fail: true }), HashMap::new(), None, Vec::new());
    let tokens = Tokens::random();
    let http = serve(gw.clone(), &tokens).await;
    gw.stop().await;
    let requests = [
        ("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))),
        ("GET", "/v1/associations/abc123", &tokens.tenant, None),
        ("POST", "/v1/associations/abc123/complete", &tokens.tenant, None),
        ("DELETE", "/v1/associations/abc123", &tokens.tenant, None),
        ("GET", "/v1/bindings?account=alice", &tokens.tenant, None),
        ("GET", "/v1/bindings/paris/2005", &tokens.tenant, None),
        ("DELETE", "/v1/bindings/paris/2005?account=alice", &tokens.tenant, None),
        ("POST", "/v1/extensions/paris/2005/calls", &tokens.tenant, Some(json!({ "account": "alice", "to": "2006" }))),
        ("GET", "/v1/audit", &tokens.admin, None),
        ("GET", "/v1/admin/counters?account=alice", &tokens.admin, None),
        ("POST", "/v1/admin/blocks/lift", &tokens.admin, Some(json!({ "account": "alice" }))),
    ];
    for (method, path, token, body) in requests {
        let (s, v) = http.json(method, path, token, body).await.unwrap();
        assert_eq!((s, v["code"].as_str()), (503, Some("unavailable")), "{method} {path}: {v}");
    }
}
