//! An association end to end over real sockets against a Phase II PBX that wraps its results in
//! `SEQUENCE { value, extensions }` (asn1/README.md P8; issue 10 part 1): the real gateway with
//! its default configuration binds the extension, and the call id it reads from the wrapped
//! MakeCall result is the one the PBX knows (CTI control places and clears a call with it).

use std::time::Duration;

use cstagate::codec::Wrapping;
use cstagate::testkit::{ivr_request, local_secrets, LocalGateway, LocalOptions};
use cstagate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};
use serde_json::json;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_association_binds_against_a_pbx_that_wraps_its_phase2_results() {
    let mut cfg = SimConfig::oxe(&["2005", "2006"]);
    cfg.phase2_results = Wrapping::Wrapped;
    for e in &mut cfg.extensions {
        e.behaviour = Behaviour::Answer { after: Duration::from_millis(10) };
    }
    let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut ivr = sim.take_ivr().unwrap();
    let options = LocalOptions { pbx: "extensions = [\"2005-2006\"]\n".into(), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    let http = &gw.http;

    let (s, v) = http.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let (id, code) = (v["id"].as_str().unwrap().to_owned(), v["code"].as_str().unwrap().to_owned());
    let IvrSignal::Connected { call, calling, .. } = timeout(LIMIT, ivr.recv()).await.unwrap().unwrap() else { panic!("the proof call reaches the IVR first") };
    let IvrSignal::Digits { digits: ctx, .. } = timeout(LIMIT, ivr.recv()).await.unwrap().unwrap() else { panic!("then the context id") };
    for digits in [None, Some(ctx.as_str()), Some("1"), Some(code.as_str())] {
        let (s, r) = ivr_request(http, &gw.tokens.ivr, &call, &calling, digits).await.unwrap();
        assert_eq!(s, 200, "{r}");
    }
    sim.ivr_hangup(&call);
    let (_, a) = http.json("GET", &format!("/v1/associations/{id}"), &gw.tokens.tenant, None).await.unwrap();
    assert_eq!(a["state"], "bound", "{a}");
    let (s, b) = http.json("GET", "/v1/bindings/paris/2005", &gw.tokens.tenant, None).await.unwrap();
    assert_eq!((s, b["account"].as_str()), (200, Some("alice")));

    // The call id of a wrapped MakeCall result is the PBX's: clearing that call works.
    let (s, r) = http.json("POST", "/v1/extensions/paris/2005/calls", &gw.tokens.tenant, Some(json!({ "account": "alice", "to": "2006" }))).await.unwrap();
    assert_eq!(s, 201, "{r}");
    let call_id = r["call"].as_str().expect("a call id from the wrapped result").to_owned();
    let (s, r) = http.json("DELETE", &format!("/v1/extensions/paris/2005/calls/{call_id}?account=alice"), &gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 204, "{r}");
    let st = gw.link().stats();
    assert_eq!((st.decode_errors, st.rejects_sent, st.reconnects), (0, 0, 0), "{st:?}");
    gw.running.shutdown().await;
}
