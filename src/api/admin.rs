//! Admin views: failure counters and owner blocks (read, reset, lift), the PBX links, and the
//! audit log (which a tenant may read too, its own records only).

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiResult, ErrorBody, HttpError};
use super::extract::{check_id, check_number, AdminCaller, Caller, NoQuery, QueryParams, StrictJson, StrictQuery, Validate};
use super::AppState;
use crate::association::{AdminScope, ApiInput, AuditRecord, CounterKey, OwnerBlock, Principal};
use crate::clock::now_ms;
use crate::gateway::{Query, QueryResult};
use crate::store::AuditFilter;

/// Which counters or blocks an admin request means: `pbx` and `extension` together, or
/// `account` (with `tenant` to pick one tenant's account of that name).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeReq {
    pbx: Option<String>,
    extension: Option<String>,
    account: Option<String>,
    tenant: Option<String>,
}

impl Validate for ScopeReq {
    fn validate(&self) -> Result<(), HttpError> {
        for (field, v) in [("pbx", &self.pbx), ("account", &self.account), ("tenant", &self.tenant)] {
            if let Some(v) = v {
                check_id(field, v, 128)?;
            }
        }
        if let Some(e) = &self.extension {
            check_number("extension", e)?;
        }
        Ok(())
    }
}

impl ScopeReq {
    fn scope(self) -> ApiResult<AdminScope> {
        match self {
            ScopeReq { pbx: Some(pbx), extension: Some(extension), account: None, tenant: None } => Ok(AdminScope::Extension { pbx: pbx.into(), extension: extension.into() }),
            ScopeReq { pbx: None, extension: None, account: Some(account), tenant } => Ok(AdminScope::Account { tenant: tenant.map(Into::into), account: account.into() }),
            _ => Err(HttpError::bad_request("give `pbx` and `extension`, or `account` (and optionally `tenant`)")),
        }
    }
}

impl QueryParams for ScopeReq {
    const ALLOWED: &'static [&'static str] = &["pbx", "extension", "account", "tenant"];
    fn from_params(mut q: HashMap<&'static str, String>) -> Result<ScopeReq, HttpError> {
        let req = ScopeReq { pbx: q.remove("pbx"), extension: q.remove("extension"), account: q.remove("account"), tenant: q.remove("tenant") };
        req.validate()?;
        Ok(req)
    }
}

/// One failure counter: whose it is, and its value.
#[derive(Serialize, ToSchema)]
pub struct Counter {
    #[serde(flatten)]
    key: CounterKey,
    value: u32,
}

/// The failure counters and owner blocks in scope.
#[derive(Serialize, ToSchema)]
pub struct Limits {
    counters: Vec<Counter>,
    blocks: Vec<OwnerBlock>,
}

async fn limits(st: &AppState, scope: AdminScope) -> ApiResult<Json<Limits>> {
    match st.gw.query(Query::Limits(scope)).await? {
        QueryResult::Limits { counters, blocks } => Ok(Json(Limits { counters: counters.into_iter().map(|(key, value)| Counter { key, value }).collect(), blocks })),
        _ => Err(HttpError::unavailable()),
    }
}

/// Change the limits in scope, then show them.
async fn change(st: &AppState, scope: AdminScope, input: ApiInput) -> ApiResult<Json<Limits>> {
    st.gw.api(input).await?;
    limits(st, scope).await
}

/// `GET /v1/admin/counters` and `GET /v1/admin/blocks`: both show the counters and the blocks in
/// scope, so either answers "why can't this account (or extension) associate?".
#[utoipa::path(get, path = "/v1/admin/counters", tag = "admin", params(("pbx" = Option<String>, Query), ("extension" = Option<String>, Query), ("account" = Option<String>, Query), ("tenant" = Option<String>, Query)), security(("bearer" = [])),
    responses((status = 200, body = Limits), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn counters(State(st): State<AppState>, _: AdminCaller, StrictQuery(q): StrictQuery<ScopeReq>) -> ApiResult<Json<Limits>> {
    limits(&st, q.scope()?).await
}

/// The same as `GET /v1/admin/counters`.
#[utoipa::path(get, path = "/v1/admin/blocks", tag = "admin", params(("pbx" = Option<String>, Query), ("extension" = Option<String>, Query), ("account" = Option<String>, Query), ("tenant" = Option<String>, Query)), security(("bearer" = [])),
    responses((status = 200, body = Limits), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn blocks(st: State<AppState>, admin: AdminCaller, q: StrictQuery<ScopeReq>) -> ApiResult<Json<Limits>> {
    counters(st, admin, q).await
}

#[utoipa::path(post, path = "/v1/admin/counters/reset", tag = "admin", request_body = ScopeReq, security(("bearer" = [])),
    responses((status = 200, body = Limits), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn counters_reset(State(st): State<AppState>, _: AdminCaller, _: StrictQuery<NoQuery>, StrictJson(req): StrictJson<ScopeReq>) -> ApiResult<Json<Limits>> {
    let scope = req.scope()?;
    change(&st, scope.clone(), ApiInput::ResetCounters { scope, now: now_ms() }).await
}

#[utoipa::path(post, path = "/v1/admin/blocks/lift", tag = "admin", request_body = ScopeReq, security(("bearer" = [])),
    responses((status = 200, body = Limits), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn blocks_lift(State(st): State<AppState>, _: AdminCaller, _: StrictQuery<NoQuery>, StrictJson(req): StrictJson<ScopeReq>) -> ApiResult<Json<Limits>> {
    let scope = req.scope()?;
    change(&st, scope.clone(), ApiInput::LiftBlocks { scope, now: now_ms() }).await
}

/// One PBX link: its state and counters (as `Link::state` and `Link::stats` give them), and its
/// directory's sources (`null` when the PBX has no directory).
#[derive(Serialize, ToSchema)]
pub struct PbxLink {
    id: String,
    #[schema(value_type = Object)]
    state: crate::link::LinkState,
    #[schema(value_type = Object)]
    stats: crate::link::StatsSnapshot,
    #[schema(required = true)]
    directory: Option<crate::directory::DirectoryStatus>,
    /// With `[cluster]`: this instance (it holds the link) and its lease's epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<i64>,
}

/// With `[cluster]`: one PBX's lease as the database held it at this instance's last round.
#[derive(Serialize, ToSchema)]
pub struct PbxLease {
    pbx: String,
    owner: String,
    epoch: i64,
    /// Whether the lease had not expired.
    live: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PbxList {
    pbx: Vec<PbxLink>,
    /// With `[cluster]`: every PBX's lease (its owner among the instances, its epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    leases: Option<Vec<PbxLease>>,
}

#[utoipa::path(get, path = "/v1/pbx", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = PbxList), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody)))]
pub(super) async fn pbx_list(State(st): State<AppState>, _: AdminCaller, _: StrictQuery<NoQuery>) -> Json<PbxList> {
    let routing = st.control.routing();
    let cluster = routing.as_deref().map(super::route::Routing::view);
    let mut pbx: Vec<PbxLink> = st
        .gw
        .links()
        .iter()
        .map(|(id, l)| PbxLink { id: id.clone(), state: l.state(), stats: l.stats(), directory: st.directory.get(id).map(|d| d.status()), owner: cluster.map(|c| c.instance_id.clone()), epoch: cluster.and_then(|c| c.epoch(id)) })
        .collect();
    pbx.sort_by(|a, b| a.id.cmp(&b.id));
    let leases = cluster.map(|c| c.leases().into_iter().map(|r| PbxLease { pbx: r.pbx, owner: r.owner, epoch: r.epoch, live: r.live }).collect());
    Json(PbxList { pbx, leases })
}

/// `?extension=&account=&limit=`.
pub struct AuditQuery {
    extension: Option<String>,
    account: Option<String>,
    limit: Option<usize>,
}

impl QueryParams for AuditQuery {
    const ALLOWED: &'static [&'static str] = &["extension", "account", "limit"];
    fn from_params(mut q: HashMap<&'static str, String>) -> Result<AuditQuery, HttpError> {
        Ok(AuditQuery { extension: q.remove("extension"), account: q.remove("account"), limit: q.get("limit").and_then(|l| l.parse().ok()) })
    }
}

#[derive(Serialize, ToSchema)]
pub struct AuditLog {
    records: Vec<AuditRecord>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "admin", params(("extension" = Option<String>, Query), ("account" = Option<String>, Query), ("limit" = Option<usize>, Query)), security(("bearer" = [])),
    responses((status = 200, body = AuditLog), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn audit(State(st): State<AppState>, Caller(p): Caller, StrictQuery(q): StrictQuery<AuditQuery>) -> ApiResult<Json<AuditLog>> {
    // A tenant sees its own records only.
    let tenant = match p {
        Principal::Admin => None,
        Principal::Tenant(t) => Some(t),
    };
    let f = AuditFilter { tenant, account: q.account, extension: q.extension, limit: q.limit.unwrap_or(1000) };
    match st.gw.query(Query::Audit(f)).await? {
        QueryResult::Audit(records) => Ok(Json(AuditLog { records })),
        _ => Err(HttpError::unavailable()),
    }
}
