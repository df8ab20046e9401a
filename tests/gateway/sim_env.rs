//! The environment most gateway tests start from: the real gateway next to one simulated PBX
//! whose phones answer after 10 ms, the IVR signals of the calls that PBX connects to the IVR,
//! and the requests a test makes as the tenant's app and as the IVR platform. Each test file adds
//! its own PBX lines, and the few steps only it needs.

use std::time::Duration;

use cstagate::http_client::Http;
use cstagate::sim::{Behaviour, IvrSignal, SimConfig, SimPbx};
use cstagate::testkit::{ivr_request, local_secrets, twiml_params, twiml_request, LocalGateway, LocalOptions};
use serde_json::{json, Value};
use tokio::time::timeout;

/// How long a wait of these tests may take on a busy machine before it fails.
pub const LIMIT: Duration = Duration::from_secs(60);

pub struct SimEnv {
    pub sim: SimPbx,
    pub ivr: tokio::sync::mpsc::UnboundedReceiver<IvrSignal>,
    pub gw: LocalGateway,
}

impl SimEnv {
    /// The simulated PBX `cfg` (its phones answer after 10 ms), and the gateway with `pbx` as the
    /// lines of its `[[pbx]]` table (the last table of the file: `[prompts]` tables may follow).
    pub async fn start(cfg: SimConfig, pbx: String) -> SimEnv {
        let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
        for e in &mut sim.config().extensions {
            e.behaviour = Behaviour::Answer { after: Duration::from_millis(10) };
        }
        let ivr = sim.take_ivr().unwrap();
        let gw = LocalGateway::start(&sim, LocalOptions { pbx, ..Default::default() }, local_secrets()).await.unwrap();
        SimEnv { sim, ivr, gw }
    }

    pub fn http(&self) -> &Http {
        &self.gw.http
    }

    /// POST /v1/associations as the tenant's app.
    pub async fn create_with(&self, body: Value) -> (u16, Value) {
        self.http().json("POST", "/v1/associations", &self.gw.tokens.tenant, Some(body)).await.unwrap()
    }

    pub async fn create(&self, account: &str, ext: &str) -> (u16, Value) {
        self.create_with(json!({ "account": account, "extension": ext })).await
    }

    /// A create that must succeed: the association's id and its code (the context id is never
    /// shown).
    pub async fn created_with(&self, body: Value) -> (String, String) {
        let (s, v) = self.create_with(body).await;
        assert_eq!(s, 201, "{v}");
        assert!(v.get("context_id").is_none(), "the context id is never shown: {v}");
        (v["id"].as_str().unwrap().to_owned(), v["code"].as_str().unwrap().to_owned())
    }

    pub async fn created(&self, account: &str, ext: &str) -> (String, String) {
        self.created_with(json!({ "account": account, "extension": ext })).await
    }

    pub async fn assoc(&self, id: &str) -> Value {
        self.http().json("GET", &format!("/v1/associations/{id}"), &self.gw.tokens.tenant, None).await.unwrap().1
    }

    pub async fn wait(&self, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
        crate::gateway_e2e::wait_assoc(self.http(), &self.gw.tokens.tenant, id, pred).await
    }

    /// The next call the PBX connects to the IVR: (call, calling number, number dialled).
    pub async fn connected(&mut self) -> (String, String, String) {
        loop {
            if let IvrSignal::Connected { call, calling, called } = timeout(LIMIT, self.ivr.recv()).await.unwrap().unwrap() {
                return (call, calling, called);
            }
        }
    }

    /// The next proof call at the IVR with its context digits: (call, number dialled, context id
    /// without the `*`…`#` framing).
    pub async fn proof_call(&mut self) -> (String, String, String) {
        let (call, _, called) = self.connected().await;
        let IvrSignal::Digits { digits, .. } = timeout(LIMIT, self.ivr.recv()).await.unwrap().unwrap() else { panic!("context digits after the number") };
        (call, called, digits.trim_start_matches('*').trim_end_matches('#').to_owned())
    }

    /// One request of the IVR platform on `call` through the JSON webhook; its answer.
    pub async fn say(&self, call: &str, from: &str, digits: Option<&str>) -> Value {
        let (s, r) = ivr_request(self.http(), &self.gw.tokens.ivr, call, from, digits).await.unwrap();
        assert_eq!(s, 200, "{r}");
        r
    }

    /// One signed request of a TwiML platform on `call`; the TwiML answer.
    pub async fn twiml(&self, call: &str, from: &str, to: &str, status: &str, digits: Option<&str>) -> String {
        let (s, body) = twiml_request(self.http(), &self.gw.tokens.twiml, &twiml_params(call, from, to, status, digits)).await.unwrap();
        assert_eq!(s, 200, "{body}");
        body
    }

    /// The status of GET /v1/bindings/paris/{ext}.
    pub async fn binding(&self, ext: &str) -> u16 {
        self.http().json("GET", &format!("/v1/bindings/paris/{ext}"), &self.gw.tokens.tenant, None).await.unwrap().0
    }
}
