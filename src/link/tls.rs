//! CSTA over TLS: the byte pipe below the [`super::Session`], which does not know it is there.
//! The preamble, ACSE or the ECMA-354 session, and the frames are the same inside TLS.
//!
//! This module holds what the link (and the simulator, which serves TLS with the same provider)
//! needs around rustls: the certificates and keys read from PEM files, the client and server
//! configurations (ring provider, TLS 1.2 and 1.3), and the translation of rustls's errors into
//! the words an administrator acts on ("certificate for another name", "unknown CA", "the PBX
//! refused our client certificate"), which become [`super::LinkLoss::Tls`]. Kept apart from the
//! driver so that the driver only chooses between a plain and a TLS stream.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};

/// The most certificates read from one PEM file: a CA bundle is a few hundred at most; a file
/// with more is not one we were meant to read.
pub const MAX_PEM_CERTS: usize = 1000;

/// What a link needs to speak TLS to its PBX: the client configuration and the name the PBX's
/// certificate must carry. Built from `[[pbx]]`'s `tls_*` keys by
/// [`crate::config::PbxConfig::profile`].
#[derive(Clone)]
pub struct LinkTls {
    pub config: Arc<ClientConfig>,
    /// The name checked against the PBX's certificate (a DNS name or an IP address).
    pub server_name: ServerName<'static>,
    /// Whether we present a client certificate: the words for a PBX that refuses the handshake
    /// differ ("refused our client certificate" or "requires one").
    pub client_cert: bool,
}

// No derive: the client configuration's Debug is long and says nothing an administrator needs
// (and a key must never be printed, even if a future rustls printed more).
impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkTls").field("server_name", &self.server_name).field("client_cert", &self.client_cert).finish_non_exhaustive()
    }
}

impl LinkTls {
    /// The name to show in messages.
    pub fn name(&self) -> String {
        server_name_text(&self.server_name)
    }
}

fn server_name_text(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// The project's one crypto provider ([`crate::tls::ring_provider`]).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(crate::tls::ring_provider())
}

/// The certificates of a PEM file (at least one, at most [`MAX_PEM_CERTS`]).
///
/// # Errors
/// The file cannot be read, holds a malformed block, or no certificate; the message names the
/// problem, not the path (the caller adds the key and the path).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for c in CertificateDer::pem_file_iter(path).map_err(pem_problem)? {
        out.push(c.map_err(pem_problem)?);
        if out.len() > MAX_PEM_CERTS {
            return Err(format!("holds more than {MAX_PEM_CERTS} certificates"));
        }
    }
    if out.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(out)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1). Errors never carry the key.
///
/// # Errors
/// The file cannot be read or holds no private key.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(pem_problem)
}

fn pem_problem(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => format!("cannot be read: {io}"),
        E::NoItemsFound => "holds no PEM item of the expected kind".into(),
        // The other variants describe the PEM structure (never its content).
        other => format!("is not valid PEM: {other:?}"),
    }
}

/// Where a TLS configuration went wrong: which of the inputs (`"ca"`, `"cert"`, `"key"`), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError {
    pub input: &'static str,
    pub why: String,
}

/// A client configuration (TLS 1.2 and 1.3) trusting `ca` (or the public roots of
/// `webpki-roots` when `None`), presenting `client` when given.
///
/// # Errors
/// A CA certificate rustls refuses, or a client certificate and key that do not go together.
pub fn client_config(ca: Option<Vec<CertificateDer<'static>>>, client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>) -> Result<ClientConfig, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(certs) => {
            for c in certs {
                roots.add(c).map_err(|e| TlsSetupError { input: "ca", why: format!("holds a certificate that cannot be a trust anchor: {e}") })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().map_err(|e| TlsSetupError { input: "ca", why: e.to_string() })?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError { input: "ca", why: e.to_string() })?
        .with_webpki_verifier(verifier);
    match client {
        None => Ok(builder.with_no_client_auth()),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| TlsSetupError { input: "key", why: key_problem(&e) }),
    }
}

/// A server configuration (TLS 1.2 and 1.3) presenting `chain`, and requiring a client
/// certificate signed by `client_ca` when given. For the simulator.
///
/// # Errors
/// A key that does not go with the certificate, or a client CA rustls refuses.
pub fn server_config(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>, client_ca: Option<Vec<CertificateDer<'static>>>) -> Result<ServerConfig, TlsSetupError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsSetupError { input: "cert", why: e.to_string() })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c).map_err(|e| TlsSetupError { input: "ca", why: format!("holds a certificate that cannot be a trust anchor: {e}") })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().map_err(|e| TlsSetupError { input: "ca", why: e.to_string() })?;
            builder.with_client_cert_verifier(v)
        }
    };
    builder.with_single_cert(chain, key).map_err(|e| TlsSetupError { input: "key", why: key_problem(&e) })
}

fn key_problem(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => "does not go with the certificate".into(),
        other => format!("is not usable: {other}"),
    }
}

/// The words for why a TLS connection to the PBX failed, from rustls's error. `name` is the name
/// the PBX's certificate had to carry.
pub fn describe(e: &rustls::Error, tls: &LinkTls) -> String {
    use rustls::Error as E;
    let name = tls.name();
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::NotValidForName => format!("certificate for another name (expected {name})"),
            CertificateError::NotValidForNameContext { presented, .. } => {
                // The names come from the PBX: bounded, so a hostile certificate cannot fill the log.
                let mut shown: Vec<String> = presented.iter().take(4).map(|p| presented_name(p).chars().take(64).collect()).collect();
                if presented.len() > 4 {
                    shown.push("…".into());
                }
                format!("certificate for another name (expected {name}, the PBX's is for {})", if shown.is_empty() { "no name".into() } else { shown.join(", ") })
            }
            CertificateError::UnknownIssuer => "the PBX's certificate is signed by an unknown CA (tls_ca)".into(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "the PBX's certificate has expired".into(),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => "the PBX's certificate is not valid yet (check the clocks)".into(),
            CertificateError::Revoked => "the PBX's certificate is revoked".into(),
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => "the PBX's certificate is not for TLS servers".into(),
            CertificateError::BadSignature => "the PBX's certificate has a bad signature".into(),
            other => format!("the PBX's certificate is refused ({other:?})"),
        },
        E::AlertReceived(a) => alert(*a, tls.client_cert),
        E::NoCertificatesPresented => "the PBX presented no certificate".into(),
        E::PeerIncompatible(p) => format!("no protocol version or cipher suite in common with the PBX ({p:?})"),
        E::InvalidMessage(_) | E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => "the PBX did not answer in TLS (a plain CSTA port?)".into(),
        other => other.to_string(),
    }
}

/// rustls writes the names a certificate presents as `DnsName("pbx.example")` or
/// `IpAddress(10.0.0.5)`: the name alone reads better.
fn presented_name(p: &str) -> &str {
    p.strip_prefix("DnsName(\"").and_then(|r| r.strip_suffix("\")")).or_else(|| p.strip_prefix("IpAddress(").and_then(|r| r.strip_suffix(')'))).unwrap_or(p)
}

fn alert(a: AlertDescription, client_cert: bool) -> String {
    use AlertDescription as A;
    match a {
        A::CertificateRequired if !client_cert => "the PBX requires a client certificate (tls_cert, tls_key)".into(),
        A::CertificateRequired | A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::CertificateExpired | A::CertificateRevoked | A::UnsupportedCertificate | A::AccessDenied => {
            if client_cert {
                format!("the PBX refused our client certificate ({a:?})")
            } else {
                format!("the PBX requires a client certificate (tls_cert, tls_key) ({a:?})")
            }
        }
        A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity => format!("the PBX refused the handshake ({a:?}): no protocol version or cipher suite in common"),
        other => format!("the PBX sent the alert {other:?}"),
    }
}

/// The rustls error inside an I/O error of a TLS stream, if that is what it is.
pub fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// Why a handshake failed, from its I/O error: rustls's own error in words, or the transport's.
pub fn handshake_failure(e: &std::io::Error, tls: &LinkTls) -> String {
    match rustls_error(e) {
        Some(r) => describe(r, tls),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof || e.kind() == std::io::ErrorKind::ConnectionReset => {
            "the PBX closed the connection during the handshake (a plain CSTA port, or it refused us)".into()
        }
        None => format!("handshake: {}", e.kind()),
    }
}

/// Whether `name` is usable as `tls_server_name` (a DNS name or an IP address).
pub fn parse_server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).ok()
}

/// The host part of `host:port` or `[v6]:port` (the default `tls_server_name`).
pub fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address.
        Some((h, _)) if !h.contains(':') => h,
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_an_address() {
        assert_eq!(host_of("pbx.example:8883"), "pbx.example");
        assert_eq!(host_of("10.0.0.5:2555"), "10.0.0.5");
        assert_eq!(host_of("[::1]:8883"), "::1");
        assert_eq!(host_of("pbx.example"), "pbx.example");
        assert!(parse_server_name("10.0.0.5").is_some_and(|n| matches!(n, ServerName::IpAddress(_))));
        assert!(parse_server_name("pbx.example").is_some());
        assert!(parse_server_name("not a name").is_none());
        assert_eq!((presented_name("DnsName(\"pbx.example\")"), presented_name("IpAddress(10.0.0.5)"), presented_name("other")), ("pbx.example", "10.0.0.5", "other"));
    }
}
