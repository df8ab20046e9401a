//! The webhook adapter's guard against context-id guessing, over real sockets against the real
//! gateway: once it has heard `ivr_guesses_per_minute` unknown context ids, a context entry gets
//! goodbye without reaching the engine (counted in `/metrics`), while a call already past the
//! context stage (the account named, the code awaited) goes on and binds.

use std::time::Duration;

use cstagate::testkit::{local_secrets, post_webhook, Http, LocalGateway, LocalOptions};
use cstagate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};
use serde_json::{json, Value};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

async fn ivr(h: &Http, key: &str, call: &str, digits: Option<&str>) -> Value {
    let mut b = json!({ "call": call, "from": "+33144002005", "to": "0800100200" });
    if let Some(d) = digits {
        b["digits"] = json!(d);
    }
    let (s, v) = post_webhook(h, key, b.to_string().into_bytes()).await.unwrap();
    assert_eq!(s, 200, "{v}");
    v
}

use crate::common::metric;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_guesses_beyond_the_budget_get_goodbye_and_a_call_past_the_context_still_binds() {
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    sim.config().extensions[0].behaviour = Behaviour::Answer { after: Duration::from_millis(5) };
    let mut signals = sim.take_ivr().unwrap();
    let options = LocalOptions { gateway: "ivr_guesses_per_minute = 3\n".into(), pbx: "extensions = [\"2005\"]\nnames = { \"2005\" = \"Alice Martin\" }\n".into(), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    let h = gw.http.clone();

    // A real association reaches the IVR and is identified by its context id.
    let (s, v) = h.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let code = v["code"].as_str().unwrap().to_owned();
    let ctx = loop {
        if let IvrSignal::Digits { digits, .. } = timeout(LIMIT, signals.recv()).await.unwrap().unwrap() {
            break digits.trim_start_matches('*').trim_end_matches('#').to_owned();
        }
    };
    assert!(ivr(&h, &gw.tokens.ivr, "legit", None).await["say"].as_str().unwrap().contains("enter the number"));
    let r = ivr(&h, &gw.tokens.ivr, "legit", Some(&ctx)).await;
    assert!(r["say"].as_str().unwrap().contains("press 1"), "{r}");

    // A guesser: three unknown ids on one call (the engine ends it), then the budget is spent.
    ivr(&h, &gw.tokens.ivr, "guess-1", None).await;
    for i in 0..3 {
        let r = ivr(&h, &gw.tokens.ivr, "guess-1", Some(&format!("90000000000{i}"))).await;
        assert!(r["say"].as_str().unwrap().contains("not known"), "{r}");
    }
    // Another call: its first request (no digits) is answered; its guess is not.
    ivr(&h, &gw.tokens.ivr, "guess-2", None).await;
    let r = ivr(&h, &gw.tokens.ivr, "guess-2", Some("900000000009")).await;
    assert_eq!((r["say"].as_str(), r["hangup"].as_bool()), (Some("The service is busy. Please try again later. Goodbye."), Some(true)), "{r}");
    // A context dialled with the first request of a call is an entry too.
    let r = ivr(&h, &gw.tokens.ivr, "guess-3", Some("900000000010")).await;
    assert_eq!(r["hangup"].as_bool(), Some(true), "{r}");
    assert_eq!(metric(&h, "cstagate_ivr_unknown_context_total{adapter=\"webhook\"}").await, 3);
    assert_eq!(metric(&h, "cstagate_ivr_guesses_refused_total{adapter=\"webhook\"}").await, 2);

    // The legitimate call was past the context stage: its confirm key and code are not guesses.
    let r = ivr(&h, &gw.tokens.ivr, "legit", Some("1")).await;
    assert!(r["say"].as_str().unwrap().contains("enter the code"), "{r}");
    let r = ivr(&h, &gw.tokens.ivr, "legit", Some(&code)).await;
    assert!(r["say"].as_str().unwrap().contains("now linked"), "{r}");
    let (s, _) = h.json("GET", "/v1/bindings/paris/2005", &gw.tokens.tenant, None).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(metric(&h, "cstagate_ivr_guesses_refused_total{adapter=\"webhook\"}").await, 2);
    assert_eq!(metric(&h, "cstagate_ivr_guesses_refused_total{adapter=\"fastagi\"}").await, 0);
    gw.running.shutdown().await;
}
