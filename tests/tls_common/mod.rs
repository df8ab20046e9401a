//! Test certificates made at test time with rcgen (a CA, server and client certificates signed by
//! it) and a minimal HTTPS client: tokio-rustls and an HTTP/1.1 request written by hand, so the
//! tests depend on nothing of the gateway's own HTTP client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous bound so a broken feature fails instead of hanging; never reached when it works.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate with its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, cn: &str) -> Leaf {
        self.leaf(&["localhost", "127.0.0.1"], cn, ExtendedKeyUsagePurpose::ServerAuth)
    }

    pub fn client(&self, cn: &str) -> Leaf {
        self.leaf(&[], cn, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A fresh temporary directory.
pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cstagate-tls-{}-{name}-{}", std::process::id(), cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Write `leaf` as `cert.pem` + `key.pem` in `dir` (replacing them through a rename, as
/// certificate renewal tools do), and return the `[gateway]` lines naming them.
pub fn install(dir: &Path, leaf: &Leaf) -> String {
    for (name, text) in [("cert.pem", &leaf.cert_pem), ("key.pem", &leaf.key_pem)] {
        let part = dir.join(format!("{name}.new"));
        std::fs::write(&part, text).unwrap();
        std::fs::rename(&part, dir.join(name)).unwrap();
    }
    format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", dir.join("cert.pem").display(), dir.join("key.pem").display())
}

#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting `ca` only, presenting `cert` when given.
pub fn client_config(ca: &Ca, cert: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots);
    let c = match cert {
        None => b.with_no_client_auth(),
        Some(l) => b.with_client_auth_cert(vec![l.der.clone()], PrivateKeyDer::from_pem_slice(l.key_pem.as_bytes()).unwrap()).unwrap(),
    };
    Arc::new(c)
}

pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` as `localhost`: the error of the handshake as text.
pub async fn connect(addr: std::net::SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<Tls, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(LIMIT, tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await.map_err(|_| "handshake timed out".to_owned())?.map_err(|e| e.to_string())
}

/// The certificate the server presented on `s`.
pub fn peer_cert(s: &Tls) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().and_then(|c| c.first()).expect("a server certificate").clone().into_owned()
}

/// One `GET path` on a kept-alive connection, with a bearer token: status and body. Errors (a
/// closed connection, a TLS alert) as text.
pub async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, path: &str, token: &str) -> Result<(u16, String), String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    tokio::time::timeout(LIMIT, async {
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        read_response(s).await
    })
    .await
    .map_err(|_| "no answer in time".to_owned())?
}

/// One HTTP/1.1 response with a `content-length` (what the API sends for JSON), at most 1 MiB.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<(u16, String), String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("connection closed after {} bytes: {:?}", buf.len(), String::from_utf8_lossy(&buf)));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err("response too large".into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("not an HTTP response: {head}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no content-length: {head}"))?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed in the body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned()))
}
