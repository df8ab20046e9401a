//! A small JSON-over-HTTP/1.1 client (hyper): the demo's app and IVR platform, the tests, and
//! account notifications, over plain HTTP or HTTPS (rustls).
//!
//! [`Http::with_timeouts`] bounds every request — to connect, and for the whole exchange
//! (sending, the answer's head and its body) — and the answer's size: account notifications use
//! it with [`CONNECT_TIMEOUT`] and [`REQUEST_TIMEOUT`], so that a peer that accepts and never
//! answers, or never accepts, costs one connection for that long and no more (when a request
//! gives up, its connection is closed). [`Http::new`] (the demo, the load driver, the tests)
//! waits as long as its peer takes.
//!
//! HTTPS ([`Http::with_tls`]) goes through [`Connector`], our own hyper-util connector rather
//! than `hyper-rustls`: it is forty lines over `tokio-rustls` (already a dependency), and having
//! rustls's error in hand before it is boxed is what lets a failed request say *why* the peer
//! was not trusted ([`Cause`]: unknown CA, name mismatch, expired) instead of "connection error".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;

/// Time for an account notification to set up its TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole account notification request, connecting included: from sending it to the
/// last byte of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A small JSON-over-HTTP client (the demo's app and IVR platform, tests, account notifications).
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<Connector, Full<Bytes>>,
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
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(Connector::new(HttpConnector::new(), None));
        Http { base: base.trim_end_matches('/').to_owned(), client, request_timeout: None, max_body: None }
    }

    /// A client of `base` whose requests have `connect` to connect and `request` in all.
    pub fn with_timeouts(base: &str, connect: Duration, request: Duration) -> Http {
        Http::with_tls(base, connect, request, None)
    }

    /// As [`Http::with_timeouts`], and `https://` URLs verified with `tls` (see
    /// [`client_config`]); without it an `https://` request fails.
    pub fn with_tls(base: &str, connect: Duration, request: Duration, tls: Option<Arc<rustls::ClientConfig>>) -> Http {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect));
        connector.set_keepalive(Some(POOL_IDLE));
        // The scheme is checked by `Connector`, which does the TLS part of `https://`.
        connector.enforce_http(false);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(Connector::new(connector, tls));
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
        self.request(method, path, headers, body).await.map_err(|e| e.message)
    }

    /// As [`Http::raw`], with the failure's [`Cause`] apart from its message.
    ///
    /// # Errors
    /// Connection, TLS, time limit or protocol failure.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Result<(u16, Bytes), RequestError> {
        let other = |message: String| RequestError { cause: Cause::Other, message };
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        // JSON unless the caller names the type (a form-encoded TwiML request).
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| other(e.to_string()))?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| RequestError { cause: cause_in(&e), message: error_chain(&e) })?;
            let status = resp.status().as_u16();
            let bytes = match self.max_body {
                Some(max) => Limited::new(resp.into_body(), max).collect().await.map_err(|e| other(format!("reading the answer: {e}")))?.to_bytes(),
                None => resp.into_body().collect().await.map_err(|e| other(e.to_string()))?.to_bytes(),
            };
            Ok((status, bytes))
        };
        match self.request_timeout {
            // Dropping the exchange on timeout drops its connection too.
            Some(t) => tokio::time::timeout(t, exchange).await.map_err(|_| RequestError { cause: Cause::Timeout, message: format!("no complete answer within {t:?}") })?,
            None => exchange.await,
        }
    }

    /// Send `req` as it is (its URI absolute: the client's base is not used) and hand back the
    /// answer as soon as its head arrives, its body unread: a request forwarded to another
    /// instance of a cluster ([`crate::cluster::forward`]), whose answer may be an event stream
    /// that lasts. The time limit, if any, bounds the head only.
    ///
    /// # Errors
    /// Connection, TLS, time limit or protocol failure.
    pub async fn send_streaming(&self, req: hyper::Request<Full<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, RequestError> {
        let head = self.client.request(req);
        let resp = match self.request_timeout {
            Some(t) => tokio::time::timeout(t, head).await.map_err(|_| RequestError { cause: Cause::Timeout, message: format!("no answer within {t:?}") })?,
            None => head.await,
        };
        resp.map_err(|e| RequestError { cause: cause_in(&e), message: error_chain(&e) })
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

/// Why a request failed, as a fixed set of causes: a metric label and the words of a log line.
/// The certificate causes are rustls's [`rustls::CertificateError`] said plainly, since "bad
/// certificate" tells an operator nothing about what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The peer's certificate chains to no trusted CA (neither the public roots nor the
    /// configured extra CA).
    UnknownCa,
    /// The certificate is not for the host name of the URL.
    NameMismatch,
    /// The certificate (or one of its chain) has expired.
    Expired,
    /// The certificate is not valid yet (or the clocks disagree).
    NotYetValid,
    Revoked,
    /// Any other certificate problem (bad signature, wrong purpose, bad encoding).
    BadCertificate,
    /// The TLS handshake failed for another reason (protocol, alert from the peer, not TLS).
    Tls,
    /// The TCP connection could not be set up (refused, unreachable, connect timeout).
    Connect,
    /// No complete answer in time.
    Timeout,
    /// Anything else: the request could not be built, the answer was unreadable or too large.
    Other,
}

impl Cause {
    /// The metric label (`unknown_ca`, `name_mismatch`, `expired`, ...).
    pub fn label(self) -> &'static str {
        match self {
            Cause::UnknownCa => "unknown_ca",
            Cause::NameMismatch => "name_mismatch",
            Cause::Expired => "expired",
            Cause::NotYetValid => "not_yet_valid",
            Cause::Revoked => "revoked",
            Cause::BadCertificate => "bad_certificate",
            Cause::Tls => "tls",
            Cause::Connect => "connect",
            Cause::Timeout => "timeout",
            Cause::Other => "other",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Cause::UnknownCa => "certificate from an unknown CA (neither a public root nor in the configured CA file: notify_ca, advertise_ca)",
            Cause::NameMismatch => "certificate name mismatch (not issued for this host name)",
            Cause::Expired => "certificate expired",
            Cause::NotYetValid => "certificate not yet valid",
            Cause::Revoked => "certificate revoked",
            Cause::BadCertificate => "invalid certificate",
            Cause::Tls => "TLS handshake failed",
            Cause::Connect => "cannot connect",
            Cause::Timeout => "timed out",
            Cause::Other => "request failed",
        }
    }

    /// The cause of a rustls error.
    pub fn of_tls(e: &rustls::Error) -> Cause {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => Cause::UnknownCa,
                C::NotValidForName | C::NotValidForNameContext { .. } => Cause::NameMismatch,
                C::Expired | C::ExpiredContext { .. } => Cause::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => Cause::NotYetValid,
                C::Revoked => Cause::Revoked,
                _ => Cause::BadCertificate,
            },
            _ => Cause::Tls,
        }
    }
}

/// A failed request: its cause and the whole message (with hyper's and rustls's words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub cause: Cause,
    pub message: String,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What [`Connector`] fails with; found again in hyper's error chain by [`cause_in`].
#[derive(Debug)]
struct ConnectFailure {
    cause: Cause,
    message: String,
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.cause.words(), self.message)
    }
}

impl std::error::Error for ConnectFailure {}

/// The cause of a hyper client error: the connector's, if it failed.
fn cause_in(e: &(dyn std::error::Error + 'static)) -> Cause {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(f) = c.downcast_ref::<ConnectFailure>() {
            return f.cause;
        }
        cur = c.source();
    }
    Cause::Other
}

/// Trust for `https://` peers: the public roots (`webpki-roots`) and `extra` (a tenant's
/// `notify_ca`), TLS 1.2 and 1.3 on the ring provider, HTTP/1.1 only.
///
/// # Errors
/// A certificate of `extra` that is not a usable CA certificate.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for (i, c) in extra.iter().enumerate() {
        roots.add(c.clone()).map_err(|e| format!("certificate {} is not a usable CA certificate: {e}", i + 1))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::ring_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}


/// The client's connector: TCP by hyper-util's [`HttpConnector`], then TLS for `https://` when a
/// configuration is given. Its failures carry a [`Cause`].
#[derive(Clone)]
pub struct Connector {
    tcp: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    fn new(tcp: HttpConnector, tls: Option<Arc<rustls::ClientConfig>>) -> Connector {
        Connector { tcp, tls: tls.map(tokio_rustls::TlsConnector::from) }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn failure(cause: Cause, message: String) -> BoxError {
    Box::new(ConnectFailure { cause, message })
}

impl tower_service::Service<Uri> for Connector {
    type Response = MaybeTls;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<MaybeTls, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(|e| failure(Cause::Connect, error_chain(&e)))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => {
                let m = format!("scheme {other:?} is neither http nor https");
                return Box::pin(async move { Err(failure(Cause::Other, m)) });
            }
        };
        // `[::1]` in a URL, `::1` as a server name.
        let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = self.tls.clone();
        let connecting = self.tcp.call(uri);
        Box::pin(async move {
            let tcp = connecting.await.map_err(|e| failure(Cause::Connect, error_chain(&e)))?;
            if !https {
                return Ok(MaybeTls::Plain(tcp));
            }
            let Some(tls) = tls else { return Err(failure(Cause::Tls, "https:// is not enabled for this client".into())) };
            let name = ServerName::try_from(host).map_err(|e| failure(Cause::Other, format!("not a server name: {e}")))?;
            match tls.connect(name, tcp.into_inner()).await {
                Ok(s) => Ok(MaybeTls::Tls(Box::new(TokioIo::new(s)))),
                Err(e) => {
                    let cause = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).map_or(Cause::Tls, Cause::of_tls);
                    Err(failure(cause, e.to_string()))
                }
            }
        })
    }
}

/// A connection of [`Connector`]: plain TCP or TLS over TCP.
pub enum MaybeTls {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Connection for MaybeTls {
    fn connected(&self) -> Connected {
        match self {
            MaybeTls::Plain(s) => s.connected(),
            MaybeTls::Tls(s) => s.inner().get_ref().0.connected(),
        }
    }
}

impl hyper::rt::Read for MaybeTls {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: hyper::rt::ReadBufCursor<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for MaybeTls {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
