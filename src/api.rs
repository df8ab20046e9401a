//! The HTTP API (JSON), served with axum: associations, bindings, CTI control of a bound
//! extension, admin views, health and metrics, the OpenAPI document, and the IVR webhook.
//!
//! Authentication: `Authorization: Bearer <token>`. Tenant tokens (the tenant's cloud service
//! acting for its accounts, which it names in the request) and one admin token, compared in
//! constant time. A wrong or missing token gives 401; another tenant's object gives 404.
//! Bodies are parsed strictly: malformed JSON, unknown fields, wrong types, over-long strings or
//! control characters give 400 with the field named; bodies over 16 KiB give 413. Nothing is
//! changed when a request is refused.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use hmac::{Hmac, KeyInit, Mac};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::association::{ApiError, Input, Principal};
use crate::codec::body::{FieldName as F, Value};
use crate::codec::{Body, ConnectionId, DeviceId, LocalDevice, Operation};
use crate::gateway::{now_ms, random_digits, random_id, Gateway, Query, QueryResult};
use crate::link::MonitorEvent;
use crate::store::AuditFilter;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

/// The secrets the API checks, read from the environment at start-up.
#[derive(Clone, Default)]
pub struct Secrets {
    pub admin_token: Option<String>,
    /// Tenant id → token.
    pub tenant_tokens: HashMap<String, String>,
    /// HMAC-SHA256 key of the IVR webhook.
    pub ivr_secret: Option<String>,
    /// Tenant id → where to send its accounts' notifications.
    pub notify: HashMap<String, crate::notify::Target>,
}

#[derive(Clone)]
struct AppState {
    gw: Gateway,
    secrets: Arc<Secrets>,
}

/// The API's router.
pub fn router(gw: Gateway, secrets: Secrets) -> Router {
    let state = AppState { gw, secrets: Arc::new(secrets) };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/associations", post(create))
        .route("/v1/associations/{id}", get(get_association).delete(cancel))
        .route("/v1/associations/{id}/complete", post(complete))
        .route("/v1/bindings", get(bindings_of))
        .route("/v1/bindings/{pbx}/{extension}", get(binding).delete(unbind))
        .route("/v1/extensions/{pbx}/{extension}/calls", post(make_call))
        .route("/v1/extensions/{pbx}/{extension}/calls/{call}", delete(clear_call))
        .route("/v1/extensions/{pbx}/{extension}/events", get(events))
        .route("/v1/pbx", get(pbx_list))
        .route("/v1/audit", get(audit))
        .route("/v1/ivr/webhook", post(ivr_webhook))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A JSON error response.
fn err(status: StatusCode, msg: &str, field: Option<&str>) -> Response {
    let mut body = json!({ "error": msg });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    (status, Json(body)).into_response()
}

fn api_error(e: &ApiError) -> Response {
    let status = match e {
        ApiError::NotFound | ApiError::UnknownExtension(_) => StatusCode::NOT_FOUND,
        ApiError::AlreadyBound | ApiError::ExtensionBusy | ApiError::AccountBusy | ApiError::WrongState(_) => StatusCode::CONFLICT,
        ApiError::LockedOut => StatusCode::LOCKED,
        ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ApiError::Expired => StatusCode::GONE,
        _ => StatusCode::BAD_REQUEST,
    };
    err(status, &e.to_string(), None)
}

fn unavailable() -> Response {
    err(StatusCode::SERVICE_UNAVAILABLE, "gateway unavailable", None)
}

/// The caller, from its bearer token.
fn principal(st: &AppState, headers: &HeaderMap) -> Result<Principal, Response> {
    let unauthorized = || err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token", None);
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(unauthorized)?;
    let eq = |a: &str| a.len() == token.len() && bool::from(a.as_bytes().ct_eq(token.as_bytes()));
    if st.secrets.admin_token.as_deref().is_some_and(eq) {
        return Ok(Principal::Admin);
    }
    // Every token is compared, so timing does not tell which tenant's was close.
    let mut found = None;
    for (tenant, t) in &st.secrets.tenant_tokens {
        if eq(t) {
            found = Some(tenant.clone());
        }
    }
    found.map(Principal::Tenant).ok_or_else(unauthorized)
}

fn admin(st: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    match principal(st, headers)? {
        Principal::Admin => Ok(()),
        Principal::Tenant(_) => Err(err(StatusCode::FORBIDDEN, "admin token required", None)),
    }
}

/// Parse a JSON body strictly, naming the field at fault.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // serde names unknown and missing fields in its message; the path names the others.
        let field = if path != "." && !path.is_empty() {
            Some(path)
        } else {
            msg.split('`').nth(1).map(str::to_owned)
        };
        err(StatusCode::BAD_REQUEST, &format!("invalid request body: {msg}"), field.as_deref())
    })
}

/// Reject over-long strings and control characters in a field.
fn check_text(field: &str, v: &str, max: usize) -> Result<(), Response> {
    if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(err(StatusCode::BAD_REQUEST, &format!("`{field}` must be 1 to {max} characters without control characters"), Some(field)));
    }
    Ok(())
}

fn check_number(field: &str, v: &str) -> Result<(), Response> {
    if v.is_empty() || v.len() > 32 || !v.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#' || c == '+') {
        return Err(err(StatusCode::BAD_REQUEST, &format!("`{field}` must be a dial string (digits, *, #, +; at most 32)"), Some(field)));
    }
    Ok(())
}

async fn healthz(State(st): State<AppState>) -> Response {
    let links: serde_json::Map<String, Json_> = st.gw.links().iter().map(|(id, l)| (id.clone(), serde_json::to_value(l.state()).unwrap_or(Json_::Null))).collect();
    Json(json!({ "status": "ok", "links": links })).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut out = String::new();
    out.push_str("# HELP cstagate_link_up Whether the PBX link is up.\n# TYPE cstagate_link_up gauge\n");
    let mut ids: Vec<&String> = st.gw.links().keys().collect();
    ids.sort();
    for id in &ids {
        let up = u8::from(st.gw.links()[*id].state() == crate::link::LinkState::Up);
        out.push_str(&format!("cstagate_link_up{{pbx=\"{id}\"}} {up}\n"));
    }
    let stats: Vec<Json_> = ids.iter().map(|id| serde_json::to_value(st.gw.links()[*id].stats()).unwrap_or(Json_::Null)).collect();
    for (name, help) in [
        ("frames_in", "Frames received from the PBX."),
        ("frames_out", "Frames sent to the PBX."),
        ("decode_errors", "APDUs from the PBX that did not decode."),
        ("reconnects", "Reconnections of the link."),
        ("rejects_sent", "ROSE rejects sent."),
        ("rejects_received", "ROSE rejects received."),
        ("events_in", "Event reports received."),
        ("events_dropped", "Events dropped for slow subscribers."),
        ("requests_ok", "Requests answered with a result."),
        ("requests_failed", "Requests answered with an error or lost with the link."),
        ("requests_timed_out", "Requests without an answer in time."),
        ("monitors", "Monitors running on the PBX."),
    ] {
        out.push_str(&format!("# HELP cstagate_link_{name} {help}\n# TYPE cstagate_link_{name} {}\n", if name == "monitors" { "gauge" } else { "counter" }));
        for (id, s) in ids.iter().zip(&stats) {
            out.push_str(&format!("cstagate_link_{name}{{pbx=\"{id}\"}} {}\n", s[name].as_u64().unwrap_or(0)));
        }
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    account: String,
    extension: String,
    display_name: Option<String>,
    pbx: Option<String>,
}

async fn create(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let p = match principal(&st, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let req: CreateReq = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = check_text("account", &req.account, 128).and_then(|()| check_number("extension", &req.extension)) {
        return r;
    }
    if let Some(d) = &req.display_name {
        if let Err(r) = check_text("display_name", d, 128) {
            return r;
        }
    }
    if let Some(pbx) = &req.pbx {
        if let Err(r) = check_text("pbx", pbx, 64) {
            return r;
        }
    }
    let input = Input::Create {
        principal: p,
        account: req.account,
        account_name: req.display_name,
        pbx: req.pbx,
        extension: req.extension,
        id: random_id(),
        context_id: random_digits(32),
        code: random_digits(16),
        now: now_ms(),
    };
    let Some(out) = st.gw.call(input).await else { return unavailable() };
    if let Some(e) = &out.error {
        return api_error(e);
    }
    let (Some(v), Some(code)) = (out.view, out.code) else { return unavailable() };
    (StatusCode::CREATED, Json(json!({
        "id": v.id, "state": v.state, "code": code, "context_id": v.context_id,
        "expires_at": v.expires_at, "extension": v.extension, "pbx": v.pbx,
    })))
        .into_response()
}

fn view_json(v: &crate::association::AssociationView) -> Json_ {
    json!({
        "id": v.id, "state": v.state, "reason": v.reason, "retryable": v.retryable,
        "extension": v.extension, "pbx": v.pbx, "account": v.account, "expires_at": v.expires_at,
        "history": v.history,
    })
}

/// Feed an association input built for the caller and answer with the association's view.
async fn association_step(st: &AppState, headers: &HeaderMap, ok: StatusCode, input: impl FnOnce(Principal) -> Input) -> Response {
    let p = match principal(st, headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(out) = st.gw.call(input(p)).await else { return unavailable() };
    match (&out.error, &out.view) {
        (Some(e), _) => api_error(e),
        (None, Some(v)) => (ok, Json(view_json(v))).into_response(),
        (None, None) => unavailable(),
    }
}

async fn complete(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    association_step(&st, &headers, StatusCode::ACCEPTED, |principal| Input::Complete { principal, id, now: now_ms() }).await
}

async fn cancel(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    association_step(&st, &headers, StatusCode::OK, |principal| Input::Cancel { principal, id, now: now_ms() }).await
}

async fn get_association(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let p = match principal(&st, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match st.gw.query(Query::Association { principal: p, id }).await {
        QueryResult::Association(Some(v)) => Json(view_json(&v)).into_response(),
        QueryResult::Association(None) => api_error(&ApiError::NotFound),
        _ => unavailable(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountParam {
    account: Option<String>,
}

fn binding_json(b: &crate::association::Binding) -> Json_ {
    json!({ "account": b.account, "extension": b.extension, "pbx": b.pbx, "did": b.did, "did_verified": b.did_verified, "bound_at": b.bound_at })
}

async fn bindings_of(State(st): State<AppState>, headers: HeaderMap, QueryParams(q): QueryParams<AccountParam>) -> Response {
    let Principal::Tenant(tenant) = (match principal(&st, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    }) else {
        return err(StatusCode::BAD_REQUEST, "list bindings with a tenant token and `account`", Some("account"));
    };
    let Some(account) = q.account else { return err(StatusCode::BAD_REQUEST, "`account` is required", Some("account")) };
    match st.gw.query(Query::BindingsOf { tenant, account }).await {
        QueryResult::Bindings(v) => Json(json!({ "bindings": v.iter().map(binding_json).collect::<Vec<_>>() })).into_response(),
        _ => unavailable(),
    }
}

/// The binding of an extension, if `p` may see it.
async fn visible_binding(st: &AppState, p: &Principal, pbx: &str, extension: &str) -> Option<crate::association::Binding> {
    match st.gw.query(Query::Binding { pbx: pbx.to_owned(), extension: extension.to_owned() }).await {
        QueryResult::Bindings(v) => v.into_iter().find(|b| *p == Principal::Admin || *p == Principal::Tenant(b.tenant.clone())),
        _ => None,
    }
}

async fn binding(State(st): State<AppState>, headers: HeaderMap, Path((pbx, extension)): Path<(String, String)>) -> Response {
    let p = match principal(&st, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    match visible_binding(&st, &p, &pbx, &extension).await {
        Some(b) => Json(binding_json(&b)).into_response(),
        None => api_error(&ApiError::NotFound),
    }
}

async fn unbind(State(st): State<AppState>, headers: HeaderMap, Path((pbx, extension)): Path<(String, String)>, QueryParams(q): QueryParams<AccountParam>) -> Response {
    let p = match principal(&st, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(out) = st.gw.call(Input::Unbind { principal: p, account: q.account, pbx, extension, now: now_ms() }).await else { return unavailable() };
    match &out.error {
        Some(e) => api_error(e),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallReq {
    account: String,
    to: String,
}

/// CTI control is for the bound account only.
async fn bound_to(st: &AppState, headers: &HeaderMap, pbx: &str, extension: &str, account: &str) -> Result<crate::link::Link, Response> {
    let p = principal(st, headers)?;
    let b = visible_binding(st, &p, pbx, extension).await.filter(|b| b.account == account).ok_or_else(|| api_error(&ApiError::NotFound))?;
    st.gw.links().get(&b.pbx).cloned().ok_or_else(unavailable)
}

fn link_error(e: &crate::link::RequestError) -> Response {
    let status = match e {
        crate::link::RequestError::LinkDown | crate::link::RequestError::Closed => StatusCode::SERVICE_UNAVAILABLE,
        crate::link::RequestError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    err(status, &e.to_string(), None)
}

async fn make_call(State(st): State<AppState>, headers: HeaderMap, Path((pbx, extension)): Path<(String, String)>, body: Bytes) -> Response {
    let req: CallReq = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = check_text("account", &req.account, 128).and_then(|()| check_number("to", &req.to)) {
        return r;
    }
    let link = match bound_to(&st, &headers, &pbx, &extension, &req.account).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let (Ok(from), Ok(to)) = (DeviceId::dialing(&extension), DeviceId::dialing(&req.to)) else { return err(StatusCode::BAD_REQUEST, "bad number", Some("to")) };
    match link.request(Operation::MakeCall, Body::new().with(F::CallingDevice, Value::DeviceId(from)).with(F::CalledDirectoryNumber, Value::DeviceId(to))).await {
        Ok(r) => {
            let call = r.connection(F::CallingDevice).and_then(|c| c.call.as_ref()).map(hex::encode);
            (StatusCode::CREATED, Json(json!({ "call": call }))).into_response()
        }
        Err(e) => link_error(&e),
    }
}

async fn clear_call(State(st): State<AppState>, headers: HeaderMap, Path((pbx, extension, call)): Path<(String, String, String)>, QueryParams(q): QueryParams<AccountParam>) -> Response {
    let Some(account) = q.account else { return err(StatusCode::BAD_REQUEST, "`account` is required", Some("account")) };
    let link = match bound_to(&st, &headers, &pbx, &extension, &account).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let Ok(call) = hex::decode(&call) else { return err(StatusCode::BAD_REQUEST, "call must be hex", Some("call")) };
    let conn = ConnectionId { call: Some(call.into()), device: DeviceId::dialing(&extension).ok().map(LocalDevice::Static) };
    match link.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(conn))).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => link_error(&e),
    }
}

async fn events(State(st): State<AppState>, headers: HeaderMap, Path((pbx, extension)): Path<(String, String)>, QueryParams(q): QueryParams<AccountParam>) -> Response {
    let Some(account) = q.account else { return err(StatusCode::BAD_REQUEST, "`account` is required", Some("account")) };
    let link = match bound_to(&st, &headers, &pbx, &extension, &account).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let dialect = link.dialect();
    let monitor = match link.monitor(&extension).await {
        Ok(m) => m,
        Err(e) => return link_error(&e),
    };
    let stream = futures_util::stream::unfold(monitor, move |mut m| async move {
        let ev = m.next().await?;
        let data = match ev {
            MonitorEvent::Event(r) => {
                Json_::Object(crate::decode::event_json(&r, dialect)).to_string()
            }
            MonitorEvent::LinkLost => json!({ "link": "lost" }).to_string(),
            MonitorEvent::LinkRestored => json!({ "link": "restored" }).to_string(),
            MonitorEvent::MonitorFailed(e) => json!({ "link": "monitor failed", "reason": e.to_string() }).to_string(),
        };
        Some((Ok::<_, Infallible>(SseEvent::default().data(data)), m))
    });
    sse(stream)
}

fn sse<S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>(s: S) -> Response {
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

async fn pbx_list(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(r) = admin(&st, &headers) {
        return r;
    }
    let mut v: Vec<Json_> = st.gw.links().iter().map(|(id, l)| json!({ "id": id, "state": l.state(), "stats": l.stats() })).collect();
    v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "pbx": v })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    extension: Option<String>,
    account: Option<String>,
    limit: Option<usize>,
}

async fn audit(State(st): State<AppState>, headers: HeaderMap, QueryParams(q): QueryParams<AuditParams>) -> Response {
    let p = match principal(&st, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    // A tenant sees its own records only.
    let tenant = match p {
        Principal::Admin => None,
        Principal::Tenant(t) => Some(t),
    };
    let f = AuditFilter { tenant, account: q.account, extension: q.extension, limit: q.limit.unwrap_or(1000).min(10_000) };
    match st.gw.query(Query::Audit(f)).await {
        QueryResult::Audit(v) => Json(json!({ "records": v })).into_response(),
        _ => unavailable(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IvrReq {
    call: String,
    from: String,
    to: String,
    digits: Option<String>,
    /// The platform reports the end of the call.
    #[serde(default)]
    hangup: bool,
}

/// `X-Cstagate-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>`.
fn signature_ok(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(sig) = headers.get("x-cstagate-signature").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("sha256=")) else { return false };
    let Ok(sig) = hex::decode(sig) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// Sign a webhook body (for IVR platforms and tests).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

async fn ivr_webhook(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = st.secrets.ivr_secret.as_deref() else { return err(StatusCode::NOT_FOUND, "the IVR webhook is not configured", None) };
    if !signature_ok(secret, &headers, &body) {
        return err(StatusCode::UNAUTHORIZED, "bad or missing X-Cstagate-Signature", None);
    }
    let req: IvrReq = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    if let Err(r) = check_text("call", &req.call, 128) {
        return r;
    }
    for (f, v) in [("from", &req.from), ("to", &req.to)] {
        if v.chars().count() > 64 || v.chars().any(char::is_control) {
            return err(StatusCode::BAD_REQUEST, &format!("`{f}` is too long or has control characters"), Some(f));
        }
    }
    if let Some(d) = &req.digits {
        if d.len() > 64 || !d.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#') {
            return err(StatusCode::BAD_REQUEST, "`digits` must be DTMF digits (0-9 * #), at most 64", Some("digits"));
        }
    }
    if req.hangup {
        let _ = st.gw.call(Input::IvrHangup { call: req.call, now: now_ms() }).await;
        return Json(json!({ "say": "", "hangup": true })).into_response();
    }
    let Some(out) = st.gw.call(Input::Ivr { call: req.call, from: req.from, to: req.to, digits: req.digits, now: now_ms() }).await else { return unavailable() };
    match out.ivr {
        Some(r) => Json(r).into_response(),
        None => unavailable(),
    }
}

/// The OpenAPI 3.0 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");
