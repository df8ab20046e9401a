//! Operational routes without authentication: health, Prometheus metrics, the OpenAPI document.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::gateway::{Query, QueryResult};

/// The gateway answers; each PBX link's state (`{"state": "up" | "down" | ..., "reason"?}`).
#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
    #[schema(value_type = BTreeMap<String, Object>)]
    links: BTreeMap<String, crate::link::LinkState>,
}

/// Liveness: the process serves HTTP (always 200 while it does). The links' states are
/// information; whether the gateway can do its work is `/readyz`.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub(super) async fn healthz(State(st): State<AppState>) -> Json<Health> {
    Json(Health { status: "ok", links: st.gw.links().iter().map(|(id, l)| (id.clone(), l.state())).collect() })
}

/// How long `/readyz` waits for the store's answer: a store that takes longer is not ready.
const STORE_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Readiness: whether the gateway can do its work, with the detail of each part.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// Whether the store answered and enough PBX links are up.
    ready: bool,
    /// `ok`, or `unavailable` (the store did not answer a read in time, or failed).
    store: &'static str,
    /// PBX links up, and how many must be (`ready_min_links`; all of them by default).
    links_up: usize,
    links_required: usize,
    /// Each PBX link's state (`{"state": "up" | "down" | ..., "reason"?}`).
    #[schema(value_type = BTreeMap<String, Object>)]
    links: BTreeMap<String, crate::link::LinkState>,
}

/// Readiness for a load balancer or an orchestrator: 200 when the store answers a real read
/// (through the gateway's actor, so a wedged actor is not ready either) and at least
/// `ready_min_links` PBX links are up (by default all), else 503; the same JSON detail either way.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, body = Readiness), (status = 503, description = "not ready: the detail says why", body = Readiness)))]
pub(super) async fn readyz(State(st): State<AppState>) -> Response {
    let store = matches!(tokio::time::timeout(STORE_PING_TIMEOUT, st.gw.query(Query::StorePing)).await, Ok(Ok(QueryResult::StoreAnswers)));
    let links: BTreeMap<String, crate::link::LinkState> = st.gw.links().iter().map(|(id, l)| (id.clone(), l.state())).collect();
    let links_up = links.values().filter(|s| **s == crate::link::LinkState::Up).count();
    let links_required = st.control.ready_min_links().min(links.len());
    let ready = store && links_up >= links_required;
    let status = if ready { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { ready, store: if store { "ok" } else { "unavailable" }, links_up, links_required, links })).into_response()
}

/// Prometheus metrics in the OpenMetrics text format ([`crate::metrics`]).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    let sizes = match st.gw.query(Query::Sizes).await {
        Ok(QueryResult::Sizes(z)) => Some(z),
        _ => None,
    };
    let replay = st.replay.lock().map_or(0, |c| c.len());
    let routing = st.control.routing();
    let text = crate::metrics::render(&crate::metrics::Sources { gw: &st.gw, cluster: routing.as_deref().map(super::route::Routing::view), sizes, replay_entries: replay, ivr: &st.ivr, reloads: st.control.reloads() });
    ([("content-type", crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// This document, generated from the handlers and the types they exchange.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops", responses((status = 200, content_type = "application/json", body = Object)))]
pub(super) async fn openapi(State(st): State<AppState>) -> Response {
    ([("content-type", "application/json")], st.openapi.to_string()).into_response()
}
