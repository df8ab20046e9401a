//! `GET /v1/directory/{pbx}?name=`: finding one's extension by name (the patent's step S1), for
//! the cloud app to offer before it asks for an association. What is matched and how it is
//! scored: [`crate::directory::matcher`].

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;

use super::error::{ApiResult, ErrorBody, HttpError};
use super::extract::{Caller, QueryParams, StrictPath, StrictQuery};
use super::AppState;
use crate::association::Principal;
use crate::directory::matcher::{fold, Match, MAX_QUERY_WORDS};

/// `?name=`, required: 1 to [`MAX_QUERY_CHARS`](crate::directory::matcher::MAX_QUERY_CHARS)
/// characters (checked by the query reader), at least one letter or digit, at most
/// [`MAX_QUERY_WORDS`] words.
pub struct NameQuery {
    name: String,
}

impl QueryParams for NameQuery {
    const ALLOWED: &'static [&'static str] = &["name"];
    fn from_params(mut q: HashMap<&'static str, String>) -> Result<NameQuery, HttpError> {
        let name = q.remove("name").ok_or_else(|| HttpError::bad("name", "`name` is required"))?;
        Ok(NameQuery { name })
    }
}

/// The directory entries whose name matches `name`, best first, at most 10: case and accents
/// are ignored (`muller` and `mueller` find `Müller`), and each word of `name` may be the
/// beginning of a word of the name. `score`: 100 the whole name, 90 whole words, 70 the
/// beginning of the name, 50 beginnings of words. A tenant token reaches its own PBXs only
/// (another PBX is 404, as every other tenant's object); the admin token reaches every PBX.
#[utoipa::path(get, path = "/v1/directory/{pbx}", tag = "associations", params(("pbx" = String, Path), ("name" = String, Query)), security(("bearer" = [])),
    responses((status = 200, body = Vec<Match>), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (404 `not_found`)", body = ErrorBody)))]
pub(super) async fn search(State(st): State<AppState>, Caller(p): Caller, StrictPath(path): StrictPath<1>, StrictQuery(q): StrictQuery<NameQuery>) -> ApiResult<Json<Vec<Match>>> {
    let [pbx] = path;
    let dir = st.directory.get(&pbx).filter(|d| match &p {
        Principal::Admin => true,
        Principal::Tenant(t) => d.tenant() == Some(t.as_str()),
    });
    let dir = dir.ok_or_else(HttpError::not_found)?;
    let query = fold(&q.name, MAX_QUERY_WORDS + 1);
    if query.plain.is_empty() || query.plain.len() > MAX_QUERY_WORDS {
        return Err(HttpError::bad("name", format!("`name` must hold 1 to {MAX_QUERY_WORDS} words of letters or digits")));
    }
    Ok(Json(dir.search(&query)))
}
