//! The API over HTTPS (`[gateway] tls_cert`, `tls_key`, `tls_client_ca`) on the real gateway:
//! authenticated requests over TLS, nothing for plain HTTP or a client that does not trust the
//! server's CA, mutual TLS, the handshake within `header_timeout`, and certificates replaced
//! while the gateway runs (on file change and on demand) without dropping open connections.

use std::time::Duration;

use cstagate::sim::{SimConfig, SimPbx};
use cstagate::testkit::{local_secrets, LocalGateway, LocalOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tls_common::{client_config, connect, get, install, peer_cert, tmp, Ca, LIMIT};

/// The gateway with these extra `[gateway]` lines, next to a simulated PBX.
async fn gateway(lines: &str) -> (SimPbx, LocalGateway) {
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let options = LocalOptions { gateway: lines.to_owned(), pbx: "extensions = [\"2005\"]\n".into(), ..Default::default() };
    let gw = LocalGateway::start(&sim, options, local_secrets()).await.unwrap();
    (sim, gw)
}

#[tokio::test]
async fn tls_api_serves_authenticated_requests_over_https_only() {
    let dir = tmp("https");
    let ca = Ca::new("cstagate test CA");
    let server = ca.server("gateway");
    let (_sim, gw) = gateway(&install(&dir, &server)).await;
    assert!(gw.running.tls());
    let addr = gw.running.addr;

    // A client trusting the CA: the admin's request succeeds, the token is checked as ever.
    let mut s = connect(addr, client_config(&ca, None)).await.expect("handshake");
    assert_eq!(peer_cert(&s), server.der);
    let (status, body) = get(&mut s, "/v1/pbx", &gw.tokens.admin).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"paris\""), "{body}");
    let (status, _) = get(&mut s, "/v1/pbx", "wrong-token").await.unwrap();
    assert_eq!(status, 401);

    // Plain HTTP on the same port: no HTTP answer, the connection is closed.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(format!("GET /v1/pbx HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n", gw.tokens.admin).as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(LIMIT, plain.read_to_end(&mut got)).await.expect("the gateway closes the connection");
    assert!(read.is_ok() || got.is_empty(), "{read:?}");
    assert!(!got.starts_with(b"HTTP/"), "plain HTTP answered: {:?}", String::from_utf8_lossy(&got));

    // A client trusting another CA refuses the server's certificate.
    let e = connect(addr, client_config(&Ca::new("another CA"), None)).await.expect_err("refused");
    assert!(e.contains("UnknownIssuer"), "{e}");

    gw.running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The request on a connection whose handshake may have looked done to the client: with TLS
/// 1.3 the server checks the client's certificate after the client's last flight, so a refusal
/// arrives as an alert on the first read.
async fn request(addr: std::net::SocketAddr, config: std::sync::Arc<rustls::ClientConfig>, token: &str) -> Result<u16, String> {
    let mut s = connect(addr, config).await?;
    get(&mut s, "/v1/pbx", token).await.map(|(status, _)| status)
}

#[tokio::test]
async fn tls_api_with_a_client_ca_requires_a_client_certificate_it_signed() {
    let dir = tmp("mtls");
    let ca = Ca::new("server CA");
    let clients = Ca::new("client CA");
    std::fs::write(dir.join("clients.pem"), clients.pem()).unwrap();
    let lines = format!("{}tls_client_ca = \"{}\"\n", install(&dir, &ca.server("gateway")), dir.join("clients.pem").display());
    let (_sim, gw) = gateway(&lines).await;
    let addr = gw.running.addr;
    let token = gw.tokens.admin.clone();

    let e = request(addr, client_config(&ca, None), &token).await.expect_err("no client certificate");
    assert!(e.contains("CertificateRequired"), "{e}");
    let e = request(addr, client_config(&ca, Some(&Ca::new("rogue CA").client("app"))), &token).await.expect_err("a client certificate of another CA");
    assert!(e.contains("UnknownCA") || e.contains("BadCertificate"), "{e}");
    // A certificate of the server's CA is not one of the client CA's either.
    let e = request(addr, client_config(&ca, Some(&ca.client("app"))), &token).await.expect_err("a client certificate of the server's CA");
    assert!(e.contains("UnknownCA") || e.contains("BadCertificate"), "{e}");
    assert_eq!(request(addr, client_config(&ca, Some(&clients.client("app"))), &token).await, Ok(200));

    gw.running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tls_api_handshake_has_the_header_timeout() {
    let dir = tmp("slow");
    let ca = Ca::new("cstagate test CA");
    let (_sim, gw) = gateway(&format!("{}header_timeout = \"1s\"\nmax_connections = 1\n", install(&dir, &ca.server("gateway")))).await;
    // A client that connects and says nothing holds the only slot until the timeout, then the
    // gateway closes its connection (end of file, no TLS record) and serves the next client.
    let mut silent = tokio::net::TcpStream::connect(gw.running.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(LIMIT, silent.read_to_end(&mut got)).await.expect("closed by the gateway");
    assert!(read.is_ok() && got.is_empty(), "{read:?} {got:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    let mut s = connect(gw.running.addr, client_config(&ca, None)).await.expect("handshake");
    assert_eq!(get(&mut s, "/v1/pbx", &gw.tokens.admin).await.map(|r| r.0), Ok(200));
    gw.running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// New handshakes until one presents `want` (the files are polled): `LIMIT` at most.
async fn wait_for_cert(addr: std::net::SocketAddr, config: std::sync::Arc<rustls::ClientConfig>, want: &rustls::pki_types::CertificateDer<'static>) -> bool {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(s) = connect(addr, config.clone()).await
            && peer_cert(&s) == *want
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn tls_api_certificate_files_replaced_are_used_by_new_connections_only() {
    let dir = tmp("reload");
    let ca = Ca::new("first CA");
    let first = ca.server("first");
    let (_sim, gw) = gateway(&install(&dir, &first)).await;
    let addr = gw.running.addr;
    let token = gw.tokens.admin.clone();
    let mut kept = connect(addr, client_config(&ca, None)).await.expect("handshake");
    assert_eq!(get(&mut kept, "/v1/pbx", &token).await.map(|r| r.0), Ok(200));

    // Renewed by another CA: the files change, the gateway notices by itself.
    let ca2 = Ca::new("second CA");
    let second = ca2.server("second");
    install(&dir, &second);
    assert!(wait_for_cert(addr, client_config(&ca2, None), &second.der).await, "the new certificate is not served");
    // Clients trusting only the first CA now refuse new connections; the open one still works.
    let e = connect(addr, client_config(&ca, None)).await.expect_err("the old CA no longer fits");
    assert!(e.contains("UnknownIssuer"), "{e}");
    assert_eq!(get(&mut kept, "/v1/pbx", &token).await.map(|r| r.0), Ok(200));
    assert_eq!(peer_cert(&kept), first.der);

    // On demand (what SIGHUP does): a third certificate at once.
    let third = ca.server("third");
    install(&dir, &third);
    assert_eq!(gw.running.reload_tls().map_err(|e| e.to_string()), Ok(true));
    let s = connect(addr, client_config(&ca, None)).await.expect("handshake");
    assert_eq!(peer_cert(&s), third.der);

    // A bad renewal (a key of another certificate) is refused, naming the key and the file, and
    // the certificate in use stays, both on demand and when the files are polled.
    std::fs::write(dir.join("key.pem"), ca.server("other").key_pem).unwrap();
    let e = gw.running.reload_tls().expect_err("a key that does not match").to_string();
    assert!(e.contains("tls_key") && e.contains(&dir.join("key.pem").display().to_string()), "{e}");
    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    let e = gw.running.reload_tls().expect_err("no certificate").to_string();
    assert!(e.contains("tls_cert") && e.contains(&dir.join("cert.pem").display().to_string()), "{e}");
    let mut s = connect(addr, client_config(&ca, None)).await.expect("the old certificate still served");
    assert_eq!(peer_cert(&s), third.der);
    assert_eq!(get(&mut s, "/v1/pbx", &token).await.map(|r| r.0), Ok(200));
    assert_eq!(get(&mut kept, "/v1/pbx", &token).await.map(|r| r.0), Ok(200));

    gw.running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tls_api_files_are_checked_at_start_naming_the_key_and_the_file() {
    let dir = tmp("start");
    let ca = Ca::new("cstagate test CA");
    let lines = install(&dir, &ca.server("gateway"));
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let start = |lines: String| {
        let sim = &sim;
        async move {
            let options = LocalOptions { gateway: lines, pbx: "extensions = [\"2005\"]\n".into(), ..Default::default() };
            match LocalGateway::start(sim, options, local_secrets()).await {
                Ok(gw) => {
                    gw.running.shutdown().await;
                    "started".to_owned()
                }
                Err(e) => e.to_string(),
            }
        }
    };
    let missing = dir.join("missing.pem").display().to_string();
    let cert = dir.join("cert.pem").display().to_string();
    let key = dir.join("key.pem").display().to_string();
    std::fs::write(dir.join("other-key.pem"), ca.server("other").key_pem).unwrap();
    let other_key = dir.join("other-key.pem").display().to_string();
    // (case, [gateway] lines, the key and the file the error must name)
    let cases = [
        ("no certificate file", lines.replace(&cert, &missing), "`tls_cert`", missing.as_str()),
        ("no key file", lines.replace(&key, &missing), "`tls_key`", missing.as_str()),
        ("the key as the certificate", lines.replace(&format!("tls_cert = \"{cert}\""), &format!("tls_cert = \"{key}\"")), "`tls_cert`", key.as_str()),
        ("the certificate as the key", lines.replace(&format!("tls_key = \"{key}\""), &format!("tls_key = \"{cert}\"")), "`tls_key`", cert.as_str()),
        ("a key of another certificate", lines.replace(&key, &other_key), "`tls_key`", other_key.as_str()),
        ("no client CA file", format!("{lines}tls_client_ca = \"{missing}\"\n"), "`tls_client_ca`", missing.as_str()),
        ("a client CA file without certificates", format!("{lines}tls_client_ca = \"{key}\"\n"), "`tls_client_ca`", key.as_str()),
    ];
    for (case, lines, name, file) in cases {
        let e = start(lines).await;
        assert!(e.contains(name) && e.contains(file), "{case}: {e}");
        assert!(!e.contains("PRIVATE KEY"), "{case}: {e}");
    }
    assert_eq!(start(lines).await, "started");
    let _ = std::fs::remove_dir_all(&dir);
}
