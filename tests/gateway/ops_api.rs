//! The API's operational side: `GET /v1/associations` (a tenant sees its own, finished ones
//! included, filters, a bounded `limit`), `/readyz` (a store round trip and the PBX links),
//! the 413 that names its limit, and a link lost during MonitorStart recorded as the link
//! failing.

use std::time::Duration;

use cstagate::sim::{Behaviour, SimConfig, SimPbx};
use cstagate::testkit::{local_secrets, LocalGateway, LocalOptions};
use serde_json::{json, Value};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

async fn gateway(sim: &SimPbx, gateway: &str) -> LocalGateway {
    let options = LocalOptions { gateway: gateway.into(), pbx: "extensions = [\"2005\", \"2006\", \"2007\"]\nreconnect_min = \"20ms\"\n".into(), ..Default::default() };
    LocalGateway::start(sim, options, local_secrets()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn associations_are_listed_for_their_tenant_with_filters() {
    let mut cfg = SimConfig::phase3(&["2005", "2006", "2007"]);
    cfg.extensions.iter_mut().for_each(|e| e.behaviour = Behaviour::NeverAnswer);
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let gw = gateway(&sim, "").await;
    let (http, t) = (&gw.http, &gw.tokens);
    let mut ids = Vec::new();
    for (account, ext) in [("alice", "2005"), ("bob", "2006"), ("carol", "2007")] {
        let (s, v) = http.json("POST", "/v1/associations", &t.tenant, Some(json!({ "account": account, "extension": ext }))).await.unwrap();
        assert_eq!(s, 201, "{v}");
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    // One finished: cancelled.
    let (s, _) = http.json("DELETE", &format!("/v1/associations/{}", ids[1]), &t.tenant, None).await.unwrap();
    assert_eq!(s, 200);
    let list = |q: &'static str, token: String| async move {
        let (s, v) = http.json("GET", &format!("/v1/associations{q}"), &token, None).await.unwrap();
        assert_eq!(s, 200, "{q}: {v}");
        v["associations"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    // Newest first, the finished one included.
    assert_eq!(list("", t.tenant.clone()).await, [ids[2].clone(), ids[1].clone(), ids[0].clone()]);
    assert_eq!(list("", t.admin.clone()).await.len(), 3);
    assert_eq!(list("?state=cancelled", t.tenant.clone()).await, [ids[1].clone()]);
    assert_eq!(list("?extension=2005", t.tenant.clone()).await, [ids[0].clone()]);
    assert_eq!(list("?account=carol", t.tenant.clone()).await, [ids[2].clone()]);
    assert_eq!(list("?limit=2", t.tenant.clone()).await, [ids[2].clone(), ids[1].clone()]);
    // Another tenant sees none of them.
    assert!(list("", t.other_tenant.clone()).await.is_empty());
    // Refused: an unknown state, a limit out of range, an unknown parameter; no token.
    for q in ["?state=sleeping", "?limit=0", "?limit=100000", "?tenant=acme"] {
        let (s, v) = http.json("GET", &format!("/v1/associations{q}"), &t.tenant, None).await.unwrap();
        assert_eq!(s, 400, "{q}: {v}");
    }
    let (s, _) = http.json("GET", "/v1/associations", "nobody", None).await.unwrap();
    assert_eq!(s, 401);
    // The document describes it.
    let (_, doc) = http.send("GET", "/v1/openapi.json", &[], None).await.unwrap();
    assert!(doc["paths"]["/v1/associations"]["get"].is_object(), "{}", doc["paths"]["/v1/associations"]);
    assert!(doc["paths"]["/readyz"]["get"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_needs_the_store_and_the_links() {
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let gw = gateway(&sim, "").await;
    let (s, v) = gw.http.send("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!((s, &v["ready"], &v["store"], &v["links_up"], &v["links_required"]), (200, &json!(true), &json!("ok"), &json!(1), &json!(1)), "{v}");
    assert_eq!(v["links"]["paris"]["state"], "up");
    // The PBX goes away: not ready, with the link's detail; alive all the same.
    sim.stop();
    let v = poll(&gw.http, "/readyz", None, |s, v| s == 503 && v["links"]["paris"]["state"] == "down").await;
    assert_eq!((&v["ready"], &v["store"], &v["links_up"]), (&json!(false), &json!("ok"), &json!(0)), "{v}");
    let (s, _) = gw.http.send("GET", "/healthz", &[], None).await.unwrap();
    assert_eq!(s, 200);
    // With ready_min_links = 0 the links do not count; a stopped gateway's store does not answer.
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let gw = gateway(&sim, "ready_min_links = 0\n").await;
    sim.stop();
    poll(&gw.http, "/healthz", None, |_, v| v["links"]["paris"]["state"] == "down").await;
    let (s, v) = gw.http.send("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!((s, &v["links_required"]), (200, &json!(0)), "{v}");
    gw.running.gateway.stop().await;
    let (s, v) = gw.http.send("GET", "/readyz", &[], None).await.unwrap();
    assert_eq!((s, &v["store"]), (503, &json!("unavailable")), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_names_the_limit() {
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let gw = gateway(&sim, "").await;
    let huge = json!({ "account": "a".repeat(17 * 1024), "extension": "2005" });
    let (s, v) = gw.http.json("POST", "/v1/associations", &gw.tokens.tenant, Some(huge)).await.unwrap();
    assert_eq!(s, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("16 KiB"), "{v}");
}

/// The link drops while the gateway waits for MonitorStart's answer (the PBX holds its results
/// back): the attempt fails `link_down` and the history says the link was lost, not that the
/// PBX refused the monitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_lost_during_monitor_start_is_the_link_failing() {
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let gw = gateway(&sim, "").await;
    sim.faults().withhold_results = vec![cstagate::codec::Operation::MonitorStart];
    let (s, v) = gw.http.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    timeout(LIMIT, sim.wait_stats(|s| s.results_withheld >= 1)).await.expect("MonitorStart held by the PBX");
    sim.drop_links();
    let v = poll(&gw.http, &format!("/v1/associations/{id}"), Some(&gw.tokens.tenant), |_, v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "link_down", "{v}");
    let detail = v["history"].as_array().unwrap().last().unwrap()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("link lost during MonitorStart") && !detail.contains("refused"), "{detail}");
}

/// `GET path` until `done` holds (each poll a round trip to the gateway).
async fn poll(http: &cstagate::testkit::Http, path: &str, token: Option<&str>, done: impl Fn(u16, &Value) -> bool) -> Value {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    timeout(LIMIT, async {
        loop {
            let (s, v) = http.send("GET", path, &headers, None).await.unwrap();
            if done(s, &v) {
                return v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path} did not reach the state in time"))
}
