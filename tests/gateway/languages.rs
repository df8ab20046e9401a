//! Spoken languages end to end (issue 14): a PBX with `language = "fr-FR"` gets the whole
//! dialogue in French through the JSON webhook (each reply names `fr-FR`) and through TwiML
//! (`<Say language="fr-FR">` with the French words, XML-escaped: French has apostrophes), with a
//! `[prompts."fr-FR"]` override reaching the wire; a PBX that names no language keeps English.

use std::time::Duration;

use cstagate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};
use cstagate::testkit::{ivr_request, local_secrets, twiml_params, twiml_request, LocalGateway, LocalOptions, IVR_NUMBER};
use serde_json::{json, Value};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);
const DID_2005: &str = "+33144002005";

struct Env {
    _sim: SimPbx,
    ivr: tokio::sync::mpsc::UnboundedReceiver<IvrSignal>,
    gw: LocalGateway,
}

/// The gateway next to a simulated PBX; `pbx` are more lines of its `[[pbx]]` table (the last
/// table of the file: `[prompts]` tables may follow).
async fn env(pbx: &str) -> Env {
    let mut sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    for e in &mut sim.config().extensions {
        e.behaviour = Behaviour::Answer { after: Duration::from_millis(10) };
    }
    let ivr = sim.take_ivr().unwrap();
    let options = LocalOptions { pbx: format!("extensions = [\"2005\"]\n{pbx}"), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    Env { _sim: sim, ivr, gw }
}

impl Env {
    async fn created(&self, account: &str) -> (String, String) {
        let (s, v) = self.gw.http.json("POST", "/v1/associations", &self.gw.tokens.tenant, Some(json!({ "account": account, "extension": "2005", "display_name": "Alice Martin" }))).await.unwrap();
        assert_eq!(s, 201, "{v}");
        (v["id"].as_str().unwrap().to_owned(), v["code"].as_str().unwrap().to_owned())
    }
    async fn wait_bound(&self, id: &str) {
        timeout(LIMIT, async {
            loop {
                let v = self.gw.http.json("GET", &format!("/v1/associations/{id}"), &self.gw.tokens.tenant, None).await.unwrap().1;
                if v["state"] == "bound" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await; // polling the API, as an app does
            }
        })
        .await
        .expect("the association is bound");
    }
    /// The proof call at the IVR: its call id and the context digits sent after the number.
    async fn proof_call(&mut self) -> (String, String) {
        let call = loop {
            if let IvrSignal::Connected { call, .. } = timeout(LIMIT, self.ivr.recv()).await.unwrap().unwrap() {
                break call;
            }
        };
        let IvrSignal::Digits { digits, .. } = timeout(LIMIT, self.ivr.recv()).await.unwrap().unwrap() else { panic!("context digits after the number") };
        (call, digits.trim_start_matches('*').trim_end_matches('#').to_owned())
    }
    async fn webhook(&self, call: &str, digits: Option<&str>) -> Value {
        let (s, v) = ivr_request(&self.gw.http, &self.gw.tokens.ivr, call, DID_2005, digits).await.unwrap();
        assert_eq!(s, 200, "{v}");
        v
    }
    async fn twiml(&self, call: &str, digits: Option<&str>) -> String {
        let (s, body) = twiml_request(&self.gw.http, &self.gw.tokens.twiml, &twiml_params(call, DID_2005, IVR_NUMBER, "in-progress", digits)).await.unwrap();
        assert_eq!(s, 200, "{body}");
        body
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_french_pbx_speaks_french_through_the_webhook() {
    let mut e = env("language = \"fr-FR\"\n").await;
    let (id, code) = e.created("alice").await;
    let (call, ctx) = e.proof_call().await;
    // Before the call presents an attempt: the language of the PBX whose IVR number it called.
    let r = e.webhook(&call, None).await;
    assert_eq!((r["language"].as_str(), r["say"].as_str()), (Some("fr-FR"), Some("Veuillez saisir le numéro affiché dans votre application, puis la touche dièse.")), "{r}");
    let r = e.webhook(&call, Some(&ctx)).await;
    assert_eq!(r["language"], "fr-FR", "{r}");
    assert_eq!(
        r["say"],
        "Le compte alice de acme demande à relier ce téléphone. Selon acme, il s'agit de : Alice Martin. Si vous êtes à l'origine de cette demande, appuyez sur 1. Sinon, appuyez sur 9.",
        "the account, its tenant and the tenant's words as theirs, in French: {r}"
    );
    assert_eq!(r["gather"]["max_digits"], 1, "{r}");
    let r = e.webhook(&call, Some("1")).await;
    assert_eq!((r["language"].as_str(), r["say"].as_str()), (Some("fr-FR"), Some("Veuillez saisir le code affiché dans votre application, puis la touche dièse.")), "{r}");
    let r = e.webhook(&call, Some(&code)).await;
    assert_eq!((r["say"].as_str(), r["hangup"].as_bool()), (Some("Merci. Ce téléphone est désormais relié au compte alice. Au revoir."), Some(true)), "{r}");
    e.wait_bound(&id).await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_french_pbx_speaks_french_through_twiml_escaped_and_with_the_configured_words() {
    // An override of the shipped French (with an apostrophe and a placeholder).
    let mut e = env("language = \"fr-FR\"\n\n[prompts.\"fr-FR\"]\nbound = \"C'est fait : ce téléphone est relié au compte {account}. Au revoir.\"\n").await;
    let (id, code) = e.created("alice").await;
    let (call, ctx) = e.proof_call().await;
    let r = e.twiml(&call, Some(&ctx)).await;
    assert!(
        r.contains("<Say language=\"fr-FR\">Le compte alice de acme demande à relier ce téléphone. Selon acme, il s&apos;agit de : Alice Martin. Si vous êtes à l&apos;origine de cette demande, appuyez sur 1. Sinon, appuyez sur 9.</Say>"),
        "{r}"
    );
    assert!(e.twiml(&call, Some("1")).await.contains("<Say language=\"fr-FR\">Veuillez saisir le code affiché"));
    let r = e.twiml(&call, Some(&code)).await;
    assert!(r.ends_with("<Say language=\"fr-FR\">C&apos;est fait : ce téléphone est relié au compte alice. Au revoir.</Say><Hangup/></Response>"), "{r}");
    e.wait_bound(&id).await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_without_a_language_speaks_english() {
    let mut e = env("").await;
    let (id, code) = e.created("alice").await;
    let (call, ctx) = e.proof_call().await;
    let r = e.webhook(&call, Some(&ctx)).await;
    assert_eq!(
        (r["language"].as_str(), r["say"].as_str()),
        (Some("en-US"), Some("The account alice of acme asks to link this phone. acme gives its name as: Alice Martin. If you asked for this, press 1. If you did not, press 9.")),
        "{r}"
    );
    e.webhook(&call, Some("1")).await;
    assert_eq!(e.webhook(&call, Some(&code)).await["say"], "Thank you. This phone is now linked to the account alice. Goodbye.");
    e.wait_bound(&id).await;
    e.gw.running.shutdown().await;
}
