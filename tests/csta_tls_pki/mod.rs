//! Certificates for the CSTA-over-TLS tests, drawn with rcgen at test time (nothing secret is
//! checked in): a test CA, the PBX's certificate for `localhost` and 127.0.0.1 signed by it, a
//! client certificate signed by it, and what must fail: a second CA nobody configured, a client
//! certificate of that CA, an expired PBX certificate. Written as PEM files in a fresh directory,
//! since the gateway's configuration names files.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

pub struct Pki {
    pub dir: PathBuf,
    /// The CA the PBX's and the client's certificates chain to.
    pub ca: PathBuf,
    pub pbx_cert: PathBuf,
    pub pbx_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing the PBX presents.
    pub other_ca: PathBuf,
    /// A client certificate of `other_ca`: one the PBX does not trust.
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
    /// A PBX certificate of `ca` that expired in 2001.
    pub expired_cert: PathBuf,
    pub expired_key: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("CA")
}

/// A leaf certificate of `issuer` for `names`; (certificate PEM, key PEM).
fn leaf(issuer: &CertifiedIssuer<'static, KeyPair>, names: &[&str], expired: bool) -> (String, String) {
    let mut p = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("params");
    p.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    if expired {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("key");
    let cert = p.signed_by(&key, issuer).expect("signed");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    /// Draw everything and write it under a new temporary directory.
    pub fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("cstagate-tls-{name}-{}-{}", std::process::id(), cstagate::random::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let write = |file: &str, text: &str| {
            let p = dir.join(file);
            std::fs::write(&p, text).expect("write");
            p
        };
        let main = ca("cstagate test CA");
        let other = ca("another CA");
        let (pc, pk) = leaf(&main, &["localhost", "127.0.0.1"], false);
        let (cc, ck) = leaf(&main, &["cstagate-client"], false);
        let (oc, ok) = leaf(&other, &["cstagate-client"], false);
        let (ec, ek) = leaf(&main, &["localhost", "127.0.0.1"], true);
        Pki {
            ca: write("ca.pem", &main.pem()),
            pbx_cert: write("pbx.pem", &pc),
            pbx_key: write("pbx.key", &pk),
            client_cert: write("client.pem", &cc),
            client_key: write("client.key", &ck),
            other_ca: write("other-ca.pem", &other.pem()),
            other_client_cert: write("other-client.pem", &oc),
            other_client_key: write("other-client.key", &ok),
            expired_cert: write("expired.pem", &ec),
            expired_key: write("expired.key", &ek),
            dir,
        }
    }

    /// The simulator's TLS: the PBX certificate, and with `mutual` a client certificate of the
    /// test CA required.
    pub fn sim_tls(&self, mutual: bool) -> cstagate::sim::SimTls {
        cstagate::sim::SimTls::from_pem_files(&self.pbx_cert, &self.pbx_key, mutual.then_some(self.ca.as_path())).expect("sim TLS")
    }

    /// `[[pbx]]` lines: TLS trusting the test CA, plus `extra`.
    pub fn pbx_lines(&self, extra: &str) -> String {
        format!("tls = true\ntls_ca = \"{}\"\n{extra}", self.ca.display())
    }

    /// `[[pbx]]` lines presenting the client certificate.
    pub fn client_lines(&self) -> String {
        format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", self.client_cert.display(), self.client_key.display())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
