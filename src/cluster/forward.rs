//! Forwarding a request to the instance that owns its PBX (`[cluster]`): a plain reverse proxy
//! of the public request. The routing layer ([`crate::api::route`]) decides, before the engine,
//! which PBX a request is for and who owns it; a request for a PBX owned by another live
//! instance goes, as it came (method, path and query, body, the caller's own headers — its
//! `Authorization` included, so that the owner authenticates and tenant-scopes it itself), to
//! `<owner's advertise>/internal/v1/forward<path>`, with the cluster's internal token
//! ([`TOKEN_HEADER`]). The owner checks that token (constant time; 401 otherwise), marks the
//! request forwarded and serves it as its own; a forwarded request is never forwarded again: an
//! instance that does not own the PBX either answers 503 with `Retry-After` (ownership is
//! changing hands). No internal schema: the owner's answer comes back as it is, status,
//! headers and body, an event stream streamed through until the owner ends it.
//!
//! Bounded: [`MAX_IN_FLIGHT`] forwarded requests waiting for their answer's head at once (503
//! beyond), [`HEAD_TIMEOUT`] for the head, [`BODY_TIMEOUT`] and [`MAX_ANSWER`] for an answer
//! that is not an event stream. Nothing secret is logged: no header, no body, no query.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

use crate::http_client::Http;

/// The internal surface's prefix: `<advertise>/internal/v1/forward/v1/...` is the public
/// `/v1/...` served for another instance. Never in the OpenAPI document.
pub const FORWARD_PREFIX: &str = "/internal/v1/forward";
/// The header carrying the cluster's internal token (`[cluster] internal_token_env`).
pub const TOKEN_HEADER: &str = "cstagate-internal-token";
/// Set on a forwarded request (information for logs and tools: what marks a request
/// forwarded, and keeps it from being forwarded again, is the internal token checked).
pub const HOP_HEADER: &str = "cstagate-forwarded";

/// On a forwarded IVR webhook's answer: the prompt id (which the webhook's JSON leaves out), for
/// a FastAGI session on another instance that plays recorded files by id.
pub const PROMPT_HEADER: &str = "cstagate-prompt";

/// Forwarded requests waiting for their answer's head at once.
pub const MAX_IN_FLIGHT: usize = 256;
/// Time to connect to the owner.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for the owner's answer's head (its engine answers after its commit: well under it).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// Time for the rest of an answer that is not an event stream.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer body read from the owner (not an event stream).
pub const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), the length
/// (recomputed), and the internal ones (set here, never passed on from the caller).
fn hop_by_hop(name: &str) -> bool {
    matches!(name, "connection" | "keep-alive" | "proxy-connection" | "proxy-authenticate" | "proxy-authorization" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "host" | "content-length" | TOKEN_HEADER | HOP_HEADER)
}

/// Why a request could not be forwarded: the caller gets 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("too many requests being forwarded")]
    Busy,
    #[error("no internal token configured ([cluster] internal_token_env): requests for another instance's PBX cannot be forwarded")]
    NoToken,
    #[error("the owner did not answer: {0}")]
    Owner(String),
}

/// The forwarding client, shared by the API's handlers.
pub struct Forwarder {
    http: Http,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Forwarder {
    /// A forwarder over plain HTTP and HTTPS (`advertise` may be `https://`: its certificate is
    /// verified with `tls`, the public roots and `[cluster] advertise_ca`:
    /// [`crate::config::ClusterSettings::forward_tls`]).
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Forwarder {
        Forwarder { http: Http::with_tls("", CONNECT_TIMEOUT, HEAD_TIMEOUT, Some(tls)), slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)) }
    }

    /// What every request to another instance begins with: the internal token (none
    /// configured: [`ForwardError::NoToken`]), one of the [`MAX_IN_FLIGHT`] slots (held until the
    /// answer is read), and the request to `<base>/internal/v1/forward<path_and_query>` with the
    /// token and the hop header.
    fn start(&self, base: &str, token: Option<&str>, method: Method, path_and_query: &str) -> Result<(tokio::sync::OwnedSemaphorePermit, hyper::http::request::Builder), ForwardError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(ForwardError::NoToken)?;
        let token = HeaderValue::from_str(token).map_err(|_| ForwardError::NoToken)?;
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| ForwardError::Busy)?;
        let uri: Uri = format!("{}{FORWARD_PREFIX}{path_and_query}", base.trim_end_matches('/')).parse().map_err(|_| ForwardError::Owner("bad advertise URL".into()))?;
        Ok((slot, hyper::Request::builder().method(method).uri(uri).header(TOKEN_HEADER, token).header(HOP_HEADER, "1")))
    }

    /// Forward the request (`method`, `path_and_query`, `headers`, `body`) to the instance at
    /// `base` with `token`; its answer as the caller gets it.
    ///
    /// # Errors
    /// Too many in flight, no token, or the owner unreachable or silent.
    pub async fn forward(&self, base: &str, token: Option<&str>, method: &Method, path_and_query: &str, headers: &HeaderMap, body: Bytes) -> Result<Response<Body>, ForwardError> {
        let (slot, mut req) = self.start(base, token, method.clone(), path_and_query)?;
        for (k, v) in headers {
            if !hop_by_hop(k.as_str()) {
                req = req.header(k, v);
            }
        }
        let req = req.body(Full::new(body)).map_err(|e| ForwardError::Owner(e.to_string()))?;
        let resp = self.http.send_streaming(req).await.map_err(|e| ForwardError::Owner(e.message))?;
        let (parts, incoming) = resp.into_parts();
        let stream = parts.headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/event-stream"));
        let body = if stream {
            // Streamed through as it comes, for as long as the owner keeps it open; the caller
            // going away drops it, which closes the connection to the owner.
            drop(slot);
            Body::new(incoming)
        } else {
            let bytes = read_answer(incoming).await?;
            drop(slot);
            Body::from(bytes)
        };
        let mut out = Response::new(body);
        *out.status_mut() = StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        for (k, v) in &parts.headers {
            if !hop_by_hop(k.as_str()) {
                out.headers_mut().append(k, v.clone());
            }
        }
        Ok(out)
    }

    /// One step of a FastAGI session whose call is for a PBX owned by the instance at `base`
    /// (FastAGI is a TCP protocol from Asterisk: it is not proxied, each step is asked over
    /// HTTP instead). `body` is the IVR webhook's JSON (`call`, `from`, `to`, `digits`,
    /// `hangup`), signed with the IVR secret as a platform signs it, sent on the owner's
    /// internal surface with `token`; the owner names the prompt in [`PROMPT_HEADER`] (the
    /// webhook's JSON leaves it out), which picks the recorded file here.
    ///
    /// # Errors
    /// As [`Forwarder::forward`], or the owner refused the step.
    pub async fn ivr_step(&self, base: &str, token: Option<&str>, ivr_secret: &str, body: Vec<u8>) -> Result<crate::association::IvrReply, ForwardError> {
        let (slot, req) = self.start(base, token, Method::POST, "/v1/ivr/webhook")?;
        let mut req = req.header("content-type", "application/json");
        for (k, v) in crate::webhook::webhook_headers(ivr_secret, &body) {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| ForwardError::Owner(e.to_string()))?;
        let resp = self.http.send_streaming(req).await.map_err(|e| ForwardError::Owner(e.message))?;
        let status = resp.status().as_u16();
        let prompt = resp.headers().get(PROMPT_HEADER).and_then(|v| v.to_str().ok()).and_then(|p| crate::ivr::prompts::ids().find(|id| *id == p)).unwrap_or("");
        let bytes = read_answer(resp.into_body()).await?;
        drop(slot);
        if status != 200 {
            return Err(ForwardError::Owner(format!("the owner answered {status}")));
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| ForwardError::Owner("the owner's answer is not JSON".into()))?;
        let gather = v.get("gather").filter(|g| g.is_object()).map(|g| crate::association::Gather {
            max_digits: g["max_digits"].as_u64().and_then(|n| usize::try_from(n).ok()).unwrap_or(1),
            finish_on_key: g["finish_on_key"].as_str().unwrap_or_default().to_owned(),
            timeout_ms: g["timeout_ms"].as_u64().unwrap_or(5_000),
        });
        Ok(crate::association::IvrReply { prompt, say: v["say"].as_str().unwrap_or_default().to_owned(), language: v["language"].as_str().unwrap_or(crate::ivr::prompts::DEFAULT_LANGUAGE).to_owned(), gather, hangup: v["hangup"].as_bool().unwrap_or(false) })
    }
}

/// The owner's answer body, at most [`MAX_ANSWER`] bytes within [`BODY_TIMEOUT`].
async fn read_answer(body: hyper::body::Incoming) -> Result<Bytes, ForwardError> {
    let read = Limited::new(body, MAX_ANSWER).collect();
    Ok(tokio::time::timeout(BODY_TIMEOUT, read).await.map_err(|_| ForwardError::Owner("the answer's body did not come in time".into()))?.map_err(|e| ForwardError::Owner(format!("reading the answer: {e}")))?.to_bytes())
}
