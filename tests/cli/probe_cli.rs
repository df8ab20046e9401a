//! `cstagate probe` end to end against the in-process simulator: success with monitors, a call
//! and its events; and each failure with its exit code and message.

use std::time::Duration;

use cstagate::sim::{SimConfig, SimPbx};
use serde_json::Value;
use tokio::process::Command;

async fn probe(config: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<Value>, String) {
    let dir = std::env::temp_dir().join(format!("cstagate-probe-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cstagate"));
    cmd.arg("probe").arg("--config").arg(&path).args(args).arg("--json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await.expect("probe ends").unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    (out.status.code().unwrap_or(-1), lines, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn config(addr: &str, extra: &str) -> String {
    format!("[[pbx]]\nid = \"lab\"\naddress = \"{addr}\"\ndialect = \"phase3\"\nreconnect_min = \"50ms\"\n{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_monitors_calls_and_prints_events_then_exits_zero() {
    let mut cfg = SimConfig::phase3(&["2005", "2006"]);
    cfg.extensions.iter_mut().for_each(|e| e.behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) });
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let (code, lines, err) = probe(&config(&sim.addr().to_string(), ""), &["--pbx", "lab", "--monitor", "2005", "--make-call", "2005", "0800100200", "--count", "5", "--timeout", "20s"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(lines.iter().any(|l| l["link"] == "up"));
    let result = lines.iter().find(|l| l["kind"] == "result").expect("makeCall result");
    assert_eq!(result["operation"], "makeCall");
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(events, ["serviceInitiated", "originated", "networkReached", "delivered", "established"]);
    assert!(lines.iter().filter(|l| l["event"].is_string()).all(|l| l["device"] == "2005" && l["xref"].is_string()));
    // The probe cleared the call it placed before it exited: nothing is left up on the PBX.
    assert!(lines.iter().any(|l| l["kind"] == "result" && l["operation"] == "clearConnection"), "{lines:?}");
    tokio::time::timeout(Duration::from_secs(10), sim.wait_stats(|s| s.live_calls == 0)).await.unwrap_or_else(|_| panic!("the probe left its call up: {:?}", sim.stats()));

    // --keep-call leaves it up (the probe is gone, so nothing else will clear it).
    let (code, lines, err) = probe(&config(&sim.addr().to_string(), ""), &["--pbx", "lab", "--monitor", "2005", "--make-call", "2005", "0800100200", "--count", "5", "--timeout", "20s", "--keep-call"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!lines.iter().any(|l| l["operation"] == "clearConnection"), "{lines:?}");
    assert_eq!(sim.stats().live_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_exit_codes_name_the_failure() {
    // Connection refused: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (code, _, err) = probe(&config(&closed, ""), &["--pbx", "lab"], &[]).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("refused"), "{err}");

    // Association rejected, with the reason; the password comes from the environment.
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.credentials = Some(("AMHOST".into(), "77777".into()));
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let login = "acse_user = \"AMHOST\"\nacse_password_env = \"CSTAGATE_TEST_PBX_PASSWORD\"\n";
    let (code, _, err) = probe(&config(&sim.addr().to_string(), login), &["--pbx", "lab"], &[("CSTAGATE_TEST_PBX_PASSWORD", "wrong")]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("authentication-failure"), "{err}");
    assert!(!err.contains("wrong"), "the password is never printed: {err}");
    let (code, _, err) = probe(&config(&sim.addr().to_string(), login), &["--pbx", "lab", "--timeout", "1s"], &[("CSTAGATE_TEST_PBX_PASSWORD", "77777"), ("RUST_LOG", "trace")]).await;
    assert_eq!(code, 0, "{err}");
    // Its trace shows the AARQ, without the password (hex of "77777").
    assert!(err.contains("<redacted>") && !err.contains("3737373737"), "{err}");

    // A CSTA error, by name.
    let sim = SimPbx::start(SimConfig::phase3(&["2005"]), "127.0.0.1:0").await.unwrap();
    let (code, _, err) = probe(&config(&sim.addr().to_string(), ""), &["--pbx", "lab", "--make-call", "9999", "2005"], &[]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("invalidCallingDevice"), "{err}");

    // Configuration errors name the key.
    let (code, _, err) = probe(&config(&sim.addr().to_string(), "keep_alive = \"1s\"\n"), &["--pbx", "lab"], &[]).await;
    assert_eq!(code, 5);
    assert!(err.contains("keep_alive"), "{err}");
}

fn xml_config(addr: &str, extra: &str) -> String {
    format!("[[pbx]]\nid = \"lab\"\naddress = \"{addr}\"\ndialect = \"xml\"\nreconnect_min = \"50ms\"\n{extra}")
}

/// The probe over CSTA XML: the same output and every exit code, the session login checked and
/// never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_over_csta_xml_with_every_exit_code() {
    let mut cfg = SimConfig::xml(&["2005", "2006"], cstagate::codec::Framing::XmlHeader);
    cfg.extensions.iter_mut().for_each(|e| e.behaviour = cstagate::sim::Behaviour::Answer { after: Duration::from_millis(10) });
    cfg.credentials = Some(("cti".into(), "s3cret-77".into()));
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let addr = sim.addr().to_string();
    let login = "acse_user = \"cti\"\nacse_password_env = \"CSTAGATE_TEST_PBX_PASSWORD\"\n";
    let right = [("CSTAGATE_TEST_PBX_PASSWORD", "s3cret-77"), ("RUST_LOG", "trace")];

    let (code, lines, err) = probe(&xml_config(&addr, login), &["--pbx", "lab", "--monitor", "2005", "--make-call", "2005", "0800100200", "--count", "5", "--timeout", "20s"], &right).await;
    assert_eq!(code, 0, "{err}");
    assert!(lines.iter().any(|l| l["link"] == "up"));
    assert!(lines.iter().any(|l| l["kind"] == "result" && l["operation"] == "makeCall"), "{lines:?}");
    let events: Vec<&str> = lines.iter().filter_map(|l| l["event"].as_str()).collect();
    assert_eq!(events, ["serviceInitiated", "originated", "networkReached", "delivered", "established"]);
    assert!(lines.iter().any(|l| l["kind"] == "result" && l["operation"] == "clearConnection"), "the call it placed is cleared: {lines:?}");
    assert!(err.contains("StartApplicationSession") && err.contains("<redacted>") && !err.contains("s3cret-77"), "the trace shows the login without its password: {err}");
    tokio::time::timeout(Duration::from_secs(10), sim.wait_stats(|s| s.live_calls == 0)).await.unwrap_or_else(|_| panic!("the probe left its call up: {:?}", sim.stats()));

    // 3: the session refused, with the PBX's reason, the password not printed.
    let (code, _, err) = probe(&xml_config(&addr, login), &["--pbx", "lab"], &[("CSTAGATE_TEST_PBX_PASSWORD", "wrong-pw")]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("application session refused"), "{err}");
    assert!(!err.contains("wrong-pw"), "{err}");
    // 2: nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (code, _, err) = probe(&xml_config(&closed, ""), &["--pbx", "lab"], &[]).await;
    assert_eq!(code, 7, "{err}");
    // 4: a CSTA error by name.
    let (code, _, err) = probe(&xml_config(&addr, login), &["--pbx", "lab", "--make-call", "9999", "2005"], &right[..1]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("invalidCallingDevice"), "{err}");
    // 5: a BER key with an XML preset.
    let (code, _, err) = probe(&xml_config(&addr, "preamble = true\n"), &["--pbx", "lab"], &[]).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("preamble"), "{err}");
}

/// `probe` over CSTA over TLS: up against the TLS simulator; a certificate for another name is a
/// connection failure (exit 7) with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_over_tls_comes_up_and_a_name_mismatch_exits_7_with_the_reason() {
    let pki = crate::csta_tls_pki::Pki::new("probe");
    let mut cfg = SimConfig::phase3(&["2005"]);
    cfg.tls = Some(pki.sim_tls(false));
    let sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let addr = sim.addr().to_string();
    let (code, lines, err) = probe(&config(&addr, &pki.pbx_lines("")), &["--pbx", "lab", "--monitor", "2005", "--timeout", "1s"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(lines.iter().any(|l| l["link"] == "up"), "{lines:?}");
    assert_eq!(sim.stats().requests.get("MonitorStart").copied(), Some(1), "the monitor went over TLS: {:?}", sim.stats().requests);

    let (code, lines, err) = probe(&config(&addr, &pki.pbx_lines("tls_server_name = \"pbx.example\"\n")), &["--pbx", "lab"], &[]).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("TLS: certificate for another name (expected pbx.example"), "{err}");
    assert!(lines.iter().any(|l| l["link"] == "down" && l["reason"].as_str().is_some_and(|r| r.starts_with("TLS: "))), "{lines:?}");
}

/// The real `cstagate sim-pbx --tls-cert --tls-key --tls-client-ca` serves mutual TLS: `probe`
/// with our client certificate comes up, without it exits 7 with the reason; a key file that
/// holds no key stops the simulator (exit 5) naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_pbx_serves_mutual_tls_from_the_command_line() {
    use tokio::io::AsyncBufReadExt;
    let pki = crate::csta_tls_pki::Pki::new("sim-cli");
    let (cert, key, ca) = (pki.pbx_cert.display().to_string(), pki.pbx_key.display().to_string(), pki.ca.display().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_cstagate")).args(["sim-pbx", "--listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &cert]).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains(&cert), "{err}");

    let mut child = Command::new(env!("CARGO_BIN_EXE_cstagate"))
        .args(["sim-pbx", "--listen", "127.0.0.1:0", "--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.expect("the simulator starts").unwrap().unwrap_or_default();
    let addr = first.strip_prefix("simulated PBX listening on ").unwrap_or_else(|| panic!("{first}")).to_owned();
    let (code, lines_out, err) = probe(&config(&addr, &pki.pbx_lines(&pki.client_lines())), &["--pbx", "lab", "--timeout", "1s"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(lines_out.iter().any(|l| l["link"] == "up"), "{lines_out:?}");
    let (code, _, err) = probe(&config(&addr, &pki.pbx_lines("")), &["--pbx", "lab"], &[]).await;
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("TLS: the PBX requires a client certificate"), "{err}");
    let _ = child.kill().await;
}
