//! The link over TLS against the simulator serving TLS: each way a handshake fails becomes a
//! link loss in words an administrator acts on (unknown CA, expired, client certificate
//! required or refused, a plain port), counted in `tls_failures`; and mutual TLS with the client
//! certificate comes up.

use std::time::Duration;

use cstagate::config::Config;
use cstagate::link::{Link, LinkState};
use cstagate::sim::{SimConfig, SimPbx, SimTls};

use crate::csta_tls_pki::Pki;

const LIMIT: Duration = Duration::from_secs(20);

fn link(addr: &str, lines: &str) -> Link {
    let text = format!("[[pbx]]\nid = \"lab\"\naddress = \"{addr}\"\ndialect = \"phase3\"\nreconnect_min = \"20ms\"\nreconnect_max = \"100ms\"\n{lines}");
    let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    Link::spawn(c.pbx("lab").unwrap().profile().unwrap_or_else(|e| panic!("{e}")))
}

/// The first state the link settles in: up, or down with its reason.
async fn settle(l: &Link) -> LinkState {
    tokio::time::timeout(LIMIT, l.wait_for(|s| matches!(s, LinkState::Up | LinkState::Down { .. }))).await.expect("the link settles")
}

async fn sim(tls: Option<SimTls>) -> SimPbx {
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.tls = tls;
    SimPbx::start(cfg, "127.0.0.1:0").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_handshake_is_a_link_loss_in_clear_words_and_counted() {
    let pki = Pki::new("link");
    let tls_sim = sim(Some(pki.sim_tls(false))).await;
    let addr = tls_sim.addr().to_string();
    let expired = sim(Some(SimTls::from_pem_files(&pki.expired_cert, &pki.expired_key, None).unwrap())).await;
    let plain = sim(None).await;
    let cases = [
        ("a CA we do not trust", addr.clone(), format!("tls = true\ntls_ca = \"{}\"\n", pki.other_ca.display()), "TLS: the PBX's certificate is signed by an unknown CA"),
        ("the public roots only", addr.clone(), "tls = true\n".to_owned(), "TLS: the PBX's certificate is signed by an unknown CA"),
        ("another name", addr.clone(), pki.pbx_lines("tls_server_name = \"pbx.example\"\n"), "TLS: certificate for another name (expected pbx.example, the PBX's is for localhost, 127.0.0.1)"),
        ("an expired certificate", expired.addr().to_string(), pki.pbx_lines(""), "TLS: the PBX's certificate has expired"),
        // The simulator's BER framer waits for the rest of what it takes for a long frame.
        ("a plain CSTA port", plain.addr().to_string(), pki.pbx_lines("connect_timeout = \"300ms\"\n"), "TLS: no handshake within the connect timeout (a plain CSTA port?)"),
    ];
    for (what, addr, lines, want) in cases {
        let l = link(&addr, &lines);
        let s = settle(&l).await;
        let LinkState::Down { reason } = &s else { panic!("{what}: {s:?}") };
        assert!(reason.starts_with(want), "{what}: {reason}");
        println!("{what}: {reason}");
        assert!(l.stats().tls_failures >= 1 && l.stats().connects == 0, "{what}: {:?}", l.stats());
        l.shutdown().await;
    }
    assert_eq!(plain.stats().requests.len(), 0, "nothing of CSTA went to the plain port");
    // The same PBX with the right CA and name: up.
    let l = link(&addr, &pki.pbx_lines(""));
    assert_eq!(settle(&l).await, LinkState::Up);
    assert_eq!(l.stats().tls_failures, 0);
    l.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_link_without_our_certificate_or_with_an_untrusted_one_and_takes_ours() {
    let pki = Pki::new("mutual");
    let s = sim(Some(pki.sim_tls(true))).await;
    let addr = s.addr().to_string();

    let l = link(&addr, &pki.pbx_lines(""));
    let st = settle(&l).await;
    let LinkState::Down { reason } = &st else { panic!("{st:?}") };
    assert!(reason.starts_with("TLS: the PBX requires a client certificate (tls_cert, tls_key)"), "{reason}");
    assert!(l.stats().tls_failures >= 1, "{:?}", l.stats());
    l.shutdown().await;

    let other = format!("tls_cert = \"{}\"\ntls_key = \"{}\"\n", pki.other_client_cert.display(), pki.other_client_key.display());
    let l = link(&addr, &pki.pbx_lines(&other));
    let st = settle(&l).await;
    let LinkState::Down { reason } = &st else { panic!("{st:?}") };
    assert!(reason.starts_with("TLS: the PBX refused our client certificate"), "{reason}");
    l.shutdown().await;
    // The simulator counts a refused handshake when its side of it ends, which may be after the
    // link has already seen the alert: wait for it rather than read it at once.
    let counted = tokio::time::timeout(std::time::Duration::from_secs(20), s.wait_stats(|st| st.tls_failures >= 2)).await;
    assert!(counted.is_ok(), "the PBX refused both: {:?}", s.stats());
    assert!(s.stats().requests.is_empty());

    let l = link(&addr, &pki.pbx_lines(&pki.client_lines()));
    assert_eq!(settle(&l).await, LinkState::Up);
    // A request goes through the TLS link and is answered.
    let m = l.monitor("2005").await;
    assert!(m.is_ok(), "{:?}", m.err());
    assert_eq!(l.stats().tls_failures, 0);
    l.shutdown().await;
}
