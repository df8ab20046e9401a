//! `/v1/bindings`: the extensions bound to an account, one binding, unbinding.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiResult, ErrorBody, HttpError};
use super::extract::{Caller, MaybeAccountQuery, NoQuery, StrictPath, StrictQuery};
use super::AppState;
use crate::association::{ApiInput, Millis, Principal};
use crate::clock::now_ms;
use crate::ids::{AccountId, Extension, PbxId};
use crate::gateway::{Query, QueryResult};

/// What the API shows of a binding: the engine's without the tenant (the caller's own).
#[derive(Serialize, ToSchema)]
pub struct BindingBody {
    account: AccountId,
    extension: Extension,
    pbx: PbxId,
    /// The calling number the IVR saw: a hint, not verified identity.
    #[schema(required = true)]
    did: Option<String>,
    did_verified: bool,
    bound_at: Millis,
}

impl From<crate::association::Binding> for BindingBody {
    fn from(b: crate::association::Binding) -> BindingBody {
        BindingBody { account: b.account, extension: b.extension, pbx: b.pbx, did: b.did, did_verified: b.did_verified, bound_at: b.bound_at }
    }
}

#[derive(Serialize, ToSchema)]
pub struct BindingList {
    bindings: Vec<BindingBody>,
}

/// The binding of an extension, if `p` may see it; `Err` if the gateway cannot answer.
pub(super) async fn visible_binding(st: &AppState, p: &Principal, pbx: &str, extension: &str) -> ApiResult<Option<crate::association::Binding>> {
    match st.gw.query(Query::Binding { pbx: pbx.into(), extension: extension.into() }).await? {
        QueryResult::Bindings(v) => Ok(v.into_iter().find(|b| *p == Principal::Admin || *p == Principal::Tenant(b.tenant.clone()))),
        _ => Err(HttpError::unavailable()),
    }
}

#[utoipa::path(get, path = "/v1/bindings", tag = "bindings", params(("account" = String, Query)), security(("bearer" = [])),
    responses((status = 200, body = BindingList), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn bindings_of(State(st): State<AppState>, Caller(p): Caller, StrictQuery(q): StrictQuery<MaybeAccountQuery>) -> ApiResult<Json<BindingList>> {
    let Principal::Tenant(tenant) = p else {
        return Err(HttpError::bad("account", "list bindings with a tenant token and `account`"));
    };
    let account = q.account.ok_or_else(|| HttpError::bad("account", "`account` is required"))?;
    match st.gw.query(Query::BindingsOf { tenant, account: account.into() }).await? {
        QueryResult::Bindings(v) => Ok(Json(BindingList { bindings: v.into_iter().map(BindingBody::from).collect() })),
        _ => Err(HttpError::unavailable()),
    }
}

#[utoipa::path(get, path = "/v1/bindings/{pbx}/{extension}", tag = "bindings", params(("pbx" = String, Path), ("extension" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = BindingBody), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn binding(State(st): State<AppState>, Caller(p): Caller, StrictPath(path): StrictPath<2>, _: StrictQuery<NoQuery>) -> ApiResult<Json<BindingBody>> {
    let [pbx, extension] = path;
    let b = visible_binding(&st, &p, &pbx, &extension).await?.ok_or_else(HttpError::not_found)?;
    Ok(Json(b.into()))
}

#[utoipa::path(delete, path = "/v1/bindings/{pbx}/{extension}", tag = "bindings", params(("pbx" = String, Path), ("extension" = String, Path), ("account" = Option<String>, Query)), security(("bearer" = [])),
    responses((status = 204), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn unbind(State(st): State<AppState>, Caller(principal): Caller, StrictPath(path): StrictPath<2>, StrictQuery(q): StrictQuery<MaybeAccountQuery>) -> ApiResult<StatusCode> {
    let [pbx, extension] = path;
    st.gw.api(ApiInput::Unbind { principal, account: q.account.map(Into::into), pbx: pbx.into(), extension: extension.into(), now: now_ms() }).await?;
    Ok(StatusCode::NO_CONTENT)
}
