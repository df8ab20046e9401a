//! `cstagate demo`: the whole association on loopback in one process, no setup. A simulated PBX,
//! the real gateway (store in a temporary directory, PBX link, HTTP API, IVR webhook), a
//! simulated IVR platform that speaks the webhook adapter (signed requests, prompts, gathered
//! digits), and a simulated user who asks for a code in the app and keys it on the phone. It
//! narrates each step and returns whether the expected outcome happened.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};

pub use crate::http_client::Http;

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
}

/// The bearer token of tenant `acme` in the demo and in every [`LocalGateway`].
pub const TENANT_TOKEN: &str = "demo-tenant-token";
/// The bearer token of tenant `globex` (a second tenant, for cross-tenant checks).
pub const OTHER_TENANT_TOKEN: &str = "demo-globex-token";
pub const ADMIN_TOKEN: &str = "demo-admin-token";
/// The key the IVR platform signs webhook requests with.
pub const IVR_SECRET: &str = "demo-ivr-secret";
pub const IVR_NUMBER: &str = "0800100200";

/// What a [`LocalGateway`] adds to its configuration.
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    /// Extra lines of `[gateway]` (`listen` and `database` are set).
    pub gateway: String,
    /// Extra lines of tenant `acme`.
    pub tenant: String,
    /// Lines of `[[pbx]]` after `id = "paris"`, `address`, `dialect`, `tenant = "acme"` and
    /// `ivr_number`: at least `extensions`.
    pub pbx: String,
    /// The database file; a fresh temporary directory when `None` (restart tests reuse one).
    pub db: Option<std::path::PathBuf>,
    /// Proof calls per extension an hour beyond what a configuration file may set (1..=20),
    /// for benchmarks that bind the same extensions thousands of times. Set on the parsed
    /// configuration, so no file can ask for it.
    pub proof_calls_per_hour: Option<usize>,
}

/// The real gateway started on loopback next to a simulated PBX, the way the demo, the tests
/// and the benchmarks need it: a database file, tenants `acme` and `globex`, one PBX `paris`,
/// the API on an ephemeral port, and the PBX link up before it is returned.
pub struct LocalGateway {
    pub running: crate::server::Running,
    pub http: Http,
    pub db: std::path::PathBuf,
}

/// The secrets of a [`LocalGateway`]: the tokens and IVR key above.
pub fn local_secrets() -> crate::config::Secrets {
    let mut secrets = crate::config::Secrets { admin_token: Some(ADMIN_TOKEN.into()), ivr_secret: Some(IVR_SECRET.into()), ..Default::default() };
    secrets.tenant_tokens.insert("acme".into(), TENANT_TOKEN.into());
    secrets.tenant_tokens.insert("globex".into(), OTHER_TENANT_TOKEN.into());
    secrets
}

/// POST a body to the IVR webhook the way an IVR platform does: stamped with the current time
/// and signed with [`crate::webhook::sign_webhook`].
///
/// # Errors
/// As [`Http::send`].
pub async fn post_webhook(http: &Http, secret: &str, raw: Vec<u8>) -> Result<(u16, Value), String> {
    let [(tk, tv), (sk, sv)] = crate::webhook::webhook_headers(secret, &raw);
    http.send("POST", "/v1/ivr/webhook", &[(tk, &tv), (sk, &sv)], Some(raw)).await
}

/// The body of the IVR platform's webhook request on `call` to the IVR number (no `digits` on
/// the first request of a call).
pub fn ivr_body(call: &str, from: &str, digits: Option<&str>) -> Vec<u8> {
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
pub async fn ivr_request(http: &Http, secret: &str, call: &str, from: &str, digits: Option<&str>) -> Result<(u16, Value), String> {
    post_webhook(http, secret, ivr_body(call, from, digits)).await
}

impl LocalGateway {
    /// Start it against `sim` (its dialect decides the PBX preset).
    ///
    /// # Errors
    /// The configuration is refused, the gateway cannot start, or the link stays down 10 s.
    pub async fn start(sim: &SimPbx, o: LocalOptions, secrets: crate::config::Secrets) -> Result<LocalGateway, String> {
        let db = match o.db {
            Some(db) => db,
            None => {
                let dir = std::env::temp_dir().join(format!("cstagate-local-{}-{}", std::process::id(), crate::random::id()));
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                dir.join("gateway.db")
            }
        };
        let dialect = if sim.config().dialect == crate::codec::Dialect::Phase2 { "oxe" } else { "phase3" };
        let toml = format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\n{}\n[[tenant]]\nid = \"acme\"\ntoken_env = \"UNUSED\"\n{}\n[[tenant]]\nid = \"globex\"\ntoken_env = \"UNUSED\"\n\n[[pbx]]\nid = \"paris\"\naddress = \"{}\"\ndialect = \"{dialect}\"\ntenant = \"acme\"\nivr_number = \"{IVR_NUMBER}\"\n{}",
            db.display(),
            o.gateway,
            o.tenant,
            sim.addr(),
            o.pbx,
        );
        let mut config = Config::parse(&toml).map_err(|e| e.to_string())?;
        if let Some(n) = o.proof_calls_per_hour {
            config.pbx.iter_mut().for_each(|p| p.proof_calls_per_hour = Some(n));
        }
        let running = crate::server::start(&config, secrets).await.map_err(|e| e.to_string())?;
        let link = running.gateway.links().get("paris").cloned().ok_or("no link")?;
        tokio::time::timeout(Duration::from_secs(10), link.wait_for(|s| *s == crate::link::LinkState::Up)).await.map_err(|_| "the PBX link did not come up")?;
        let http = Http::new(&format!("http://{}", running.addr));
        Ok(LocalGateway { running, http, db })
    }

    /// The PBX link of `paris`.
    pub fn link(&self) -> crate::link::Link {
        self.running.gateway.links()["paris"].clone()
    }
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

async fn run_in(dir: &std::path::Path, dialect: DemoDialect, scenario: Scenario, say: &(dyn Fn(&str) + Sync)) -> Result<(Value, bool), String> {
    // The PBX.
    let mut sim_cfg = match dialect {
        DemoDialect::Phase3 => SimConfig::phase3(&["2005", "2006"]),
        DemoDialect::Oxe => SimConfig::oxe(&["2005", "2006"]),
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
    say(&format!("PBX    simulated {} PBX listening on {}", if dialect == DemoDialect::Oxe { "Alcatel OXE (CSTA Phase II)" } else { "ECMA-285 Phase III" }, sim.addr()));

    // The gateway, from a configuration file's text.
    let lock = if scenario == Scenario::LockedPhone { "lock_prefix = \"*66\"\n" } else { "" };
    let ring = if scenario == Scenario::NoAnswer { "ring_timeout = \"3s\"\n" } else { "" };
    let options = LocalOptions {
        pbx: format!("extensions = [\"2000-2099\"]\nnames = {{ \"2005\" = \"Alice Martin\" }}\ncontext_delivery = \"dial_suffix\"\nreconnect_min = \"50ms\"\n{lock}{ring}"),
        db: Some(dir.join("gateway.db")),
        ..LocalOptions::default()
    };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await?;
    say(&format!("GW     gateway API on http://{}, PBX link up (CSTA over TCP, ACSE associated)", gw.running.addr));
    let http = gw.http.clone();

    // The user asks the cloud app to link extension 2005; the app calls the API.
    say("APP    alice asks to link extension 2005: POST /v1/associations");
    let (status, created) = http.json("POST", "/v1/associations", TENANT_TOKEN, Some(json!({ "account": "alice", "extension": "2005", "display_name": "Alice Martin" }))).await?;
    if status != 201 {
        return Err(format!("association refused: {status} {created}"));
    }
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let code = created["code"].as_str().unwrap_or_default().to_owned();
    say(&format!("APP    code {code} shown to alice; the gateway calls her phone (the proof call's context id never leaves the call)"));

    // The IVR platform: answers calls to the IVR number and relays prompts and digits.
    let ivr_http = http.clone();
    let ivr_line = sim.ivr_handle();
    let wrong_first = scenario == Scenario::WrongCode;
    let ivr_task = tokio::spawn(async move {
        let mut narration = Vec::new();
        let mut pending_context: Option<String> = None;
        let mut call_id: Option<(String, String)> = None;
        let mut wrong_sent = false;
        while let Some(sig) = ivr_signals.recv().await {
            match sig {
                IvrSignal::Connected { call, calling, called } => {
                    narration.push(format!("IVR    call {call} from {calling} to {called} answered"));
                    // Digits dialled after the number are signalled together with the call.
                    while let Ok(IvrSignal::Digits { digits, .. }) = ivr_signals.try_recv() {
                        narration.push(format!("IVR    dialled after the number: {digits}"));
                        pending_context = Some(digits);
                    }
                    call_id = Some((call, calling));
                }
                IvrSignal::Digits { digits, .. } => pending_context = Some(digits),
                IvrSignal::Cleared { call } => {
                    narration.push(format!("IVR    call {call} cleared by the PBX"));
                    break;
                }
            }
            let Some((call, from)) = call_id.clone() else { continue };
            // The dialled suffix has arrived (or will not): run the dialogue.
            let mut digits: Option<String> = pending_context.take();
            loop {
                let reply = match ivr_request(&ivr_http, IVR_SECRET, &call, &from, digits.as_deref()).await {
                    Ok((200, r)) => r,
                    Ok((s, r)) => {
                        narration.push(format!("IVR    webhook answered {s}: {r}"));
                        break;
                    }
                    Err(e) => {
                        narration.push(format!("IVR    webhook failed: {e}"));
                        break;
                    }
                };
                let text = reply["say"].as_str().unwrap_or("").to_owned();
                if !text.is_empty() {
                    narration.push(format!("IVR    says: \"{text}\""));
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
                narration.push(format!("USER   keys {d}"));
                digits = Some(d);
            }
            // The IVR platform ends its call after the dialogue, however the dialogue ended
            // (a refused webhook request included), as a real one does.
            narration.push("IVR    hangs up".into());
            ivr_line.hangup(&call);
            break;
        }
        narration
    });

    // The app follows the association until it is over.
    let mut seen = 0usize;
    let final_view = loop {
        let (s, v) = http.json("GET", &format!("/v1/associations/{id}"), TENANT_TOKEN, None).await?;
        if s != 200 {
            return Err(format!("GET association: {s} {v}"));
        }
        let history = v["history"].as_array().cloned().unwrap_or_default();
        for h in history.iter().skip(seen) {
            say(&format!("GW     {:<14} {}", h["step"].as_str().unwrap_or(""), h["detail"].as_str().unwrap_or("")));
        }
        seen = history.len();
        let state = v["state"].as_str().unwrap_or("");
        let retryable = v["retryable"].as_bool().unwrap_or(false);
        if matches!(state, "bound" | "expired" | "cancelled") || (state == "failed" && (!retryable || scenario != Scenario::WrongCode)) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Ok(Ok(lines)) = tokio::time::timeout(Duration::from_secs(5), ivr_task).await {
        for l in lines {
            say(&l);
        }
    }
    let state = final_view["state"].as_str().unwrap_or("");
    let reason = final_view["reason"].as_str().unwrap_or("");
    let expected = match scenario {
        Scenario::Ok | Scenario::WrongCode => state == "bound",
        Scenario::NoAnswer => state == "failed" && reason == "no_answer",
        Scenario::LockedPhone => state == "failed" && reason == "phone_locked",
    };
    if state == "bound" {
        let (_, b) = http.json("GET", "/v1/bindings/paris/2005", TENANT_TOKEN, None).await?;
        say(&format!("APP    extension 2005 bound to {} (DID seen by the IVR: {}, unverified)", b["account"], b["did"]));
    } else {
        say(&format!("APP    association ended: {state} ({reason})"));
    }
    gw.running.shutdown().await;
    drop(sim);
    Ok((final_view, expected))
}

/// What a load run saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Association id → final state (`bound`, `cancelled`, ...), as the API reported it.
    pub outcomes: std::collections::HashMap<String, String>,
    /// Time from sending the code digits to the IVR's answer (the binding is committed before
    /// the answer).
    pub code_to_binding: Vec<Duration>,
    pub elapsed: Duration,
}

/// Drive `rounds` × `extensions.len()` associations through the API and the IVR webhook, one
/// round at a time, all extensions of a round concurrently. Every other association keys the
/// right code (bound, then unbound by the account so the next round can bind again); the
/// others key three wrong codes and then cancel. Used by the load test and the benchmark.
///
/// # Errors
/// Any HTTP failure or unexpected status.
pub async fn drive_many(http: &Http, ivr: &mut Ivr, ivr_secret: &str, tenant_token: &str, extensions: &[String], rounds: usize) -> Result<LoadReport, String> {
    use std::sync::Arc;
    let hang = ivr.line.clone();
    // extension → (code, right?): what the simulated user at each phone knows from the app.
    let codes: Codes = Arc::default();
    let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel::<Result<Option<Duration>, String>>();
    let ivr_http = http.clone();
    let secret = ivr_secret.to_owned();
    let codes2 = codes.clone();
    let platform = async move {
        while let Some(IvrCall { call, from, context: ctx, extension }) = ivr.next_call().await {
            let http = ivr_http.clone();
            let secret = secret.clone();
            let done = done_tx.clone();
            let hang = hang.clone();
            let codes = codes2.clone();
            tokio::spawn(async move {
                // The call can reach the IVR before the app has read the API's answer: wait for
                // the code to be known.
                let (code, right) = codes.take(&extension).await;
                let r = ivr_dialogue(&http, &secret, &call, &from, &ctx, &code, right).await;
                hang.hangup(&call);
                let _ = done.send(r);
            });
        }
    };
    let main = drive_rounds(http, tenant_token, extensions, rounds, codes, done_rx);
    tokio::select! {
        r = main => r,
        () = platform => Err("IVR endpoint closed".into()),
    }
}

/// The simulated IVR platform's connection to the simulated PBX.
pub struct Ivr {
    pub signals: tokio::sync::mpsc::UnboundedReceiver<IvrSignal>,
    pub line: crate::sim::IvrHandle,
    /// Calls answered whose context digits have not come yet: call → calling number.
    connected: std::collections::HashMap<String, String>,
    /// The simulator's DID prefix: the calling number less it is the calling extension.
    did_prefix: String,
}

/// A call that reached the IVR, with the context id dialled after the number.
#[derive(Debug, Clone)]
pub struct IvrCall {
    pub call: String,
    /// The calling number as presented.
    pub from: String,
    /// The digits dialled after the IVR number (what a real IVR platform receives as DTMF).
    pub context: String,
    /// The calling extension (the calling number less the simulator's DID prefix): which
    /// simulated user is at the phone.
    pub extension: String,
}

impl Ivr {
    /// Take the simulator's IVR endpoint.
    pub fn of(sim: &mut SimPbx) -> Option<Ivr> {
        let did_prefix = sim.did_prefix();
        Some(Ivr { signals: sim.take_ivr()?, line: sim.ivr_handle(), connected: Default::default(), did_prefix })
    }

    /// The next call that reached the IVR with its context digits; `None` when the simulator
    /// is gone.
    pub async fn next_call(&mut self) -> Option<IvrCall> {
        loop {
            match self.signals.recv().await? {
                IvrSignal::Connected { call, calling, .. } => {
                    self.connected.insert(call, calling);
                }
                IvrSignal::Digits { call, digits } => {
                    if let Some(from) = self.connected.remove(&call) {
                        let extension = from.strip_prefix(self.did_prefix.as_str()).unwrap_or(&from).to_owned();
                        return Some(IvrCall { call, from, context: digits.trim_start_matches('*').trim_end_matches('#').to_owned(), extension });
                    }
                }
                IvrSignal::Cleared { call } => {
                    self.connected.remove(&call);
                }
            }
        }
    }
}

/// Codes by extension, shared between the app side and the simulated users at the phones.
#[derive(Default)]
struct CodeBook {
    codes: std::sync::Mutex<std::collections::HashMap<String, (String, bool)>>,
    added: tokio::sync::Notify,
}

type Codes = std::sync::Arc<CodeBook>;

impl CodeBook {
    fn insert(&self, extension: String, code: String, right: bool) {
        if let Ok(mut m) = self.codes.lock() {
            m.insert(extension, (code, right));
        }
        self.added.notify_waiters();
    }

    /// The code of the extension's current association, taken once: the next round's call to
    /// the same extension must wait for the next round's code, not reuse this one.
    async fn take(&self, extension: &str) -> (String, bool) {
        loop {
            let notified = self.added.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = self.codes.lock().ok().and_then(|mut m| m.remove(extension)) {
                return v;
            }
            notified.await;
        }
    }
}

async fn drive_rounds(http: &Http, tenant_token: &str, extensions: &[String], rounds: usize, codes: Codes, mut done_rx: tokio::sync::mpsc::UnboundedReceiver<Result<Option<Duration>, String>>) -> Result<LoadReport, String> {
    let mut report = LoadReport::default();
    let t0 = std::time::Instant::now();
    let mut n = 0usize;
    for round in 0..rounds {
        let mut tasks = Vec::new();
        for (i, ext) in extensions.iter().enumerate() {
            n += 1;
            let account = format!("acct{n}");
            // Alternate per extension from round to round, so successes reset the failure
            // counters as they would in real use.
            let right = (round + i) % 2 == 0;
            let http = http.clone();
            let token = tenant_token.to_owned();
            let ext = ext.clone();
            let codes = codes.clone();
            tasks.push(tokio::spawn(async move {
                let (s, v) = http.json("POST", "/v1/associations", &token, Some(json!({ "account": account, "extension": ext }))).await?;
                if s != 201 {
                    return Err(format!("create: {s} {v}"));
                }
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                codes.insert(ext.clone(), v["code"].as_str().unwrap_or_default().to_owned(), right);
                Ok::<_, String>((id, account, ext, right))
            }));
        }
        let mut created = Vec::new();
        for t in tasks {
            created.push(t.await.map_err(|e| e.to_string())??);
        }
        // Each dialogue reports once.
        for _ in 0..created.len() {
            match done_rx.recv().await {
                Some(Ok(Some(d))) => report.code_to_binding.push(d),
                Some(Ok(None)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err("IVR platform stopped".into()),
            }
        }
        // Settle the round, all extensions at once: unbind the bound, cancel the others; record
        // the final states.
        let mut settle = Vec::new();
        for (id, account, ext, right) in created {
            let http = http.clone();
            let token = tenant_token.to_owned();
            settle.push(tokio::spawn(async move {
                if right {
                    let (s, v) = http.json("DELETE", &format!("/v1/bindings/paris/{ext}?account={account}"), &token, None).await?;
                    if s != 204 {
                        return Err(format!("unbind {ext}: {s} {v}"));
                    }
                } else {
                    let (s, v) = http.json("DELETE", &format!("/v1/associations/{id}"), &token, None).await?;
                    if s != 200 {
                        return Err(format!("cancel {id}: {s} {v}"));
                    }
                }
                let (_, v) = http.json("GET", &format!("/v1/associations/{id}"), &token, None).await?;
                Ok::<_, String>((id, v["state"].as_str().unwrap_or_default().to_owned()))
            }));
        }
        for t in settle {
            let (id, state) = t.await.map_err(|e| e.to_string())??;
            report.outcomes.insert(id, state);
        }
    }
    report.elapsed = t0.elapsed();
    Ok(report)
}

/// One call's webhook dialogue: context, confirm, then the right code or three wrong ones.
/// Returns the code-to-binding time for a right code.
async fn ivr_dialogue(http: &Http, secret: &str, call: &str, from: &str, ctx: &str, code: &str, right: bool) -> Result<Option<Duration>, String> {
    let mut steps = vec![None, Some(ctx.to_owned()), Some("1".to_owned())];
    if right {
        steps.push(Some(code.to_owned()));
    } else {
        steps.extend(["000000", "000001", "000002"].map(|c| Some(if c == code { "999999".to_owned() } else { c.to_owned() })));
    }
    let last = steps.len() - 1;
    let mut took = None;
    for (i, d) in steps.into_iter().enumerate() {
        let t = std::time::Instant::now();
        let (s, r) = ivr_request(http, secret, call, from, d.as_deref()).await?;
        if s != 200 {
            return Err(format!("webhook {s}: {r}"));
        }
        if i == last && right {
            if !r["say"].as_str().unwrap_or("").contains("now linked") {
                return Err(format!("expected a binding, got {r}"));
            }
            took = Some(t.elapsed());
        }
    }
    Ok(took)
}
