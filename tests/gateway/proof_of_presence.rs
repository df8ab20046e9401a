//! Proof of presence against attackers, over real sockets (issue 9): the real gateway (API,
//! webhook, CSTA link) next to the simulated PBX, with the test playing the IVR platform, the
//! people at the phones and the attacker. Only the proof call itself can bind; failures are
//! charged to whoever asked; the phone's owner can say no; admins can undo; event streams follow
//! their binding; a PBX flooding events cannot stall anyone.
//!
//! The attacker knows everything but the proof call: the context id as the phone shows it while
//! dialling (`SimPbx::dialled`, what a PBX side observer sees), and the code (it is the
//! attacker's own association, or it leaked).

use std::time::Duration;

use cstagate::testkit::{ivr_request, local_secrets, LocalGateway, LocalOptions};
use cstagate::sim::{Behaviour, SimConfig, SimPbx};
use serde_json::json;
use tokio::time::timeout;

use crate::sim_env::{SimEnv, LIMIT};
const MOBILE: &str = "+33612345678";
const DID_2005: &str = "+33144002005";

type Env = SimEnv;

async fn env(pbx_extra: &str) -> Env {
    SimEnv::start(SimConfig::phase3(&["2005", "2006"]), format!("extensions = [\"2005-2006\"]\nreconnect_min = \"20ms\"\n{pbx_extra}")).await
}

impl SimEnv {
    async fn audit_steps(&self, ext: &str) -> Vec<String> {
        let (_, a) = self.http().json("GET", &format!("/v1/audit?extension={ext}&limit=10000"), &self.gw.tokens.tenant, None).await.unwrap();
        a["records"].as_array().unwrap().iter().map(|r| r["step"].as_str().unwrap_or_default().to_owned()).collect()
    }
    async fn no_call_left(&self) {
        let mut st = self.sim.stats();
        timeout(LIMIT, async {
            while st.live_calls != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                st = self.sim.stats();
            }
        })
        .await
        .expect("no call is left up on the PBX");
    }
    /// The owner's dialogue on the proof call: context, 1, code.
    async fn owner_binds(&mut self, id: &str, code: &str) {
        let (call, _, ctx) = self.proof_call().await;
        let r = self.say(&call, DID_2005, Some(&ctx)).await;
        assert!(r["say"].as_str().unwrap().contains("press 1"), "{r}");
        self.say(&call, DID_2005, Some("1")).await;
        let r = self.say(&call, DID_2005, Some(code)).await;
        assert!(r["say"].as_str().unwrap().contains("now linked"), "{r}");
        self.wait(id, |v| v["state"] == "bound").await;
        assert_eq!(self.binding("2005").await, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attackers_ivr_call_with_context_and_code_binds_nothing_while_the_phone_rings() {
    let mut e = env("").await;
    e.sim.config().extensions[0].behaviour = Behaviour::NeverAnswer;
    // Mallory asks for alice's extension and calls the IVR from her mobile while alice's phone
    // rings, keying what the phone's display shows after the IVR number, 1, and her code.
    let (id, code) = e.created("mallory", "2005").await;
    e.wait(&id, |v| v["state"] == "ringing").await;
    let dialled = e.sim.dialled("2005").await.expect("the phone is dialling the IVR");
    let ctx = dialled.strip_prefix("0800100200").expect("a proof call");
    let r = e.say("evil", MOBILE, Some(ctx)).await;
    assert_eq!(r["hangup"], true, "{r}");
    for d in ["1", code.as_str()] {
        assert_eq!(e.say("evil", MOBILE, Some(d)).await["hangup"], true);
    }
    let v = e.wait(&id, |v| v["state"] == "failed").await;
    assert_eq!((v["reason"].as_str(), v["retryable"].as_bool()), (Some("ivr_call_mismatch"), Some(true)));
    assert_eq!(e.binding("2005").await, 404);
    assert!(e.audit_steps("2005").await.contains(&"suspected_attack".to_owned()));
    e.no_call_left().await;
    // Alice's phone stopped ringing; alice's own request binds it.
    e.sim.config().extensions[0].behaviour = Behaviour::Answer { after: Duration::from_millis(10) };
    let (s, _) = e.http().json("DELETE", &format!("/v1/associations/{id}"), &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 200);
    let (id, code) = e.created("alice", "2005").await;
    e.owner_binds(&id, &code).await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ivr_call_after_the_answer_fails_the_attempt_whichever_claims_first() {
    let mut e = env("proof_calls_per_hour = 6\n").await;
    let (id, code) = e.created("alice", "2005").await;
    // The proof call claims the attempt; the attacker's call with the same context comes second.
    let (call, _, ctx) = e.proof_call().await;
    assert!(e.say(&call, DID_2005, Some(&ctx)).await["say"].as_str().unwrap().contains("press 1"));
    assert_eq!(e.say("evil-1", MOBILE, Some(&ctx)).await["hangup"], true);
    let v = e.wait(&id, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "ivr_call_mismatch");
    assert_eq!(e.say(&call, DID_2005, Some("1")).await["hangup"], true, "the attempt is over for both calls");
    e.no_call_left().await;

    // Retry; now the attacker gets in first after the answer and keys fast: the proof call's own
    // request still ends the attempt before the code is taken.
    let (s, _) = e.http().json("POST", &format!("/v1/associations/{id}/complete"), &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 202);
    let (call, _, ctx2) = e.proof_call().await;
    assert_ne!(ctx, ctx2, "a new context id for every proof call");
    e.wait(&id, |v| v["state"] == "in_ivr").await;
    assert!(e.say("evil-2", MOBILE, Some(&ctx2)).await["say"].as_str().unwrap().contains("press 1"));
    e.say("evil-2", MOBILE, Some("1")).await;
    assert_eq!(e.say(&call, DID_2005, Some(&ctx2)).await["hangup"], true);
    let r = e.say("evil-2", MOBILE, Some(&code)).await;
    assert!(r["hangup"] == true && !r["say"].as_str().unwrap().contains("now linked"), "{r}");
    assert_eq!(e.binding("2005").await, 404);
    let steps = e.audit_steps("2005").await;
    assert_eq!(steps.iter().filter(|s| *s == "suspected_attack").count(), 2, "{steps:?}");
    e.no_call_left().await;

    // The owner's next retry binds.
    let (s, _) = e.http().json("POST", &format!("/v1/associations/{id}/complete"), &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 202);
    e.owner_binds(&id, &code).await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_failures_never_lock_out_the_owner_and_the_admin_can_reset_them() {
    let mut e = env("lockout_after = 3\nproof_calls_per_hour = 20\n").await;
    // Mallory's association on alice's phone: someone at the phone keys wrong codes.
    let (id, code) = e.created("mallory", "2005").await;
    let (call, _, ctx) = e.proof_call().await;
    e.say(&call, DID_2005, Some(&ctx)).await;
    e.say(&call, DID_2005, Some("1")).await;
    // Three different wrong codes (the same body twice in a second would be a replay).
    for wrong in (1..).map(|i| format!("{i:06}")).filter(|w| *w != code).take(3) {
        e.say(&call, DID_2005, Some(&wrong)).await;
    }
    let v = e.wait(&id, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "locked_out");
    e.sim.ivr_hangup(&call);
    let (s, v) = e.create("mallory", "2006").await;
    assert_eq!((s, v["code"].as_str()), (423, Some("locked_out")), "charged to mallory: {v}");
    // Alice, the phone's owner, is not locked out.
    let (id, code) = e.created("alice", "2005").await;
    e.owner_binds(&id, &code).await;

    // The admin sees mallory's counters and resets them; tenants may not.
    let (s, _) = e.http().json("GET", "/v1/admin/counters?account=mallory", &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 403);
    let (s, v) = e.http().json("GET", "/v1/admin/counters?account=mallory", &e.gw.tokens.admin, None).await.unwrap();
    assert_eq!(s, 200);
    assert!(v["counters"].as_array().unwrap().iter().any(|c| c["kind"] == "account" && c["value"] == 3), "{v}");
    let (s, v) = e.http().json("POST", "/v1/admin/counters/reset", &e.gw.tokens.admin, Some(json!({ "account": "mallory", "tenant": "acme" }))).await.unwrap();
    assert_eq!((s, v["counters"].as_array().map(Vec::len)), (200, Some(0)), "{v}");
    let (s, _) = e.create("mallory", "2006").await;
    assert_eq!(s, 201);
    let (_, a) = e.http().json("GET", "/v1/audit?account=mallory&limit=1000", &e.gw.tokens.admin, None).await.unwrap();
    assert!(a["records"].as_array().unwrap().iter().any(|r| r["step"] == "counter_reset"));
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_refused_by_a_limit_issues_no_code_and_leaves_nothing_live() {
    let e = env("require_completion = true\n").await;
    // Of the extension's 3 proof calls an hour, mallory may spend 2 on alice's extension.
    for _ in 0..2 {
        let (id, _) = e.created("mallory", "2005").await;
        let (s, _) = e.http().json("POST", &format!("/v1/associations/{id}/complete"), &e.gw.tokens.tenant, None).await.unwrap();
        assert_eq!(s, 202);
        e.wait(&id, |v| v["state"] == "in_ivr").await;
        let (s, _) = e.http().json("DELETE", &format!("/v1/associations/{id}"), &e.gw.tokens.tenant, None).await.unwrap();
        assert_eq!(s, 200);
        e.no_call_left().await;
    }
    let (s, v) = e.create("mallory", "2005").await;
    assert_eq!((s, v["code"].as_str()), (429, Some("rate_limited")), "{v}");
    assert!(v.get("id").is_none(), "no code, no association: {v}");
    // Nothing is live: neither the account nor the extension is held.
    assert_eq!(e.create("mallory", "2006").await.0, 201, "the account is free");
    assert_eq!(e.create("alice", "2005").await.0, 201, "the extension is free, and the owner has her share");
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_phone_owner_refuses_with_9_and_the_account_is_blocked_until_an_admin_lifts_it() {
    let mut e = env("").await;
    let (id, _) = e.created("mallory", "2005").await;
    let (call, _, ctx) = e.proof_call().await;
    let r = e.say(&call, DID_2005, Some(&ctx)).await;
    let text = r["say"].as_str().unwrap();
    assert!(text.contains("account mallory of acme") && text.contains("press 9"), "the owner hears who asks: {text}");
    let r = e.say(&call, DID_2005, Some("9")).await;
    assert_eq!(r["hangup"], true);
    let v = e.wait(&id, |v| v["state"] == "failed").await;
    assert_eq!((v["reason"].as_str(), v["retryable"].as_bool()), (Some("refused_by_phone_owner"), Some(false)));
    e.no_call_left().await;
    let (s, v) = e.create("mallory", "2005").await;
    assert_eq!((s, v["code"].as_str()), (403, Some("blocked_by_phone_owner")), "{v}");
    let (s, v) = e.http().json("GET", "/v1/admin/blocks?pbx=paris&extension=2005", &e.gw.tokens.admin, None).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(v["blocks"][0]["account"], "mallory", "{v}");
    let (s, _) = e.http().json("POST", "/v1/admin/blocks/lift", &e.gw.tokens.other_tenant, Some(json!({ "pbx": "paris", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 403);
    let (s, v) = e.http().json("POST", "/v1/admin/blocks/lift", &e.gw.tokens.admin, Some(json!({ "pbx": "paris", "extension": "2005" }))).await.unwrap();
    assert_eq!((s, v["blocks"].as_array().map(Vec::len)), (200, Some(0)));
    assert_eq!(e.create("mallory", "2005").await.0, 201);
    let steps = e.audit_steps("2005").await;
    assert!(steps.contains(&"refused_by_phone_owner".to_owned()) && steps.contains(&"owner_block_lifted".to_owned()), "{steps:?}");
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_when_its_binding_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut e = env("").await;
    let (id, code) = e.created("alice", "2005").await;
    e.owner_binds(&id, &code).await;
    let mut s = tokio::net::TcpStream::connect(e.gw.running.addr).await.unwrap();
    let req = format!("GET /v1/extensions/paris/2005/events?account=alice HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\n\r\n", e.gw.tokens.tenant);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 12];
    timeout(LIMIT, s.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let (st, _) = e.http().json("DELETE", "/v1/bindings/paris/2005?account=alice", &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!(st, 204);
    // The stream says so and ends (the server closes the response), with no event after it.
    let mut rest = Vec::new();
    timeout(LIMIT, s.read_to_end(&mut rest)).await.expect("the stream ends").unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(text.contains(r#"{"binding":"ended"}"#), "{text}");
    assert!(text.trim_end().ends_with("0"), "the chunked body is closed: {text}");
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_flooding_events_fails_the_attempt_keeps_the_history_capped_and_stalls_nobody() {
    let e = env("").await;
    e.sim.config().extensions[0].behaviour = Behaviour::NeverAnswer;
    let (id, _) = e.created("alice", "2005").await;
    e.wait(&id, |v| v["state"] == "ringing").await;
    // The PBX repeats Delivered for the proof call 20,000 times.
    e.sim.flood_events("2005", 20_000);
    // Meanwhile the API answers everyone (another tenant included).
    for _ in 0..20 {
        let (s, _) = timeout(LIMIT, e.http().json("GET", "/v1/bindings?account=bob", &e.gw.tokens.other_tenant, None)).await.expect("the API answers during the flood").unwrap();
        assert_eq!(s, 200);
    }
    let v = e.wait(&id, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "pbx_flood");
    assert!(v["history"].as_array().unwrap().len() <= 65, "{}", v["history"]);
    let steps = e.audit_steps("2005").await;
    assert!(steps.iter().filter(|s| *s == "reaching_ivr").count() <= 1, "each step once per call");
    e.no_call_left().await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_key_left_empty_accepts_nothing() {
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let mut secrets = local_secrets();
    secrets.ivr_secret = Some(String::new());
    let gw = LocalGateway::start(&sim, LocalOptions { pbx: "extensions = [\"2005\"]\n".into(), ..Default::default() }, secrets).await.unwrap();
    let (s, v) = ivr_request(&gw.http, "", "c1", MOBILE, Some("12345678")).await.unwrap();
    assert_eq!(s, 404, "a request signed with the empty key is not taken: {v}");
    gw.running.shutdown().await;
}
