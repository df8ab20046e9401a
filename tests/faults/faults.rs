//! Faults across the association, over real sockets: for each step of the flow (monitor, lock,
//! call, ringing, in the IVR, the moment of binding) and each fault (the PBX link dropped, the
//! PBX's CTI process restarted, the PBX reset, the PBX stalled, the IVR platform's connection
//! dropped, the gateway process restarted), the association ends in a defined state with a
//! reason, the user can retry where that makes sense, no binding is lost or half-written, no call
//! is left up on the PBX, and the audit log tells the story. README.md's "What happens when
//! something fails" table is this file's expectations.
//!
//! Every cell but those of the monitor step has a call up on the PBX when the fault strikes
//! (checked before the fault: the cell is not vacuous), and that very call must then have been
//! ended by the gateway's ClearConnection (the simulator records how each call ended):
//!
//! | step | the call up when the fault strikes |
//! |---|---|
//! | monitor | none can exist: the gateway places no call before its monitor runs (the PBX swallowed the MonitorStart) |
//! | lock | the lock call: the PBX answered the MakeCall to the lock prefix and the phone prompts its user, who has not picked up; the gateway waits for the lock call to end |
//! | call | the proof call: the PBX placed it (the phone prompts its user) and its first event named it, but the MakeCall's result is withheld: the gateway still waits for it |
//! | ringing | the proof call, the phone ringing (its user never picks up) |
//! | in the IVR, code being keyed | the proof call, connected to the IVR |
//!
//! A PBX reset ends every call itself, so its row checks the state, reason, audit and retry, but
//! its "no call left up" holds by construction and checks nothing; the CTI restart (the calls go
//! on) is the row that checks the gateway clears after the PBX came back. A MakeCall result that
//! comes after the gateway gave up on it (a late result) is a case of its own, below the matrix.

use std::time::Duration;

use cstagate::webhook::webhook_headers;
use cstagate::codec::Operation;
use cstagate::testkit::{ivr_body, ivr_request, local_secrets, post_webhook, Http, Ivr, LocalGateway, LocalOptions, Tokens, IVR_NUMBER};
use cstagate::sim::{Behaviour, CallEnd, IvrSignal, SimConfig, SimPbx};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// MonitorStart sent, no answer yet (no call can exist yet).
    Monitor,
    /// The lock call up, its MakeCall answered; the phone prompts its user, who does not pick up.
    Lock,
    /// The proof call placed and named by its first event, its MakeCall result withheld.
    Call,
    /// The phone rings.
    Ringing,
    /// The user is in the IVR dialogue: account confirmed, code not yet keyed.
    InIvr,
    /// The code is keyed as the fault hits.
    Binding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// [`SimPbx::drop_links`]: the connections drop, the calls go on.
    LinkDropped,
    /// [`SimPbx::restart_cti`]: the PBX's CTI process restarts, the calls go on.
    CtiRestarted,
    /// [`SimPbx::restart`]: a full reset, the calls end with it.
    PbxReset,
    PbxStalled,
    IvrDropped,
    GatewayRestarted,
}

/// The wire to the PBX: the matrix runs in BER (ECMA-285 Phase III), and its PBX rows again in
/// CSTA XML (ECMA-323 with its ECMA-354 session), whose link restores itself the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    Ber,
    Xml,
}

const STEPS: [Step; 6] = [Step::Monitor, Step::Lock, Step::Call, Step::Ringing, Step::InIvr, Step::Binding];

struct Case {
    sim: SimPbx,
    ivr: tokio::sync::mpsc::UnboundedReceiver<IvrSignal>,
    gw: Option<LocalGateway>,
    options: LocalOptions,
    id: String,
    code: String,
    /// The IVR call (hex id) and the calling number it presents, once connected.
    call: Option<(String, String)>,
    /// The calls up on the PBX when the fault struck (hex ids).
    placed: Vec<String>,
}

fn options(step: Step) -> LocalOptions {
    let lock = if step == Step::Lock { "lock_prefix = \"*66\"\n" } else { "" };
    LocalOptions {
        pbx: format!("extensions = [\"2005-2006\"]\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\nkeepalive = \"250ms\"\nrequest_timeout = \"5s\"\nivr_timeout = \"2s\"\nproof_calls_per_hour = 20\n{lock}"),
        ..Default::default()
    }
}

/// Start a PBX and a gateway and drive one association to `step`.
async fn to_step(wire: Wire, step: Step) -> Case {
    let mut cfg = match wire {
        Wire::Ber => SimConfig::phase3(&["2005", "2006"]),
        Wire::Xml => SimConfig::xml(&["2005", "2006"], cstagate::codec::Framing::XmlHeader),
    };
    cfg.ivr_number = Some(IVR_NUMBER.into());
    // At the lock, call and ringing steps the phone's user does not pick up: the call stays up.
    cfg.extensions[0].behaviour = match step {
        Step::Lock | Step::Call | Step::Ringing => Behaviour::NeverAnswer,
        _ => Behaviour::Answer { after: Duration::from_millis(5) },
    };
    // The phone has a local lock PIN, and its user knows it.
    cfg.extensions[0].pin = Some("1234".into());
    cfg.extensions[0].user_pin = Some("1234".into());
    let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let ivr = sim.take_ivr().unwrap();
    match step {
        Step::Monitor => sim.faults().hold.push(Operation::MonitorStart),
        Step::Call => {
            // The PBX places the call and sends its first event, but not (yet) its result.
            sim.faults().withhold_results.push(Operation::MakeCall);
            sim.faults().events_before_result = true;
        }
        _ => {}
    }
    let options = options(step);
    let gw = LocalGateway::start(&sim, options.clone(), local_secrets()).await.unwrap();
    let (s, v) = gw.http.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let mut c = Case { sim, ivr, gw: Some(gw), options, id: v["id"].as_str().unwrap().to_owned(), code: v["code"].as_str().unwrap().to_owned(), call: None, placed: Vec::new() };
    match step {
        Step::Monitor => {
            tokio::time::timeout(LIMIT, c.sim.wait_stats(|s| s.requests.get("MonitorStart").copied().unwrap_or(0) >= 1)).await.expect("the MonitorStart reaches the PBX");
            assert_eq!(c.state().await["state"], "monitoring");
        }
        Step::Lock => {
            c.wait(|v| v["state"] == "locking").await;
            tokio::time::timeout(LIMIT, c.sim.wait_stats(|s| s.live_calls >= 1)).await.expect("the PBX places the lock call");
            c.lock_result_heard().await;
        }
        Step::Call => {
            tokio::time::timeout(LIMIT, c.sim.wait_stats(|s| s.live_calls >= 1 && s.results_withheld >= 1)).await.expect("the PBX places the call and withholds its result");
            // Its first event named it: the gateway follows the call, its MakeCall outstanding.
            c.wait(|v| v["state"] == "ringing").await;
            assert_eq!(c.sim.stats().results_withheld, 1, "the MakeCall result is still withheld");
        }
        Step::Ringing => {
            c.wait(|v| v["state"] == "ringing").await;
        }
        Step::InIvr | Step::Binding => c.into_dialogue().await,
    }
    c.placed = c.sim.calls().await.live;
    if step == Step::Monitor {
        assert!(c.placed.is_empty(), "no call before the monitor runs: {:?}", c.placed);
    } else {
        assert_eq!(c.placed.len(), 1, "{step:?}: a call is up when the fault strikes (the cell is not vacuous)");
    }
    c
}

impl Case {
    /// Wait until the gateway has taken in the lock MakeCall's result (so it knows the lock
    /// call). Nothing in the API shows it, so a second association is the marker: its MonitorStart
    /// goes out after the PBX answered the lock MakeCall, so its answer comes back behind that
    /// result on the same connection, and the gateway takes them in wire order; once it is
    /// `locking`, the result was taken in. Its own lock MakeCall is swallowed: it places no call.
    async fn lock_result_heard(&self) {
        self.sim.faults().hold.push(Operation::MakeCall);
        let (s, v) = self.gw().http.json("POST", "/v1/associations", &self.gw().tokens.tenant, Some(json!({ "account": "marker", "extension": "2006" }))).await.unwrap();
        assert_eq!(s, 201, "{v}");
        let marker = v["id"].as_str().unwrap().to_owned();
        tokio::time::timeout(LIMIT, async {
            loop {
                let v = self.gw().http.json("GET", &format!("/v1/associations/{marker}"), &self.gw().tokens.tenant, None).await.unwrap().1;
                if v["state"] == "locking" {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the marker association reaches the lock step");
    }

    async fn state(&self) -> Value {
        self.gw().http.json("GET", &format!("/v1/associations/{}", self.id), &self.gw().tokens.tenant, None).await.unwrap().1
    }

    /// Poll the association (real API round trips) until `pred` holds.
    async fn wait(&self, pred: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(LIMIT, async {
            loop {
                let v = self.state().await;
                if pred(&v) {
                    return v;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("association {} never reached the expected state", self.id))
    }

    /// The call reaches the IVR; identify the association and confirm the account.
    async fn into_dialogue(&mut self) {
        let (call, calling) = loop {
            if let IvrSignal::Connected { call, calling, .. } = tokio::time::timeout(LIMIT, self.ivr.recv()).await.unwrap().unwrap() {
                break (call, calling);
            }
        };
        let ctx = loop {
            if let IvrSignal::Digits { digits, .. } = tokio::time::timeout(LIMIT, self.ivr.recv()).await.unwrap().unwrap() {
                break digits;
            }
        };
        self.call = Some((call, calling));
        for d in [None, Some(ctx.as_str()), Some("1")] {
            let (s, r) = self.webhook(d).await;
            assert_eq!(s, 200, "{r}");
        }
        // The simulator told its IVR side directly; the gateway hears of the answer over CSTA:
        // wait for the gateway's own state, not the side channel.
        self.wait(|v| v["state"] == "in_ivr").await;
    }

    fn webhook_body(&self, digits: Option<&str>) -> Vec<u8> {
        let (call, from) = self.call.as_ref().unwrap();
        ivr_body(call, from, digits)
    }

    /// A signed webhook request of the IVR platform (a future owning what it needs, so that it
    /// can run while the gateway is being restarted). Status 0: no answer (connection failed).
    fn webhook_request(&self, digits: Option<&str>) -> impl std::future::Future<Output = (u16, Value)> + 'static {
        let raw = self.webhook_body(digits);
        let (http, secret) = (self.gw().http.clone(), self.gw().tokens.ivr.clone());
        async move { post_webhook(&http, &secret, raw).await.unwrap_or((0, Value::Null)) }
    }

    async fn webhook(&self, digits: Option<&str>) -> (u16, Value) {
        self.webhook_request(digits).await
    }

    /// The IVR platform's last request on a call: the code.
    async fn key_code(&self) -> (u16, Value) {
        self.webhook(Some(&self.code.clone())).await
    }

    fn gw(&self) -> &LocalGateway {
        self.gw.as_ref().expect("a gateway is running")
    }

    /// Stop the gateway process's work (its last batch committed, links released) while
    /// `meanwhile` runs, then start a new one on the same database.
    async fn restart_gateway<T>(&mut self, meanwhile: impl std::future::Future<Output = T>) -> T {
        let old = self.gw.take().expect("a gateway is running");
        let db = old.db.clone();
        let (r, ()) = tokio::join!(meanwhile, old.running.shutdown());
        let mut o = self.options.clone();
        o.db = Some(db);
        self.gw = Some(LocalGateway::start(&self.sim, o, local_secrets()).await.unwrap());
        r
    }

    async fn binding(&self) -> Option<Value> {
        let (s, b) = self.gw().http.json("GET", "/v1/bindings/paris/2005", &self.gw().tokens.tenant, None).await.unwrap();
        (s == 200).then_some(b)
    }

    async fn audit(&self) -> Vec<(String, String)> {
        let (_, a) = self.gw().http.json("GET", &format!("/v1/audit?extension=2005&limit=1000"), &self.gw().tokens.admin, None).await.unwrap();
        a["records"].as_array().unwrap().iter().filter(|r| r["association"] == self.id.as_str()).map(|r| (r["step"].as_str().unwrap().to_owned(), r["result"].as_str().unwrap().to_owned())).collect()
    }

    /// No call is up on the PBX (the gateway cleared what it placed, the IVR hung up its own).
    async fn no_call_left(&self) {
        tokio::time::timeout(LIMIT, self.sim.wait_stats(|s| s.live_calls == 0)).await.unwrap_or_else(|_| panic!("a call is left up: {:?}", self.sim.stats()));
    }

    /// The calls up when the fault struck are gone, each ended the way `how` says.
    async fn placed_ended(&self, label: &str, how: CallEnd) {
        if tokio::time::timeout(LIMIT, self.sim.wait_stats(|s| s.live_calls == 0)).await.is_err() {
            panic!("{label}: a call is left up: {:?} {:?}", self.sim.calls().await, self.sim.stats());
        }
        let calls = self.sim.calls().await;
        for call in &self.placed {
            assert_eq!(calls.ended.get(call), Some(&how), "{label}: how the call {call} up when the fault struck ended ({calls:?})");
        }
    }

    async fn link_up(&self) {
        tokio::time::timeout(LIMIT, self.gw().link().wait_for(|s| *s == cstagate::link::LinkState::Up)).await.expect("the link comes back");
    }

    /// The user retries (same association) and this time keys the right code: bound.
    async fn retry_and_bind(&mut self) {
        self.link_up().await;
        let (s, v) = self.gw().http.json("POST", &format!("/v1/associations/{}/complete", self.id), &self.gw().tokens.tenant, None).await.unwrap();
        assert_eq!(s, 202, "the user may retry: {v}");
        self.bind_in_dialogue().await;
    }

    async fn bind_in_dialogue(&mut self) {
        self.into_dialogue().await;
        let (s, r) = self.key_code().await;
        assert_eq!((s, r["hangup"].as_bool()), (200, Some(true)), "{r}");
        self.wait(|v| v["state"] == "bound").await;
        self.ivr_hangs_up();
        assert_eq!(self.binding().await.expect("bound")["account"], "alice");
    }

    /// The PBX behaves again (for the retry).
    fn clear_faults(&self) {
        let mut f = self.sim.faults();
        f.stall = false;
        f.hold.clear();
        f.withhold_results.clear();
        f.events_before_result = false;
    }

    fn ivr_hangs_up(&self) {
        if let Some((call, _)) = &self.call {
            self.sim.ivr_hangup(call);
        }
    }
}

/// Apply `fault` to an association held at `step` and check the outcome the README promises.
async fn case(wire: Wire, step: Step, fault: Fault) {
    let mut c = to_step(wire, step).await;
    let label = format!("{step:?} × {fault:?}");
    // The code keyed at the same moment as the fault hits (Binding only).
    let keyed: Option<(u16, Value)> = match fault {
        Fault::LinkDropped | Fault::CtiRestarted | Fault::PbxReset | Fault::PbxStalled => {
            let inject = || match fault {
                Fault::LinkDropped => c.sim.drop_links(),
                Fault::CtiRestarted => c.sim.restart_cti(),
                Fault::PbxReset => c.sim.restart(),
                _ => c.sim.faults().stall = true,
            };
            let keyed = if step == Step::Binding {
                let (r, ()) = tokio::join!(c.key_code(), async { inject() });
                Some(r)
            } else {
                inject();
                None
            };
            let v = c.wait(|v| v["state"] == "failed" || v["state"] == "bound").await;
            c.clear_faults();
            Some(keyed.unwrap_or((0, v)))
        }
        Fault::IvrDropped => match step {
            Step::InIvr => None, // the platform goes silent
            Step::Binding => {
                // The request leaves; the platform's connection drops before the answer.
                let raw = c.webhook_body(Some(&c.code));
                let [(tk, tv), (sk, sv)] = webhook_headers(&c.gw().tokens.ivr, &raw);
                let mut s = tokio::net::TcpStream::connect(c.gw().running.addr).await.unwrap();
                let head = format!("POST /v1/ivr/webhook HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n{tk}: {tv}\r\n{sk}: {sv}\r\ncontent-length: {}\r\n\r\n", raw.len());
                s.write_all(head.as_bytes()).await.unwrap();
                s.write_all(&raw).await.unwrap();
                drop(s);
                None
            }
            _ => unreachable!("no IVR before the call is connected"),
        },
        Fault::GatewayRestarted => {
            let keyed = if step == Step::Binding {
                let key = c.webhook_request(Some(&c.code));
                Some(c.restart_gateway(key).await)
            } else {
                c.restart_gateway(async {}).await;
                None
            };
            c.clear_faults();
            keyed
        }
    };

    let v = c.wait(|v| ["failed", "bound"].contains(&v["state"].as_str().unwrap_or(""))).await;
    let (state, reason, retryable) = (v["state"].as_str().unwrap().to_owned(), v["reason"].as_str().map(str::to_owned), v["retryable"].as_bool().unwrap());
    let audit = c.audit().await;
    let bound = state == "bound";
    // Nothing half-written: state, binding and the IVR's answer agree.
    assert_eq!(c.binding().await.is_some(), bound, "{label}: binding vs state {v}");
    if let Some((200, r)) = &keyed {
        if r["say"].as_str().is_some_and(|s| s.contains("now linked")) {
            assert!(bound, "{label}: the IVR told the user the phone is linked, so it must be bound: {v}");
        }
    }
    if bound {
        assert_eq!(step, Step::Binding, "{label}: only a keyed code binds");
        assert!(audit.iter().any(|(s, _)| s == "bound"), "{label}: {audit:?}");
    } else {
        let want = match (fault, step) {
            (Fault::GatewayRestarted, _) => ("gateway_restarted", false),
            (Fault::IvrDropped, _) => ("ivr_timeout", true),
            _ => ("link_down", true),
        };
        assert_eq!((reason.as_deref(), retryable), (Some(want.0), want.1), "{label}: {v}");
        assert!(audit.iter().any(|(s, r)| s == "failed" && r == want.0), "{label}: the audit log names the failure: {audit:?}");
    }
    // The call up when the fault struck is gone. Bound: the IVR platform hangs it up after its
    // "linked" prompt (or after its webhook failed), as the gateway leaves it to. Failed: the
    // gateway cleared it (the IVR platform does not hang up here: nothing else would end it). A
    // reset ended it itself.
    let how = if fault == Fault::PbxReset {
        CallEnd::Reset
    } else if bound {
        c.ivr_hangs_up();
        CallEnd::IvrHangup
    } else {
        CallEnd::ClearConnection
    };
    c.placed_ended(&label, how).await;
    // Where it makes sense, the user tries again and succeeds (and this time picks up).
    c.sim.config().extensions[0].behaviour = Behaviour::Answer { after: Duration::from_millis(5) };
    if !bound {
        if retryable {
            c.retry_and_bind().await;
        } else {
            c.link_up().await;
            let (s, v) = c.gw().http.json("POST", "/v1/associations", &c.gw().tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
            assert_eq!(s, 201, "{label}: a new association may start: {v}");
            c.id = v["id"].as_str().unwrap().to_owned();
            c.code = v["code"].as_str().unwrap().to_owned();
            c.bind_in_dialogue().await;
        }
    }
    c.no_call_left().await;
    if let Some(gw) = c.gw.take() {
        gw.running.shutdown().await;
    }
}

async fn each_step(fault: Fault) {
    each_step_in(Wire::Ber, fault).await;
}

async fn each_step_in(wire: Wire, fault: Fault) {
    for step in STEPS {
        if fault == Fault::IvrDropped && !matches!(step, Step::InIvr | Step::Binding) {
            continue;
        }
        case(wire, step, fault).await;
    }
}

/// CSTA XML: the link dropped at each step (the session is opened again, the monitors restored,
/// the call left up cleared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_pbx_link_dropped_at_each_step() {
    each_step_in(Wire::Xml, Fault::LinkDropped).await;
}

/// CSTA XML: the PBX's CTI process restarts (sessions and cross-reference ids forgotten, the calls
/// go on) and a full reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_pbx_restarted_at_each_step() {
    each_step_in(Wire::Xml, Fault::CtiRestarted).await;
    each_step_in(Wire::Xml, Fault::PbxReset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_link_dropped_at_each_step() {
    each_step(Fault::LinkDropped).await;
}

/// The PBX's CTI process restarts, its calls go on: the gateway clears them once reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_cti_restarted_at_each_step() {
    each_step(Fault::CtiRestarted).await;
}

/// A full PBX reset ends the calls itself: this row checks state, reason, audit and retry; its
/// "no call left up" holds by construction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_reset_at_each_step() {
    each_step(Fault::PbxReset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbx_stalled_at_each_step() {
    each_step(Fault::PbxStalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ivr_connection_dropped_in_the_dialogue_and_at_binding() {
    each_step(Fault::IvrDropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restarted_at_each_step() {
    each_step(Fault::GatewayRestarted).await;
}

/// When the gateway gave up on a proof call's MakeCall before the PBX answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GaveUp {
    /// The user cancelled the association.
    Cancelled,
    /// Nobody answered within `ring_timeout`: the attempt failed `no_answer`.
    RingTimeout,
    /// The MakeCall got no answer within `request_timeout`: the attempt failed `link_down`.
    RequestTimeout,
}

/// A late MakeCall result: the PBX placed the proof call (the phone rings) but answers the
/// MakeCall only after the gateway gave up on it, and nothing before the result named the call
/// (its events wait behind it). The gateway must clear the call the late result names: nothing
/// else would, and the phone would ring for nothing. The README's "late MakeCall result" row.
async fn late_make_call_result(gave_up: GaveUp) {
    let label = format!("late MakeCall result × {gave_up:?}");
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.ivr_number = Some(IVR_NUMBER.into());
    cfg.extensions[0].behaviour = Behaviour::NeverAnswer;
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    sim.faults().withhold_results.push(Operation::MakeCall);
    let timeouts = match gave_up {
        GaveUp::Cancelled => "request_timeout = \"30s\"\n",
        GaveUp::RingTimeout => "request_timeout = \"30s\"\nring_timeout = \"300ms\"\n",
        GaveUp::RequestTimeout => "request_timeout = \"300ms\"\n",
    };
    let options = LocalOptions { pbx: format!("extensions = [\"2005\"]\nreconnect_min = \"20ms\"\n{timeouts}"), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    let (s, v) = gw.http.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let get = |id: String| {
        let (http, token) = (gw.http.clone(), gw.tokens.tenant.clone());
        async move { http.json("GET", &format!("/v1/associations/{id}"), &token, None).await.unwrap().1 }
    };
    let wait = |pred: fn(&Value) -> bool| {
        let get = &get;
        let id = id.clone();
        async move {
            tokio::time::timeout(LIMIT, async {
                loop {
                    let v = get(id.clone()).await;
                    if pred(&v) {
                        return v;
                    }
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("association {id} never reached the expected state"))
        }
    };
    tokio::time::timeout(LIMIT, sim.wait_stats(|s| s.live_calls == 1 && s.results_withheld == 1)).await.expect("the PBX places the call and withholds its result");
    let placed = sim.calls().await.live;
    assert_eq!(placed.len(), 1, "{label}: the proof call is up");
    // The gateway heard nothing of the call yet.
    assert_eq!(get(id.clone()).await["state"], "calling", "{label}");
    let v = match gave_up {
        GaveUp::Cancelled => {
            let (s, v) = gw.http.json("DELETE", &format!("/v1/associations/{id}"), &gw.tokens.tenant, None).await.unwrap();
            assert_eq!((s, v["state"].as_str()), (200, Some("cancelled")), "{label}: {v}");
            v
        }
        GaveUp::RingTimeout => wait(|v| v["state"] == "failed").await,
        GaveUp::RequestTimeout => wait(|v| v["state"] == "failed").await,
    };
    let want = match gave_up {
        GaveUp::Cancelled => "cancelled_by_user",
        GaveUp::RingTimeout => "no_answer",
        GaveUp::RequestTimeout => "link_down",
    };
    assert_eq!(v["reason"].as_str(), Some(want), "{label}: {v}");
    assert_eq!(sim.stats().live_calls, 1, "{label}: the call is still up when its result comes");
    // Now the PBX answers the MakeCall (and the call's events follow).
    sim.release_results();
    tokio::time::timeout(LIMIT, sim.wait_stats(|s| s.live_calls == 0)).await.unwrap_or_else(|_| panic!("{label}: the call the late result names is left up: {:?}", sim.stats()));
    let calls = sim.calls().await;
    assert_eq!(calls.ended.get(&placed[0]), Some(&CallEnd::ClearConnection), "{label}: the gateway cleared the call the late result named: {calls:?}");
    gw.running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_make_call_result_after_the_association_was_cancelled_is_cleared() {
    late_make_call_result(GaveUp::Cancelled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_make_call_result_after_the_attempt_failed_no_answer_is_cleared() {
    late_make_call_result(GaveUp::RingTimeout).await;
}

/// The MakeCall's request timed out (`request_timeout`, the attempt failed `link_down`) before the
/// PBX answered it: the link session remembers the invoke id it gave up on and delivers the late
/// result to the gateway's port (`Delivery::LateResult`), and the gateway, which kept the timed-out
/// MakeCall's calling device, clears the call the result names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_make_call_result_after_its_request_timed_out_is_cleared() {
    late_make_call_result(GaveUp::RequestTimeout).await;
}

/// The gateway as its own process, killed with SIGKILL (no orderly stop) right after the IVR told
/// a user "linked", while another user's phone rings: the successor process has the binding the
/// user was told of, ends the ringing association as `gateway_restarted` and clears its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_process_keeps_what_it_said_and_its_successor_clears_the_call() {
    let mut cfg = SimConfig::phase3(&["2005", "2006"]);
    cfg.ivr_number = Some(IVR_NUMBER.into());
    cfg.extensions[0].behaviour = Behaviour::Answer { after: Duration::from_millis(5) };
    cfg.extensions[1].behaviour = Behaviour::NeverAnswer;
    let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut ivr = Ivr::of(&mut sim).unwrap();
    let dir = std::env::temp_dir().join(format!("cstagate-kill-{}", cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:{port}\"\ndatabase = \"{}\"\nadmin_token_env = \"ADMIN_TOKEN\"\nivr_secret_env = \"IVR_SECRET\"\n\n[[tenant]]\nid = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n\n[[pbx]]\nid = \"paris\"\naddress = \"{}\"\ndialect = \"phase3\"\ntenant = \"acme\"\nextensions = [\"2005-2006\"]\nivr_number = \"{IVR_NUMBER}\"\nreconnect_min = \"20ms\"\n",
            dir.join("gateway.db").display(),
            sim.addr()
        ),
    )
    .unwrap();
    let http = Http::new(&format!("http://127.0.0.1:{port}"));
    let tokens = Tokens::random();
    let start = || {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cstagate"))
            .args(["run", "--config"])
            .arg(&config)
            .env("ACME_TOKEN", &tokens.tenant)
            .env("ADMIN_TOKEN", &tokens.admin)
            .env("IVR_SECRET", &tokens.ivr)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        KillOnDrop(child)
    };
    // Ready: the API answers and the PBX link is up (polling a separate process).
    let ready = |http: Http| async move {
        tokio::time::timeout(LIMIT, async {
            loop {
                if let Ok((200, h)) = http.send("GET", "/healthz", &[], None).await {
                    if h["links"]["paris"]["state"] == "up" {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await; // another process: poll
            }
        })
        .await
        .expect("the gateway process comes up");
    };
    let mut gw = start();
    ready(http.clone()).await;

    // bob's phone rings; alice goes through the IVR and hears "linked".
    let (s, v) = http.json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "bob", "extension": "2006" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let ringing = v["id"].as_str().unwrap().to_owned();
    let (s, v) = http.json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let code = v["code"].as_str().unwrap().to_owned();
    let c = tokio::time::timeout(LIMIT, ivr.next_call()).await.unwrap().unwrap();
    let mut last = Value::Null;
    for d in [None, Some(c.context.as_str()), Some("1"), Some(code.as_str())] {
        let (s, r) = ivr_request(&http, &tokens.ivr, &c.call, &c.from, d).await.unwrap();
        assert_eq!(s, 200, "{r}");
        last = r;
    }
    assert!(last["say"].as_str().unwrap_or("").contains("now linked"), "{last}");
    // bob's phone rings as the gateway sees it (its own state, not the simulator's).
    tokio::time::timeout(LIMIT, async {
        loop {
            let (_, v) = http.json("GET", &format!("/v1/associations/{ringing}"), &tokens.tenant, None).await.unwrap();
            if v["state"] == "ringing" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // another process: poll
        }
    })
    .await
    .expect("bob's association rings");
    // SIGKILL, at once.
    gw.0.kill().unwrap();
    gw.0.wait().unwrap();
    ivr.line.hangup(&c.call); // the IVR platform, after its last prompt
    tokio::time::timeout(LIMIT, sim.wait_stats(|s| s.live_calls == 1)).await.expect("alice's call ends; bob's phone still rings");

    let _gw = start();
    ready(http.clone()).await;
    let (s, b) = http.json("GET", "/v1/bindings/paris/2005", &tokens.tenant, None).await.unwrap();
    assert_eq!((s, b["account"].as_str()), (200, Some("alice")), "the binding alice was told of survives");
    let (_, v) = http.json("GET", &format!("/v1/associations/{ringing}"), &tokens.tenant, None).await.unwrap();
    assert_eq!((v["state"].as_str(), v["reason"].as_str(), v["retryable"].as_bool()), (Some("failed"), Some("gateway_restarted"), Some(false)), "{v}");
    tokio::time::timeout(LIMIT, sim.wait_stats(|s| s.live_calls == 0)).await.expect("the successor clears bob's ringing call");
    let (_, a) = http.json("GET", "/v1/audit?extension=2006", &tokens.admin, None).await.unwrap();
    assert!(a["records"].as_array().unwrap().iter().any(|r| r["step"] == "failed" && r["result"] == "gateway_restarted"), "{a}");
}

/// A child process that does not outlive its test.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A PBX that never answers a request (it lost it, the link stays up) fails the attempt as
/// `link_down` after `request_timeout`: the PBX refused nothing, and the user may retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_pbx_never_answers_fails_the_attempt_as_link_down() {
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    sim.faults().hold.push(Operation::MonitorStart);
    let options = LocalOptions { pbx: "extensions = [\"2005\"]\nrequest_timeout = \"300ms\"\n".into(), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    let (s, v) = gw.http.json("POST", "/v1/associations", &gw.tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let v = tokio::time::timeout(LIMIT, async {
        loop {
            let (_, v) = gw.http.json("GET", &format!("/v1/associations/{id}"), &gw.tokens.tenant, None).await.unwrap();
            if v["state"] == "failed" {
                return v;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the attempt fails");
    assert_eq!((v["reason"].as_str(), v["retryable"].as_bool()), (Some("link_down"), Some(true)), "{v}");
    assert_eq!(gw.link().state(), cstagate::link::LinkState::Up, "the link itself stayed up");
    gw.running.shutdown().await;
}
