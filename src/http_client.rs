//! A small JSON-over-HTTP/1.1 client (hyper): the demo's app and IVR platform, the tests, and
//! account notifications.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A small JSON-over-HTTP client for loopback (the demo's app and IVR platform, and tests).
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(base: &str) -> Http {
        // Idle pooled connections are dropped well before the gateway closes them
        // (`header_timeout`, 10 s by default): reusing a connection at the moment the server
        // closes it fails the request.
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(std::time::Duration::from_secs(4)).build_http();
        Http { base: base.trim_end_matches('/').to_owned(), client }
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
        let resp = self.client.request(req).await.map_err(|e| error_chain(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, bytes))
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
