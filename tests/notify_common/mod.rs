//! What the notification tests share: endpoints that never accept or never answer.
#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cstagate::notify::{Notification, Notifier, Target, TenantStats};
use tokio::io::AsyncReadExt;

pub fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A listener that never accepts, its accept queue full: a connection to it is never set up.
/// Returns the address and what fills the queue (keep it alive).
pub async fn full_backlog() -> (SocketAddr, tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = s.listen(0).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => fill.push(c),
            Err(_) => return (addr, l, fill),
        }
    }
    panic!("the accept queue never filled");
}

/// A server that accepts, reads what it is sent and never answers; it closes a connection when
/// the client does. Counts connections accepted, open now and open at most.
#[derive(Clone, Default)]
pub struct Silent {
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    pub most_open: Arc<AtomicUsize>,
    pub signed: Arc<AtomicUsize>,
}

impl Silent {
    pub async fn start() -> (SocketAddr, Silent) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let s = Silent::default();
        let me = s.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                me.accepted.fetch_add(1, Ordering::SeqCst);
                let open = me.open.fetch_add(1, Ordering::SeqCst) + 1;
                me.most_open.fetch_max(open, Ordering::SeqCst);
                let me = me.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    if String::from_utf8_lossy(&got).to_ascii_lowercase().contains("x-cstagate-signature: sha256=") {
                        me.signed.fetch_add(1, Ordering::SeqCst);
                    }
                    me.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, s)
    }
}

pub fn target(addr: SocketAddr) -> Target {
    Target { url: format!("http://{addr}/hook"), secret: "k".into(), ca: Vec::new() }
}

pub fn note(tenant: &str, i: usize) -> Notification {
    Notification { tenant: tenant.into(), account: format!("a{i}"), event: "cancelled".into(), association: format!("{i:032x}"), at: 0, code: None }
}

pub fn stats_of(n: &Notifier, tenant: &str) -> TenantStats {
    n.stats().into_iter().find(|s| s.tenant == tenant).unwrap()
}

/// Targets by tenant.
pub fn targets(t: &[(&str, SocketAddr)]) -> HashMap<String, Target> {
    t.iter().map(|(k, a)| ((*k).to_owned(), target(*a))).collect()
}

/// A test PKI (rcgen, generated at test time): a CA and the server certificates it issues.
pub struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
        Pki { ca: rcgen::CertifiedIssuer::self_signed(p, rcgen::KeyPair::generate().unwrap()).unwrap() }
    }

    /// The CA certificate, as a tenant's `notify_ca` file holds it.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> rustls::pki_types::CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate for `names` and its key; `expired`: valid during 2019 only.
    pub fn server(&self, names: &[&str], expired: bool) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, names.first().copied().unwrap_or("server"));
        if expired {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2019, 12, 31);
        }
        let cert = p.signed_by(&key, &self.ca).unwrap();
        (vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der())))
    }
}

/// What an [`HttpsReceiver`] got: whether the signature (HMAC with its secret over the fresh
/// timestamp and the body) was right, and the body.
pub type Received = (bool, serde_json::Value);

/// A tenant's notification endpoint over HTTPS: rustls with the given certificate, hyper and an
/// axum route `/hook` that checks each notification's signature the way a tenant would.
pub struct HttpsReceiver {
    pub addr: SocketAddr,
    pub got: tokio::sync::mpsc::UnboundedReceiver<Received>,
    /// TLS handshakes the receiver completed.
    pub handshakes: Arc<AtomicUsize>,
}

impl HttpsReceiver {
    pub async fn start(chain: Vec<rustls::pki_types::CertificateDer<'static>>, key: rustls::pki_types::PrivateKeyDer<'static>, secret: &'static str) -> HttpsReceiver {
        use axum::body::Bytes;
        use axum::http::HeaderMap;
        use cstagate::webhook::{sign_webhook, SIGNATURE_HEADER, TIMESTAMP_HEADER};
        #[allow(deprecated)] // the project's provider (see src/http_client.rs)
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_no_client_auth().with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, got) = tokio::sync::mpsc::unbounded_channel::<Received>();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |h: HeaderMap, body: Bytes| {
                let tx = tx.clone();
                async move {
                    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let ts: u64 = header(TIMESTAMP_HEADER).parse().unwrap_or(0);
                    let fresh = cstagate::clock::now_ms() / 1000 - ts <= 5;
                    let signed = fresh && header(SIGNATURE_HEADER) == sign_webhook(secret, ts, &body);
                    let _ = tx.send((signed, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)));
                    "ok"
                }
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let done = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (acceptor, app, done) = (acceptor.clone(), app.clone(), done.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    done.fetch_add(1, Ordering::SeqCst);
                    let svc = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await;
                });
            }
        });
        HttpsReceiver { addr, got, handshakes }
    }

    /// `https://localhost:<port>/hook`: the name its certificate must hold.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/hook", self.addr.port())
    }
}
