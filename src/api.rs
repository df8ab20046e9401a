//! The HTTP API (JSON), served with axum: associations, bindings, CTI control of a bound
//! extension, admin views, health and metrics, the OpenAPI document, and the IVR webhook.
//!
//! Authentication: `Authorization: Bearer <token>`. Tenant tokens (the tenant's cloud service
//! acting for its accounts, which it names in the request) and one admin token, compared in
//! constant time. A wrong or missing token gives 401; another tenant's object gives 404.
//! Bodies, path segments and query strings are parsed strictly: malformed JSON, unknown fields,
//! wrong types, over-long strings, control or bidirectional-formatting characters, characters
//! outside a field's alphabet and invalid percent-encoding give 400 with the field named; bodies
//! over 16 KiB give 413; every refusal, the framework's own included, is a JSON
//! `{"error", "field"?}`. The token is checked first, so an unauthenticated caller learns
//! nothing but 401. Nothing is changed when a request is refused.
//!
//! The IVR webhook is signed over `"<timestamp>.<body>"` ([`sign_webhook`]); a timestamp more
//! than [`WEBHOOK_WINDOW_SECS`] from the gateway's clock is refused (401) and an exact replay
//! within the window is refused (409) by a bounded cache of seen signatures ([`ReplayCache`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::association::{AdminScope, ApiInput, ApiReply, IvrInput, Principal, Refusal as ApiError};
use crate::codec::Operation;
use crate::clock::now_ms;
use crate::config::Secrets;
use crate::gateway::{Gateway, GatewayError, Query, QueryResult};
use crate::webhook::{sign_webhook, Replay, ReplayCache, REPLAY_CACHE_CAPACITY, SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_WINDOW_SECS};
use crate::link::MonitorEvent;
use crate::store::AuditFilter;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;

#[derive(Clone)]
struct AppState {
    gw: Gateway,
    secrets: Arc<Secrets>,
    replay: Arc<Mutex<ReplayCache>>,
    /// Event streams open, by tenant.
    streams: Arc<Mutex<HashMap<String, usize>>>,
    /// The IVR adapters' guessing limits and counters (the webhook's, and FastAGI's for `/metrics`).
    ivr: crate::ivr::IvrGuards,
}

/// Event streams (server-sent events) one tenant may hold open at once: each holds a connection,
/// a PBX monitor subscription and up to 1,024 buffered events, and the API's connections are
/// shared by all tenants.
pub const MAX_EVENT_STREAMS_PER_TENANT: usize = 64;

/// CSPRNG digits handed to the engine for a proof call's context id: enough for a few tries of
/// the longest (16 digits) should one collide with a live attempt's.
const CONTEXT_RANDOM_DIGITS: usize = 64;

/// One open event stream of a tenant; gives its place back when the stream ends.
struct StreamSlot {
    streams: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl StreamSlot {
    fn take(streams: &Arc<Mutex<HashMap<String, usize>>>, tenant: &str) -> Option<StreamSlot> {
        let mut m = streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = m.entry(tenant.to_owned()).or_insert(0);
        if *n >= MAX_EVENT_STREAMS_PER_TENANT {
            return None;
        }
        *n += 1;
        Some(StreamSlot { streams: streams.clone(), tenant: tenant.to_owned() })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.tenant);
            }
        }
    }
}

/// The API's router.
pub fn router(gw: Gateway, secrets: Secrets) -> Router {
    router_with(gw, secrets, crate::ivr::IvrGuards::default())
}

/// The API's router, its webhook guarded by (and `/metrics` reading) `ivr`.
pub fn router_with(gw: Gateway, secrets: Secrets, ivr: crate::ivr::IvrGuards) -> Router {
    let state = AppState { gw, secrets: Arc::new(secrets), replay: Arc::new(Mutex::new(ReplayCache::new(REPLAY_CACHE_CAPACITY))), streams: Arc::default(), ivr };
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
        .route("/v1/admin/counters", get(admin_read))
        .route("/v1/admin/counters/reset", post(admin_counters_reset))
        .route("/v1/admin/blocks", get(admin_read))
        .route("/v1/admin/blocks/lift", post(admin_blocks_lift))
        .route("/v1/ivr/webhook", post(ivr_webhook))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(json_refusals))
        .with_state(state)
}

async fn no_route() -> Response {
    err(StatusCode::NOT_FOUND, "no such endpoint", None)
}

/// The framework's own refusals (405, 413, ...) come as text; make every client error JSON.
/// Every refusal also closes the connection (`Connection: close`): a request is often refused
/// before its body is read (bad token, too large), and HTTP/1.1 cannot go on after an unread
/// body — without the header the client would reuse a connection the server is closing.
async fn json_refusals(resp: Response) -> Response {
    let mut resp = json_refusal(resp).await;
    if resp.status().is_client_error() {
        resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    resp
}

async fn json_refusal(resp: Response) -> Response {
    let json = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    if !resp.status().is_client_error() || json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned()).unwrap_or_default();
    let msg = if text.is_empty() { parts.status.canonical_reason().unwrap_or("refused").to_owned() } else { text };
    let mut out = err(parts.status, &msg, None);
    for (k, v) in &parts.headers {
        if k != "content-type" && k != "content-length" {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// A JSON error response.
fn err(status: StatusCode, msg: &str, field: Option<&str>) -> Response {
    let mut body = json!({ "error": msg });
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    (status, Json(body)).into_response()
}

/// An engine refusal: its status, and a stable `code` for programs beside the message.
fn api_error(e: &ApiError) -> Response {
    let (status, code) = match e {
        ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ApiError::UnknownExtension(_) => (StatusCode::NOT_FOUND, "unknown_extension"),
        ApiError::AlreadyBound => (StatusCode::CONFLICT, "already_bound"),
        ApiError::ExtensionBusy => (StatusCode::CONFLICT, "extension_busy"),
        ApiError::AccountBusy => (StatusCode::CONFLICT, "account_busy"),
        ApiError::WrongState(_) => (StatusCode::CONFLICT, "wrong_state"),
        ApiError::LockedOut => (StatusCode::LOCKED, "locked_out"),
        ApiError::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        ApiError::BlockedByPhoneOwner(_) => (StatusCode::FORBIDDEN, "blocked_by_phone_owner"),
        ApiError::Expired => (StatusCode::GONE, "expired"),
        _ => (StatusCode::BAD_REQUEST, "bad_request"),
    };
    (status, Json(json!({ "error": e.to_string(), "code": code }))).into_response()
}

fn unavailable() -> Response {
    err(StatusCode::SERVICE_UNAVAILABLE, "gateway unavailable", None)
}

/// The engine's refusal as its status; a storage failure or a stopped gateway is 503.
fn gateway_error(e: GatewayError) -> Response {
    match e {
        GatewayError::Refused(r) => api_error(&r),
        GatewayError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": e.to_string(), "code": "unavailable" }))).into_response(),
        GatewayError::Stopped => unavailable(),
    }
}

/// The caller, from its bearer token.
fn principal(st: &AppState, headers: &HeaderMap) -> Result<Principal, Response> {
    let unauthorized = || err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token", None);
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).ok_or_else(unauthorized)?;
    token_principal(&st.secrets, token).ok_or_else(unauthorized)
}

/// Whose token this is. Tokens are compared as SHA-256 digests in constant time: digests have
/// one length, so neither a configured token's length nor how much of it a guess got right
/// shows in the time taken (comparing the tokens themselves returned early on a length
/// mismatch). Every token is compared, so timing does not tell which tenant's was close either.
/// An empty configured token matches nothing (the start refuses one; this is the last guard).
fn token_principal(secrets: &Secrets, token: &str) -> Option<Principal> {
    use sha2::Digest;
    let given = Sha256::digest(token.as_bytes());
    let eq = |a: &str| !a.is_empty() && bool::from(Sha256::digest(a.as_bytes()).as_slice().ct_eq(given.as_slice()));
    if secrets.admin_token.as_deref().is_some_and(eq) {
        return Some(Principal::Admin);
    }
    let mut found = None;
    for (tenant, t) in &secrets.tenant_tokens {
        if eq(t) {
            found = Some(tenant.clone());
        }
    }
    found.map(|t| Principal::Tenant(t.into()))
}

fn admin(st: &AppState, headers: &HeaderMap) -> Result<(), Response> {
    match principal(st, headers)? {
        Principal::Admin => Ok(()),
        Principal::Tenant(_) => Err(err(StatusCode::FORBIDDEN, "admin token required", None)),
    }
}

/// Parse a JSON body strictly, naming the field at fault: one JSON object (not an array, which
/// serde would take for a struct), each member once, nothing after it.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(err(StatusCode::BAD_REQUEST, "invalid request body: expected one JSON object", None));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let v = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = inner.to_string();
        // The path names the member being read; serde names unknown, missing and repeated
        // members in its message.
        let field = if !path.is_empty() && path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            Some(path)
        } else if inner.is_data() {
            msg.split('`').nth(1).map(str::to_owned)
        } else {
            None
        };
        err(StatusCode::BAD_REQUEST, &format!("invalid request body: {msg}"), field.as_deref())
    })?;
    de.end().map_err(|e| err(StatusCode::BAD_REQUEST, &format!("invalid request body: {e} (after the JSON object)"), None))?;
    Ok(v)
}

/// Control characters, and the invisible formatting characters that reorder or hide text
/// (bidirectional overrides and isolates, zero-width characters, the byte-order mark).
fn hidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

/// Pictographs and their modifiers: a name is read aloud by the IVR.
fn pictograph(c: char) -> bool {
    matches!(c, '\u{2600}'..='\u{27BF}' | '\u{FE00}'..='\u{FE0F}' | '\u{1F000}'..='\u{1FAFF}' | '\u{E0000}'..='\u{E007F}')
}

/// A name shown to people (`display_name`): 1 to `max` characters of any script, without
/// control, formatting or pictograph characters.
fn check_text(field: &str, v: &str, max: usize) -> Result<(), Response> {
    if v.is_empty() || v.chars().count() > max || v.chars().any(|c| hidden(c) || pictograph(c)) {
        return Err(err(StatusCode::BAD_REQUEST, &format!("`{field}` must be 1 to {max} characters without control, formatting or pictograph characters"), Some(field)));
    }
    Ok(())
}

/// An identifier (`account`, `pbx`, a call id): 1 to `max` printable ASCII characters.
fn check_id(field: &str, v: &str, max: usize) -> Result<(), Response> {
    if v.is_empty() || v.len() > max || !v.bytes().all(|b| (0x20..0x7F).contains(&b)) {
        return Err(err(StatusCode::BAD_REQUEST, &format!("`{field}` must be 1 to {max} printable ASCII characters"), Some(field)));
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
        ("events_unrouted", "Event reports for no monitor of ours."),
        ("events_dropped", "Events dropped for slow subscribers."),
        ("unexpected_responses", "Results and errors for no outstanding invoke of ours."),
        ("undecodable_responses", "Results and errors for an outstanding invoke of ours that did not decode."),
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
    if let Ok(QueryResult::Sizes(z)) = st.gw.query(Query::Sizes).await {
        for (name, help, v) in [
            ("associations_in_memory", "Associations held in memory: live ones and those ended in the last 10 minutes.", z.associations),
            ("associations_live", "Associations not yet ended.", z.live),
            ("ivr_calls", "IVR calls the engine follows.", z.ivr_calls),
            ("bindings", "Extensions bound to an account.", z.bindings),
        ] {
            out.push_str(&format!("# HELP cstagate_{name} {help}\n# TYPE cstagate_{name} gauge\ncstagate_{name} {v}\n"));
        }
    }
    out.push_str(&format!(
        "# HELP cstagate_webhook_replay_cache_entries Webhook signatures remembered to refuse replays (at most {REPLAY_CACHE_CAPACITY}).\n# TYPE cstagate_webhook_replay_cache_entries gauge\ncstagate_webhook_replay_cache_entries {}\n",
        replay_entries(&st)
    ));
    for (name, help, v) in [
        ("ivr_unknown_context_total", "Context ids entered that matched no association, by IVR adapter.", [st.ivr.webhook.unknown_total(), st.ivr.fastagi.unknown_total()]),
        ("ivr_guesses_refused_total", "Context id entries refused without asking the engine: too many unknown ids in the last minute.", [st.ivr.webhook.refused_total(), st.ivr.fastagi.refused_total()]),
    ] {
        out.push_str(&format!("# HELP cstagate_{name} {help}\n# TYPE cstagate_{name} counter\n"));
        for (adapter, v) in ["webhook", "fastagi"].iter().zip(v) {
            out.push_str(&format!("cstagate_{name}{{adapter=\"{adapter}\"}} {v}\n"));
        }
    }
    out.push_str(&format!(
        "# HELP cstagate_fastagi_refused_total FastAGI connections from peers outside fastagi_allow, closed unread.\n# TYPE cstagate_fastagi_refused_total counter\ncstagate_fastagi_refused_total {}\n",
        st.ivr.fastagi_refused.load(std::sync::atomic::Ordering::Relaxed)
    ));
    let notified = st.gw.notifier().map(crate::notify::Notifier::stats).unwrap_or_default();
    for (name, kind, help) in [
        ("notifications_queued", "gauge", "Account notifications waiting in the tenant's queue."),
        ("notifications_delivered_total", "counter", "Account notifications accepted by the tenant's endpoint."),
        ("notifications_failed_total", "counter", "Account notifications given up after every attempt failed."),
        ("notifications_dropped_total", "counter", "Account notifications dropped: the tenant's queue was full."),
    ] {
        out.push_str(&format!("# HELP cstagate_{name} {help}\n# TYPE cstagate_{name} {kind}\n"));
        for t in &notified {
            let v = match name {
                "notifications_queued" => t.queued as u64,
                "notifications_delivered_total" => t.delivered,
                "notifications_failed_total" => t.given_up,
                _ => t.dropped,
            };
            let tenant = t.tenant.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            out.push_str(&format!("cstagate_{name}{{tenant=\"{tenant}\"}} {v}\n"));
        }
    }
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

/// Decode one percent-encoded component strictly: a `%` must be followed by two hex digits and
/// the result must be UTF-8. In query strings `+` is a space.
fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).and_then(|c| char::from(*c).to_digit(16))?;
                let lo = b.get(i + 2).and_then(|c| char::from(*c).to_digit(16))?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The path parameters of `template` (e.g. `/v1/bindings/{pbx}/{extension}`), decoded strictly
/// and checked by name: `id` an association id, `pbx` an identifier, `extension` a dial string,
/// `call` a hex call id.
fn path_params<const N: usize>(uri: &Uri, template: &str) -> Result<[String; N], Response> {
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    let mut n = 0;
    for (t, raw) in template.split('/').zip(uri.path().split('/')) {
        let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) else { continue };
        let Some(v) = percent_decode(raw, false) else {
            return Err(err(StatusCode::BAD_REQUEST, &format!("`{name}` is not valid percent-encoded UTF-8"), Some(name)));
        };
        match name {
            "id" => {
                if v.is_empty() || v.len() > 64 || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(err(StatusCode::BAD_REQUEST, "`id` must be an association id (letters and digits, at most 64)", Some("id")));
                }
            }
            "extension" => check_number(name, &v)?,
            "call" => {
                if v.is_empty() || v.len() > 64 || v.len() % 2 != 0 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err(StatusCode::BAD_REQUEST, "`call` must be a hex call id (at most 64 digits)", Some("call")));
                }
            }
            _ => check_id(name, &v, 64)?,
        }
        if let Some(slot) = out.get_mut(n) {
            *slot = v;
        }
        n += 1;
    }
    if n != N {
        return Err(err(StatusCode::NOT_FOUND, "no such endpoint", None));
    }
    Ok(out)
}

/// The query string's parameters among `allowed`, decoded strictly and checked by name:
/// `account` an identifier, `extension` a dial string, `limit` 1 to 10000. Unknown or repeated
/// parameters are refused.
fn query_params(raw: Option<&str>, allowed: &[&'static str]) -> Result<HashMap<&'static str, String>, Response> {
    let mut out = HashMap::new();
    for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(k) = percent_decode(k, true) else { return Err(err(StatusCode::BAD_REQUEST, "a query parameter name is not valid percent-encoded UTF-8", Some("query"))) };
        let Some(name) = allowed.iter().copied().find(|a| *a == k) else {
            let shown: String = k.chars().take(64).collect();
            let expected = if allowed.is_empty() { "none".to_owned() } else { format!("one of {}", allowed.join(", ")) };
            return Err(err(StatusCode::BAD_REQUEST, &format!("unknown query parameter `{shown}` (expected {expected})"), Some(&shown)));
        };
        let Some(v) = percent_decode(v, true) else { return Err(err(StatusCode::BAD_REQUEST, &format!("`{name}` is not valid percent-encoded UTF-8"), Some(name))) };
        match name {
            "extension" => check_number(name, &v)?,
            "limit" => {
                if !v.parse::<usize>().is_ok_and(|n| (1..=10_000).contains(&n)) {
                    return Err(err(StatusCode::BAD_REQUEST, "`limit` must be an integer from 1 to 10000", Some("limit")));
                }
            }
            _ => check_id(name, &v, 128)?,
        }
        if out.insert(name, v).is_some() {
            return Err(err(StatusCode::BAD_REQUEST, &format!("`{name}` is given twice"), Some(name)));
        }
    }
    Ok(out)
}

/// A handler's body in `?` style: either a response or a refusal.
fn either(r: Result<Response, Response>) -> Response {
    r.unwrap_or_else(|e| e)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    account: String,
    extension: String,
    display_name: Option<String>,
    pbx: Option<String>,
}

async fn create(State(st): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery, body: Bytes) -> Response {
    either(create_inner(&st, &headers, q.as_deref(), &body).await)
}

async fn create_inner(st: &AppState, headers: &HeaderMap, q: Option<&str>, body: &Bytes) -> Result<Response, Response> {
    let p = principal(st, headers)?;
    query_params(q, &[])?;
    let req: CreateReq = parse(body)?;
    check_id("account", &req.account, 128)?;
    check_number("extension", &req.extension)?;
    if let Some(d) = &req.display_name {
        check_text("display_name", d, 128)?;
    }
    if let Some(pbx) = &req.pbx {
        check_id("pbx", pbx, 64)?;
    }
    let input = ApiInput::Create {
        principal: p,
        account: req.account.into(),
        account_name: req.display_name,
        pbx: req.pbx.map(Into::into),
        extension: req.extension.into(),
        id: crate::random::id().into(),
        random: crate::random::digits(CONTEXT_RANDOM_DIGITS),
        code: crate::random::digits(16),
        now: now_ms(),
    };
    let ApiReply::Created { view: v, code } = st.gw.api(input).await.map_err(gateway_error)? else { return Err(unavailable()) };
    Ok((StatusCode::CREATED, Json(json!({
        "id": v.id, "state": v.state, "code": code,
        "expires_at": v.expires_at, "extension": v.extension, "pbx": v.pbx,
    })))
        .into_response())
}

fn view_json(v: &crate::association::AssociationView) -> Json_ {
    json!({
        "id": v.id, "state": v.state, "reason": v.reason, "retryable": v.retryable,
        "extension": v.extension, "pbx": v.pbx, "account": v.account, "expires_at": v.expires_at,
        "history": v.history,
    })
}

/// Feed an association input built for the caller and answer with the association's view.
async fn association_step(st: &AppState, headers: &HeaderMap, uri: &Uri, template: &str, ok: StatusCode, input: impl FnOnce(Principal, String) -> ApiInput) -> Response {
    let r = async {
        let p = principal(st, headers)?;
        let [id] = path_params(uri, template)?;
        query_params(uri.query(), &[])?;
        match st.gw.api(input(p, id)).await.map_err(gateway_error)? {
            ApiReply::Association(v) => Ok((ok, Json(view_json(&v))).into_response()),
            _ => Err(unavailable()),
        }
    };
    either(r.await)
}

async fn complete(State(st): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    association_step(&st, &headers, &uri, "/v1/associations/{id}/complete", StatusCode::ACCEPTED, |principal, id| ApiInput::Complete { principal, id: id.into(), random: crate::random::digits(CONTEXT_RANDOM_DIGITS), now: now_ms() }).await
}

async fn cancel(State(st): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    association_step(&st, &headers, &uri, "/v1/associations/{id}", StatusCode::OK, |principal, id| ApiInput::Cancel { principal, id: id.into(), now: now_ms() }).await
}

async fn get_association(State(st): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let r = async {
        let p = principal(&st, &headers)?;
        let [id] = path_params(&uri, "/v1/associations/{id}")?;
        query_params(uri.query(), &[])?;
        match st.gw.query(Query::Association { principal: p, id: id.into() }).await {
            Ok(QueryResult::Association(Some(v))) => Ok(Json(view_json(&v)).into_response()),
            Ok(QueryResult::Association(None)) => Err(api_error(&ApiError::NotFound)),
            _ => Err(unavailable()),
        }
    };
    either(r.await)
}

fn binding_json(b: &crate::association::Binding) -> Json_ {
    json!({ "account": b.account, "extension": b.extension, "pbx": b.pbx, "did": b.did, "did_verified": b.did_verified, "bound_at": b.bound_at })
}

async fn bindings_of(State(st): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let r = async {
        let p = principal(&st, &headers)?;
        let mut q = query_params(q.as_deref(), &["account"])?;
        let Principal::Tenant(tenant) = p else {
            return Err(err(StatusCode::BAD_REQUEST, "list bindings with a tenant token and `account`", Some("account")));
        };
        let account = q.remove("account").ok_or_else(|| err(StatusCode::BAD_REQUEST, "`account` is required", Some("account")))?;
        match st.gw.query(Query::BindingsOf { tenant, account: account.into() }).await {
            Ok(QueryResult::Bindings(v)) => Ok(Json(json!({ "bindings": v.iter().map(binding_json).collect::<Vec<_>>() })).into_response()),
            _ => Err(unavailable()),
        }
    };
    either(r.await)
}

/// The binding of an extension, if `p` may see it.
async fn visible_binding(st: &AppState, p: &Principal, pbx: &str, extension: &str) -> Option<crate::association::Binding> {
    match st.gw.query(Query::Binding { pbx: pbx.into(), extension: extension.into() }).await {
        Ok(QueryResult::Bindings(v)) => v.into_iter().find(|b| *p == Principal::Admin || *p == Principal::Tenant(b.tenant.clone())),
        _ => None,
    }
}

async fn binding(State(st): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    let r = async {
        let p = principal(&st, &headers)?;
        let [pbx, extension] = path_params(&uri, "/v1/bindings/{pbx}/{extension}")?;
        query_params(uri.query(), &[])?;
        let b = visible_binding(&st, &p, &pbx, &extension).await.ok_or_else(|| api_error(&ApiError::NotFound))?;
        Ok(Json(binding_json(&b)).into_response())
    };
    either(r.await)
}

async fn unbind(State(st): State<AppState>, headers: HeaderMap, uri: Uri, RawQuery(q): RawQuery) -> Response {
    let r = async {
        let p = principal(&st, &headers)?;
        let [pbx, extension] = path_params(&uri, "/v1/bindings/{pbx}/{extension}")?;
        let mut q = query_params(q.as_deref(), &["account"])?;
        st.gw.api(ApiInput::Unbind { principal: p, account: q.remove("account").map(Into::into), pbx: pbx.into(), extension: extension.into(), now: now_ms() }).await.map_err(gateway_error)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    either(r.await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallReq {
    account: String,
    to: String,
}

/// CTI control is for the bound account only.
async fn bound_to(st: &AppState, p: &Principal, pbx: &str, extension: &str, account: &str) -> Result<crate::link::Link, Response> {
    let b = visible_binding(st, p, pbx, extension).await.filter(|b| b.account == account).ok_or_else(|| api_error(&ApiError::NotFound))?;
    st.gw.links().get(b.pbx.as_str()).cloned().ok_or_else(unavailable)
}

/// Link failures: 503 while the link is down or its queue is full (retry later), 504 on a
/// timeout, 502 for the PBX's own refusals.
fn link_error(e: &crate::link::RequestError) -> Response {
    let status = match e {
        crate::link::RequestError::LinkDown | crate::link::RequestError::Closed | crate::link::RequestError::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
        crate::link::RequestError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    err(status, &e.to_string(), None)
}

async fn make_call(State(st): State<AppState>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let r = async {
        let p = principal(&st, &headers)?;
        let [pbx, extension] = path_params(&uri, "/v1/extensions/{pbx}/{extension}/calls")?;
        query_params(uri.query(), &[])?;
        let req: CallReq = parse(&body)?;
        check_id("account", &req.account, 128)?;
        check_number("to", &req.to)?;
        let link = bound_to(&st, &p, &pbx, &extension, &req.account).await?;
        let Ok(body) = crate::csta::make_call(&extension, &req.to) else { return Err(err(StatusCode::BAD_REQUEST, "bad number", Some("to"))) };
        match link.request(Operation::MakeCall, body).await {
            Ok(r) => {
                let call = crate::csta::made_call(&r);
                Ok((StatusCode::CREATED, Json(json!({ "call": call }))).into_response())
            }
            Err(e) => Err(link_error(&e)),
        }
    };
    either(r.await)
}

/// `account` from the query string, required.
fn required_account(q: Option<&str>) -> Result<String, Response> {
    query_params(q, &["account"])?.remove("account").ok_or_else(|| err(StatusCode::BAD_REQUEST, "`account` is required", Some("account")))
}

async fn clear_call(State(st): State<AppState>, headers: HeaderMap, uri: Uri, RawQuery(q): RawQuery) -> Response {
    let r = async {
        let p = principal(&st, &headers)?;
        let [pbx, extension, call] = path_params(&uri, "/v1/extensions/{pbx}/{extension}/calls/{call}")?;
        let account = required_account(q.as_deref())?;
        let link = bound_to(&st, &p, &pbx, &extension, &account).await?;
        let call: crate::csta::CallId = call.parse().map_err(|_| err(StatusCode::BAD_REQUEST, "`call` must be hex", Some("call")))?;
        match link.request(Operation::ClearConnection, crate::csta::clear_connection(&call, &extension)).await {
            Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
            Err(e) => Err(link_error(&e)),
        }
    };
    either(r.await)
}

async fn events(State(st): State<AppState>, headers: HeaderMap, uri: Uri, RawQuery(q): RawQuery) -> Response {
    let r = async {
        let p = principal(&st, &headers)?;
        let [pbx, extension] = path_params(&uri, "/v1/extensions/{pbx}/{extension}/events")?;
        let account = required_account(q.as_deref())?;
        // Watch for unbinds before reading the binding, so none is missed in between.
        let unbinds = st.gw.watch_unbinds();
        let binding = visible_binding(&st, &p, &pbx, &extension).await.filter(|b| b.account == account).ok_or_else(|| api_error(&ApiError::NotFound))?;
        let link = st.gw.links().get(binding.pbx.as_str()).cloned().ok_or_else(unavailable)?;
        let tenant = match &p {
            Principal::Tenant(t) => t.to_string(),
            Principal::Admin => String::new(),
        };
        let slot = StreamSlot::take(&st.streams, &tenant).ok_or_else(|| err(StatusCode::TOO_MANY_REQUESTS, &format!("at most {MAX_EVENT_STREAMS_PER_TENANT} event streams open per tenant"), None))?;
        let dialect = link.dialect();
        let monitor = link.monitor(&extension).await.map_err(|e| link_error(&e))?;
        let follow = BindingFollow { gw: st.gw.clone(), binding, unbinds, ended: false };
        let stream = futures_util::stream::unfold((monitor, slot, follow), move |(mut m, slot, mut follow)| async move {
            if follow.ended {
                return None;
            }
            let ev = loop {
                tokio::select! {
                    biased;
                    changed = follow.unbinds.changed() => {
                        if changed.is_err() || !follow.still_bound().await {
                            follow.ended = true;
                            break None;
                        }
                    }
                    ev = m.next() => break Some(ev?),
                }
            };
            // Every event is checked against the binding as it stands now.
            let ev = match ev {
                Some(ev) if !follow.unbinds.has_changed().unwrap_or(true) || follow.still_bound().await => ev,
                _ => {
                    follow.ended = true;
                    return Some((Ok::<_, Infallible>(SseEvent::default().data(json!({ "binding": "ended" }).to_string())), (m, slot, follow)));
                }
            };
            let data = match ev {
                MonitorEvent::Event(r) => Json_::Object(crate::decode::event_json(&r, dialect)).to_string(),
                MonitorEvent::LinkLost => json!({ "link": "lost" }).to_string(),
                MonitorEvent::LinkRestored => json!({ "link": "restored" }).to_string(),
                MonitorEvent::MonitorFailed(e) => json!({ "link": "monitor failed", "reason": e.to_string() }).to_string(),
            };
            Some((Ok::<_, Infallible>(SseEvent::default().data(data)), (m, slot, follow)))
        });
        Ok(sse(stream))
    };
    either(r.await)
}

/// An event stream follows the binding it was opened under: when that binding ends (unbound,
/// and perhaps bound again to someone else), the stream sends `{"binding":"ended"}` and ends, and
/// no event after the unbind reaches it.
struct BindingFollow {
    gw: Gateway,
    binding: crate::association::Binding,
    unbinds: tokio::sync::watch::Receiver<u64>,
    ended: bool,
}

impl BindingFollow {
    async fn still_bound(&mut self) -> bool {
        self.unbinds.borrow_and_update();
        let b = &self.binding;
        match self.gw.query(Query::Binding { pbx: b.pbx.clone(), extension: b.extension.clone() }).await {
            Ok(QueryResult::Bindings(now)) => now.first() == Some(b),
            _ => false,
        }
    }
}

fn sse<S: Stream<Item = Result<SseEvent, Infallible>> + Send + 'static>(s: S) -> Response {
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// Which counters or blocks an admin request means: `pbx` and `extension` together, or
/// `account` (with `tenant` to pick one tenant's account of that name).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeReq {
    pbx: Option<String>,
    extension: Option<String>,
    account: Option<String>,
    tenant: Option<String>,
}

impl ScopeReq {
    fn scope(self) -> Result<AdminScope, Response> {
        for (field, v) in [("pbx", &self.pbx), ("account", &self.account), ("tenant", &self.tenant)] {
            if let Some(v) = v {
                check_id(field, v, 128)?;
            }
        }
        if let Some(e) = &self.extension {
            check_number("extension", e)?;
        }
        match self {
            ScopeReq { pbx: Some(pbx), extension: Some(extension), account: None, tenant: None } => Ok(AdminScope::Extension { pbx: pbx.into(), extension: extension.into() }),
            ScopeReq { pbx: None, extension: None, account: Some(account), tenant } => Ok(AdminScope::Account { tenant: tenant.map(Into::into), account: account.into() }),
            _ => Err(err(StatusCode::BAD_REQUEST, "give `pbx` and `extension`, or `account` (and optionally `tenant`)", None)),
        }
    }

    fn from_query(q: Option<&str>) -> Result<AdminScope, Response> {
        let mut q = query_params(q, &["pbx", "extension", "account", "tenant"])?;
        ScopeReq { pbx: q.remove("pbx"), extension: q.remove("extension"), account: q.remove("account"), tenant: q.remove("tenant") }.scope()
    }
}

fn counters_json(counters: &[(crate::association::CounterKey, u32)]) -> Json_ {
    Json_::Array(counters.iter().map(|(k, n)| {
        let mut o = serde_json::to_value(k).unwrap_or_default();
        o["value"] = json!(n);
        o
    }).collect())
}

/// Admin reads or changes the limits of an extension or account.
async fn admin_limits(st: &AppState, headers: &HeaderMap, scope: impl FnOnce() -> Result<AdminScope, Response>, change: Option<fn(AdminScope) -> ApiInput>) -> Response {
    let r = async {
        admin(st, headers)?;
        let scope = scope()?;
        if let Some(change) = change {
            st.gw.api(change(scope.clone())).await.map_err(gateway_error)?;
        }
        match st.gw.query(Query::Limits(scope)).await {
            Ok(QueryResult::Limits { counters, blocks }) => Ok(Json(json!({ "counters": counters_json(&counters), "blocks": blocks })).into_response()),
            _ => Err(unavailable()),
        }
    };
    either(r.await)
}

/// `GET /v1/admin/counters` and `GET /v1/admin/blocks`: both show the counters and the blocks in
/// scope, so either answers "why can't this account (or extension) associate?".
async fn admin_read(State(st): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    admin_limits(&st, &headers, || ScopeReq::from_query(q.as_deref()), None).await
}

async fn admin_change(st: &AppState, headers: &HeaderMap, q: Option<&str>, body: &Bytes, change: fn(AdminScope) -> ApiInput) -> Response {
    let scope = || {
        query_params(q, &[])?;
        parse::<ScopeReq>(body)?.scope()
    };
    admin_limits(st, headers, scope, Some(change)).await
}

async fn admin_counters_reset(State(st): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery, body: Bytes) -> Response {
    admin_change(&st, &headers, q.as_deref(), &body, |scope| ApiInput::ResetCounters { scope, now: now_ms() }).await
}

async fn admin_blocks_lift(State(st): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery, body: Bytes) -> Response {
    admin_change(&st, &headers, q.as_deref(), &body, |scope| ApiInput::LiftBlocks { scope, now: now_ms() }).await
}

async fn pbx_list(State(st): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = admin(&st, &headers).and_then(|()| query_params(q.as_deref(), &[]).map(drop)) {
        return r;
    }
    let mut v: Vec<Json_> = st.gw.links().iter().map(|(id, l)| json!({ "id": id, "state": l.state(), "stats": l.stats() })).collect();
    v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "pbx": v })).into_response()
}

async fn audit(State(st): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    let r = async {
        let p = principal(&st, &headers)?;
        let mut q = query_params(q.as_deref(), &["extension", "account", "limit"])?;
        // A tenant sees its own records only.
        let tenant = match p {
            Principal::Admin => None,
            Principal::Tenant(t) => Some(t),
        };
        let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(1000);
        let f = AuditFilter { tenant, account: q.remove("account"), extension: q.remove("extension"), limit };
        match st.gw.query(Query::Audit(f)).await {
            Ok(QueryResult::Audit(v)) => Ok(Json(json!({ "records": v })).into_response()),
            _ => Err(unavailable()),
        }
    };
    either(r.await)
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

/// Check the webhook's timestamp, signature and freshness; record the signature.
fn webhook_auth(st: &AppState, secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), Response> {
    let unauthorized = |msg: &str| err(StatusCode::UNAUTHORIZED, msg, None);
    let ts = headers
        .get(TIMESTAMP_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| unauthorized("missing or malformed X-Cstagate-Timestamp (Unix seconds)"))?;
    let given = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase).ok_or_else(|| unauthorized("bad or missing X-Cstagate-Signature"))?;
    let expected = sign_webhook(secret, ts, body);
    if expected.is_empty() || given.len() != expected.len() || !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(unauthorized("bad or missing X-Cstagate-Signature"));
    }
    let now = now_ms() / 1000;
    if now.abs_diff(ts) > WEBHOOK_WINDOW_SECS {
        return Err(unauthorized(&format!("X-Cstagate-Timestamp is more than {WEBHOOK_WINDOW_SECS} s from the gateway's clock")));
    }
    let mut mac = [0u8; 32];
    hex::decode_to_slice(&expected["sha256=".len()..], &mut mac).map_err(|_| unauthorized("bad or missing X-Cstagate-Signature"))?;
    let verdict = match st.replay.lock() {
        Ok(mut cache) => cache.check(mac, ts, now),
        Err(_) => Err(Replay::Full),
    };
    match verdict {
        Ok(()) => Ok(()),
        Err(Replay::Seen) => Err(err(StatusCode::CONFLICT, "replayed webhook request: this signature was already accepted", None)),
        Err(Replay::Full) => Err(err(StatusCode::SERVICE_UNAVAILABLE, "too many webhook requests in the replay window", None)),
    }
}

/// Webhook signatures remembered (for `/metrics` and tests).
fn replay_entries(st: &AppState) -> usize {
    st.replay.lock().map_or(0, |c| c.len())
}

/// A calling or called number as the IVR platform reports it: at most 64 printable ASCII
/// characters, possibly empty (withheld).
fn check_party(field: &str, v: &str) -> Result<(), Response> {
    if v.is_empty() {
        return Ok(());
    }
    check_id(field, v, 64)
}

async fn ivr_webhook(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let r = async {
        // An empty key would accept requests signed with the empty key: as good as none.
        let secret = st.secrets.ivr_secret.as_deref().filter(|s| !s.trim().is_empty()).ok_or_else(|| err(StatusCode::NOT_FOUND, "the IVR webhook is not configured", None))?;
        webhook_auth(&st, secret, &headers, &body)?;
        let req: IvrReq = parse(&body)?;
        check_id("call", &req.call, 128)?;
        check_party("from", &req.from)?;
        check_party("to", &req.to)?;
        if let Some(d) = &req.digits {
            if d.len() > 64 || !d.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#') {
                return Err(err(StatusCode::BAD_REQUEST, "`digits` must be DTMF digits (0-9 * #), at most 64", Some("digits")));
            }
        }
        let now = now_ms();
        let calls = || st.ivr.webhook_calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if req.hangup {
            calls().set(&req.call, false, now);
            st.gw.ivr_hangup(req.call, now).await;
            return Ok(Json(json!({ "say": "", "hangup": true })).into_response());
        }
        // Digits on a call not past the context stage are a context entry: guarded.
        let entry = crate::ivr::names_a_number(req.digits.as_deref()) && !calls().contains(&req.call, now);
        if entry && !st.ivr.webhook.admit(&req.call, now) {
            st.gw.ivr_hangup(req.call, now).await;
            return Ok(Json(crate::association::IvrReply { prompt: crate::ivr::REFUSED_PROMPT, say: crate::ivr::REFUSED_SAY.into(), gather: None, hangup: true }).into_response());
        }
        let call = req.call.clone();
        let reply = st.gw.ivr(IvrInput { call: req.call, from: req.from, to: req.to, digits: req.digits, now }).await.map_err(gateway_error)?;
        if entry {
            st.ivr.webhook.answered(&call, reply.prompt, now);
        }
        calls().set(&call, !reply.hangup && !crate::ivr::asks_context(reply.prompt), now);
        Ok(Json(reply).into_response())
    };
    either(r.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_percent_decoding() {
        assert_eq!(percent_decode("a%20b+c", true).as_deref(), Some("a b c"));
        assert_eq!(percent_decode("a+b", false).as_deref(), Some("a+b"));
        assert_eq!(percent_decode("%F0%9F%98%80", false).as_deref(), Some("\u{1F600}"));
        for bad in ["%", "%4", "%zz", "%FF", "%C3%28", "a%g1"] {
            assert_eq!(percent_decode(bad, true), None, "{bad}");
        }
    }

    #[test]
    fn tokens_are_accepted_exactly() {
        let secrets = Secrets {
            admin_token: Some("admin-0123456789abcdef".into()),
            tenant_tokens: HashMap::from([("acme".into(), "acme-0123456789abcdef".into()), ("blank".into(), String::new())]),
            ..Default::default()
        };
        assert_eq!(token_principal(&secrets, "admin-0123456789abcdef"), Some(Principal::Admin));
        assert_eq!(token_principal(&secrets, "acme-0123456789abcdef"), Some(Principal::Tenant("acme".into())));
        // Same length, last character wrong; shorter; longer; a prefix; empty (which an empty
        // configured token must not match).
        for wrong in ["acme-0123456789abcdeg", "acme-0123", "acme-0123456789abcdef0", "acme-0123456789abcde", "", "admin-0123456789abcdeF"] {
            assert_eq!(token_principal(&secrets, wrong), None, "{wrong:?}");
        }
    }
}

/// The OpenAPI 3.0 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");
