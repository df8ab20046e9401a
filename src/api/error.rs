//! The API's one error type: every refusal, whoever makes it (an extractor, the engine, the
//! link, the store), is an [`HttpError`] and reaches the client as the same JSON shape,
//! `{"error", "field"?, "code"?}`, with its status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::association::ApiError;

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
        HttpError::from(&ApiError::NotFound)
    }

    pub fn unauthorized(msg: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::UNAUTHORIZED, msg)
    }
}

impl From<&ApiError> for HttpError {
    /// An engine refusal: its status, and a stable `code` beside the message.
    fn from(e: &ApiError) -> HttpError {
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
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        HttpError { status, body: ErrorBody { error: e.to_string(), field: None, code: Some(code) } }
    }
}

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> HttpError {
        HttpError::from(&e)
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

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// What a handler returns: its response, or a refusal.
pub type ApiResult<T> = Result<T, HttpError>;
