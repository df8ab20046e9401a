//! The test kit, for the tests and benchmarks only (the `testkit` feature, which they enable
//! through the crate's dev-dependency on itself; the product build never has it): the real
//! gateway started on loopback next to a simulated PBX ([`LocalGateway`]), with tokens and an
//! IVR key drawn at random for each start and read from its handle ([`Tokens`]); signed webhook
//! requests of an IVR platform ([`post_webhook`], [`ivr_request`]); the simulated IVR platform's
//! side of the simulator ([`Ivr`]); the load driver ([`drive_many`]); and a private PostgreSQL
//! server ([`postgres`]).

pub mod postgres;

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Secrets;
use crate::sim::{IvrSignal, SimPbx};

pub use crate::demo::LocalStartError;
pub use crate::http_client::Http;

/// The cloud IVR's number in every [`LocalGateway`]'s configuration.
pub const IVR_NUMBER: &str = crate::demo::IVR_NUMBER;

/// The secrets of a [`LocalGateway`], drawn at random: tenant `acme`'s and tenant `globex`'s
/// tokens (a second tenant, for cross-tenant checks), the admin token and the IVR webhook's key.
/// No `Debug`: they are secrets.
#[derive(Clone)]
pub struct Tokens {
    /// Tenant `acme`, whose accounts bind the extensions of PBX `paris`.
    pub tenant: String,
    /// Tenant `globex`, which owns no PBX.
    pub other_tenant: String,
    pub admin: String,
    /// The key the IVR platform signs webhook requests with.
    pub ivr: String,
    /// The TwiML platform's auth token (`X-Twilio-Signature`), for [`PUBLIC_URL`].
    pub twiml: String,
}

/// The `public_url` of every [`LocalGateway`]: the address a TwiML platform would call through
/// a proxy. Requests go to the loopback address, signed for this URL, as behind a real proxy.
pub const PUBLIC_URL: &str = "https://ivr.cstagate.test";

impl Tokens {
    /// Four new random secrets.
    pub fn random() -> Tokens {
        Tokens { tenant: crate::random::id(), other_tenant: crate::random::id(), admin: crate::random::id(), ivr: crate::random::id(), twiml: crate::random::id() }
    }

    /// The API's secrets holding these.
    pub fn secrets(&self) -> Secrets {
        let twiml = crate::ivr::twiml::TwimlSettings { auth_token: self.twiml.clone(), public_url: PUBLIC_URL.into(), voices: Default::default() };
        let mut secrets = Secrets { admin_token: Some(self.admin.clone()), ivr_secret: Some(self.ivr.clone()), twiml: Some(twiml), ..Default::default() };
        secrets.tenant_tokens.insert("acme".into(), self.tenant.clone());
        secrets.tenant_tokens.insert("globex".into(), self.other_tenant.clone());
        secrets
    }

    /// The tokens `secrets` holds; `None` when one of the four is missing.
    pub fn of(secrets: &Secrets) -> Option<Tokens> {
        Some(Tokens {
            tenant: secrets.tenant_tokens.get("acme")?.clone(),
            other_tenant: secrets.tenant_tokens.get("globex")?.clone(),
            admin: secrets.admin_token.clone()?,
            ivr: secrets.ivr_secret.clone()?,
            // Without a TwiML adapter the route answers 404, whatever the token.
            twiml: secrets.twiml.as_ref().map(|t| t.auth_token.clone()).unwrap_or_default(),
        })
    }
}

/// New random secrets for a [`LocalGateway`] (add notification targets before starting it).
pub fn local_secrets() -> Secrets {
    Tokens::random().secrets()
}

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
    /// Return once the gateway serves, without waiting for the PBX link to come up: for tests
    /// of a link that must stay down (a PBX whose TLS certificate is refused).
    pub link_may_be_down: bool,
}

/// The real gateway started on loopback next to a simulated PBX: a database file, tenants
/// `acme` and `globex`, one PBX `paris`, the API on an ephemeral port, and the PBX link up
/// before it is returned.
pub struct LocalGateway {
    pub running: crate::server::Running,
    pub http: Http,
    pub db: std::path::PathBuf,
    /// The secrets it was started with.
    pub tokens: Tokens,
}

/// Why a [`LocalGateway`] did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    #[error("temporary directory: {0}")]
    TempDir(#[from] std::io::Error),
    #[error("configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the secrets lack a token of acme, globex or the admin, or the IVR key")]
    Secrets,
    #[error("{0}")]
    Start(#[from] LocalStartError),
}

impl LocalGateway {
    /// Start it against `sim` (its dialect decides the PBX preset) with `secrets`, which must
    /// hold the four of [`Tokens`] (as [`local_secrets`] does).
    ///
    /// # Errors
    /// The configuration is refused, the gateway cannot start, or the link stays down 10 s
    /// (unless [`LocalOptions::link_may_be_down`]).
    pub async fn start(sim: &SimPbx, o: LocalOptions, secrets: Secrets) -> Result<LocalGateway, LocalError> {
        let tokens = Tokens::of(&secrets).ok_or(LocalError::Secrets)?;
        let db = match o.db {
            Some(db) => db,
            None => {
                let dir = std::env::temp_dir().join(format!("cstagate-local-{}-{}", std::process::id(), crate::random::id()));
                std::fs::create_dir_all(&dir)?;
                dir.join("gateway.db")
            }
        };
        let mut config = crate::demo::local_config(sim, &db, &o.gateway, &o.tenant, &o.pbx)?;
        if let Some(n) = o.proof_calls_per_hour {
            config.pbx.iter_mut().for_each(|p| p.proof_calls_per_hour = Some(n));
        }
        let (running, http) = if o.link_may_be_down {
            let running = crate::server::start(&config, secrets).await.map_err(LocalStartError::from)?;
            let http = Http::new(&format!("http://{}", running.addr));
            (running, http)
        } else {
            crate::demo::start_local(&config, secrets).await?
        };
        Ok(LocalGateway { running, http, db, tokens })
    }

    /// The PBX link of `paris`.
    pub fn link(&self) -> crate::link::Link {
        self.running.gateway.links()["paris"].clone()
    }
}

/// POST a body to the IVR webhook the way an IVR platform does: stamped with the current time
/// and signed with [`crate::webhook::sign_webhook`].
///
/// # Errors
/// As [`Http::send`].
pub async fn post_webhook(http: &Http, secret: &str, raw: Vec<u8>) -> Result<(u16, Value), String> {
    crate::demo::post_webhook(http, secret, raw).await
}

/// The body of the IVR platform's webhook request on `call` to the IVR number (no `digits` on
/// the first request of a call).
pub fn ivr_body(call: &str, from: &str, digits: Option<&str>) -> Vec<u8> {
    crate::demo::ivr_body(call, from, digits)
}

/// One signed webhook request of the IVR platform on `call`.
///
/// # Errors
/// As [`Http::send`].
pub async fn ivr_request(http: &Http, secret: &str, call: &str, from: &str, digits: Option<&str>) -> Result<(u16, Value), String> {
    crate::demo::ivr_request(http, secret, call, from, digits).await
}

/// One request of a TwiML platform (Twilio or compatible) to `POST /v1/ivr/twiml`, shaped as
/// the platform sends it: the parameters form-encoded in the order given, signed with `token` for
/// [`PUBLIC_URL`] in `X-Twilio-Signature`. Returns the status and the body (TwiML, or a JSON
/// refusal).
///
/// # Errors
/// As [`Http::raw`].
pub async fn twiml_request(http: &Http, token: &str, params: &[(&str, &str)]) -> Result<(u16, String), String> {
    let url = format!("{PUBLIC_URL}{}", crate::ivr::twiml::PATH);
    let signature = crate::ivr::twiml::signature(token, &url, params);
    twiml_post(http, &signature, crate::ivr::twiml::encode_form(params).into_bytes()).await
}

/// POST a form body with the given `X-Twilio-Signature` (for forged and replayed requests).
///
/// # Errors
/// As [`Http::raw`].
pub async fn twiml_post(http: &Http, signature: &str, body: Vec<u8>) -> Result<(u16, String), String> {
    let headers = [("X-Twilio-Signature", signature), ("Content-Type", "application/x-www-form-urlencoded")];
    let (status, body) = http.raw("POST", crate::ivr::twiml::PATH, &headers, Some(body)).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The parameters a TwiML platform sends on a voice call (its documented request parameters),
/// with `Digits` when the caller keyed some and `CallStatus`.
pub fn twiml_params<'a>(call: &'a str, from: &'a str, to: &'a str, status: &'a str, digits: Option<&'a str>) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![
        ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
        ("ApiVersion", "2010-04-01"),
        ("CallSid", call),
        ("CallStatus", status),
        ("Called", to),
        ("Caller", from),
        ("Direction", "inbound"),
        ("From", from),
        ("FromCountry", "FR"),
        ("To", to),
        ("ToCountry", "FR"),
    ];
    if let Some(d) = digits {
        p.push(("Digits", d));
        p.push(("FinishedOnKey", "#"));
    }
    p
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
