//! HTTPS for the API listener (which also serves the IVR webhook): the rustls server
//! configuration built from `[gateway] tls_cert`, `tls_key` and `tls_client_ca`, and its reload.
//!
//! Bearer tokens and webhook signatures must not cross the network in clear, so with these keys
//! the listener speaks TLS 1.2 and 1.3 only (rustls on the ring provider), never plain HTTP.
//!
//! Certificates expire and are renewed while the gateway runs (an ACME client, a company CA):
//! the files are read again when they change (their modification time, size and inode are
//! polled every [`RELOAD_POLL`]; no file-watching crate, since a stat of three files every few
//! seconds costs nothing and works on every filesystem, NFS and bind mounts included) and on
//! demand ([`ApiTls::reload`], what SIGHUP calls). The whole server configuration is swapped at
//! once: a handshake begun after the swap uses the new certificate and client CA, connections
//! already open keep theirs. A reload that fails (a file half written, a key that does not match)
//! keeps the configuration in use and logs a warning naming the file.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ConfigError, TlsFiles};
use crate::tls::ring_provider;
use crate::shutdown::Shutdown;

/// How often the files' metadata is checked for a change.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// The largest PEM file read: a certificate chain or a CA bundle is a few kilobytes (the whole
/// public web PKI is about 250 KB); a path pointing at something else is not read into memory.
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// What a file looked like when it was last read: a change of any of these triggers a reload.
/// `None` for a file that could not be examined.
type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

/// The API's TLS configuration in use, replaced as a whole on reload.
pub struct ApiTls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The files' fingerprint at the last load attempt, successful or not (a bad file is warned
    /// about once, not at every poll). The lock also keeps two reloads (poll, SIGHUP) apart.
    seen: Mutex<Fingerprint>,
}

impl ApiTls {
    /// Read and check the files.
    ///
    /// # Errors
    /// A file that cannot be read, holds no usable PEM content, or a key that does not match
    /// the certificate: the error names the key (`tls_cert`, `tls_key`, `tls_client_ca`) and
    /// the path.
    pub fn load(files: TlsFiles) -> Result<ApiTls, ConfigError> {
        let seen = fingerprint(&files);
        let config = server_config(&files)?;
        Ok(ApiTls { files, current: RwLock::new(Arc::new(config)), seen: Mutex::new(seen) })
    }

    /// An acceptor with the configuration in use now, for one connection's handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = match self.current.read() {
            Ok(c) => c.clone(),
            // A panic while swapping cannot leave a half-written `Arc`: the value is whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Read the files again and use them for the next handshakes; on error keep the
    /// configuration in use.
    ///
    /// # Errors
    /// As [`ApiTls::load`]; the configuration in use is unchanged.
    pub fn reload(&self) -> Result<(), ConfigError> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *seen = fingerprint(&self.files);
        self.swap()
    }

    /// [`ApiTls::reload`] when a file's fingerprint changed since the last attempt; `None` when
    /// nothing changed.
    fn reload_if_changed(&self) -> Option<Result<(), ConfigError>> {
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = fingerprint(&self.files);
        if now == *seen {
            return None;
        }
        *seen = now;
        Some(self.swap())
    }

    fn swap(&self) -> Result<(), ConfigError> {
        let config = Arc::new(server_config(&self.files)?);
        match self.current.write() {
            Ok(mut c) => *c = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
        Ok(())
    }

    /// Reload, logging the outcome: `trigger` says why (`SIGHUP`, `file change`).
    pub fn reload_logged(&self, trigger: &str) -> bool {
        log_outcome(self.reload(), trigger, &self.files)
    }

    /// Poll the files every [`RELOAD_POLL`] and reload when one changed, until the shutdown
    /// begins.
    pub async fn watch(self: Arc<Self>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(RELOAD_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.stopping() => return,
                _ = tick.tick() => {}
            }
            // Reading files blocks: off the runtime's worker threads.
            let tls = self.clone();
            match tokio::task::spawn_blocking(move || tls.reload_if_changed()).await {
                Ok(Some(outcome)) => {
                    log_outcome(outcome, "file change", &self.files);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "API TLS reload task failed"),
            }
        }
    }
}

fn log_outcome(outcome: Result<(), ConfigError>, trigger: &str, files: &TlsFiles) -> bool {
    match outcome {
        Ok(()) => {
            tracing::info!(trigger, cert = %files.cert.display(), "API TLS certificate reloaded: new connections use it");
            true
        }
        Err(e) => {
            // The error names the key and the file; never the file's content.
            tracing::warn!(trigger, error = %e, "API TLS reload failed: the certificate in use is kept");
            false
        }
    }
}

fn fingerprint(files: &TlsFiles) -> Fingerprint {
    let paths = [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()];
    paths
        .into_iter()
        .flatten()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            Some((m.modified().ok()?, m.len(), inode))
        })
        .collect()
}

/// An error of `[gateway]` key `key` about the file at `path`.
fn invalid(key: &'static str, path: &Path, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid { at: "[gateway]".into(), key, why: format!("{}: {why}", path.display()) }
}

/// The file's bytes, at most [`MAX_PEM_FILE`].
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| invalid(key, path, format_args!("cannot read: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE + 1).read_to_end(&mut bytes).map_err(|e| invalid(key, path, format_args!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(invalid(key, path, format_args!("is larger than {MAX_PEM_FILE} bytes: not a PEM certificate or key")));
    }
    Ok(bytes)
}

/// Every `CERTIFICATE` block of the file, at least one.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>().map_err(|e| invalid(key, path, format_args!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}


/// The rustls server configuration of `files`: TLS 1.2 and 1.3, the ring provider, HTTP/1.1
/// offered by ALPN (the API speaks nothing else), client certificates required when a client CA
/// is set.
///
/// # Errors
/// As [`ApiTls::load`].
pub fn server_config(files: &TlsFiles) -> Result<ServerConfig, ConfigError> {
    let provider = Arc::new(ring_provider());
    let chain = read_certs("tls_cert", &files.cert)?;
    let key_pem = read_pem("tls_key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| invalid("tls_key", &files.key, format_args!("holds no usable PEM private key: {e}")))?;
    drop(key_pem);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls_cert", &files.cert, format_args!("no TLS version available: {e}")))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("tls_client_ca", ca)? {
                roots.add(c).map_err(|e| invalid("tls_client_ca", ca, format_args!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid("tls_client_ca", ca, format_args!("not usable to verify clients: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid("tls_key", &files.key, format_args!("does not match the certificate of tls_cert ({})", files.cert.display())),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => invalid("tls_cert", &files.cert, format_args!("not a usable certificate: {e}")),
        e => invalid("tls_key", &files.key, format_args!("not a usable private key: {e}")),
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
