//! The gateway on PostgreSQL end to end: `[gateway] database = "postgres://…"` on the private
//! server (`cstagate::testkit::postgres`), a whole association with the simulated PBX and the
//! IVR dialogue, then a restart on the same database that finds the binding and ends the
//! association left in flight. Skipped with a notice where PostgreSQL is not installed.

use std::time::Duration;

use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::{local_secrets, postgres as pg, LocalGateway, LocalOptions};
use serde_json::json;

use super::gateway_e2e::{dialogue, to_ivr, Env};

async fn env(database: &str) -> Env {
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005", "2006"]), "127.0.0.1:0").await.unwrap();
    for e in &mut sim.config().extensions {
        e.behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) };
    }
    let ivr = sim.take_ivr().unwrap();
    let options = LocalOptions { pbx: "extensions = [\"2005-2006\"]\nreconnect_min = \"20ms\"\n".into(), db: Some(database.into()), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    Env { sim, ivr, http: gw.http, running: gw.running, db: gw.db, tokens: gw.tokens }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_postgresql_binds_and_finds_the_binding_after_a_restart() {
    let Some(server) = pg::shared() else { return };
    let db = server.database("e2e");
    // Over the server's Unix socket, where it asks no password (the TCP login with a password
    // is the store tests'); a PostgreSQL URL all the same, so the PostgreSQL store.
    let url = server.socket_url(&db);
    let mut e = env(&url).await;
    let (id, code, call, ctx) = to_ivr(&mut e, "alice", "2005").await;
    dialogue(&e.http, &e.tokens.ivr, &call, &ctx, &code, "alice").await;
    let (pending, _, _, _) = to_ivr(&mut e, "bob", "2006").await;
    // The binding and the audit are in PostgreSQL, committed before the IVR heard "linked".
    assert_eq!(server.psql(&db, "SELECT account FROM bindings WHERE pbx = 'paris' AND extension = '2005'").unwrap(), "alice");
    assert_eq!(server.psql(&db, &format!("SELECT state FROM associations WHERE id = '{id}'")).unwrap(), "bound");
    assert!(server.psql(&db, "SELECT step FROM audit ORDER BY seq").unwrap().lines().any(|s| s == "bound"));
    e.running.shutdown().await;
    drop(e.sim);

    let e2 = env(&url).await;
    let (s, b) = e2.http.json("GET", "/v1/bindings/paris/2005", &e2.tokens.tenant, None).await.unwrap();
    assert_eq!((s, b["account"].as_str()), (200, Some("alice")), "{b}");
    let (s, v) = e2.http.json("GET", &format!("/v1/associations/{pending}"), &e2.tokens.tenant, None).await.unwrap();
    assert_eq!((s, v["state"].as_str(), v["reason"].as_str()), (200, Some("failed"), Some("gateway_restarted")), "{v}");
    let (s, v) = e2.http.json("GET", &format!("/v1/associations/{id}"), &e2.tokens.tenant, None).await.unwrap();
    assert_eq!((s, v["state"].as_str()), (200, Some("bound")), "{v}");
    assert_eq!(e2.http.json("POST", "/v1/associations", &e2.tokens.tenant, Some(json!({ "account": "bob", "extension": "2006" }))).await.unwrap().0, 201);
    e2.running.shutdown().await;
}
