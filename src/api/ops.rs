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

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub(super) async fn healthz(State(st): State<AppState>) -> Json<Health> {
    Json(Health { status: "ok", links: st.gw.links().iter().map(|(id, l)| (id.clone(), l.state())).collect() })
}

/// Prometheus metrics in the OpenMetrics text format ([`crate::metrics`]).
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, content_type = "application/openmetrics-text", body = String)))]
pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    let sizes = match st.gw.query(Query::Sizes).await {
        Ok(QueryResult::Sizes(z)) => Some(z),
        _ => None,
    };
    let replay = st.replay.lock().map_or(0, |c| c.len());
    let text = crate::metrics::render(&crate::metrics::Sources { gw: &st.gw, sizes, replay_entries: replay, ivr: &st.ivr });
    ([("content-type", crate::metrics::CONTENT_TYPE)], text).into_response()
}

/// This document, generated from the handlers and the types they exchange.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "ops", responses((status = 200, content_type = "application/json", body = Object)))]
pub(super) async fn openapi(State(st): State<AppState>) -> Response {
    ([("content-type", "application/json")], st.openapi.to_string()).into_response()
}
