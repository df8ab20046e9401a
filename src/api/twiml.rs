//! `POST /v1/ivr/twiml`: the TwiML adapter's route, for Twilio and the platforms compatible with
//! it. The platform posts form-encoded parameters (`CallSid`, `From`, `To`, `Digits`,
//! `CallStatus` and whatever else it sends) signed with `X-Twilio-Signature` over `public_url`
//! and every parameter ([`crate::ivr::twiml`]); the answer is TwiML. A bad or missing signature
//! is 403 and changes nothing. Replays are refused (409) for as long as the webhook's window
//! (5 minutes): a signature seen before, or the same `CallSid` with the same `Digits` (and the
//! same end-of-call status) — the platform signs no timestamp, so the call and its digits are
//! what tells a new request from a copy. Both are kept in the webhook's bounded replay cache
//! ([`crate::webhook::ReplayCache`]), under keys of their own.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::{ApiResult, ErrorBody, HttpError};
use super::extract::check_id;
use super::ivr::{check_digits, check_party, ivr_turn, Adapter};
use super::AppState;
use crate::clock::now_ms;
use crate::ivr::twiml;
use crate::webhook::Replay;

/// A replay-cache key of its own kind (`what`), so that no TwiML key can meet a webhook MAC.
fn key(what: &str, parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cstagate twiml ");
    h.update(what.as_bytes());
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

/// Remember `keys`, refusing if one was seen in the last five minutes.
fn not_replayed(st: &AppState, keys: &[[u8; 32]]) -> ApiResult<()> {
    let now = now_ms() / 1000;
    let Ok(mut cache) = st.replay.lock() else { return Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "too many webhook requests in the replay window")) };
    for k in keys {
        match cache.check(*k, now, now) {
            Ok(()) => {}
            Err(Replay::Seen) => return Err(HttpError::new(StatusCode::CONFLICT, "replayed TwiML request: this signature, or this call with these digits, was already accepted")),
            Err(Replay::Full) => return Err(HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "too many webhook requests in the replay window")),
        }
    }
    Ok(())
}

/// The one value of a parameter the gateway reads; sent twice it is ambiguous, and refused.
fn one<'a>(params: &'a [(String, String)], name: &str) -> ApiResult<Option<&'a str>> {
    let mut found = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let first = found.next();
    if found.next().is_some() {
        return Err(HttpError::bad(name, format!("`{name}` is given more than once")));
    }
    Ok(first)
}

/// The platform's request on a call, form-encoded; the answer is TwiML (`<Gather>` or
/// `<Say>` and `<Hangup/>`), or an empty `<Response/>` to a status callback.
#[utoipa::path(post, path = "/v1/ivr/twiml", tag = "ivr",
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "the platform's parameters: CallSid, From, To, Digits, CallStatus and any others (all signed)"),
    params(("X-Twilio-Signature" = String, Header, description = "Base64(HMAC-SHA1(auth token, public_url + \"/v1/ivr/twiml\" + each parameter's name and value, sorted by name))")),
    responses((status = 200, description = "TwiML", content_type = "text/xml", body = String), (status = 403, description = "bad or missing X-Twilio-Signature", body = ErrorBody), (status = 409, description = "a replayed request", body = ErrorBody), (status = "4XX", description = "refused: `error`, with `field` (400)", body = ErrorBody), (status = 503, description = "`unavailable`: the gateway stopped or the store failed; try again", body = ErrorBody)))]
pub(super) async fn ivr_twiml(State(st): State<AppState>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let auth = st.control.auth();
    let settings = auth.secrets.twiml.as_ref().filter(|t| !t.auth_token.trim().is_empty() && !t.public_url.is_empty()).ok_or_else(|| HttpError::new(StatusCode::NOT_FOUND, "the TwiML adapter is not configured"))?;
    let forbidden = || HttpError::new(StatusCode::FORBIDDEN, "bad or missing X-Twilio-Signature");
    let given = headers.get(twiml::SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty() && v.len() <= 64).ok_or_else(forbidden)?;
    let params = twiml::parse_form(&body).map_err(|e| HttpError::bad_request(e.to_string()))?;
    let url = settings.url();
    if !twiml::verify(&settings.auth_token, &url, &params, given) {
        return Err(forbidden());
    }
    let call = one(&params, "CallSid")?.ok_or_else(|| HttpError::bad("CallSid", "`CallSid` is required"))?;
    check_id("CallSid", call, 128)?;
    let from = one(&params, "From")?.unwrap_or_default();
    let to = one(&params, "To")?.unwrap_or_default();
    check_party("From", from)?;
    check_party("To", to)?;
    let digits = one(&params, "Digits")?;
    check_digits("Digits", digits)?;
    let status = one(&params, "CallStatus")?.unwrap_or_default();
    let ended = twiml::ENDED.contains(&status);
    not_replayed(&st, &[key("signature", &[given]), key("call", &[call, digits.unwrap_or("\u{1}"), if ended { "ended" } else { "" }])])?;
    let reply = ivr_turn(&st, Adapter::Twiml, call.to_owned(), from.to_owned(), to.to_owned(), digits.map(str::to_owned), ended).await?;
    let doc = if ended { twiml::empty() } else { twiml::render(&reply, &url, &reply.language, settings.voices.get(&reply.language).map(String::as_str)) };
    Ok(([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], doc).into_response())
}
