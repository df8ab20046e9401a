//! `/v1/associations`: ask for a code, say "I'm at my phone" (or retry), follow, cancel.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiResult, ErrorBody, HttpError};
use super::extract::{check_id, check_number, check_text, Caller, NoQuery, QueryParams, StrictJson, StrictPath, StrictQuery, Validate};
use super::{AppState, CONTEXT_RANDOM_DIGITS};
use crate::association::{ApiInput, ApiReply, AssociationView, Millis, Principal, Reason, State as AssocState, Step};
use crate::store::{AssociationFilter, MAX_ASSOCIATIONS_LISTED};
use crate::clock::now_ms;
use crate::ids::{AccountId, AssociationId, Extension, PbxId};
use crate::gateway::{Query, QueryResult};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateReq {
    /// The account (of the calling tenant) asking to bind the extension.
    account: String,
    extension: String,
    /// The name the IVR reads out as the tenant's.
    display_name: Option<String>,
    /// Needed only when the extension exists on several PBXs of the tenant.
    pbx: Option<String>,
}

impl Validate for CreateReq {
    fn validate(&self) -> Result<(), HttpError> {
        check_id("account", &self.account, 128)?;
        check_number("extension", &self.extension)?;
        if let Some(d) = &self.display_name {
            check_text("display_name", d, 128)?;
        }
        if let Some(pbx) = &self.pbx {
            check_id("pbx", pbx, 64)?;
        }
        Ok(())
    }
}

/// A new association, with its one-time code: the only time the code is shown.
#[derive(Serialize, ToSchema)]
pub struct Created {
    id: AssociationId,
    state: AssocState,
    /// The one-time code, for the app to show its user. Absent when the tenant's
    /// `code_delivery` is `notify`: the code then goes only to the tenant's HTTPS notification
    /// endpoint (event `code_issued`).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    expires_at: Millis,
    extension: Extension,
    pbx: PbxId,
}

/// What the API shows of an association: the engine's view without the tenant (the caller's
/// own) and the proof call's PBX id (the gateway's business).
#[derive(Serialize, ToSchema)]
pub struct Association {
    id: AssociationId,
    state: AssocState,
    /// Why the last attempt or the association failed; null while nothing failed.
    #[schema(required = true)]
    reason: Option<Reason>,
    retryable: bool,
    extension: Extension,
    pbx: PbxId,
    account: AccountId,
    expires_at: Millis,
    history: Vec<Step>,
}

impl From<AssociationView> for Association {
    fn from(v: AssociationView) -> Association {
        Association { id: v.id, state: v.state, reason: v.reason, retryable: v.retryable, extension: v.extension, pbx: v.pbx, account: v.account, expires_at: v.expires_at, history: v.history }
    }
}

/// The engine's answer to Complete or Cancel: the association as it stands.
fn view_of(reply: ApiReply) -> ApiResult<AssociationView> {
    match reply {
        ApiReply::Association(v) => Ok(v),
        _ => Err(HttpError::unavailable()),
    }
}

#[utoipa::path(post, path = "/v1/associations", tag = "associations", request_body = CreateReq, security(("bearer" = [])),
    responses((status = 201, body = Created), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again. `ivr_pool_exhausted` (with `Retry-After`, seconds): every number of the PBX's IVR pool is held by a proof call", body = ErrorBody, headers(("Retry-After" = u32, description = "with `ivr_pool_exhausted`: seconds to wait before asking again")))))]
pub(super) async fn create(State(st): State<AppState>, Caller(principal): Caller, _: StrictQuery<NoQuery>, StrictJson(req): StrictJson<CreateReq>) -> ApiResult<(StatusCode, Json<Created>)> {
    let input = ApiInput::Create {
        principal,
        account: req.account.into(),
        account_name: req.display_name,
        pbx: req.pbx.map(Into::into),
        extension: req.extension.into(),
        id: crate::random::id().into(),
        random: crate::random::digits(CONTEXT_RANDOM_DIGITS),
        code: crate::random::digits(16),
        now: now_ms(),
    };
    let ApiReply::Created { view: v, code } = st.gw.api(input).await? else { return Err(HttpError::unavailable()) };
    Ok((StatusCode::CREATED, Json(Created { id: v.id, state: v.state, code, expires_at: v.expires_at, extension: v.extension, pbx: v.pbx })))
}

#[utoipa::path(post, path = "/v1/associations/{id}/complete", tag = "associations", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 202, body = Association), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again. `ivr_pool_exhausted` (with `Retry-After`, seconds): every number of the PBX's IVR pool is held by a proof call", body = ErrorBody, headers(("Retry-After" = u32, description = "with `ivr_pool_exhausted`: seconds to wait before asking again")))))]
pub(super) async fn complete(State(st): State<AppState>, Caller(principal): Caller, StrictPath(path): StrictPath<1>, _: StrictQuery<NoQuery>) -> ApiResult<(StatusCode, Json<Association>)> {
    let [id] = path;
    let v = view_of(st.gw.api(ApiInput::Complete { principal, id: id.into(), random: crate::random::digits(CONTEXT_RANDOM_DIGITS), now: now_ms() }).await?)?;
    Ok((StatusCode::ACCEPTED, Json(v.into())))
}

#[utoipa::path(delete, path = "/v1/associations/{id}", tag = "associations", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Association), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn cancel(State(st): State<AppState>, Caller(principal): Caller, StrictPath(path): StrictPath<1>, _: StrictQuery<NoQuery>) -> ApiResult<Json<Association>> {
    let [id] = path;
    let v = view_of(st.gw.api(ApiInput::Cancel { principal, id: id.into(), now: now_ms() }).await?)?;
    Ok(Json(v.into()))
}

#[utoipa::path(get, path = "/v1/associations/{id}", tag = "associations", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 200, body = Association), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn get_association(State(st): State<AppState>, Caller(principal): Caller, StrictPath(path): StrictPath<1>, _: StrictQuery<NoQuery>) -> ApiResult<Json<Association>> {
    let [id] = path;
    match st.gw.query(Query::Association { principal, id: id.into() }).await? {
        QueryResult::Association(Some(v)) => Ok(Json(v.into())),
        QueryResult::Association(None) => Err(HttpError::not_found()),
        _ => Err(HttpError::unavailable()),
    }
}

/// `?state=&extension=&account=&limit=` of the list.
pub struct ListQuery {
    state: Option<AssocState>,
    extension: Option<String>,
    account: Option<String>,
    limit: Option<usize>,
}

impl QueryParams for ListQuery {
    const ALLOWED: &'static [&'static str] = &["state", "extension", "account", "limit"];
    fn from_params(mut q: HashMap<&'static str, String>) -> Result<ListQuery, HttpError> {
        let state = match q.remove("state") {
            None => None,
            Some(s) => Some(serde_json::from_value::<AssocState>(serde_json::Value::String(s)).map_err(|_| {
                HttpError::bad("state", "`state` must be one of code_issued, monitoring, locking, calling, ringing, in_ivr, bound, failed, expired, cancelled")
            })?),
        };
        // `query_params` checked `limit` (1 to 10000); more than the store lists is the most it lists.
        Ok(ListQuery { state, extension: q.remove("extension"), account: q.remove("account"), limit: q.get("limit").and_then(|l| l.parse().ok()) })
    }
}

/// Associations, newest first (finished ones included).
#[derive(Serialize, ToSchema)]
pub struct AssociationList {
    associations: Vec<Association>,
}

/// The associations a caller may see (a tenant its own, the admin all), from the store, so that
/// finished ones are listed too: newest first, at most `limit` (default and most:
/// [`MAX_ASSOCIATIONS_LISTED`]).
#[utoipa::path(get, path = "/v1/associations", tag = "associations",
    params(("state" = Option<AssocState>, Query), ("extension" = Option<String>, Query), ("account" = Option<String>, Query), ("limit" = Option<usize>, Query, description = "1 to 1000 (default 1000); more lists 1000")),
    security(("bearer" = [])),
    responses((status = 200, body = AssociationList), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn list(State(st): State<AppState>, Caller(principal): Caller, StrictQuery(q): StrictQuery<ListQuery>) -> ApiResult<Json<AssociationList>> {
    let tenant = match principal {
        Principal::Admin => None,
        Principal::Tenant(t) => Some(t),
    };
    let state = q.state.and_then(|s| serde_json::to_value(s).ok()).and_then(|v| v.as_str().map(str::to_owned));
    let f = AssociationFilter { tenant, state, extension: q.extension, account: q.account, limit: q.limit.map_or(MAX_ASSOCIATIONS_LISTED, |l| l.min(MAX_ASSOCIATIONS_LISTED)) };
    match st.gw.query(Query::Associations(f)).await? {
        QueryResult::Associations(v) => Ok(Json(AssociationList { associations: v.into_iter().map(Association::from).collect() })),
        _ => Err(HttpError::unavailable()),
    }
}
