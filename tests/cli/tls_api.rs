//! The HTTPS API's configuration (`[gateway] tls_cert`, `tls_key`, `tls_client_ca`): keys that
//! need each other refused by `Config::parse` naming the missing one; files refused by the real
//! `cstagate run` (exit 5) naming the key and the file, never the key's content; the plain-HTTP
//! warning; and SIGHUP reloading the certificate of a running process.

use std::process::Stdio;

use cstagate::config::Config;
use tokio::sync::mpsc;

use crate::shutdown::lines;
use crate::tls_common::{client_config, connect, get, install, peer_cert, tmp, Ca, LIMIT};

#[test]
fn tls_keys_that_need_each_other_name_the_missing_one() {
    // (what is wrong, [gateway] lines, what the error must name)
    let cases = [
        ("a certificate without its key", "tls_cert = \"/etc/cstagate/api.crt\"", "`tls_key`"),
        ("a key without its certificate", "tls_key = \"/etc/cstagate/api.key\"", "`tls_cert`"),
        ("client certificates without TLS", "tls_client_ca = \"/etc/cstagate/clients.pem\"", "`tls_client_ca`"),
        ("an empty path", "tls_cert = \"\"\ntls_key = \"/etc/cstagate/api.key\"", "`tls_cert`"),
        ("a path as a number", "tls_cert = 5\ntls_key = \"/k\"", "gateway.tls_cert"),
        ("a misspelt key", "tls_certificate = \"/c\"", "tls_certificate"),
    ];
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(what, lines, key)| match Config::parse(&format!("[gateway]\n{lines}\n")) {
            Ok(_) => Some(format!("{what}: accepted")),
            Err(e) if !e.to_string().contains(key) => Some(format!("{what}: the error does not name {key}: {e}")),
            Err(_) => None,
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Both together, with or without a client CA; the files are read at start, not here.
    let c = Config::parse("[gateway]\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntls_client_ca = \"/ca\"\n").unwrap();
    assert_eq!(c.gateway.tls_files().map(|f| f.client_ca.is_some()), Some(true));
    assert!(Config::parse("").unwrap().gateway.tls_files().is_none());
}

/// `cstagate run` on `[gateway]` lines (and a tenant `acme` whose token is set).
fn command(dir: &std::path::Path, lines: &str) -> tokio::process::Command {
    let path = dir.join("gateway.toml");
    let text = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\n{lines}\n[[tenant]]\nid = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n",
        dir.join("gw.db").display()
    );
    std::fs::write(&path, text).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cstagate"));
    cmd.arg("run").arg("--config").arg(&path).env("ACME_TOKEN", "acme-token").env_remove("RUST_LOG").kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn cstagate_run_refuses_unusable_tls_files_naming_the_key_and_the_file() {
    let dir = tmp("run-refused");
    let ca = Ca::new("cstagate test CA");
    let server = ca.server("gateway");
    let lines = install(&dir, &server);
    let key = dir.join("key.pem").display().to_string();
    let missing = dir.join("missing.pem").display().to_string();
    let other = dir.join("other-key.pem");
    std::fs::write(&other, ca.server("other").key_pem).unwrap();
    let other = other.display().to_string();
    let cases = [
        ("no key file", lines.replace(&key, &missing), "`tls_key`", missing.as_str()),
        ("a key of another certificate", lines.replace(&key, &other), "`tls_key`", other.as_str()),
    ];
    for (case, lines, name, file) in cases {
        let out = tokio::time::timeout(LIMIT, command(&dir, &lines).output()).await.unwrap_or_else(|_| panic!("{case}: the gateway started")).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(5), "{case}: {err}");
        assert!(err.contains(name) && err.contains(file), "{case}: {err}");
        assert!(!err.contains("PRIVATE KEY") && !err.contains(server.key_pem.lines().nth(1).unwrap_or("-")), "{case}: key material in the error: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}


/// The next line containing all of `needles`.
async fn line_with(rx: &mut mpsc::UnboundedReceiver<String>, needles: &[&str]) -> String {
    tokio::time::timeout(LIMIT, async {
        while let Some(l) = rx.recv().await {
            if needles.iter().all(|n| l.contains(n)) {
                return l;
            }
        }
        panic!("no line with {needles:?}: the process ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no line with {needles:?} in time"))
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().expect("running").to_string();
    assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

#[cfg(unix)]
#[tokio::test]
async fn cstagate_run_reloads_the_api_certificate_on_sighup() {
    let dir = tmp("sighup");
    let ca = Ca::new("cstagate test CA");
    let first = ca.server("first");
    let mut child = command(&dir, &install(&dir, &first)).env("RUST_LOG", "cstagate=info").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = lines(child.stdout.take().unwrap());
    let mut err = lines(child.stderr.take().unwrap());
    let up = line_with(&mut out, &["cstagate gateway API on https://"]).await;
    let addr: std::net::SocketAddr = up.rsplit("https://").next().unwrap().parse().unwrap();
    let mut kept = connect(addr, client_config(&ca, None)).await.expect("handshake");
    assert_eq!(peer_cert(&kept), first.der);

    let second = ca.server("second");
    install(&dir, &second);
    signal(&child, "-HUP");
    line_with(&mut err, &["SIGHUP", "reloaded"]).await;
    let s = connect(addr, client_config(&ca, None)).await.expect("handshake");
    assert_eq!(peer_cert(&s), second.der);
    assert!(get(&mut kept, "/healthz", "none").await.is_ok(), "the open connection was dropped");

    // A bad file: a warning naming the key and the file, the certificate in use stays.
    std::fs::write(dir.join("key.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
    signal(&child, "-HUP");
    let warning = line_with(&mut err, &["SIGHUP", "reload failed"]).await;
    assert!(warning.contains("WARN") && warning.contains("tls_key") && warning.contains(&dir.join("key.pem").display().to_string()), "{warning}");
    let s = connect(addr, client_config(&ca, None)).await.expect("handshake");
    assert_eq!(peer_cert(&s), second.der);

    signal(&child, "-TERM");
    let status = tokio::time::timeout(LIMIT, child.wait()).await.expect("it stops").unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn cstagate_run_without_tls_warns_that_the_api_is_plain_http() {
    let dir = tmp("plain");
    let mut child = command(&dir, "").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = lines(child.stdout.take().unwrap());
    let mut err = lines(child.stderr.take().unwrap());
    line_with(&mut out, &["cstagate gateway API on http://"]).await;
    let warning = line_with(&mut err, &["plain HTTP"]).await;
    assert!(warning.contains("WARN") && warning.contains("tls_cert") && warning.contains("tls_key"), "{warning}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}
