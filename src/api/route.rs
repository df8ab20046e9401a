//! `[cluster]`: which instance serves a request, decided **before** the engine.
//!
//! Every public request passes [`route`] once its route is matched. It finds the PBX the
//! request is for — a create names it or the tenant's directories resolve the extension to one
//! PBX (as the engine does); an association id is its stored row's PBX (memory or the store,
//! then a bounded cache: an association never changes PBX); bindings, CTI and event streams name
//! it in the path; the IVR webhook and the TwiML adapter by the dialled number (`to`), the PBXs
//! whose `ivr_number` or pool it is; the admin's views and resets of one extension's counters
//! and blocks by their `pbx` — and then:
//!
//! - owned here: served here (the engine, which also refuses a PBX it does not serve, without
//!   writing: [`crate::association::Refusal::NotServed`]);
//! - owned by another live instance: forwarded to it ([`crate::cluster::forward`]);
//! - no live owner (a failover under way), or a forwarded request that reached an instance
//!   that does not own the PBX either (never forwarded twice): 503 `pbx_not_served` with
//!   `Retry-After` (a third of `lease_ttl`); nothing is written.
//!
//! A request that names no PBX, or none that resolves (an unknown extension, an unknown
//! association), is served here: it reads only, or the engine refuses it without a write.
//!
//! An IVR number shared by PBXs owned by different instances cannot be routed by the number:
//! the call's context id says which attempt it is, and it must not be sent around or stored in
//! clear. Such a request is refused (503, fails closed), and the README asks for one number (or
//! pool) per PBX in a cluster; PBXs sharing a number are routed together while one instance
//! owns them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tracing::{debug, warn};

use super::error::{ErrorBody, HttpError};
use super::extract::Caller;
use super::AppState;
use crate::association::{Policy, Principal};
use crate::cluster::forward::{Forwarder, FORWARD_PREFIX, TOKEN_HEADER};
use crate::cluster::{ClusterView, Owner};
use crate::gateway::{Query, QueryResult};

/// Association ids whose PBX the routing remembers (each a few dozen bytes): beyond, the
/// cache starts again empty.
const OWNERS_CACHED: usize = 65_536;

/// The routing of one instance of a cluster.
pub struct Routing {
    view: ClusterView,
    forwarder: Forwarder,
    /// Every PBX's policy as configured (tenant, directory, IVR numbers), to resolve a request
    /// to its PBX as the engine would.
    policies: HashMap<String, Policy>,
    /// Association id → PBX (an association never changes PBX).
    pbx_of: Mutex<HashMap<String, String>>,
    /// Forwarding failures come in bursts (an owner dies: every request for its PBXs until the
    /// lease expires): one log line every 10 s at most.
    failures_log: Mutex<crate::log_gate::LogGate>,
}

impl Routing {
    /// The leases as this instance last read them (`GET /v1/pbx`, `/metrics`).
    pub(crate) fn view(&self) -> &ClusterView {
        &self.view
    }

    /// The routing of an instance whose view of the leases is `view`, over the PBXs of
    /// `policies`, forwarding with `forwarder`.
    pub fn new(view: ClusterView, policies: HashMap<String, Policy>, forwarder: Forwarder) -> Routing {
        Routing { view, forwarder, policies, pbx_of: Mutex::default(), failures_log: Mutex::new(crate::log_gate::LogGate::new(std::time::Duration::from_secs(10))) }
    }

    fn retry_after(&self) -> HeaderValue {
        HeaderValue::from(self.view.retry_after_secs())
    }

    /// The PBXs of `tenant` whose directory lists `extension` (the engine's resolution of a
    /// create without `pbx`).
    fn pbxs_of_extension(&self, tenant: &str, extension: &str) -> Vec<String> {
        self.policies.iter().filter(|(_, p)| p.lists(tenant, extension)).map(|(id, _)| id.clone()).collect()
    }

    /// The one owner of all of `pbxs`; `Err`: why there is none (a PBX without a live owner,
    /// or PBXs of different owners), for the 503's message.
    fn owner_of(&self, pbxs: &[String]) -> Result<Owner, String> {
        let mut owners: Vec<Owner> = Vec::new();
        for p in pbxs {
            let o = self.view.owner(p);
            if o == Owner::Nobody {
                return Err(format!("PBX {p} has no live owner right now (its lease is changing hands); try again shortly"));
            }
            if !owners.contains(&o) {
                owners.push(o);
            }
        }
        match owners.len() {
            1 => Ok(owners.remove(0)),
            0 => Ok(Owner::Me),
            _ => Err("the dialled number belongs to PBXs owned by different gateway instances: it cannot be routed (give each PBX its own IVR number in a cluster)".into()),
        }
    }

    /// Where a FastAGI call dialled to `to` is served.
    pub fn ivr_route(&self, to: &str) -> IvrRoute {
        let pbxs = self.pbxs_of_number(to);
        match self.owner_of(&pbxs) {
            Ok(Owner::Me) => IvrRoute::Here,
            Ok(Owner::Other { url, .. }) => IvrRoute::Owner(url),
            Ok(Owner::Nobody) | Err(_) => IvrRoute::Unavailable,
        }
    }

    /// One step of a FastAGI call at the owner at `url` (see [`Forwarder::ivr_step`]), with this
    /// instance's internal token and IVR secret from `control`.
    ///
    /// # Errors
    /// No IVR secret, or the step could not be asked.
    pub async fn ivr_step(&self, control: &super::ApiControl, url: &str, body: Vec<u8>) -> Result<crate::association::IvrReply, String> {
        let auth = control.auth();
        let secret = auth.secrets.ivr_secret.as_deref().filter(|s| !s.trim().is_empty()).ok_or("no IVR secret ([gateway] ivr_secret_env): a FastAGI call for another instance's PBX cannot be asked there")?;
        self.forwarder.ivr_step(url, auth.secrets.internal_token.as_deref(), secret, body).await.map_err(|e| e.to_string())
    }

    /// The PBXs whose IVR number or pool number the platform reports as dialled (`to`).
    fn pbxs_of_number(&self, to: &str) -> Vec<String> {
        self.policies.iter().filter(|(_, p)| p.answers_number(to)).map(|(id, _)| id.clone()).collect()
    }
}

/// A forwarded request (the internal token checked): served here or refused, never forwarded
/// again.
#[derive(Clone, Copy)]
pub(crate) struct Forwarded;

/// Where a FastAGI call to a dialled number is served ([`Routing::ivr_route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IvrRoute {
    /// Here (also when the number is no PBX's: the engine answers).
    Here,
    /// At the owner of the number's PBX(s), at this base URL.
    Owner(String),
    /// Nowhere right now: no live owner, or PBXs of several owners share the number.
    Unavailable,
}

/// 503 `pbx_not_served` with `Retry-After`: nobody can serve the request right now.
fn not_served(r: &Routing, msg: String) -> Response {
    let mut resp = HttpError { status: StatusCode::SERVICE_UNAVAILABLE, body: ErrorBody { error: msg, field: None, code: Some("pbx_not_served") } }.into_response();
    resp.headers_mut().insert(axum::http::header::RETRY_AFTER, r.retry_after());
    resp
}

/// The internal surface (`/internal/v1/forward/...`): refused without `[cluster]` (404, as an
/// unknown path) and without the cluster's internal token (401, compared in constant time);
/// otherwise the public request inside it is served here, marked forwarded. Runs before the
/// public routes are matched.
pub(super) async fn internal(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(inner) = req.uri().path().strip_prefix(FORWARD_PREFIX).map(str::to_owned) else {
        return next.run(req).await;
    };
    if st.control.routing().is_none() {
        return HttpError::new(StatusCode::NOT_FOUND, "no such endpoint").into_response();
    }
    let auth = st.control.auth();
    let expected = auth.secrets.internal_token.as_deref().filter(|t| !t.is_empty());
    let given = req.headers().get(TOKEN_HEADER).map(HeaderValue::as_bytes);
    let ok = matches!((expected, given), (Some(e), Some(g)) if e.len() == g.len() && bool::from(e.as_bytes().ct_eq(g)));
    if !ok {
        return HttpError::unauthorized("missing or wrong internal token").into_response();
    }
    let pq = match req.uri().query() {
        Some(q) => format!("{inner}?{q}"),
        None => inner,
    };
    match pq.parse() {
        Ok(uri) if pq.starts_with("/v1/") => *req.uri_mut() = uri,
        _ => return HttpError::new(StatusCode::NOT_FOUND, "no such endpoint").into_response(),
    }
    req.extensions_mut().insert(Forwarded);
    next.run(req).await
}

/// What a request is for.
enum Target {
    /// Nothing to route: served here.
    Here,
    /// These PBXs (one, or those sharing a dialled number).
    Pbxs(Vec<String>),
}

/// Route a public request (see the module docs). Without `[cluster]` it only passes it on.
pub(super) async fn route(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(r) = st.control.routing() else { return next.run(req).await };
    let forwarded = req.extensions().get::<Forwarded>().is_some();
    let (mut parts, body) = req.into_parts();
    // Bodies are small (`MAX_BODY`); one over the limit is served here, and refused (413).
    let Ok(bytes) = axum::body::to_bytes(body, super::MAX_BODY).await else {
        return HttpError::too_large().into_response();
    };
    let target = target(&st, &r, &mut parts, &bytes).await;
    let pbxs = match target {
        Ok(Target::Here) => return served_here(&r, next.run(Request::from_parts(parts, Body::from(bytes))).await),
        Ok(Target::Pbxs(p)) => p,
        Err(resp) => return resp,
    };
    match r.owner_of(&pbxs) {
        Err(msg) => not_served(&r, msg),
        Ok(Owner::Me) => served_here(&r, next.run(Request::from_parts(parts, Body::from(bytes))).await),
        Ok(Owner::Nobody) => not_served(&r, "no live owner".into()),
        Ok(Owner::Other { .. }) if forwarded => not_served(&r, "this instance does not own the PBX either (a forwarded request is not forwarded again); try again shortly".into()),
        Ok(Owner::Other { id, url }) => {
            let pq = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
            let auth = st.control.auth();
            let template = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_default();
            debug!(owner = %id, method = %parts.method, route = %template, "forwarding to the PBX's owner");
            match r.forwarder.forward(&url, auth.secrets.internal_token.as_deref(), &parts.method, &pq, &parts.headers, bytes).await {
                Ok(resp) => served_here(&r, resp),
                Err(e) => {
                    if let Some(held) = r.failures_log.lock().unwrap_or_else(PoisonError::into_inner).pass() {
                        warn!(owner = %id, route = %template, error = %e, not_logged = held, "request not forwarded: 503");
                    }
                    not_served(&r, format!("the PBX's owner could not be reached: {e}; try again shortly"))
                }
            }
        }
    }
}

/// A 503 of this instance (the engine's `pbx_not_served`, a store failing) says when to ask
/// again.
fn served_here(r: &Routing, mut resp: Response) -> Response {
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE && !resp.headers().contains_key(axum::http::header::RETRY_AFTER) {
        resp.headers_mut().insert(axum::http::header::RETRY_AFTER, r.retry_after());
    }
    resp
}

/// The PBX(s) a request is for, by its route. `Err`: a response already (the store failed).
async fn target(st: &AppState, r: &Arc<Routing>, parts: &mut axum::http::request::Parts, body: &Bytes) -> Result<Target, Response> {
    let Some(template) = parts.extensions.get::<MatchedPath>().map(|m| m.as_str().to_owned()) else { return Ok(Target::Here) };
    let segments: Vec<&str> = parts.uri.path().split('/').collect();
    let param = |name: &str| -> Option<String> {
        let i = template.split('/').position(|t| t == name)?;
        super::extract::percent_decode(segments.get(i)?, false)
    };
    let one = |p: String| Ok(Target::Pbxs(vec![p]));
    match (parts.method.clone(), template.as_str()) {
        (Method::POST, "/v1/associations") => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            if let Some(p) = v.get("pbx").and_then(|p| p.as_str()) {
                return if r.policies.contains_key(p) { one(p.to_owned()) } else { Ok(Target::Here) };
            }
            let Some(ext) = v.get("extension").and_then(|e| e.as_str()) else { return Ok(Target::Here) };
            let Ok(Caller(Principal::Tenant(tenant))) = Caller::from_request_parts(parts, st).await else { return Ok(Target::Here) };
            match r.pbxs_of_extension(&tenant, ext).as_slice() {
                [p] => one(p.clone()),
                // Unknown, or on several PBXs without `pbx`: the engine refuses it, writing nothing.
                _ => Ok(Target::Here),
            }
        }
        (_, "/v1/associations/{id}" | "/v1/associations/{id}/complete") => {
            let Some(id) = param("{id}") else { return Ok(Target::Here) };
            if let Some(p) = r.pbx_of.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
                return one(p.clone());
            }
            match st.gw.query(Query::PbxOf(id.as_str().into())).await {
                Ok(QueryResult::Pbx(Some(p))) => {
                    let mut m = r.pbx_of.lock().unwrap_or_else(PoisonError::into_inner);
                    if m.len() >= OWNERS_CACHED {
                        m.clear();
                    }
                    m.insert(id, p.to_string());
                    one(p.to_string())
                }
                Ok(_) => Ok(Target::Here),
                Err(e) => Err(served_here(r, HttpError::from(e).into_response())),
            }
        }
        (_, "/v1/bindings/{pbx}/{extension}" | "/v1/extensions/{pbx}/{extension}/calls" | "/v1/extensions/{pbx}/{extension}/calls/{call}" | "/v1/extensions/{pbx}/{extension}/events") => match param("{pbx}") {
            Some(p) if r.policies.contains_key(&p) => one(p),
            _ => Ok(Target::Here),
        },
        // The admin's views and resets of one extension's counters and blocks: its PBX's owner
        // holds them current. (Account-wide ones are served here.)
        (Method::POST, "/v1/admin/counters/reset" | "/v1/admin/blocks/lift") => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            match v.get("pbx").and_then(|p| p.as_str()) {
                Some(p) if r.policies.contains_key(p) => one(p.to_owned()),
                _ => Ok(Target::Here),
            }
        }
        (Method::GET, "/v1/admin/counters" | "/v1/admin/blocks") => {
            let pbx = parts.uri.query().unwrap_or_default().split('&').find_map(|kv| kv.strip_prefix("pbx=")).and_then(|p| super::extract::percent_decode(p, true));
            match pbx {
                Some(p) if r.policies.contains_key(&p) => one(p),
                _ => Ok(Target::Here),
            }
        }
        (Method::POST, "/v1/ivr/webhook") => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            Ok(by_number(r, v.get("to").and_then(|t| t.as_str()).unwrap_or_default()))
        }
        (Method::POST, "/v1/ivr/twiml") => {
            let params = crate::ivr::twiml::parse_form(body).unwrap_or_default();
            Ok(by_number(r, params.iter().find(|(k, _)| k == "To").map_or("", |(_, v)| v.as_str())))
        }
        _ => Ok(Target::Here),
    }
}

fn by_number(r: &Routing, to: &str) -> Target {
    let pbxs = r.pbxs_of_number(to);
    if pbxs.is_empty() {
        Target::Here
    } else {
        Target::Pbxs(pbxs)
    }
}
