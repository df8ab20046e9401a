//! CSTA over TLS end to end: the real gateway against the simulator serving TLS (certificates
//! drawn with rcgen for this run), in both BER dialects and in CSTA XML, bound through the IVR
//! dialogue; mutual TLS; and a PBX certificate for another name, which keeps the link down with
//! the reason, is counted, and binds nothing.

use std::time::Duration;

use cstagate::link::LinkState;
use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::{local_secrets, LocalGateway, LocalOptions};
use serde_json::json;

use super::csta_tls_pki::Pki;
use super::gateway_e2e::{dialogue, to_ivr, wait_assoc, Env};

const LIMIT: Duration = Duration::from_secs(60);

fn quick(mut cfg: SimConfig) -> SimConfig {
    cfg.ivr_number = Some(cstagate::testkit::IVR_NUMBER.into());
    for x in &mut cfg.extensions {
        x.behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) };
    }
    cfg
}

/// The whole association over CSTA over TLS: Phase III and OXE (the `'B'`/`'P'` preamble and
/// ACSE inside TLS) and CSTA XML (its ECMA-354 session inside TLS); the server name by default
/// (the IP address of `address`) and named (`localhost`); the XML PBX requiring our client
/// certificate (mutual TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_association_over_csta_tls_in_both_ber_dialects_and_csta_xml() {
    let pki = Pki::new("e2e");
    let cases = [
        ("phase3", quick(SimConfig::phase3(&["2005", "2006"])), false, ""),
        ("oxe", quick(SimConfig::oxe(&["2005", "2006"])), false, "tls_server_name = \"localhost\"\n"),
        ("xml, mutual TLS", quick(SimConfig::xml(&["2005", "2006"], cstagate::codec::Framing::XmlHeader)), true, ""),
    ];
    for (label, mut cfg, mutual, extra) in cases {
        cfg.tls = Some(pki.sim_tls(mutual));
        let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
        let ivr = sim.take_ivr().unwrap();
        let client = if mutual { pki.client_lines() } else { String::new() };
        let pbx = format!("extensions = [\"2005-2006\"]\nreconnect_min = \"20ms\"\n{}", pki.pbx_lines(&format!("{extra}{client}")));
        let gw = LocalGateway::start(&sim, LocalOptions { pbx, ..Default::default() }, local_secrets()).await.unwrap_or_else(|e| panic!("{label}: {e}"));
        let link = gw.link();
        let mut e = Env { sim, ivr, http: gw.http, running: gw.running, db: gw.db, tokens: gw.tokens };
        let (id, code, call, ctx) = to_ivr(&mut e, "alice", "2005").await;
        dialogue(&e.http, &e.tokens.ivr, &call, &ctx, &code, "alice").await;
        wait_assoc(&e.http, &e.tokens.tenant, &id, |v| v["state"] == "bound").await;
        let (s, b) = e.http.json("GET", "/v1/bindings?account=alice", &e.tokens.tenant, None).await.unwrap();
        assert_eq!(s, 200, "{label}: {b}");
        assert!(b.to_string().contains("\"2005\""), "{label}: bound: {b}");
        let stats = link.stats();
        assert_eq!((stats.tls_failures, stats.connects), (0, 1), "{label}: one TLS connection, no failure: {stats:?}");
        assert!(e.sim.stats().requests.get("MakeCall").copied().unwrap_or(0) >= 1, "{label}: the proof call went over the TLS link");
        assert_eq!(e.sim.stats().tls_failures, 0, "{label}");
        e.running.shutdown().await;
    }
}

/// A PBX whose certificate is for another name than `tls_server_name`: the link stays down with
/// the reason naming the expected name, retries (each failure counted, in `/metrics` too), and
/// no association reaches the phone or binds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_certificate_for_another_name_keeps_the_link_down_with_the_reason_and_nothing_binds() {
    let pki = Pki::new("mismatch");
    let mut cfg = quick(SimConfig::phase3(&["2005", "2006"]));
    cfg.tls = Some(pki.sim_tls(false));
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let pbx = format!("extensions = [\"2005-2006\"]\nreconnect_min = \"20ms\"\nreconnect_max = \"100ms\"\n{}", pki.pbx_lines("tls_server_name = \"pbx.example\"\n"));
    let gw = LocalGateway::start(&sim, LocalOptions { pbx, link_may_be_down: true, ..Default::default() }, local_secrets()).await.unwrap();
    let link = gw.link();
    let down = tokio::time::timeout(LIMIT, link.wait_for(|s| matches!(s, LinkState::Down { .. }))).await.expect("the link goes down");
    let LinkState::Down { reason } = down else { unreachable!() };
    assert!(reason.starts_with("TLS: certificate for another name (expected pbx.example"), "{reason}");
    // It retries with backoff, as after a refused connect: a second failure, counted.
    let mut state = link.watch_state();
    tokio::time::timeout(LIMIT, async {
        while link.stats().tls_failures < 2 {
            let _ = state.changed().await;
        }
    })
    .await
    .expect("the link retries");
    assert_eq!(link.stats().connects, 0, "no session ever started: {:?}", link.stats());
    let (_, metrics) = gw.http.raw("GET", "/metrics", &[], None).await.unwrap();
    let text = String::from_utf8_lossy(&metrics);
    let line = text.lines().find(|l| l.starts_with("cstagate_link_tls_failures_total{pbx=\"paris\"} ")).unwrap_or_else(|| panic!("{text}"));
    let n: u64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(n >= 2, "{line}");
    let (_, health) = gw.http.send("GET", "/healthz", &[], None).await.unwrap();
    assert!(health["links"]["paris"].to_string().contains("certificate for another name"), "{health}");

    // An association asked for now does not reach the phone, and nothing binds.
    let (s, v) = gw.http.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    if s == 201 {
        let id = v["id"].as_str().unwrap();
        let v = wait_assoc(&gw.http, &gw.tokens.tenant, id, |v| v["state"] == "failed").await;
        assert_eq!(v["reason"], "link_down", "failed for the link: {v}");
    } else {
        assert!((500..600).contains(&s), "refused as the PBX is unreachable: {s} {v}");
    }
    let (s, b) = gw.http.json("GET", "/v1/bindings?account=alice", &gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 200, "{b}");
    assert!(!b.to_string().contains("\"2005\""), "nothing bound: {b}");
    assert!(sim.stats().requests.is_empty(), "no CSTA request reached the PBX: {:?}", sim.stats().requests);
    gw.running.shutdown().await;
}
