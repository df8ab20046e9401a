//! The API's one error type: every refusal, whoever makes it (an extractor, the engine, the
//! link, the store), is an [`HttpError`] and reaches the client as the same JSON shape,
//! `{"error", "field"?, "code"?}`, with its status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::association::Refusal;
use crate::gateway::GatewayError;

/// A refused request: its status and the JSON body the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

/// The body of every refusal. `field` names the request field at fault (400s); `code` is the
/// stable name of an engine refusal or of `unavailable`, for programs beside the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, value_type = Option<String>)]
    pub code: Option<&'static str>,
}

impl HttpError {
    /// A refusal with a message and no field.
    pub fn new(status: StatusCode, msg: impl Into<String>) -> HttpError {
        HttpError { status, body: ErrorBody { error: msg.into(), field: None, code: None } }
    }

    /// A 400 naming the field at fault.
    pub fn bad(field: &str, msg: impl Into<String>) -> HttpError {
        HttpError { status: StatusCode::BAD_REQUEST, body: ErrorBody { error: msg.into(), field: Some(field.to_owned()), code: None } }
    }

    /// A 400 without a field (the body as a whole is wrong).
    pub fn bad_request(msg: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, msg)
    }

    /// The gateway cannot answer: it stopped, or the store failed on a read or a commit. Always
    /// 503 `unavailable` (try again), never a 4xx that blames the client.
    pub fn unavailable() -> HttpError {
        HttpError { status: StatusCode::SERVICE_UNAVAILABLE, body: ErrorBody { error: "gateway unavailable".into(), field: None, code: Some("unavailable") } }
    }

    pub fn not_found() -> HttpError {
        HttpError::from(&Refusal::NotFound)
    }

    pub fn unauthorized(msg: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::UNAUTHORIZED, msg)
    }

    /// 413, saying which limit: a client that hits it learns how much it may send.
    pub fn too_large() -> HttpError {
        HttpError { status: StatusCode::PAYLOAD_TOO_LARGE, body: ErrorBody { error: format!("request body too large: the limit is {} KiB", super::MAX_BODY / 1024), field: None, code: Some("body_too_large") } }
    }
}

impl From<&Refusal> for HttpError {
    /// An engine refusal: its status, and a stable `code` beside the message.
    fn from(e: &Refusal) -> HttpError {
        let (status, code) = match e {
            Refusal::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Refusal::UnknownExtension(_) => (StatusCode::NOT_FOUND, "unknown_extension"),
            Refusal::AlreadyBound => (StatusCode::CONFLICT, "already_bound"),
            Refusal::ExtensionBusy => (StatusCode::CONFLICT, "extension_busy"),
            Refusal::AccountBusy => (StatusCode::CONFLICT, "account_busy"),
            Refusal::WrongState(_) => (StatusCode::CONFLICT, "wrong_state"),
            Refusal::LockedOut => (StatusCode::LOCKED, "locked_out"),
            Refusal::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Refusal::BlockedByPhoneOwner(_) => (StatusCode::FORBIDDEN, "blocked_by_phone_owner"),
            Refusal::Expired => (StatusCode::GONE, "expired"),
            Refusal::PoolExhausted => (StatusCode::SERVICE_UNAVAILABLE, "ivr_pool_exhausted"),
            // `[cluster]`: the PBX's lease is elsewhere or free; the routing layer adds
            // `Retry-After` (a third of `lease_ttl`).
            Refusal::NotServed(_) => (StatusCode::SERVICE_UNAVAILABLE, "pbx_not_served"),
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        HttpError { status, body: ErrorBody { error: e.to_string(), field: None, code: Some(code) } }
    }
}

impl From<Refusal> for HttpError {
    fn from(e: Refusal) -> HttpError {
        HttpError::from(&e)
    }
}

impl From<GatewayError> for HttpError {
    /// The engine's refusal as its status; a storage failure or a stopped gateway is 503
    /// `unavailable`.
    fn from(e: GatewayError) -> HttpError {
        match e {
            GatewayError::Refused(r) => HttpError::from(&r),
            GatewayError::Unavailable | GatewayError::Stopped => HttpError::unavailable(),
        }
    }
}

impl From<&crate::link::RequestError> for HttpError {
    /// Link failures: 503 while the link is down or its queue is full (retry later), 504 on a
    /// timeout, 502 for the PBX's own refusals.
    fn from(e: &crate::link::RequestError) -> HttpError {
        use crate::link::RequestError as E;
        let status = match e {
            E::LinkDown | E::Closed | E::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            E::Timeout => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        };
        HttpError::new(status, e.to_string())
    }
}

impl From<crate::link::RequestError> for HttpError {
    fn from(e: crate::link::RequestError) -> HttpError {
        HttpError::from(&e)
    }
}

/// Seconds a client should wait before asking again after `ivr_pool_exhausted`: about the
/// time a proof call takes to ring out or finish, when a pool number comes back.
pub const POOL_RETRY_AFTER_SECS: u32 = 30;

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let retry = self.body.code == Some("ivr_pool_exhausted");
        let mut resp = (self.status, Json(self.body)).into_response();
        if retry {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(POOL_RETRY_AFTER_SECS));
        }
        resp
    }
}

/// What a handler returns: its response, or a refusal.
pub type ApiResult<T> = Result<T, HttpError>;
