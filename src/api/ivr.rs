//! `POST /v1/ivr/webhook`: the IVR platform's requests, signed over `"<timestamp>.<body>"`
//! ([`sign_webhook`]); a timestamp more than [`WEBHOOK_WINDOW_SECS`] from the gateway's clock is
//! refused (401) and an exact replay within the window is refused (409) by a bounded cache of
//! seen signatures ([`crate::webhook::ReplayCache`]).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::error::{ApiResult, ErrorBody, HttpError};
use super::extract::{check_id, parse};
use super::AppState;
use crate::association::{IvrInput, IvrReply};
use crate::clock::now_ms;
use crate::webhook::{sign_webhook, Replay, SIGNATURE_HEADER, TIMESTAMP_HEADER, WEBHOOK_WINDOW_SECS};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IvrReq {
    call: String,
    from: String,
    to: String,
    digits: Option<String>,
    /// The platform reports the end of the call.
    #[serde(default)]
    hangup: bool,
}

/// Check the webhook's timestamp, signature and freshness; record the signature.
fn webhook_auth(st: &AppState, secret: &str, headers: &HeaderMap, body: &[u8]) -> ApiResult<()> {
    let unauthorized = |msg: &str| HttpError::unauthorized(msg);
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
        Err(Replay::Seen) => Err(HttpError::new(StatusCode::CONFLICT, "replayed webhook request: this signature was already accepted")),
        Err(Replay::Full) => Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "too many webhook requests in the replay window")),
    }
}

/// A calling or called number as the IVR platform reports it: at most 64 printable ASCII
/// characters, possibly empty (withheld).
pub(super) fn check_party(field: &str, v: &str) -> ApiResult<()> {
    if v.is_empty() {
        return Ok(());
    }
    check_id(field, v, 64)
}

/// DTMF the platform reports: at most 64 of `0-9 * #`.
pub(super) fn check_digits(field: &str, digits: Option<&str>) -> ApiResult<()> {
    match digits {
        Some(d) if d.len() > 64 || !d.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#') => Err(HttpError::bad(field, format!("`{field}` must be DTMF digits (0-9 * #), at most 64"))),
        _ => Ok(()),
    }
}

/// The IVR platform's request on a call; the answer says what to play and whether to gather
/// digits or hang up.
#[utoipa::path(post, path = "/v1/ivr/webhook", tag = "ivr", request_body = IvrReq,
    params(("X-Cstagate-Timestamp" = String, Header, description = "Unix seconds"), ("X-Cstagate-Signature" = String, Header, description = "sha256=<hex HMAC-SHA256(secret, \"<timestamp>.<raw body>\")>")),
    responses((status = 200, body = IvrReply), (status = "4XX", description = "refused: `error`, with `field` (400) or `code` (engine refusals)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn ivr_webhook(State(st): State<AppState>, forwarded: Option<axum::Extension<super::route::Forwarded>>, headers: HeaderMap, body: Bytes) -> ApiResult<axum::response::Response> {
    // An empty key would accept requests signed with the empty key: as good as none.
    let auth = st.control.auth();
    let secret = auth.secrets.ivr_secret.as_deref().filter(|s| !s.trim().is_empty()).ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, "the IVR webhook is not configured"))?;
    webhook_auth(&st, secret, &headers, &body)?;
    let req: IvrReq = parse(&body)?;
    check_id("call", &req.call, 128)?;
    check_party("from", &req.from)?;
    check_party("to", &req.to)?;
    check_digits("digits", req.digits.as_deref())?;
    let reply = ivr_turn(&st, Adapter::Webhook, req.call, req.from, req.to, req.digits, req.hangup).await?;
    let prompt = reply.prompt;
    let mut resp = axum::response::IntoResponse::into_response(Json(reply));
    // Asked by another instance's FastAGI session (forwarded): it plays files by prompt id.
    if forwarded.is_some() && !prompt.is_empty() {
        resp.headers_mut().insert(crate::cluster::forward::PROMPT_HEADER, axum::http::HeaderValue::from_static(prompt));
    }
    Ok(resp)
}

/// Which adapter a request came through: its guessing guard and its memory of calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Adapter {
    Webhook,
    Twiml,
}

/// One request of an IVR platform on `call`, whichever HTTP adapter carried it (already
/// authenticated and checked): a hang-up, or a turn of the engine's dialogue. Digits on a call
/// not past the context stage are a context entry, guarded against guessing (see
/// [`crate::ivr::Guard`]).
pub(super) async fn ivr_turn(st: &AppState, adapter: Adapter, call: String, from: String, to: String, digits: Option<String>, hangup: bool) -> ApiResult<IvrReply> {
    let (guard, calls) = match adapter {
        Adapter::Webhook => (&st.ivr.webhook, &st.ivr.webhook_calls),
        Adapter::Twiml => (&st.ivr.twiml, &st.ivr.twiml_calls),
    };
    let now = now_ms();
    let calls = || calls.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if hangup {
        calls().set(&call, false, now);
        st.gw.ivr_hangup(call, now).await;
        return Ok(IvrReply { prompt: "", say: String::new(), language: crate::ivr::prompts::DEFAULT_LANGUAGE.into(), gather: None, hangup: true });
    }
    let entry = crate::ivr::names_a_number(digits.as_deref()) && !calls().contains(&call, now);
    if entry && !guard.admit(&call, now) {
        st.gw.ivr_hangup(call, now).await;
        return Ok(crate::ivr::refused_reply());
    }
    let reply = st.gw.ivr(IvrInput { call: call.clone(), from, to, digits, now }).await?;
    if entry {
        guard.answered(&call, reply.prompt, now);
    }
    calls().set(&call, !reply.hangup && !crate::ivr::asks_context(reply.prompt), now);
    Ok(reply)
}
