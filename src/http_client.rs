//! A small JSON-over-HTTP/1.1 client (hyper): the demo's app and IVR platform, the tests, and
//! account notifications.
//!
//! [`Http::with_timeouts`] bounds every request — to connect, and for the whole exchange
//! (sending, the answer's head and its body) — and the answer's size: account notifications use
//! it with [`CONNECT_TIMEOUT`] and [`REQUEST_TIMEOUT`], so that a peer that accepts and never
//! answers, or never accepts, costs one connection for that long and no more (when a request
//! gives up, its connection is closed). [`Http::new`] (the demo, the load driver, the tests)
//! waits as long as its peer takes.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Time for an account notification to set up its TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole account notification request, connecting included: from sending it to the
/// last byte of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A small JSON-over-HTTP client (the demo's app and IVR platform, tests, account notifications).
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Whole-request limit, if any.
    request_timeout: Option<Duration>,
    /// Largest answer body read, if limited.
    max_body: Option<usize>,
}

/// Idle pooled connections are dropped well before the gateway closes them (`header_timeout`,
/// 10 s by default): reusing a connection at the moment the server closes it fails the request.
const POOL_IDLE: Duration = Duration::from_secs(4);

impl Http {
    /// A client of `base` (`http://host:port`) without time limits.
    pub fn new(base: &str) -> Http {
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build_http();
        Http { base: base.trim_end_matches('/').to_owned(), client, request_timeout: None, max_body: None }
    }

    /// A client of `base` whose requests have `connect` to connect and `request` in all.
    pub fn with_timeouts(base: &str, connect: Duration, request: Duration) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect));
        connector.set_keepalive(Some(POOL_IDLE));
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(connector);
        Http { base: base.trim_end_matches('/').to_owned(), client, request_timeout: Some(request), max_body: None }
    }

    /// Read at most `max` bytes of an answer's body (more fails the request).
    #[must_use]
    pub fn max_body(mut self, max: usize) -> Http {
        self.max_body = Some(max);
        self
    }

    /// Send a request; returns the status and the body parsed as JSON (`null` if not JSON).
    ///
    /// # Errors
    /// Connection or protocol failure.
    pub async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Result<(u16, Value), String> {
        let (status, bytes) = self.raw(method, path, headers, body).await?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// A request whose answer is not JSON (`/metrics`): status and body.
    ///
    /// # Errors
    /// As [`Http::send`].
    pub async fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Result<(u16, Bytes), String> {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| error_chain(&e))?;
            let status = resp.status().as_u16();
            let bytes = match self.max_body {
                Some(max) => Limited::new(resp.into_body(), max).collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes(),
                None => resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes(),
            };
            Ok((status, bytes))
        };
        match self.request_timeout {
            // Dropping the exchange on timeout drops its connection too.
            Some(t) => tokio::time::timeout(t, exchange).await.map_err(|_| format!("no complete answer within {t:?}"))?,
            None => exchange.await,
        }
    }

    /// JSON request with a bearer token.
    ///
    /// # Errors
    /// As [`Http::send`].
    pub async fn json(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        let auth = format!("Bearer {token}");
        self.send(method, path, &[("authorization", &auth)], body.map(|b| b.to_string().into_bytes())).await
    }
}

/// An error with its causes (hyper's own message is only "client error (SendRequest)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
