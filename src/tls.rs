//! What every TLS hop shares (the HTTPS API, HTTPS notifications, CSTA over TLS): the one crypto
//! provider and reading a CA file. A leaf: it depends on rustls alone, so the configuration, the
//! API's server, the HTTP client and the link can all use it without depending on each other.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// rustls's *ring* provider: the one crypto provider of every TLS hop. Deprecated since rustls
/// 0.23.48 because *ring* has no post-quantum key exchange (X25519MLKEM768); the project uses it
/// anyway since aws-lc-rs, which has one, needs cmake and nasm to build, and no PBX or webhook
/// receiver requires it yet. The classical key exchanges it offers are still sound.
#[allow(deprecated)]
pub fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Most certificates read from one CA file: a CA bundle of a company is a handful.
pub const MAX_CA_CERTS: usize = 100;

/// The CA certificates of a PEM file (a tenant's `notify_ca`), at most [`MAX_CA_CERTS`], each
/// usable as a trust anchor.
///
/// # Errors
/// Unreadable file, bad PEM, no certificate in it, too many, or one that is no usable CA.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {}: {e}", path.display()))? {
        certs.push(c.map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?);
        if certs.len() > MAX_CA_CERTS {
            return Err(format!("{}: more than {MAX_CA_CERTS} certificates", path.display()));
        }
    }
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it (PEM `BEGIN CERTIFICATE` expected)", path.display()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        roots.add(c.clone()).map_err(|e| format!("{}: certificate {} is not a usable CA certificate: {e}", path.display(), i + 1))?;
    }
    Ok(certs)
}
