//! `/v1/extensions/{pbx}/{extension}/...`: CTI control of a bound extension, for the bound
//! account only: MakeCall, ClearConnection, and its events as server-sent events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json_};
use utoipa::ToSchema;

use super::bindings::visible_binding;
use super::error::{ApiResult, ErrorBody, HttpError};
use super::extract::{check_id, check_number, AccountQuery, Caller, NoQuery, StrictJson, StrictPath, StrictQuery, Validate};
use super::{AppState, MAX_EVENT_STREAMS_PER_TENANT};
use crate::association::Principal;
use crate::ids::TenantId;
use crate::codec::body::{FieldName as F, Value};
use crate::codec::{Body, ConnectionId, DeviceId, LocalDevice, Operation};
use crate::gateway::{Gateway, Query, QueryResult};
use crate::link::MonitorEvent;

/// Event streams open, by tenant.
pub(super) type Streams = Arc<Mutex<HashMap<String, usize>>>;

/// One open event stream of a tenant; gives its place back when the stream ends.
struct StreamSlot {
    streams: Streams,
    tenant: String,
}

impl StreamSlot {
    fn take(streams: &Streams, tenant: &str) -> Option<StreamSlot> {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallReq {
    /// The account the extension is bound to.
    account: String,
    /// The number to call.
    to: String,
}

impl Validate for CallReq {
    fn validate(&self) -> Result<(), HttpError> {
        check_id("account", &self.account, 128)?;
        check_number("to", &self.to)
    }
}

/// A call placed: the PBX's call id (hex), if it gave one.
#[derive(Serialize, ToSchema)]
pub struct CallPlaced {
    #[schema(required = true)]
    call: Option<String>,
}

/// CTI control is for the bound account only.
async fn bound_to(st: &AppState, p: &Principal, pbx: &str, extension: &str, account: &str) -> ApiResult<crate::link::Link> {
    let b = visible_binding(st, p, pbx, extension).await?.filter(|b| b.account == account).ok_or_else(HttpError::not_found)?;
    st.gw.links().get(b.pbx.as_str()).cloned().ok_or_else(HttpError::unavailable)
}

#[utoipa::path(post, path = "/v1/extensions/{pbx}/{extension}/calls", tag = "cti", request_body = CallReq, params(("pbx" = String, Path), ("extension" = String, Path)), security(("bearer" = [])),
    responses((status = 201, body = CallPlaced), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = "5XX", description = "the PBX link is down or busy (503), timed out (504) or the PBX refused (502); or `unavailable`", body = ErrorBody)))]
pub(super) async fn make_call(State(st): State<AppState>, Caller(p): Caller, StrictPath(path): StrictPath<2>, _: StrictQuery<NoQuery>, StrictJson(req): StrictJson<CallReq>) -> ApiResult<(StatusCode, Json<CallPlaced>)> {
    let [pbx, extension] = path;
    let link = bound_to(&st, &p, &pbx, &extension, &req.account).await?;
    let (Ok(from), Ok(to)) = (DeviceId::dialing(&extension), DeviceId::dialing(&req.to)) else { return Err(HttpError::bad("to", "bad number")) };
    let r = link.request(Operation::MakeCall, Body::new().with(F::CallingDevice, Value::DeviceId(from)).with(F::CalledDirectoryNumber, Value::DeviceId(to))).await?;
    let call = r.connection(F::CallingDevice).and_then(|c| c.call.as_ref()).map(hex::encode);
    Ok((StatusCode::CREATED, Json(CallPlaced { call })))
}

#[utoipa::path(delete, path = "/v1/extensions/{pbx}/{extension}/calls/{call}", tag = "cti", params(("pbx" = String, Path), ("extension" = String, Path), ("call" = String, Path), ("account" = String, Query)), security(("bearer" = [])),
    responses((status = 204), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = "5XX", description = "the PBX link is down or busy (503), timed out (504) or the PBX refused (502); or `unavailable`", body = ErrorBody)))]
pub(super) async fn clear_call(State(st): State<AppState>, Caller(p): Caller, StrictPath(path): StrictPath<3>, StrictQuery(q): StrictQuery<AccountQuery>) -> ApiResult<StatusCode> {
    let [pbx, extension, call] = path;
    let link = bound_to(&st, &p, &pbx, &extension, &q.account).await?;
    let call = hex::decode(&call).map_err(|_| HttpError::bad("call", "`call` must be hex"))?;
    let conn = ConnectionId { call: Some(call.into()), device: DeviceId::dialing(&extension).ok().map(LocalDevice::Static) };
    link.request(Operation::ClearConnection, Body::new().with(F::ConnectionToBeCleared, Value::Connection(conn))).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The extension's events as server-sent events (`data:` one JSON object each: the decoded CSTA
/// event, `{"link": "lost" | "restored" | "monitor failed"}`, and `{"binding": "ended"}` last).
#[utoipa::path(get, path = "/v1/extensions/{pbx}/{extension}/events", tag = "cti", params(("pbx" = String, Path), ("extension" = String, Path), ("account" = String, Query)), security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = "5XX", description = "the PBX link is down or busy (503), timed out (504) or the PBX refused (502); or `unavailable`", body = ErrorBody)))]
pub(super) async fn events(State(st): State<AppState>, Caller(p): Caller, StrictPath(path): StrictPath<2>, StrictQuery(q): StrictQuery<AccountQuery>) -> ApiResult<Response> {
    let [pbx, extension] = path;
    // Watch for unbinds before reading the binding, so none is missed in between.
    let unbinds = st.gw.watch_unbinds();
    let binding = visible_binding(&st, &p, &pbx, &extension).await?.filter(|b| b.account == q.account).ok_or_else(HttpError::not_found)?;
    let link = st.gw.links().get(binding.pbx.as_str()).cloned().ok_or_else(HttpError::unavailable)?;
    let tenant = match &p {
        Principal::Tenant(t) => t.clone(),
        Principal::Admin => TenantId::default(),
    };
    let slot = StreamSlot::take(&st.streams, &tenant).ok_or_else(|| HttpError::new(StatusCode::TOO_MANY_REQUESTS, format!("at most {MAX_EVENT_STREAMS_PER_TENANT} event streams open per tenant")))?;
    let dialect = link.dialect();
    let monitor = link.monitor(&extension).await?;
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
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
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
