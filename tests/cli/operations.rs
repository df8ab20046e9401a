//! Operating the gateway: `check-config` (what `run` checks, without a socket), one exit-code
//! table across commands, help text on every option, honest tools (`decode --port`, unknown
//! formats, `sim-pbx`'s refusals), the demo's narration, and the logs of a real run (JSON lines,
//! `pbx` on every link line, link down and up again, no secret in any line).

use std::path::Path;
use std::time::Duration;

use cstagate::sim::{Behaviour, SimConfig, SimPbx};
use cstagate::testkit::{ivr_request, Ivr, Tokens, IVR_NUMBER};
use serde_json::{json, Value};
use tokio::time::timeout;

use super::reload::Gateway;

const LIMIT: Duration = Duration::from_secs(60);

fn cstagate(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cstagate"));
    c.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cstagate-{what}-{}", cstagate::random::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn config_text(dir: &Path, listen: &str, tenant: &str) -> String {
    format!(
        "[gateway]\nlisten = \"{listen}\"\ndatabase = \"{}\"\nadmin_token_env = \"OPS_ADMIN_TOKEN\"\n\n[[tenant]]\nid = \"acme\"\ntoken_env = \"OPS_ACME_TOKEN\"\n\n[[pbx]]\nid = \"paris\"\naddress = \"10.1.2.3\"\ndialect = \"oxe\"\ntenant = \"{tenant}\"\nextensions = [\"2000-2099\"]\nivr_number = \"{IVR_NUMBER}\"\n\n[[pbx]]\nid = \"munich\"\naddress = \"10.0.0.7\"\ndialect = \"mxone\"\n",
        dir.join("gateway.db").display()
    )
}

/// `check-config` accepts what `run` accepts without opening a socket (its listen address is
/// taken, which `run` refuses with "cannot start"), summarises it, and refuses what `run`
/// refuses with the configuration's exit code.
#[test]
fn check_config_checks_what_run_checks_without_a_socket() {
    let dir = temp_dir("check-config");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let file = dir.join("gateway.toml");
    std::fs::write(&file, config_text(&dir, &listen, "acme")).unwrap();
    let f = file.to_str().unwrap();
    let env = [("OPS_ADMIN_TOKEN", "admin-token-x"), ("OPS_ACME_TOKEN", "acme-token-x")];
    let (code, out, err) = cstagate(&["check-config", "--config", f], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    for shown in [format!("http://{listen}"), "acme".into(), "paris oxe 10.1.2.3:2555".into(), "munich mxone 10.0.0.7:8882".into()] {
        assert!(out.contains(&shown), "the summary shows {shown:?}:\n{out}");
    }
    assert!(!dir.join("gateway.db").exists(), "no database created");
    // `run` on the same file: the address is taken, so it cannot start (6).
    let (code, _, err) = cstagate(&["run", "--config", f], &env);
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("cannot listen"), "{err}");
    // A missing secret, a bad reference: the configuration's code (5), naming it.
    let (code, _, err) = cstagate(&["check-config", "--config", f], &env[..1]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("OPS_ACME_TOKEN") && !err.contains("admin-token-x"), "{err}");
    std::fs::write(&file, config_text(&dir, &listen, "acme-corp")).unwrap();
    let (code, _, err) = cstagate(&["check-config", "--config", f], &env);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("acme-corp"), "{err}");
    let (code, _, _) = cstagate(&["check-config", "--config", dir.join("none.toml").to_str().unwrap()], &env);
    assert_eq!(code, Some(5));
    // Usage: clap's code.
    let (code, _, _) = cstagate(&["check-config"], &env);
    assert_eq!(code, Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The directory's sources are checked as `run` and a reload build them: an LDAP bind password
/// whose variable is missing and an `ldap_ca` that cannot be read are refused (5) naming the key,
/// never the password.
#[test]
fn check_config_checks_the_directory_sources() {
    let dir = temp_dir("check-config-ldap");
    let file = dir.join("gateway.toml");
    let f = file.to_str().unwrap();
    let ldap = "extensions = [\"3000-3099\"]\nldap_url = \"ldaps://dir.example:636\"\nldap_base = \"ou=people,dc=example\"\nldap_bind_dn = \"cn=cstagate,dc=example\"\nldap_password_env = \"OPS_LDAP_PASSWORD\"\n";
    std::fs::write(&file, config_text(&dir, "127.0.0.1:0", "acme") + ldap).unwrap();
    let env = [("OPS_ADMIN_TOKEN", "admin-token-x"), ("OPS_ACME_TOKEN", "acme-token-x"), ("OPS_LDAP_PASSWORD", "ldap-secret-x")];
    let (code, out, err) = cstagate(&["check-config", "--config", f], &env);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = cstagate(&["check-config", "--config", f], &env[..2]);
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("OPS_LDAP_PASSWORD"), "the error names the variable: {err}");
    let missing = dir.join("no-such-ca.pem");
    std::fs::write(&file, config_text(&dir, "127.0.0.1:0", "acme") + ldap + &format!("ldap_ca = \"{}\"\n", missing.display())).unwrap();
    let (code, out, err) = cstagate(&["check-config", "--config", f], &env);
    assert_eq!(code, Some(5), "{out}{err}");
    assert!(err.contains("ldap_ca") && !err.contains("ldap-secret-x"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every option and argument of every command says what it is in `--help`.
#[test]
fn every_option_has_help_text() {
    for sub in ["run", "check-config", "decode", "probe", "demo", "sim-pbx"] {
        let (code, out, err) = cstagate(&[sub, "-h"], &[]);
        assert_eq!(code, Some(0), "{sub}: {err}");
        // Each entry: `  --name <NAME>  What it is`, or the text on the lines below it.
        let mut section = "";
        let mut entries: Vec<(String, bool)> = Vec::new();
        for line in out.lines() {
            if !line.starts_with(' ') {
                section = line;
                continue;
            }
            if !matches!(section, "Options:" | "Arguments:") || line.trim().is_empty() {
                continue;
            }
            let text = line.trim_start();
            if text.starts_with(['-', '<', '[']) {
                entries.push((text.to_owned(), text.split_once("  ").is_some_and(|(_, t)| !t.trim().is_empty())));
            } else if let Some(last) = entries.last_mut() {
                last.1 = true;
            }
        }
        for (entry, described) in &entries {
            assert!(described, "`cstagate {sub}`: no help text for {entry:?}\n{out}");
        }
        let options = entries.len();
        assert!(options >= 2, "{sub}: {out}");
    }
}

#[test]
fn decode_names_the_ports_it_saw_and_the_formats_it_reads() {
    let pcap = super::common::path("captures/panasonic-csta3-makecall-20160727.synth.pcap");
    let (code, out, err) = cstagate(&["decode", "--port", "4444", pcap.to_str().unwrap()], &[]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("port 4444") && err.contains("33333"), "names the ports seen: {err}");
    // The port it uses decodes.
    let (code, out, err) = cstagate(&["decode", "--port", "33333", pcap.to_str().unwrap()], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.is_empty());
    // Not a trace: one line naming the formats, whatever the file.
    let dir = temp_dir("decode-unknown");
    let binary = dir.join("firmware.bin");
    std::fs::write(&binary, (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>()).unwrap();
    let text = super::common::path("captures/panasonic-csta3-makecall-20160727.log.txt");
    for file in [binary.as_path(), text.as_path()] {
        let (code, out, err) = cstagate(&["decode", file.to_str().unwrap()], &[]);
        assert_eq!(code, Some(2), "{}: {out}{err}", file.display());
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains("unknown format") && err.contains("pcap") && err.contains("CSTA XML"), "{err}");
        assert!(out.is_empty(), "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sim_pbx_refuses_auto_and_a_login_without_a_password() {
    let (code, _, err) = cstagate(&["sim-pbx", "--dialect", "auto", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("auto"), "{err}");
    let (code, _, err) = cstagate(&["sim-pbx", "--acse-user", "cti", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--acse-password-env"), "{err}");
    let (code, _, err) = cstagate(&["sim-pbx", "--acse-user", "cti", "--acse-password-env", "OPS_UNSET_PASSWORD", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("OPS_UNSET_PASSWORD"), "{err}");
}

/// The demo narrates in the order things happened, each line with its time since the start,
/// names causes, shows the code's expiry as a time, says the expected outcome of a failure
/// scenario first, and ends as soon as the scenario does.
#[test]
fn the_demo_reads_in_order() {
    let started = std::time::Instant::now();
    let (code, out, err) = cstagate(&["demo", "--scenario", "no-answer"], &[]);
    let took = started.elapsed();
    assert_eq!(code, Some(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    let times: Vec<f64> = lines.iter().map(|l| l.strip_prefix('+').and_then(|r| r.split_once(" s  ")).and_then(|(t, _)| t.parse().ok()).unwrap_or_else(|| panic!("no relative time: {l:?}\n{out}"))).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in order:\n{out}");
    assert!(lines[0].contains("expected outcome: failed, reason no_answer"), "{out}");
    assert!(lines.last().unwrap().contains("outcome failed, reason no_answer: as expected"), "{out}");
    let expiry = lines.iter().find(|l| l.contains("valid until")).unwrap_or_else(|| panic!("{out}"));
    assert!(expiry.contains('T') && expiry.contains('Z'), "a time, not epoch milliseconds: {expiry}");
    assert!(!out.contains("(cause 1") && !out.contains("(cause 3") && !out.contains("(cause 6"), "causes named:\n{out}");
    // The ring timeout is 3 s and nothing waits after the end: no 5 s wait for an IVR call
    // that never came. (A bound, not a timing target: the run takes about 4 s.)
    assert!(took < Duration::from_secs(30), "{took:?}");
    let ended = *times.last().unwrap();
    assert!(ended < 3.0 + 5.0, "ends with the scenario, not after a wait: {ended}\n{out}");
}

/// A whole association (and a failed one) through a real `cstagate run` logging at debug in
/// JSON: every line one JSON object, every link line carrying `pbx`, the link's loss and return
/// both logged, and no token, key, password, code or context id in any line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_of_a_real_run_is_json_lines_without_secrets() {
    const PASSWORD: &str = "Pbx-Passw0rd-ops-4711";
    let mut cfg = SimConfig::phase3(&["2005", "2006"]);
    cfg.ivr_number = Some(IVR_NUMBER.into());
    cfg.credentials = Some(("cti".into(), PASSWORD.into()));
    cfg.extensions[0].behaviour = Behaviour::Answer { after: Duration::from_millis(10) };
    cfg.extensions[1].behaviour = Behaviour::Busy;
    let mut sim = SimPbx::start(cfg, "127.0.0.1:0").await.unwrap();
    let mut ivr = Ivr::of(&mut sim).unwrap();
    let dir = temp_dir("logs");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\ndatabase = \"{}\"\nadmin_token_env = \"ADMIN_TOKEN\"\nivr_secret_env = \"IVR_SECRET\"\nlog_format = \"json\"\n\n[[tenant]]\nid = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n\n[[pbx]]\nid = \"paris\"\naddress = \"{}\"\ndialect = \"phase3\"\nacse_user = \"cti\"\nacse_password_env = \"PBX_PASSWORD\"\ntenant = \"acme\"\nextensions = [\"2005\", \"2006\"]\nivr_number = \"{IVR_NUMBER}\"\nreconnect_min = \"20ms\"\n",
            dir.join("gateway.db").display(),
            sim.addr()
        ),
    )
    .unwrap();
    let tokens = Tokens::random();
    let env = [("ACME_TOKEN", tokens.tenant.as_str()), ("ADMIN_TOKEN", &tokens.admin), ("IVR_SECRET", &tokens.ivr), ("PBX_PASSWORD", PASSWORD), ("RUST_LOG", "trace")];
    let mut gw = Gateway::start(&config, &env).await;
    gw.links_up(&["paris"]).await;
    let http = gw.http.clone();

    // Bound: the code keyed at the IVR, in the proof call the context id came with.
    let (s, created) = http.json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "alice", "extension": "2005" }))).await.unwrap();
    assert_eq!(s, 201, "{created}");
    let code = created["code"].as_str().unwrap().to_owned();
    let call = timeout(LIMIT, ivr.next_call()).await.expect("the proof call reaches the IVR").unwrap();
    let mut last = Value::Null;
    for digits in [None, Some(call.context.as_str()), Some("1"), Some(code.as_str())] {
        // The gateway takes the IVR call once the PBX reported it answered: it waits for that.
        let (s, v) = ivr_request(&http, &tokens.ivr, &call.call, &call.from, digits).await.unwrap();
        assert_eq!(s, 200, "{v}");
        last = v;
    }
    assert_eq!(last["hangup"], true, "{last}");
    let id = created["id"].as_str().unwrap();
    let (_, v) = http.json("GET", &format!("/v1/associations/{id}"), &tokens.tenant, None).await.unwrap();
    assert_eq!(v["state"], "bound", "{v}");
    ivr.line.hangup(&call.call);
    // Failed: the other phone is busy.
    let (s, created) = http.json("POST", "/v1/associations", &tokens.tenant, Some(json!({ "account": "bob", "extension": "2006" }))).await.unwrap();
    assert_eq!(s, 201, "{created}");
    let failed_code = created["code"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    timeout(LIMIT, async {
        loop {
            let (_, v) = http.json("GET", &format!("/v1/associations/{id}"), &tokens.tenant, None).await.unwrap();
            if v["state"] == "failed" {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the busy phone fails the attempt");
    // The link lost and back.
    sim.drop_links();
    gw.logged("link up again").await;

    // Stop, and read the whole log.
    let pid = gw.child.id().unwrap().to_string();
    assert!(tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    assert!(timeout(LIMIT, gw.child.wait()).await.expect("exits").unwrap().success());
    while let Some(l) = gw.log.recv().await {
        gw.seen_log.push(l);
    }
    let log = &gw.seen_log;
    let mut link_lines = 0;
    for line in log {
        let j: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object: {e}: {line}"));
        let message = j["fields"]["message"].as_str().unwrap_or_default();
        if j["target"].as_str().is_some_and(|t| t.starts_with("cstagate::link")) {
            link_lines += 1;
            assert_eq!(j["span"]["pbx"], "paris", "a link line names its PBX: {line}");
        }
        if message == "link down" || message == "link up again" {
            assert_eq!(j["span"]["pbx"], "paris", "{line}");
        }
        for (what, secret) in [("tenant token", tokens.tenant.as_str()), ("admin token", &tokens.admin), ("IVR secret", &tokens.ivr), ("PBX password", PASSWORD)] {
            assert!(!line.contains(secret), "the {what} is logged: {line}");
        }
        for (what, digits) in [("code", code.as_str()), ("code of the failed association", &failed_code), ("context id", &call.context)] {
            assert!(!has_number(line, digits), "the {what} is logged: {line}");
            // At trace the link logs every APDU in hex: the digits as the wire carries them.
            assert!(!line.contains(&hex::encode(digits)), "the {what} is logged in a hex dump: {line}");
        }
    }
    assert!(link_lines > 0 && log.iter().any(|l| l.contains("\"link down\"")), "{log:#?}");
    assert!(log.iter().any(|l| l.contains("\"apdu\"")), "at trace the APDUs are logged (in hex, masked): the check above read them");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `digits` stand in `line` as a number of their own (not inside a longer run of
/// letters and digits, such as a hex dump or an id, where they can occur by chance).
fn has_number(line: &str, digits: &str) -> bool {
    line.match_indices(digits).any(|(i, _)| {
        let before = line[..i].chars().next_back();
        let after = line[i + digits.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric()) && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}
