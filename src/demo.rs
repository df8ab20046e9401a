//! `cstagate demo`: the whole association on loopback in one process, no setup. A simulated PBX,
//! the real gateway (store in a temporary directory, PBX link, HTTP API, IVR webhook), a
//! simulated IVR platform that speaks the webhook adapter (signed requests, prompts, gathered
//! digits), and a simulated user who asks for a code in the app and keys it on the phone. It
//! narrates each step and returns whether the expected outcome happened.
//!
//! The tenant token and the IVR key are drawn at random for each run. The pieces the test kit
//! shares with the demo (the loopback configuration, starting it, signed webhook requests) are
//! `pub(crate)`: the product library exports no test support (that is `crate::testkit`, behind
//! the `testkit` feature).

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};

use crate::http_client::Http;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The user answers, confirms and keys the right code: bound.
    Ok,
    /// The user keys a wrong code first, then the right one: bound.
    WrongCode,
    /// The phone rings and nobody answers: failed, no_answer.
    NoAnswer,
    /// The phone is locked first; its user keys a wrong local PIN: failed, phone_locked.
    LockedPhone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoDialect {
    Phase3,
    Oxe,
    /// CSTA XML (ECMA-323 with an ECMA-354 session, 8-byte header framing), as OpenScape speaks it.
    Xml,
}

/// The cloud IVR's number in the demo's PBX and configuration (not a secret).
pub(crate) const IVR_NUMBER: &str = "0800100200";

/// The configuration of a gateway on loopback next to `sim` (its wire decides the PBX preset,
/// and for XML its framing and session): the API on an ephemeral port, the database `db`, tenants `acme` and `globex`, one
/// PBX `paris` of tenant `acme`. `gateway`, `tenant` and `pbx` are extra lines of `[gateway]`,
/// of tenant `acme` and of the `[[pbx]]` table (at least `extensions`). The tokens' variables
/// are never read: the secrets are handed to [`crate::server::start`] directly.
///
/// # Errors
/// The extra lines make the configuration invalid.
pub(crate) fn local_config(sim: &SimPbx, db: &std::path::Path, gateway: &str, tenant: &str, pbx: &str) -> Result<Config, crate::config::ConfigError> {
    let (dialect, wire) = {
        let c = sim.config();
        if c.framing.is_xml() {
            let framing = if c.framing == crate::codec::Framing::XmlNul { "nul" } else { "header" };
            let session = if c.xml.session { "required" } else { "none" };
            ("xml", format!("xml_framing = \"{framing}\"\nxml_session = \"{session}\"\n"))
        } else if c.dialect == crate::codec::Dialect::Phase2 {
            ("oxe", String::new())
        } else {
            ("phase3", String::new())
        }
    };
    let toml = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\n{gateway}\n[[tenant]]\nid = \"acme\"\ntoken_env = \"UNUSED\"\n{tenant}\n[[tenant]]\nid = \"globex\"\ntoken_env = \"UNUSED\"\n\n[[pbx]]\nid = \"paris\"\naddress = \"{}\"\ndialect = \"{dialect}\"\n{wire}tenant = \"acme\"\nivr_number = \"{IVR_NUMBER}\"\n{pbx}",
        db.display(),
        sim.addr(),
    );
    Config::parse(&toml)
}

/// Why a gateway on loopback did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalStartError {
    #[error("{0}")]
    Start(#[from] crate::server::StartError),
    #[error("the configuration names no PBX `paris`")]
    NoLink,
    #[error("the PBX link did not come up within 10 s")]
    LinkDown,
}

/// Start the real gateway from `config` and wait (10 s at most) for the link of PBX `paris`.
///
/// # Errors
/// The gateway did not start, or its link stayed down.
pub(crate) async fn start_local(config: &Config, secrets: crate::config::Secrets) -> Result<(crate::server::Running, Http), LocalStartError> {
    let running = crate::server::start(config, secrets).await?;
    let Some(link) = running.gateway.links().get("paris").cloned() else {
        running.shutdown().await;
        return Err(LocalStartError::NoLink);
    };
    if tokio::time::timeout(Duration::from_secs(10), link.wait_for(|s| *s == crate::link::LinkState::Up)).await.is_err() {
        running.shutdown().await;
        return Err(LocalStartError::LinkDown);
    }
    let http = Http::new(&format!("http://{}", running.addr));
    Ok((running, http))
}

/// POST a body to the IVR webhook the way an IVR platform does: stamped with the current time
/// and signed with [`crate::webhook::sign_webhook`].
///
/// # Errors
/// As [`Http::send`].
pub(crate) async fn post_webhook(http: &Http, secret: &str, raw: Vec<u8>) -> Result<(u16, Value), String> {
    let [(tk, tv), (sk, sv)] = crate::webhook::webhook_headers(secret, &raw);
    http.send("POST", "/v1/ivr/webhook", &[(tk, &tv), (sk, &sv)], Some(raw)).await
}

/// The body of the IVR platform's webhook request on `call` to the IVR number (no `digits` on
/// the first request of a call).
pub(crate) fn ivr_body(call: &str, from: &str, digits: Option<&str>) -> Vec<u8> {
    let mut body = json!({ "call": call, "from": from, "to": IVR_NUMBER });
    if let Some(d) = digits {
        body["digits"] = json!(d);
    }
    body.to_string().into_bytes()
}

/// One signed webhook request of the IVR platform on `call`.
///
/// # Errors
/// As [`Http::send`].
pub(crate) async fn ivr_request(http: &Http, secret: &str, call: &str, from: &str, digits: Option<&str>) -> Result<(u16, Value), String> {
    post_webhook(http, secret, ivr_body(call, from, digits)).await
}

/// Run one scenario, narrating through `say`. Returns the final association JSON and whether it
/// is the scenario's expected outcome.
///
/// # Errors
/// Anything that prevented the demo from running (not an unexpected outcome).
pub async fn run(dialect: DemoDialect, scenario: Scenario, say: &(dyn Fn(&str) + Sync)) -> Result<(Value, bool), String> {
    let dir = std::env::temp_dir().join(format!("cstagate-demo-{}-{}", std::process::id(), crate::random::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let result = run_in(&dir, dialect, scenario, say).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// One narration line, `elapsed` after the demo began: `+1.234 s  GW     ...`.
pub fn at(elapsed: Duration, line: &str) -> String {
    format!("+{:.3} s  {line}", elapsed.as_secs_f64())
}

/// What each scenario should end in, in words and as (state, reason).
fn expectation(scenario: Scenario) -> (&'static str, &'static str, &'static str) {
    match scenario {
        Scenario::Ok => ("alice answers, confirms and keys the right code", "bound", ""),
        Scenario::WrongCode => ("alice keys a wrong code first, then the right one", "bound", ""),
        Scenario::NoAnswer => ("the phone rings and nobody answers", "failed", "no_answer"),
        Scenario::LockedPhone => ("the phone is locked first and its user keys a wrong local PIN", "failed", "phone_locked"),
    }
}

/// The narration: lines stamped with the wall-clock millisecond they happened at (the gateway's
/// history steps carry theirs), printed in that order with the time since the start.
struct Narration<'a> {
    start: crate::association::Millis,
    say: &'a (dyn Fn(&str) + Sync),
    held: Vec<(crate::association::Millis, usize, String)>,
    seq: usize,
}

impl Narration<'_> {
    fn push(&mut self, at: crate::association::Millis, line: String) {
        self.seq += 1;
        self.held.push((at, self.seq, line));
    }

    fn now(&mut self, line: String) {
        self.push(crate::clock::now_ms(), line);
    }

    /// Print what happened up to `upto`, in order.
    fn flush(&mut self, upto: crate::association::Millis) {
        self.held.sort();
        let n = self.held.iter().take_while(|(at, _, _)| *at <= upto).count();
        for (at, _, line) in self.held.drain(..n) {
            (self.say)(&at_line(self.start, at, &line));
        }
    }
}

fn at_line(start: crate::association::Millis, when: crate::association::Millis, line: &str) -> String {
    at(Duration::from_millis(when.saturating_sub(start)), line)
}

/// A moment as the time of day (UTC), to the second.
fn clock_time(at: crate::association::Millis) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(at);
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn run_in(dir: &std::path::Path, dialect: DemoDialect, scenario: Scenario, say: &(dyn Fn(&str) + Sync)) -> Result<(Value, bool), String> {
    let mut n = Narration { start: crate::clock::now_ms(), say, held: Vec::new(), seq: 0 };
    let (what, want_state, want_reason) = expectation(scenario);
    let want = if want_reason.is_empty() { want_state.to_owned() } else { format!("{want_state}, reason {want_reason}") };
    n.now(format!("DEMO   scenario {}: {what}; expected outcome: {want}", clap::ValueEnum::to_possible_value(&scenario).map(|v| v.get_name().to_owned()).unwrap_or_default()));
    // The PBX.
    let mut sim_cfg = match dialect {
        DemoDialect::Phase3 => SimConfig::phase3(&["2005", "2006"]),
        DemoDialect::Oxe => SimConfig::oxe(&["2005", "2006"]),
        DemoDialect::Xml => SimConfig::xml(&["2005", "2006"], crate::codec::Framing::XmlHeader),
    };
    sim_cfg.ivr_number = Some(IVR_NUMBER.into());
    for e in &mut sim_cfg.extensions {
        e.behaviour = Behaviour::Answer { after: Duration::from_millis(300) };
        e.pin = Some("1234".into());
        e.user_pin = Some("1234".into());
    }
    if scenario == Scenario::NoAnswer {
        sim_cfg.extensions[0].behaviour = Behaviour::NeverAnswer;
    }
    if scenario == Scenario::LockedPhone {
        sim_cfg.extensions[0].user_pin = Some("0000".into());
    }
    let mut sim = SimPbx::start(sim_cfg, "127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let mut ivr_signals = sim.take_ivr().ok_or("no IVR endpoint")?;
    let (pbx_name, link_name) = match dialect {
        DemoDialect::Phase3 => ("ECMA-285 Phase III", "CSTA over TCP, ACSE associated"),
        DemoDialect::Oxe => ("Alcatel OXE (CSTA Phase II)", "CSTA over TCP, ACSE associated"),
        DemoDialect::Xml => ("CSTA XML (ECMA-323, OpenScape-like)", "CSTA XML over TCP, ECMA-354 session started"),
    };
    n.now(format!("PBX    simulated {pbx_name} PBX listening on {}", sim.addr()));

    // The gateway, from a configuration file's text.
    let lock = if scenario == Scenario::LockedPhone { "lock_prefix = \"*66\"\n" } else { "" };
    let ring = if scenario == Scenario::NoAnswer { "ring_timeout = \"3s\"\n" } else { "" };
    let pbx = format!("extensions = [\"2000-2099\"]\nnames = {{ \"2005\" = \"Alice Martin\" }}\ncontext_delivery = \"dial_suffix\"\nreconnect_min = \"50ms\"\n{lock}{ring}");
    let config = local_config(&sim, &dir.join("gateway.db"), "", "", &pbx).map_err(|e| e.to_string())?;
    // The app's token and the IVR platform's key, new for every run: nothing the demo uses is a
    // fixed secret anyone could reuse against a gateway.
    let tenant_token = crate::random::id();
    let ivr_secret = crate::random::id();
    let mut secrets = crate::config::Secrets { ivr_secret: Some(ivr_secret.clone()), ..Default::default() };
    secrets.tenant_tokens.insert("acme".into(), tenant_token.clone());
    let (running, http) = start_local(&config, secrets).await.map_err(|e| e.to_string())?;
    n.now(format!("GW     gateway API on http://{}, PBX link up ({link_name})", running.addr));

    // The user asks the cloud app to link extension 2005; the app calls the API.
    n.now("APP    alice asks to link extension 2005: POST /v1/associations".into());
    let (status, created) = http.json("POST", "/v1/associations", &tenant_token, Some(json!({ "account": "alice", "extension": "2005", "display_name": "Alice Martin" }))).await?;
    if status != 201 {
        return Err(format!("association refused: {status} {created}"));
    }
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let code = created["code"].as_str().unwrap_or_default().to_owned();
    let expires = created["expires_at"].as_u64().map_or_else(|| "?".to_owned(), clock_time);
    n.now(format!("APP    code {code} shown to alice, valid until {expires}; the gateway calls her phone (the proof call's context id never leaves the call)"));

    // The IVR platform: answers calls to the IVR number and relays prompts and digits. What it
    // sees goes to the narration as it happens, stamped.
    let ivr_http = http.clone();
    let ivr_line = sim.ivr_handle();
    let wrong_first = scenario == Scenario::WrongCode;
    let key = ivr_secret.clone();
    let (lines_tx, mut lines) = tokio::sync::mpsc::channel::<(crate::association::Millis, String)>(256);
    let in_call = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_call = in_call.clone();
    let ivr_task = tokio::spawn(async move {
        let say = |l: String| {
            let _ = lines_tx.try_send((crate::clock::now_ms(), l));
        };
        let mut pending_context: Option<String> = None;
        let mut call_id: Option<(String, String)> = None;
        let mut wrong_sent = false;
        while let Some(sig) = ivr_signals.recv().await {
            match sig {
                IvrSignal::Connected { call, calling, called } => {
                    on_call.store(true, std::sync::atomic::Ordering::SeqCst);
                    say(format!("IVR    call {call} from {calling} to {called} answered"));
                    // Digits dialled after the number are signalled together with the call.
                    while let Ok(IvrSignal::Digits { digits, .. }) = ivr_signals.try_recv() {
                        say(format!("IVR    dialled after the number: {digits}"));
                        pending_context = Some(digits);
                    }
                    call_id = Some((call, calling));
                }
                IvrSignal::Digits { digits, .. } => pending_context = Some(digits),
                IvrSignal::Cleared { call } => {
                    say(format!("IVR    call {call} cleared by the PBX"));
                    break;
                }
            }
            let Some((call, from)) = call_id.clone() else { continue };
            // The dialled suffix has arrived (or will not): run the dialogue.
            let mut digits: Option<String> = pending_context.take();
            loop {
                let reply = match ivr_request(&ivr_http, &key, &call, &from, digits.as_deref()).await {
                    Ok((200, r)) => r,
                    Ok((s, r)) => {
                        say(format!("IVR    webhook answered {s}: {r}"));
                        break;
                    }
                    Err(e) => {
                        say(format!("IVR    webhook failed: {e}"));
                        break;
                    }
                };
                let text = reply["say"].as_str().unwrap_or("").to_owned();
                if !text.is_empty() {
                    say(format!("IVR    says: \"{text}\""));
                }
                if reply["hangup"].as_bool().unwrap_or(false) {
                    break;
                }
                // The simulated user at the phone answers the prompt.
                let d = if text.contains("press 1") && text.contains("press 9") {
                    "1".to_owned()
                } else if text.contains("code") {
                    if wrong_first && !wrong_sent {
                        wrong_sent = true;
                        "000000#".to_owned()
                    } else {
                        format!("{code}#")
                    }
                } else {
                    // The context prompt: the digits dialled after the IVR number.
                    pending_context.take().unwrap_or_default()
                };
                say(format!("USER   keys {d}"));
                digits = Some(d);
            }
            // The IVR platform ends its call after the dialogue, however the dialogue ended
            // (a refused webhook request included), as a real one does.
            say("IVR    hangs up".into());
            ivr_line.hangup(&call);
            break;
        }
        on_call.store(false, std::sync::atomic::Ordering::SeqCst);
    });

    // The app follows the association until it is over.
    let mut seen = 0usize;
    let final_view = loop {
        let upto = crate::clock::now_ms();
        while let Ok((at, l)) = lines.try_recv() {
            n.push(at, l);
        }
        let (s, v) = http.json("GET", &format!("/v1/associations/{id}"), &tenant_token, None).await?;
        if s != 200 {
            return Err(format!("GET association: {s} {v}"));
        }
        let history = v["history"].as_array().cloned().unwrap_or_default();
        for h in history.iter().skip(seen) {
            n.push(h["at"].as_u64().unwrap_or(upto), format!("GW     {:<14} {}", h["step"].as_str().unwrap_or(""), h["detail"].as_str().unwrap_or("")));
        }
        seen = history.len();
        n.flush(upto);
        let state = v["state"].as_str().unwrap_or("");
        let retryable = v["retryable"].as_bool().unwrap_or(false);
        if matches!(state, "bound" | "expired" | "cancelled") || (state == "failed" && (!retryable || scenario != Scenario::WrongCode)) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The IVR platform's last words (its goodbye and hang-up) if it is on a call; otherwise
    // there is nothing to wait for.
    let mut ivr_task = ivr_task;
    if in_call.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut ivr_task).await;
    }
    ivr_task.abort();
    while let Ok((at, l)) = lines.try_recv() {
        n.push(at, l);
    }
    let state = final_view["state"].as_str().unwrap_or("");
    let reason = final_view["reason"].as_str().unwrap_or("");
    let expected = state == want_state && reason == want_reason;
    if state == "bound" {
        let (_, b) = http.json("GET", "/v1/bindings/paris/2005", &tenant_token, None).await?;
        n.now(format!("APP    extension 2005 bound to {} (DID seen by the IVR: {}, unverified)", b["account"], b["did"]));
    } else {
        n.now(format!("APP    association ended: {state} ({reason})"));
    }
    let outcome = if reason.is_empty() { state.to_owned() } else { format!("{state}, reason {reason}") };
    n.now(if expected { format!("DEMO   outcome {outcome}: as expected") } else { format!("DEMO   outcome {outcome}: expected {want}") });
    n.flush(u64::MAX);
    running.shutdown().await;
    drop(sim);
    Ok((final_view, expected))
}
