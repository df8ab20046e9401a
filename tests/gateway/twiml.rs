//! The TwiML adapter end to end (`POST /v1/ivr/twiml`): the real gateway on loopback next to the
//! simulated PBX, the test playing a TwiML platform (Twilio or compatible) with requests shaped
//! as the platform documents them — form-encoded voice-call parameters, `X-Twilio-Signature`
//! over the public URL and every parameter — through a whole association, the status callback
//! ending the call, and the refusals (forged, unsigned, replayed) changing nothing.

use cstagate::sim::SimConfig;
use cstagate::testkit::{twiml_params, twiml_post, twiml_request, IVR_NUMBER};

use crate::sim_env::SimEnv;

const DID_2005: &str = "+33144002005";

type Env = SimEnv;

async fn env() -> Env {
    SimEnv::start(SimConfig::phase3(&["2005"]), "extensions = [\"2005\"]\nproof_calls_per_hour = 6\n".into()).await
}

/// The `action` every `<Gather>` posts back to: the public URL, never the address the gateway
/// listens on.
const ACTION: &str = "action=\"https://ivr.cstagate.test/v1/ivr/twiml\" method=\"POST\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twiml_platform_binds_the_phone_through_the_whole_dialogue() {
    let mut e = env().await;
    let (id, code) = e.created("alice", "2005").await;
    let (call, called, ctx) = e.proof_call().await;
    assert_eq!(called, IVR_NUMBER);
    // Twilio's first request on an incoming call: no digits yet; asks for the context.
    let r = e.twiml(&call, DID_2005, IVR_NUMBER, "ringing", None).await;
    assert!(r.starts_with("<?xml") && r.contains("<Gather input=\"dtmf\" numDigits=\"16\" finishOnKey=\"#\"") && r.contains(ACTION), "{r}");
    assert!(r.contains("<Say language=\"en-US\">Please enter the number shown in your app"), "{r}");
    // The context digits (DTMF the PBX sent after the number), then the account named.
    let r = e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some(&ctx)).await;
    assert!(r.contains("numDigits=\"1\"") && r.contains("The account alice of acme asks to link this phone") && r.contains("press 1"), "{r}");
    let r = e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some("1")).await;
    assert!(r.contains("numDigits=\"6\"") && r.contains("enter the code"), "{r}");
    let r = e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some(&code)).await;
    assert!(r.contains("now linked to the account alice") && r.ends_with("</Say><Hangup/></Response>") && !r.contains("<Gather"), "{r}");
    e.wait(&id, |v| v["state"] == "bound").await;
    let (s, b) = e.http().json("GET", "/v1/bindings/paris/2005", &e.gw.tokens.tenant, None).await.unwrap();
    assert_eq!((s, b["account"].as_str(), b["did"].as_str()), (200, Some("alice"), Some(DID_2005)), "{b}");
    // The status callback at the end of the call: a hang-up, answered with an empty document.
    assert_eq!(e.twiml(&call, DID_2005, IVR_NUMBER, "completed", None).await, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>");
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_and_replayed_twiml_requests_change_nothing() {
    let mut e = env().await;
    let (id, code) = e.created("alice", "2005").await;
    let (call, _, ctx) = e.proof_call().await;
    e.wait(&id, |v| v["state"] == "in_ivr").await;
    let history = e.assoc(&id).await["history"].as_array().unwrap().len();
    let params = twiml_params(&call, DID_2005, IVR_NUMBER, "in-progress", Some(&ctx));
    let body = cstagate::ivr::twiml::encode_form(&params).into_bytes();
    // Signed with another token, not signed, signed for another URL, or a parameter changed
    // after signing (an unknown one counts too): 403, and the association does not move.
    let wrong_token = cstagate::ivr::twiml::signature("not-the-token", "https://ivr.cstagate.test/v1/ivr/twiml", &params);
    let other_url = cstagate::ivr::twiml::signature(&e.gw.tokens.twiml, "https://evil.example/v1/ivr/twiml", &params);
    let good = cstagate::ivr::twiml::signature(&e.gw.tokens.twiml, "https://ivr.cstagate.test/v1/ivr/twiml", &params);
    let mut tampered = body.clone();
    tampered.extend_from_slice(b"&SpeechResult=x");
    for (sig, body) in [(wrong_token.as_str(), body.clone()), ("", body.clone()), (other_url.as_str(), body.clone()), (good.as_str(), tampered)] {
        let (s, r) = twiml_post(e.http(), sig, body).await.unwrap();
        assert_eq!(s, 403, "{r}");
    }
    let v = e.assoc(&id).await;
    assert_eq!((v["state"].as_str(), v["history"].as_array().unwrap().len()), (Some("in_ivr"), history), "nothing changed: {v}");
    // The genuine request is taken once; the same request again is a replay (409), as is the
    // same call with the same digits under a new signature (an added parameter).
    let (s, r) = twiml_post(e.http(), &good, body.clone()).await.unwrap();
    assert!(s == 200 && r.contains("press 1"), "{s} {r}");
    let (s, r) = twiml_post(e.http(), &good, body).await.unwrap();
    assert_eq!(s, 409, "{r}");
    let mut again = params.clone();
    again.push(("Timestamp", "later"));
    let (s, r) = twiml_request(e.http(), &e.gw.tokens.twiml, &again).await.unwrap();
    assert_eq!(s, 409, "{r}");
    // The dialogue goes on and binds.
    assert!(e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some("1")).await.contains("enter the code"));
    assert!(e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some(&code)).await.contains("now linked"));
    e.wait(&id, |v| v["state"] == "bound").await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_callback_of_a_call_that_ended_in_the_ivr_fails_the_attempt() {
    let mut e = env().await;
    let (id, _) = e.created("alice", "2005").await;
    let (call, _, ctx) = e.proof_call().await;
    assert!(e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some(&ctx)).await.contains("press 1"));
    // The platform's status callback: the call is over (the other ending statuses are the same
    // hang-up: `cstagate::ivr::twiml::ENDED`).
    let (s, r) = twiml_request(e.http(), &e.gw.tokens.twiml, &twiml_params(&call, DID_2005, IVR_NUMBER, "no-answer", None)).await.unwrap();
    assert_eq!((s, r.as_str()), (200, "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>"));
    let v = e.wait(&id, |v| v["state"] == "failed").await;
    assert_eq!(v["reason"], "call_cleared", "{v}");
    e.gw.running.shutdown().await;
}
