//! Spoken languages end to end (issue 14): a PBX with `language = "fr-FR"` gets the whole
//! dialogue in French through the JSON webhook (each reply names `fr-FR`) and through TwiML
//! (`<Say language="fr-FR">` with the French words, XML-escaped: French has apostrophes), with a
//! `[prompts."fr-FR"]` override reaching the wire; a PBX that names no language keeps English.

use cstagate::sim::SimConfig;
use cstagate::testkit::IVR_NUMBER;
use serde_json::{json, Value};

use crate::sim_env::SimEnv;

const DID_2005: &str = "+33144002005";

type Env = SimEnv;

/// The gateway next to a simulated PBX; `pbx` are more lines of its `[[pbx]]` table (the last
/// table of the file: `[prompts]` tables may follow).
async fn env(pbx: &str) -> Env {
    SimEnv::start(SimConfig::phase3(&["2005"]), format!("extensions = [\"2005\"]\n{pbx}")).await
}

/// Alice's request, with the name her tenant gives her.
fn alice() -> Value {
    json!({ "account": "alice", "extension": "2005", "display_name": "Alice Martin" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_french_pbx_speaks_french_through_the_webhook() {
    let mut e = env("language = \"fr-FR\"\n").await;
    let (id, code) = e.created_with(alice()).await;
    let (call, _, ctx) = e.proof_call().await;
    // Before the call presents an attempt: the language of the PBX whose IVR number it called.
    let r = e.say(&call, DID_2005, None).await;
    assert_eq!((r["language"].as_str(), r["say"].as_str()), (Some("fr-FR"), Some("Veuillez saisir le numéro affiché dans votre application, puis la touche dièse.")), "{r}");
    let r = e.say(&call, DID_2005, Some(&ctx)).await;
    assert_eq!(r["language"], "fr-FR", "{r}");
    assert_eq!(
        r["say"],
        "Le compte alice de acme demande à relier ce téléphone. Selon acme, il s'agit de : Alice Martin. Si vous êtes à l'origine de cette demande, appuyez sur 1. Sinon, appuyez sur 9.",
        "the account, its tenant and the tenant's words as theirs, in French: {r}"
    );
    assert_eq!(r["gather"]["max_digits"], 1, "{r}");
    let r = e.say(&call, DID_2005, Some("1")).await;
    assert_eq!((r["language"].as_str(), r["say"].as_str()), (Some("fr-FR"), Some("Veuillez saisir le code affiché dans votre application, puis la touche dièse.")), "{r}");
    let r = e.say(&call, DID_2005, Some(&code)).await;
    assert_eq!((r["say"].as_str(), r["hangup"].as_bool()), (Some("Merci. Ce téléphone est désormais relié au compte alice. Au revoir."), Some(true)), "{r}");
    e.wait(&id, |v| v["state"] == "bound").await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_french_pbx_speaks_french_through_twiml_escaped_and_with_the_configured_words() {
    // An override of the shipped French (with an apostrophe and a placeholder).
    let mut e = env("language = \"fr-FR\"\n\n[prompts.\"fr-FR\"]\nbound = \"C'est fait : ce téléphone est relié au compte {account}. Au revoir.\"\n").await;
    let (id, code) = e.created_with(alice()).await;
    let (call, _, ctx) = e.proof_call().await;
    let r = e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some(&ctx)).await;
    assert!(
        r.contains("<Say language=\"fr-FR\">Le compte alice de acme demande à relier ce téléphone. Selon acme, il s&apos;agit de : Alice Martin. Si vous êtes à l&apos;origine de cette demande, appuyez sur 1. Sinon, appuyez sur 9.</Say>"),
        "{r}"
    );
    assert!(e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some("1")).await.contains("<Say language=\"fr-FR\">Veuillez saisir le code affiché"));
    let r = e.twiml(&call, DID_2005, IVR_NUMBER, "in-progress", Some(&code)).await;
    assert!(r.ends_with("<Say language=\"fr-FR\">C&apos;est fait : ce téléphone est relié au compte alice. Au revoir.</Say><Hangup/></Response>"), "{r}");
    e.wait(&id, |v| v["state"] == "bound").await;
    e.gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbx_without_a_language_speaks_english() {
    let mut e = env("").await;
    let (id, code) = e.created_with(alice()).await;
    let (call, _, ctx) = e.proof_call().await;
    let r = e.say(&call, DID_2005, Some(&ctx)).await;
    assert_eq!(
        (r["language"].as_str(), r["say"].as_str()),
        (Some("en-US"), Some("The account alice of acme asks to link this phone. acme gives its name as: Alice Martin. If you asked for this, press 1. If you did not, press 9.")),
        "{r}"
    );
    e.say(&call, DID_2005, Some("1")).await;
    assert_eq!(e.say(&call, DID_2005, Some(&code)).await["say"], "Thank you. This phone is now linked to the account alice. Goodbye.");
    e.wait(&id, |v| v["state"] == "bound").await;
    e.gw.running.shutdown().await;
}
