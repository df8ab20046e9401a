//! The product end to end over real sockets: the simulated PBX, the real gateway (SQLite file,
//! PBX link, HTTP API, IVR webhook) and a simulated IVR platform and user.

use std::time::Duration;

use cstagate::demo::{run, DemoDialect, Scenario};
use cstagate::testkit::{drive_many, local_secrets, Http, Ivr, LocalGateway, LocalOptions, Tokens};
use cstagate::sim::{CallEnd, IvrSignal, SimConfig, SimPbx};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

async fn scenario(d: DemoDialect, s: Scenario) -> Value {
    let (v, ok) = tokio::time::timeout(LIMIT, run(d, s, &|_| {})).await.expect("demo ends").expect("demo runs");
    assert!(ok, "{s:?} in {d:?}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_in_both_dialects() {
    for d in [DemoDialect::Phase3, DemoDialect::Oxe] {
        let v = scenario(d, Scenario::Ok).await;
        assert_eq!(v["state"], "bound");
    }
}

/// The demo over CSTA XML (`demo --dialect xml`): the simulator as an OpenScape-like PBX, the
/// gateway's link with its ECMA-354 session; a bound extension, and a locked phone's Failed event
/// read from XML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_over_csta_xml_binds_and_a_locked_phone_fails() {
    assert_eq!(scenario(DemoDialect::Xml, Scenario::Ok).await["state"], "bound");
    assert_eq!(scenario(DemoDialect::Xml, Scenario::LockedPhone).await["reason"], "phone_locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_code_then_right_code() {
    let v = scenario(DemoDialect::Phase3, Scenario::WrongCode).await;
    let steps: Vec<&str> = v["history"].as_array().unwrap().iter().map(|h| h["step"].as_str().unwrap()).collect();
    assert!(steps.ends_with(&["confirmed", "bound"]), "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_and_locked_phone() {
    assert_eq!(scenario(DemoDialect::Phase3, Scenario::NoAnswer).await["reason"], "no_answer");
    assert_eq!(scenario(DemoDialect::Oxe, Scenario::LockedPhone).await["reason"], "phone_locked");
}

pub(crate) struct Env {
    pub(crate) sim: SimPbx,
    pub(crate) ivr: tokio::sync::mpsc::UnboundedReceiver<IvrSignal>,
    pub(crate) http: Http,
    pub(crate) running: cstagate::server::Running,
    pub(crate) db: std::path::PathBuf,
    pub(crate) tokens: Tokens,
}

async fn env(db: Option<std::path::PathBuf>) -> Env {
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005", "2006"]), "127.0.0.1:0").await.unwrap();
    for e in &mut sim.config().extensions {
        e.behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) };
    }
    let ivr = sim.take_ivr().unwrap();
    let options = LocalOptions { pbx: "extensions = [\"2005-2006\"]\nreconnect_min = \"20ms\"\n".into(), db, ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    Env { sim, ivr, http: gw.http, running: gw.running, db: gw.db, tokens: gw.tokens }
}

async fn webhook(http: &Http, body: Value, secret: &str) -> (u16, Value) {
    cstagate::testkit::post_webhook(http, secret, body.to_string().into_bytes()).await.unwrap()
}

/// The whole IVR dialogue of `account`'s proof call through the webhook, every answer checked:
/// the context id asked for, the asking account named (1 to confirm), the code asked for (as
/// many digits as it has), bound. Returns each (status, body), for the OpenAPI check.
pub(crate) async fn dialogue(http: &Http, secret: &str, call: &str, ctx: &str, code: &str, account: &str) -> Vec<(u16, Value)> {
    let gather = |max_digits: usize| json!({ "max_digits": max_digits, "finish_on_key": "#", "timeout_ms": 8000 });
    let steps = [
        (None, json!({ "say": "Please enter the number shown in your app, then the hash key.", "language": "en-US", "gather": gather(16) })),
        (Some(ctx), json!({ "say": format!("The account {account} of acme asks to link this phone. If you asked for this, press 1. If you did not, press 9."), "language": "en-US", "gather": gather(1) })),
        (Some("1"), json!({ "say": "Please enter the code shown in your app, then the hash key.", "language": "en-US", "gather": gather(code.len()) })),
        (Some(code), json!({ "say": format!("Thank you. This phone is now linked to the account {account}. Goodbye."), "language": "en-US", "hangup": true })),
    ];
    let mut answers = Vec::new();
    for (d, want) in steps {
        let mut body = json!({ "call": call, "from": "+33144002005", "to": "0800100200" });
        if let Some(d) = d {
            body["digits"] = json!(d);
        }
        let (s, r) = webhook(http, body, secret).await;
        assert_eq!((s, &r), (200, &want), "the IVR's answer to {d:?}");
        answers.push((s, r));
    }
    answers
}

/// Create an association and wait for the call to reach the IVR; returns (id, code, call).
pub(crate) async fn to_ivr(e: &mut Env, account: &str, ext: &str) -> (String, String, String, String) {
    let (s, v) = e.http.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": account, "extension": ext }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let call = loop {
        match tokio::time::timeout(LIMIT, e.ivr.recv()).await.unwrap().unwrap() {
            IvrSignal::Connected { call, .. } => break call,
            _ => {}
        }
    };
    let ctx = match tokio::time::timeout(LIMIT, e.ivr.recv()).await.unwrap().unwrap() {
        IvrSignal::Digits { digits, .. } => digits,
        other => panic!("{other:?}"),
    };
    // The simulator tells its IVR side directly, the gateway hears of the answer over CSTA:
    // wait for the gateway's own view, not the side channel.
    let id = v["id"].as_str().unwrap().to_owned();
    wait_assoc(&e.http, &e.tokens.tenant, &id, |v| v["state"] == "in_ivr").await;
    (id, v["code"].as_str().unwrap().to_owned(), call, ctx)
}

/// The whole association over CSTA XML: the phone locked by the lock prefix and unlocked by its
/// user's PIN, the proof call to the IVR with its context id dialled after the number or sent by
/// GenerateDigits once established, the IVR dialogue, bound; with the 8-byte header and a
/// session, and NUL-framed without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_association_over_csta_xml_with_the_lock_step_and_both_context_deliveries() {
    use cstagate::codec::Framing;
    for (framing, session, delivery) in [(Framing::XmlHeader, true, "dial_suffix"), (Framing::XmlHeader, true, "dtmf"), (Framing::XmlNul, false, "dtmf")] {
        let mut cfg = SimConfig::xml(&["2005", "2006"], framing);
        cfg.xml.session = session;
        cfg.ivr_number = Some(cstagate::testkit::IVR_NUMBER.into());
        for x in &mut cfg.extensions {
            x.behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) };
            x.pin = Some("1234".into());
            x.user_pin = Some("1234".into());
        }
        let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
        let ivr = sim.take_ivr().unwrap();
        let options = LocalOptions { pbx: format!("extensions = [\"2005-2006\"]\nreconnect_min = \"20ms\"\nlock_prefix = \"*66\"\ncontext_delivery = \"{delivery}\"\n"), ..Default::default() };
        let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
        let mut e = Env { sim, ivr, http: gw.http, running: gw.running, db: gw.db, tokens: gw.tokens };
        let label = format!("{framing:?}, session {session}, {delivery}");
        let (id, code, call, ctx) = to_ivr(&mut e, "alice", "2005").await;
        assert!(ctx.starts_with('*') && ctx.ends_with('#') && ctx.len() > 8, "{label}: the context id reached the IVR as DTMF: {ctx}");
        dialogue(&e.http, &e.tokens.ivr, &call, &ctx, &code, "alice").await;
        let v = wait_assoc(&e.http, &e.tokens.tenant, &id, |v| v["state"] == "bound").await;
        let steps: Vec<&str> = v["history"].as_array().unwrap().iter().filter_map(|h| h["step"].as_str()).collect();
        assert!(steps.contains(&"locking") && steps.contains(&"locked"), "{label}: the lock step ran: {steps:?}");
        let requests = e.sim.stats().requests;
        assert!(requests.get("MakeCall").copied().unwrap_or(0) >= 2, "{label}: the lock call and the proof call: {requests:?}");
        assert_eq!(requests.get("GenerateDigits").copied().unwrap_or(0) > 0, delivery == "dtmf", "{label}: {requests:?}");
        let (s, b) = e.http.json("GET", "/v1/bindings?account=alice", &e.tokens.tenant, None).await.unwrap();
        assert_eq!(s, 200, "{b}");
        assert!(b.to_string().contains("\"2005\""), "{label}: bound: {b}");
        e.running.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_authentication_tenancy_and_strict_bodies() {
    let e = env(None).await;
    let h = &e.http;
    // Missing or wrong token: 401.
    assert_eq!(h.send("POST", "/v1/associations", &[], Some(b"{}".to_vec())).await.unwrap().0, 401);
    assert_eq!(h.json("POST", "/v1/associations", "nope", Some(json!({}))).await.unwrap().0, 401);
    // Strict bodies name the field; nothing is created.
    let (s, v) = h.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "a", "extension": "2005", "colour": "red" }))).await.unwrap();
    assert_eq!((s, v["field"].as_str()), (400, Some("colour")), "{v}");
    let (s, v) = h.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "a", "extension": 2005 }))).await.unwrap();
    assert_eq!((s, v["field"].as_str()), (400, Some("extension")), "{v}");
    let (s, v) = h.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "extension": "2005" }))).await.unwrap();
    assert_eq!((s, v["field"].as_str()), (400, Some("account")), "{v}");
    let (s, v) = h.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "a\u{7}", "extension": "2005" }))).await.unwrap();
    assert_eq!((s, v["field"].as_str()), (400, Some("account")), "{v}");
    let (s, _) = h.send("POST", "/v1/associations", &[("authorization", &format!("Bearer {}", e.tokens.tenant))], Some(b"{not json".to_vec())).await.unwrap();
    assert_eq!(s, 400);
    let big = json!({ "account": "x".repeat(20_000), "extension": "2005" });
    assert_eq!(h.json("POST", "/v1/associations", &e.tokens.tenant, Some(big)).await.unwrap().0, 413);
    let (_, audit) = h.json("GET", "/v1/audit", &e.tokens.admin, None).await.unwrap();
    assert_eq!(audit["records"].as_array().unwrap().len(), 0, "refused requests change nothing");

    // Another tenant sees nothing of acme's association; an unknown extension is 404.
    let (s, v) = h.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201);
    let id = v["id"].as_str().unwrap();
    assert_eq!(h.json("GET", &format!("/v1/associations/{id}"), &e.tokens.other_tenant, None).await.unwrap().0, 404);
    assert_eq!(h.json("DELETE", &format!("/v1/associations/{id}"), &e.tokens.other_tenant, None).await.unwrap().0, 404);
    assert_eq!(h.json("POST", "/v1/associations", &e.tokens.other_tenant, Some(json!({ "account": "m", "extension": "2005" }))).await.unwrap().0, 404);
    // Duplicate association for the extension: 409.
    assert_eq!(h.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "bob", "extension": "2005" }))).await.unwrap().0, 409);
    let (s, v) = h.json("GET", &format!("/v1/associations/{id}"), &e.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 200);
    assert!(v.get("code").is_none(), "the code is shown once, at creation");

    // Health, metrics, OpenAPI; admin-only views.
    assert_eq!(h.send("GET", "/healthz", &[], None).await.unwrap().1["links"]["paris"]["state"], "up");
    let (s, o) = h.send("GET", "/v1/openapi.json", &[], None).await.unwrap();
    assert_eq!((s, o["openapi"].as_str()), (200, Some("3.1.0")));
    assert_eq!(h.json("GET", "/v1/pbx", &e.tokens.tenant, None).await.unwrap().0, 403);
    let (s, p) = h.json("GET", "/v1/pbx", &e.tokens.admin, None).await.unwrap();
    assert_eq!((s, p["pbx"][0]["state"]["state"].as_str()), (200, Some("up")));
    e.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_signatures_have_no_effect_and_cti_control_is_for_the_bound_account() {
    let mut e = env(None).await;
    let (id, code, call, ctx) = to_ivr(&mut e, "alice", "2005").await;
    // Wrong secret: 401, and the dialogue did not move.
    let (s, r) = webhook(&e.http, json!({ "call": call, "from": "+33144002005", "to": "0800100200", "digits": ctx }), "wrong").await;
    assert_eq!((s, r["error"].as_str()), (401, Some("bad or missing X-Cstagate-Signature")), "{r}");
    let (s, v) = e.http.json("GET", &format!("/v1/associations/{id}"), &e.tokens.tenant, None).await.unwrap();
    assert_eq!((s, v["state"].as_str()), (200, Some("in_ivr")), "{v}");
    // The real dialogue (the wrongly signed request did not count as its first step).
    dialogue(&e.http, &e.tokens.ivr, &call, &ctx, &code, "alice").await;
    // The IVR platform hangs up after the last prompt.
    e.sim.ivr_hangup(&call);
    let (_, b) = e.http.json("GET", "/v1/bindings/paris/2005", &e.tokens.tenant, None).await.unwrap();
    assert_eq!((b["account"].as_str(), b["did"].as_str(), b["did_verified"].as_bool()), (Some("alice"), Some("+33144002005"), Some(false)));
    assert_eq!(e.http.json("GET", "/v1/bindings/paris/2005", &e.tokens.other_tenant, None).await.unwrap().0, 404);
    let (_, list) = e.http.json("GET", "/v1/bindings?account=alice", &e.tokens.tenant, None).await.unwrap();
    assert_eq!(list["bindings"].as_array().unwrap().len(), 1);

    // The bound account drives its extension; another account cannot.
    let (s, r) = e.http.json("POST", "/v1/extensions/paris/2005/calls", &e.tokens.tenant, Some(json!({ "account": "alice", "to": "2006" }))).await.unwrap();
    assert_eq!(s, 201, "{r}");
    let call_id = r["call"].as_str().unwrap().to_owned();
    assert_eq!(e.http.json("POST", "/v1/extensions/paris/2005/calls", &e.tokens.tenant, Some(json!({ "account": "bob", "to": "2006" }))).await.unwrap().0, 404);
    let (s, _) = e.http.json("DELETE", &format!("/v1/extensions/paris/2005/calls/{call_id}?account=alice"), &e.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 204);

    // The audit log tells the story, and never holds the code.
    let (s, a) = e.http.json("GET", "/v1/audit?extension=2005", &e.tokens.admin, None).await.unwrap();
    assert_eq!(s, 200, "{a}");
    let steps: Vec<&str> = a["records"].as_array().unwrap().iter().filter(|r| r["association"] == id.as_str()).map(|r| r["step"].as_str().unwrap()).collect();
    let mut story = steps.iter();
    for want in ["code_issued", "ivr_identified", "confirmed", "bound"] {
        assert!(story.any(|s| *s == want), "{want} missing or out of order in {steps:?}");
    }
    assert!(!a.to_string().contains(&code), "the code is never in the audit log");
    // Unbind by the account.
    assert_eq!(e.http.json("DELETE", "/v1/bindings/paris/2005?account=alice", &e.tokens.tenant, None).await.unwrap().0, 204);
    assert_eq!(e.http.json("GET", "/v1/bindings/paris/2005", &e.tokens.tenant, None).await.unwrap().0, 404);
    drop(e.sim);
    e.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restart_keeps_bindings_and_ends_associations_in_flight() {
    let mut e = env(None).await;
    let (_, code, call, ctx) = to_ivr(&mut e, "alice", "2005").await;
    dialogue(&e.http, &e.tokens.ivr, &call, &ctx, &code, "alice").await;
    // A second association left in flight in the IVR.
    let (pending, _, _, _) = to_ivr(&mut e, "bob", "2006").await;
    let db = e.db.clone();
    e.running.shutdown().await;
    drop(e.sim);

    let e2 = env(Some(db)).await;
    let (s, b) = e2.http.json("GET", "/v1/bindings/paris/2005", &e2.tokens.tenant, None).await.unwrap();
    assert_eq!((s, b["account"].as_str()), (200, Some("alice")));
    let (s, v) = e2.http.json("GET", &format!("/v1/associations/{pending}"), &e2.tokens.tenant, None).await.unwrap();
    assert_eq!((s, v["state"].as_str(), v["reason"].as_str()), (200, Some("failed"), Some("gateway_restarted")));
    // bob may start again.
    assert_eq!(e2.http.json("POST", "/v1/associations", &e2.tokens.tenant, Some(json!({ "account": "bob", "extension": "2006" }))).await.unwrap().0, 201);
    e2.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_associations_across_a_hundred_extensions_all_end_as_the_store_says() {
    let exts: Vec<String> = (3000..3100).map(|n| n.to_string()).collect();
    let refs: Vec<&str> = exts.iter().map(String::as_str).collect();
    let mut cfg = SimConfig::phase3(&refs);
    for e in &mut cfg.extensions {
        e.behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(5) };
    }
    let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let options = LocalOptions { pbx: "extensions = [\"3000-3099\"]\nproof_calls_per_hour = 20\nmax_requests_per_second = 100000\n".into(), ..Default::default() };
    let LocalGateway { running, http, tokens, .. } = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(300), drive_many(&http, &mut Ivr::of(&mut sim).unwrap(), &tokens.ivr, &tokens.tenant, &exts, 10)).await.expect("in time").expect("load runs");
    assert_eq!(report.outcomes.len(), 1000);
    let bound = report.outcomes.values().filter(|s| *s == "bound").count();
    let cancelled = report.outcomes.values().filter(|s| *s == "cancelled").count();
    assert_eq!((bound, cancelled), (500, 500), "every association ended, as planned");
    assert_eq!(report.code_to_binding.len(), 500);
    // The store agrees: 500 bindings were written and all were unbound again by their accounts.
    let mut recs = Vec::new();
    for ext in &exts {
        let (_, audit) = http.json("GET", &format!("/v1/audit?extension={ext}&limit=10000"), &tokens.tenant, None).await.unwrap();
        recs.extend(audit["records"].as_array().unwrap().clone());
    }
    let count = |step: &str| recs.iter().filter(|r| r["step"] == step).count();
    assert_eq!((count("bound"), count("unbound"), count("cancelled")), (500, 500, 500));
    for ext in &exts {
        assert_eq!(http.json("GET", &format!("/v1/bindings/paris/{ext}"), &tokens.tenant, None).await.unwrap().0, 404);
    }
    running.shutdown().await;
}

/// Poll the association until `pred` holds (each poll is a real API round trip).
pub(crate) async fn wait_assoc(http: &Http, token: &str, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(LIMIT, async {
        loop {
            let (_, v) = http.json("GET", &format!("/v1/associations/{id}"), token, None).await.unwrap();
            if pred(&v) {
                return v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the association reaches the expected state")
}

/// How the PBX side goes away in the tests below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PbxFault {
    /// The CTI link drops ([`SimPbx::drop_links`]); the PBX keeps its calls, so the gateway
    /// must clear the proof call once the link is back.
    LinkDrop,
    /// A full PBX reset ([`SimPbx::restart`]): the calls end with it.
    Reset,
}

impl PbxFault {
    fn strike(self, sim: &SimPbx) {
        match self {
            PbxFault::LinkDrop => sim.drop_links(),
            PbxFault::Reset => sim.restart(),
        }
    }
}

/// No call is up on the PBX any more, and `call` (hex) ended the way `how` says.
async fn call_ended(sim: &SimPbx, call: &str, how: CallEnd) {
    tokio::time::timeout(LIMIT, sim.wait_stats(|s| s.live_calls == 0)).await.unwrap_or_else(|_| panic!("a call is left up: {:?}", sim.stats()));
    let calls = sim.calls().await;
    assert_eq!(calls.ended.get(call), Some(&how), "how {call} ended: {calls:?}");
}

/// While the phone rings, the PBX goes away: the attempt fails `link_down`, the ringing call
/// ends (cleared by the gateway once the link is back after a link drop; ended by the PBX
/// itself in a reset), and the user's retry reaches the IVR.
async fn pbx_fault_while_ringing(fault: PbxFault) {
    let e = env(None).await;
    e.sim.config().extensions[0].behaviour = cstagate::sim::Behaviour::NeverAnswer;
    let (s, v) = e.http.json("POST", "/v1/associations", &e.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    wait_assoc(&e.http, &e.tokens.tenant, &id, |v| v["state"] == "ringing").await;
    let ringing = e.sim.calls().await.live;
    assert_eq!(ringing.len(), 1, "the phone rings: {ringing:?}");
    fault.strike(&e.sim);
    let v = wait_assoc(&e.http, &e.tokens.tenant, &id, |v| v["state"] == "failed").await;
    assert_eq!((v["reason"].as_str(), v["retryable"].as_bool()), (Some("link_down"), Some(true)), "{fault:?}: {v}");
    call_ended(&e.sim, &ringing[0], if fault == PbxFault::LinkDrop { CallEnd::ClearConnection } else { CallEnd::Reset }).await;
    // The link comes back; the user retries.
    let link = e.running.gateway.links()["paris"].clone();
    tokio::time::timeout(LIMIT, link.wait_for(|s| *s == cstagate::link::LinkState::Up)).await.unwrap();
    e.sim.config().extensions[0].behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) };
    let (s, v) = e.http.json("POST", &format!("/v1/associations/{id}/complete"), &e.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 202, "{v}");
    wait_assoc(&e.http, &e.tokens.tenant, &id, |v| v["state"] == "in_ivr").await;
    e.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_drop_while_ringing_fails_the_attempt_the_gateway_clears_the_call_and_a_retry_works() {
    pbx_fault_while_ringing(PbxFault::LinkDrop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_reset_while_ringing_fails_the_attempt_and_a_retry_works() {
    pbx_fault_while_ringing(PbxFault::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_drop_or_a_hang_up_during_the_ivr_dialogue_binds_nothing() {
    let mut e = env(None).await;
    let (id, code, call, ctx) = to_ivr(&mut e, "alice", "2005").await;
    let body = |call: &str, digits: Option<&str>| {
        let mut body = json!({ "call": call, "from": "+33144002005", "to": "0800100200" });
        if let Some(d) = digits {
            body["digits"] = json!(d);
        }
        body
    };
    for d in [None, Some(ctx.as_str()), Some("1")] {
        let (s, r) = webhook(&e.http, body(&call, d), &e.tokens.ivr).await;
        assert_eq!((s, r["hangup"].as_bool()), (200, None), "{d:?}: the dialogue goes on: {r}");
    }
    // The CTI link drops; the call to the IVR goes on.
    e.sim.drop_links();
    let v = wait_assoc(&e.http, &e.tokens.tenant, &id, |v| v["state"] == "failed").await;
    assert_eq!((v["reason"].as_str(), v["retryable"].as_bool()), (Some("link_down"), Some(true)), "{v}");
    // The right code arrives too late: refused, nothing bound.
    let (s, r) = webhook(&e.http, body(&call, Some(&code)), &e.tokens.ivr).await;
    assert_eq!((s, r["hangup"].as_bool()), (200, Some(true)), "{r}");
    assert_eq!(e.http.json("GET", "/v1/bindings/paris/2005", &e.tokens.tenant, None).await.unwrap().0, 404);
    // Once the link is back, the gateway clears the call it placed.
    call_ended(&e.sim, &call, CallEnd::ClearConnection).await;

    // Next attempt: the caller hangs up in the IVR.
    let link = e.running.gateway.links()["paris"].clone();
    tokio::time::timeout(LIMIT, link.wait_for(|s| *s == cstagate::link::LinkState::Up)).await.unwrap();
    assert_eq!(e.http.json("POST", &format!("/v1/associations/{id}/complete"), &e.tokens.tenant, None).await.unwrap().0, 202);
    let call2 = loop {
        if let IvrSignal::Connected { call, .. } = tokio::time::timeout(LIMIT, e.ivr.recv()).await.unwrap().unwrap() {
            break call;
        }
    };
    // Every proof call carries a context id of its own.
    let IvrSignal::Digits { digits: ctx2, .. } = tokio::time::timeout(LIMIT, e.ivr.recv()).await.unwrap().unwrap() else { panic!("context digits") };
    assert_ne!(ctx2.trim_matches(['*', '#']), ctx.trim_matches(['*', '#']));
    for d in [None, Some(ctx2.as_str())] {
        let (s, r) = webhook(&e.http, body(&call2, d), &e.tokens.ivr).await;
        assert_eq!((s, r["hangup"].as_bool()), (200, None), "{d:?}: the dialogue goes on: {r}");
    }
    let (s, _) = webhook(&e.http, json!({ "call": call2, "from": "+33144002005", "to": "0800100200", "hangup": true }), &e.tokens.ivr).await;
    assert_eq!(s, 200);
    let v = wait_assoc(&e.http, &e.tokens.tenant, &id, |v| v["reason"] == "call_cleared").await;
    assert_eq!((v["state"].as_str(), v["retryable"].as_bool()), (Some("failed"), Some(true)));
    e.running.shutdown().await;
}

/// The served OpenAPI document and the API agree: every route is in it, and real responses of a
/// running gateway (success and refusal, tenant and admin, every group of routes) validate
/// against the schema of their route and status in it — an undocumented member fails too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_matches_the_served_openapi_document() {
    let mut e = env(None).await;
    let (s, doc) = e.http.send("GET", "/v1/openapi.json", &[], None).await.unwrap();
    assert_eq!((s, doc["openapi"].as_str()), (200, Some("3.1.0")));
    // Every route of the router is documented, and every documented route is served.
    let routes = [
        ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"), ("get", "/v1/openapi.json"),
        ("post", "/v1/associations"), ("get", "/v1/associations"), ("get", "/v1/associations/{id}"), ("delete", "/v1/associations/{id}"), ("post", "/v1/associations/{id}/complete"),
        ("get", "/v1/bindings"), ("get", "/v1/bindings/{pbx}/{extension}"), ("delete", "/v1/bindings/{pbx}/{extension}"),
        ("post", "/v1/extensions/{pbx}/{extension}/calls"), ("delete", "/v1/extensions/{pbx}/{extension}/calls/{call}"), ("get", "/v1/extensions/{pbx}/{extension}/events"),
        ("get", "/v1/pbx"), ("get", "/v1/audit"), ("get", "/v1/admin/counters"), ("post", "/v1/admin/counters/reset"), ("get", "/v1/admin/blocks"), ("post", "/v1/admin/blocks/lift"),
        ("post", "/v1/ivr/webhook"), ("post", "/v1/ivr/twiml"), ("get", "/v1/directory/{pbx}"),
    ];
    let documented: Vec<(String, String)> = doc["paths"].as_object().unwrap().iter().flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (m.clone(), p.clone()))).collect();
    let mut expected: Vec<(String, String)> = routes.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    let mut got = documented.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "the document's routes");
    for (m, p) in routes {
        let path = p.replace("{id}", "abc").replace("{pbx}", "paris").replace("{extension}", "2005").replace("{call}", "ab");
        let (s, v) = e.http.send(&m.to_uppercase(), &path, &[], Some(b"{}".to_vec())).await.unwrap();
        assert!(!(s == 404 && v["error"] == "no such endpoint") && s != 405, "{m} {p} is not served: {s} {v}");
    }
    // Every reason, and `reason` nullable.
    let reasons: Vec<&str> = doc["components"]["schemas"]["Reason"]["enum"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    for r in ["wrong_code", "attempts_exhausted", "no_answer", "busy", "phone_locked", "link_down", "rejected_by_pbx", "expired", "call_cleared", "not_confirmed", "locked_out", "rate_limited", "gateway_restarted", "cancelled_by_user", "ivr_timeout", "ivr_call_mismatch", "refused_by_phone_owner", "pbx_flood", "call_diverted", "pbx_removed"] {
        assert!(reasons.contains(&r), "{r} not in {reasons:?}");
    }
    validate(&doc, &doc["components"]["schemas"]["Association"], &json!({ "id": "a", "state": "failed", "reason": null, "retryable": true, "extension": "1", "pbx": "p", "account": "a", "expires_at": 1, "history": [] }), "$").expect("reason is nullable");
    // The check bites: an undocumented member, an unknown reason, a missing member.
    let assoc = &doc["components"]["schemas"]["Association"];
    let good = json!({ "id": "a", "state": "failed", "reason": "ivr_timeout", "retryable": true, "extension": "1", "pbx": "p", "account": "a", "expires_at": 1, "history": [{ "at": 1, "step": "s", "detail": "" }] });
    validate(&doc, assoc, &good, "$").expect("a failed association");
    for (k, bad, why) in [("tenant", json!("acme"), "$: member `tenant` is not in the document"), ("reason", json!("bogus"), "$.reason: "), ("history", json!([{ "at": -1, "step": "s", "detail": "" }]), "$.history[0].at: -1 < 0"), ("state", json!(null), "$.state: ")] {
        let mut v = good.clone();
        v[k] = bad;
        let e = validate(&doc, assoc, &v, "$").expect_err("refused");
        assert!(e.starts_with(why), "{v}: {e}");
    }
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("retryable");
    assert_eq!(validate(&doc, assoc, &v, "$"), Err("$: required member `retryable` missing".to_owned()), "{v}");

    let mut seen = 0;
    let mut check = |method: &str, template: &str, (s, v): (u16, Value)| {
        let schema = response_schema(&doc, method, template, s).unwrap_or_else(|| panic!("{method} {template}: no documented response {s}: {v}"));
        if let Err(why) = validate(&doc, &schema, &v, "$") {
            panic!("{method} {template} {s}: {why}\n{v}");
        }
        seen += 1;
    };
    let h = e.http.clone();
    let t = e.tokens.tenant.clone();
    let t = t.as_str();
    check("get", "/healthz", h.send("GET", "/healthz", &[], None).await.unwrap());
    check("post", "/v1/associations", h.json("POST", "/v1/associations", "nope", Some(json!({}))).await.unwrap());
    check("post", "/v1/associations", h.json("POST", "/v1/associations", t, Some(json!({ "account": "a", "extension": "2005", "colour": "red" }))).await.unwrap());
    check("get", "/v1/associations/{id}", h.json("GET", "/v1/associations/nope", t, None).await.unwrap());
    // alice's, bound through the IVR dialogue.
    let (id, code, call, ctx) = to_ivr(&mut e, "alice", "2005").await;
    check("get", "/v1/associations/{id}", h.json("GET", &format!("/v1/associations/{id}"), t, None).await.unwrap());
    for answer in dialogue(&h, &e.tokens.ivr, &call, &ctx, &code, "alice").await {
        check("post", "/v1/ivr/webhook", answer);
    }
    let (s, r) = webhook(&h, json!({ "call": call, "from": "", "to": "", "hangup": true }), &e.tokens.ivr).await;
    assert_eq!((s, &r), (200, &json!({ "say": "", "language": "en-US", "hangup": true })));
    check("post", "/v1/ivr/webhook", (s, r));
    let (s, r) = webhook(&h, json!({ "call": call, "from": "", "to": "" }), "wrong").await;
    assert_eq!((s, r["error"].as_str()), (401, Some("bad or missing X-Cstagate-Signature")), "{r}");
    check("post", "/v1/ivr/webhook", (s, r));
    e.sim.ivr_hangup(&call);
    let (s, v) = h.json("GET", &format!("/v1/associations/{id}"), t, None).await.unwrap();
    assert_eq!(v["state"], "bound");
    check("get", "/v1/associations/{id}", (s, v));
    check("post", "/v1/associations/{id}/complete", h.json("POST", &format!("/v1/associations/{id}/complete"), t, None).await.unwrap());
    check("get", "/v1/bindings", h.json("GET", "/v1/bindings?account=alice", t, None).await.unwrap());
    check("get", "/v1/bindings", h.json("GET", "/v1/bindings?acount=alice", t, None).await.unwrap());
    check("get", "/v1/bindings/{pbx}/{extension}", h.json("GET", "/v1/bindings/paris/2005", t, None).await.unwrap());
    check("get", "/v1/bindings/{pbx}/{extension}", h.json("GET", "/v1/bindings/paris/2005", &e.tokens.other_tenant, None).await.unwrap());
    let (s, r) = h.json("POST", "/v1/extensions/paris/2005/calls", t, Some(json!({ "account": "alice", "to": "2006" }))).await.unwrap();
    let made = r["call"].as_str().unwrap().to_owned();
    check("post", "/v1/extensions/{pbx}/{extension}/calls", (s, r));
    check("post", "/v1/extensions/{pbx}/{extension}/calls", h.json("POST", "/v1/extensions/paris/2005/calls", t, Some(json!({ "account": "bob", "to": "2006" }))).await.unwrap());
    let (s, v) = h.json("DELETE", &format!("/v1/extensions/paris/2005/calls/{made}?account=alice"), t, None).await.unwrap();
    assert_eq!((s, v), (204, Value::Null));
    // bob's association, cancelled: a reason (after alice's proof call: the
    // simulated IVR's signals that `to_ivr` reads are then alice's alone).
    let (s, b) = h.json("POST", "/v1/associations", t, Some(json!({ "account": "bob", "extension": "2006", "display_name": "Bob" }))).await.unwrap();
    let bob = b["id"].as_str().unwrap().to_owned();
    check("post", "/v1/associations", (s, b));
    check("post", "/v1/associations", h.json("POST", "/v1/associations", t, Some(json!({ "account": "carol", "extension": "2006" }))).await.unwrap());
    check("delete", "/v1/associations/{id}", h.json("DELETE", &format!("/v1/associations/{bob}"), t, None).await.unwrap());
    check("get", "/v1/associations", h.json("GET", "/v1/associations?limit=5", t, None).await.unwrap());
    check("get", "/v1/associations", h.json("GET", "/v1/associations?state=asleep", t, None).await.unwrap());
    check("get", "/readyz", h.send("GET", "/readyz", &[], None).await.unwrap());
    // Admin reads and changes.
    check("get", "/v1/pbx", h.json("GET", "/v1/pbx", &e.tokens.admin, None).await.unwrap());
    check("get", "/v1/pbx", h.json("GET", "/v1/pbx", t, None).await.unwrap());
    check("get", "/v1/directory/{pbx}", h.json("GET", "/v1/directory/paris?name=bob", t, None).await.unwrap());
    check("get", "/v1/directory/{pbx}", h.json("GET", "/v1/directory/paris?name=bob", &e.tokens.other_tenant, None).await.unwrap());
    check("get", "/v1/audit", h.json("GET", "/v1/audit?extension=2005", &e.tokens.admin, None).await.unwrap());
    check("get", "/v1/audit", h.json("GET", "/v1/audit?limit=0", t, None).await.unwrap());
    check("get", "/v1/admin/counters", h.json("GET", "/v1/admin/counters?account=alice", &e.tokens.admin, None).await.unwrap());
    check("get", "/v1/admin/blocks", h.json("GET", "/v1/admin/blocks?pbx=paris&extension=2005", &e.tokens.admin, None).await.unwrap());
    check("get", "/v1/admin/blocks", h.json("GET", "/v1/admin/blocks?pbx=paris", &e.tokens.admin, None).await.unwrap());
    check("post", "/v1/admin/counters/reset", h.json("POST", "/v1/admin/counters/reset", &e.tokens.admin, Some(json!({ "account": "alice", "tenant": "acme" }))).await.unwrap());
    check("post", "/v1/admin/blocks/lift", h.json("POST", "/v1/admin/blocks/lift", &e.tokens.admin, Some(json!({ "pbx": "paris", "extension": "2005" }))).await.unwrap());
    let (s, v) = h.json("DELETE", "/v1/bindings/paris/2005?account=alice", t, None).await.unwrap();
    assert_eq!((s, v), (204, Value::Null));
    check("delete", "/v1/bindings/{pbx}/{extension}", h.json("DELETE", "/v1/bindings/paris/2005?account=alice", t, None).await.unwrap());
    check("get", "/v1/extensions/{pbx}/{extension}/events", h.json("GET", "/v1/extensions/paris/2005/events?account=alice", t, None).await.unwrap());
    assert_eq!(seen, 38);
    // The metrics: counters end in `_total`, and the ends are counted by state and reason.
    let (s, body) = h.raw("GET", "/metrics", &[], None).await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(s, 200);
    for line in ["cstagate_associations_ended_total{state=\"bound\",reason=\"none\"} 1", "cstagate_associations_ended_total{state=\"cancelled\",reason=\"cancelled_by_user\"} 1", "cstagate_link_up{pbx=\"paris\"} 1", "# TYPE cstagate_link_frames_in counter", "# TYPE cstagate_bindings gauge", "cstagate_bindings 0"] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    for prefix in ["cstagate_link_frames_in_total{pbx=\"paris\"} ", "cstagate_link_requests_ok_total{pbx=\"paris\"} ", "cstagate_link_monitors{pbx=\"paris\"} "] {
        assert!(text.lines().any(|l| l.starts_with(prefix)), "{prefix} not in\n{text}");
    }
    drop(e.sim);
    e.running.shutdown().await;
}

/// The JSON schema of `method template`'s response with `status` (or its `4XX`/`5XX` range).
fn response_schema(doc: &Value, method: &str, template: &str, status: u16) -> Option<Value> {
    let responses = &doc["paths"][template][method]["responses"];
    let r = [status.to_string(), format!("{}XX", status / 100)].into_iter().find_map(|k| responses.get(&k))?;
    Some(r["content"]["application/json"]["schema"].clone())
}

/// The members a schema declares, through references and compositions.
fn declared(doc: &Value, schema: &Value, out: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(p) = schema["properties"].as_object() {
        out.extend(p.keys().cloned());
    }
    for k in ["allOf", "oneOf", "anyOf"] {
        for s in schema[k].as_array().into_iter().flatten() {
            declared(doc, s, out);
        }
    }
}

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => resolve(doc, &doc["components"]["schemas"][name]),
        None => schema,
    }
}

/// A small JSON-schema check (the subset the document uses): `$ref`, `type` (one or several),
/// `enum`, `required`, `properties`, `additionalProperties`, `items`, `allOf`/`oneOf`/`anyOf`,
/// `minimum`; an object member the schema does not declare is an error too (the document must
/// say everything a response holds).
pub(crate) fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    validate_in(doc, schema, v, at, true)
}

fn validate_in(doc: &Value, schema: &Value, v: &Value, at: &str, strict: bool) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            validate_in(doc, s, v, at, false)?;
        }
    }
    if let Some(one) = schema["oneOf"].as_array().or(schema["anyOf"].as_array()) {
        let ok = one.iter().filter(|s| validate_in(doc, s, v, at, strict).is_ok()).count();
        if ok == 0 || (schema["oneOf"].is_array() && ok > 1) {
            return Err(format!("{at}: {ok} branches of {one:?} match {v}"));
        }
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let fits = |t: &str| match t {
            "null" => v.is_null(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "array" => v.is_array(),
            "object" => v.is_object(),
            _ => false,
        };
        if !types.iter().any(|t| fits(t)) {
            return Err(format!("{at}: {v} is not of type {t}"));
        }
    }
    if let Some(e) = schema["enum"].as_array()
        && !e.contains(v)
    {
        return Err(format!("{at}: {v} is not one of {e:?}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64())
        && n < min
    {
        return Err(format!("{at}: {n} < {min}"));
    }
    if let Some(items) = schema.get("items") {
        for (i, item) in v.as_array().into_iter().flatten().enumerate() {
            validate_in(doc, items, item, &format!("{at}[{i}]"), true)?;
        }
    }
    if let Some(o) = v.as_object() {
        for r in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !o.contains_key(r) {
                return Err(format!("{at}: required member `{r}` missing"));
            }
        }
        let props = schema["properties"].as_object();
        for (k, member) in o {
            if let Some(s) = props.and_then(|p| p.get(k)) {
                validate_in(doc, s, member, &format!("{at}.{k}"), true)?;
            } else if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                validate_in(doc, extra, member, &format!("{at}.{k}"), true)?;
            }
        }
        if strict && schema.get("additionalProperties").is_none() && (props.is_some() || schema["allOf"].is_array()) {
            let mut names = Vec::new();
            declared(doc, schema, &mut names);
            if let Some(k) = o.keys().find(|k| !names.contains(k)) {
                return Err(format!("{at}: member `{k}` is not in the document"));
            }
        }
    }
    Ok(())
}
